"""Benchmarks for the trained policies: MT-Bench, Arena-Hard, and their embedded-task twins.

Stages (each a module with main(argv)):
  python -m salsa.benchmarks.fetch    salsa fetch-benchmarks: a public benchmark's files, pinned + sha256
  python -m salsa.benchmarks.answer   salsa answer: a model's answers (upstream answer formats)
  python -m salsa.benchmarks.judge    salsa judge: judge them, write judgments.jsonl + scores.json
  salsa score mt-bench|arena-hard     (show_scores) print the table from saved judgments

Steps they share: data (benchmark files -> questions, judge settings), answer_formats
(upstream answer records), answer_generation + chat_generation (decoding), judge_protocols
(judge prompts -> judgment records), mt_bench_scoring / arena_hard_scoring (upstream's
scores), scores_json (judgments -> the flat scores.json). docs/architecture.md has the map.

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
