"""`salsa score mt-bench|arena-hard`: print the score table of saved judgments.

  salsa score mt-bench --judgments DIR/judgments.jsonl [--questions question.jsonl]
  salsa score arena-hard --judgments DIR/judgments.jsonl [--baseline NAME] [--n-boot 100] [--seed 42]

Reads the judgment files the judge stage writes, and upstream's own judgment files
(FastChat model_judgment/*_single.jsonl; arena-hard-auto model_judgment/<judge>/*.jsonl).
Every row is type-checked (a bad one stops with file:line); ratings outside 1-10 count as
failed; a model with no valid rating or battle is an error, not a score; dropped Arena-Hard
games and questions are printed under the table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from salsa import artifacts
from salsa.artifacts import StageError
from salsa.benchmarks import ARENA_V01, ARENA_V2
from salsa.benchmarks.arena_hard_scoring import (arena_v01_scores, arena_v2_scores, format_arena_table,
                                                 is_v2_record, legacy_dropped)
from salsa.benchmarks.data import V01_BASELINE, load_mt_questions
from salsa.benchmarks.files import read_jsonl
from salsa.benchmarks.mt_bench_scoring import format_mt_bench_table, mt_bench_table


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_mt_row(row: dict, where: str) -> str | None:
    """Why an MT-Bench judgment row is malformed, or None."""
    if not isinstance(row.get("model"), str):
        return "field 'model' should be a string" if "model" in row else "missing field 'model'"
    if "score" not in row:
        return "not a mt-bench judgment (missing score)"
    if not _number(row["score"]):
        return f"field 'score' should be a number, got {json.dumps(row['score'])}"
    if "turn" not in row:
        return "missing field 'turn' (1 or 2)"
    if row["turn"] not in (1, 2) or isinstance(row["turn"], bool):
        return f"field 'turn' should be 1 or 2, got {json.dumps(row['turn'])}"
    return None


def _check_arena_row(row: dict, where: str) -> str | None:
    if not isinstance(row.get("model"), str):
        return "field 'model' should be a string" if "model" in row else "missing field 'model'"
    if "games" not in row:
        return "not a arena-hard judgment (missing games)"
    games = row["games"]
    if not isinstance(games, list) or not games:
        return "'games' should be a non-empty list"
    for k, game in enumerate(games, start=1):
        if game is not None and not isinstance(game, dict):
            return f"game {k} should be an object or null, got {type(game).__name__}"
        if game is not None and not isinstance(game.get("score"), (str, type(None))):
            return f"game {k}: 'score' should be a verdict label or null, got {json.dumps(game.get('score'))}"
    return None


def read_judgments(path: str, kind: str, baseline: str | None = None) -> list[dict]:
    """Judgment rows, each type-checked; any malformed row stops with file:line."""
    if Path(path).is_dir():
        raise StageError(f"{path}: is a directory; pass the judgments.jsonl file inside it")
    check = _check_mt_row if kind == "mt-bench" else _check_arena_row
    rows = []
    for lineno, row in read_jsonl(path):
        problem = check(row, f"{path}:{lineno}")
        if problem is None and baseline is not None and row["model"] == baseline:
            problem = f"model {baseline!r} is the baseline; a model cannot be judged against itself"
        if problem:
            raise StageError(f"{path}:{lineno}: {problem}")
        rows.append(row)
    if not rows:
        raise StageError(f"{path}: no judgments")
    return rows


def score_mt_bench(args: argparse.Namespace) -> None:
    records = read_judgments(args.judgments, "mt-bench")
    categories = ({q.question_id: q.category for q in load_mt_questions(args.questions)}
                  if args.questions else None)
    table = mt_bench_table(records, categories)
    empty = [model for model, row in table.items() if row["n_valid"] == 0]
    if empty:
        raise StageError(f"{args.judgments}: no valid rating (1-10) for {', '.join(empty)}; "
                         f"{sum(table[m]['n_failed'] for m in empty)} failed")
    print(format_mt_bench_table(table))


def _arena_baseline(records: list[dict], override: str | None) -> str:
    baselines = {r.get("baseline") for r in records if r.get("baseline")}
    return override or (baselines.pop() if len(baselines) == 1 else V01_BASELINE)


def score_arena_hard(args: argparse.Namespace) -> None:
    first = read_judgments(args.judgments, "arena-hard")
    if is_v2_record(first[0]):
        table = arena_v2_scores(first, args.n_boot, args.seed, args.strong_weight)
        empty = [key for key, row in table.items() if row["n_questions"] == 0]
        if empty:
            raise StageError(f"{args.judgments}: every question of {', '.join(empty)} was dropped "
                             f"(no valid verdict in both games)")
        print(format_arena_table(table, f"{ARENA_V2}: score %, 90% CI (5th-95th bootstrap percentile)"))
        dropped = sum(row["n_dropped"] for row in table.values())
        print(f"dropped: {dropped} question(s) without a valid verdict in both games")
        return
    baseline = _arena_baseline(first, args.baseline)
    records = read_judgments(args.judgments, "arena-hard", baseline=baseline)
    table = arena_v01_scores(records, baseline, args.n_boot, args.seed, args.strong_weight)
    empty = [name for name, row in table.items() if name != baseline and row["n_battles"] == 0]
    if empty:
        raise StageError(f"{args.judgments}: no valid battle for {', '.join(empty)} (every verdict unparseable)")
    print(format_arena_table(table, f"{ARENA_V01}: Bradley-Terry win rate % vs {baseline}, 95% CI"))
    dropped = legacy_dropped(records)
    print(f"dropped: {dropped['games']} game(s) without a valid verdict, {dropped['questions']} question(s) "
          f"with none in either game")


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
