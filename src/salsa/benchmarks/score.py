"""`salsa score mt-bench|arena-hard`: print the score table of saved judgments.

  salsa score mt-bench --judgments DIR/judgments.jsonl [--questions question.jsonl]
  salsa score arena-hard --judgments DIR/judgments.jsonl [--baseline NAME] [--n-boot 100] [--seed 42]

Reads the judgment files the judge stage writes, and upstream's own judgment files
(FastChat model_judgment/*_single.jsonl; arena-hard-auto model_judgment/<judge>/*.jsonl).
"""

from __future__ import annotations

import argparse

from salsa import artifacts
from salsa.artifacts import StageError
from salsa.benchmarks import ARENA_V01, ARENA_V2
from salsa.benchmarks.arena_scoring import arena_v01_scores, arena_v2_scores, format_arena_table, is_v2_record
from salsa.benchmarks.data import load_mt_questions, read_jsonl
from salsa.benchmarks.scoring import format_mt_bench_table, mt_bench_table

REQUIRED_FIELDS = {"mt-bench": ("model", "score"), "arena-hard": ("model", "games")}


def read_judgments(path: str, kind: str) -> list[dict]:
    rows = []
    for lineno, row in read_jsonl(path):
        missing = [k for k in REQUIRED_FIELDS[kind] if k not in row]
        if missing:
            raise StageError(f"{path}:{lineno}: not a {kind} judgment (missing {', '.join(missing)})")
        if kind == "arena-hard" and (not isinstance(row["games"], list) or len(row["games"]) < 1):
            raise StageError(f"{path}:{lineno}: 'games' should be a non-empty list")
        rows.append(row)
    if not rows:
        raise StageError(f"{path}: no judgments")
    return rows


def score_mt_bench(args: argparse.Namespace) -> None:
    records = read_judgments(args.judgments, "mt-bench")
    categories = ({q.question_id: q.category for q in load_mt_questions(args.questions)}
                  if args.questions else None)
    print(format_mt_bench_table(mt_bench_table(records, categories)))


def score_arena_hard(args: argparse.Namespace) -> None:
    records = read_judgments(args.judgments, "arena-hard")
    if is_v2_record(records[0]):
        table = arena_v2_scores(records, args.n_boot, args.seed, args.strong_weight)
        print(format_arena_table(table, f"{ARENA_V2}: score %, 90% CI (5th-95th bootstrap percentile)"))
        return
    baselines = {r.get("baseline") for r in records if r.get("baseline")}
    baseline = args.baseline or (baselines.pop() if len(baselines) == 1 else "gpt-4-0314")
    table = arena_v01_scores(records, baseline, args.n_boot, args.seed, args.strong_weight)
    print(format_arena_table(table, f"{ARENA_V01}: Bradley-Terry win rate % vs {baseline}, 95% CI"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="salsa score", description="Print benchmark scores from judgments.")
    sub = parser.add_subparsers(dest="benchmark", required=True)
    mt = sub.add_parser("mt-bench", help="MT-Bench single-answer grading: turn and category means")
    mt.add_argument("--judgments", required=True, help="judgments.jsonl")
    mt.add_argument("--questions", help="question.jsonl, for categories when the judgments lack them")
    mt.set_defaults(run=score_mt_bench)
    arena = sub.add_parser("arena-hard", help="Arena-Hard pairwise: win rate vs the baseline with CI")
    arena.add_argument("--judgments", required=True, help="judgments.jsonl")
    arena.add_argument("--baseline", help="baseline model name (default: from the judgments, else gpt-4-0314)")
    arena.add_argument("--n-boot", type=int, default=100, help="bootstrap rounds")
    arena.add_argument("--seed", type=int, default=42, help="bootstrap seed")
    arena.add_argument("--strong-weight", type=int, default=3, help="battles per strong verdict")
    arena.set_defaults(run=score_arena_hard)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    args.run(args)


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
