"""Benchmarks for the trained policies: MT-Bench, Arena-Hard, and their embedded-task twins.

Stages:
  python -m salsa.benchmarks.answer   generate a model's answers (upstream answer formats)
  python -m salsa.benchmarks.judge    judge them, write judgments.jsonl + scores.json
  salsa score mt-bench|arena-hard     print the table from saved judgments

docs/judging.md describes the protocols, the judges and the caching.
"""

MT_BENCH = "mt_bench"
ARENA_V01 = "arena_hard_v0.1"
ARENA_V2 = "arena_hard_v2.0"
EMBEDDED_MT = "embedded_mt"
EMBEDDED_ARENA = "embedded_arena"
BENCHMARKS = (MT_BENCH, ARENA_V01, ARENA_V2, EMBEDDED_MT, EMBEDDED_ARENA)

# Which scoring protocol each benchmark follows.
SINGLE_GRADING = {MT_BENCH, EMBEDDED_MT}
PAIRWISE = {ARENA_V01, ARENA_V2, EMBEDDED_ARENA}
EMBEDDED = {EMBEDDED_MT, EMBEDDED_ARENA}
