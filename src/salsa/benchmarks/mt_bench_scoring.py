"""MT-Bench single-answer grading scores.

MT-Bench (as FastChat's gen_judgment.py / show_result.py):
  * the rating is the first ``[[x]]`` in the judge's reply, else the first ``[x]``; no match
    (or an API error) gives -1, and -1 ratings are left out of every mean; so is any rating
    outside MT-Bench's 1-10 scale (counted as failed; upstream would average it in);
  * turn-1 and turn-2 means, the overall mean over all valid ratings of both turns, and
    per-category means (over both turns).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Iterable, Sequence

ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")
FAILED_RATING = -1
RATING_MIN, RATING_MAX = 1.0, 10.0


def parse_rating(judgment: str | None) -> float:
    """The judge's 1-10 rating, or -1 when the reply has none."""
    if not judgment:
        return FAILED_RATING
    match = ONE_SCORE.search(judgment) or ONE_SCORE_BACKUP.search(judgment)
    return float(match.group(1)) if match else FAILED_RATING


def is_valid_rating(score: float) -> bool:
    return RATING_MIN <= score <= RATING_MAX


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def mt_bench_table(records: Iterable[dict], categories: dict | None = None) -> dict[str, dict]:
    """Per model: turn1, turn2, score (overall), n_valid, n_failed, categories {name: mean}.

    ``categories`` maps question_id -> category for judgment files that do not carry it.
    """
    by_model: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        model, score = record["model"], float(record["score"])
        if not is_valid_rating(score):
            by_model[model]["failed"].append(record)
            continue
        turn = int(record["turn"])   # no default: a turn-2 rating counted as turn 1 is silently wrong
        by_model[model][f"turn{turn}"].append(score)
        by_model[model]["all"].append(score)
        category = record.get("category") or (categories or {}).get(record.get("question_id"))
        if category:
            by_model[model][f"cat:{category}"].append(score)
    table = {}
    for model, groups in sorted(by_model.items()):
        row = {"score": _mean(groups["all"]), "turn1": _mean(groups["turn1"]),
               "n_valid": len(groups["all"]), "n_failed": len(groups["failed"])}
        if groups["turn2"]:
            row["turn2"] = _mean(groups["turn2"])
        row["categories"] = {key[4:]: _mean(v) for key, v in sorted(groups.items()) if key.startswith("cat:")}
        table[model] = row
    return table


def metric_name(text: str) -> str:
    """A column-safe metric suffix: lower case, non-alphanumerics -> '_'."""
    return re.sub(r"[^0-9a-z]+", "_", text.lower()).strip("_")


def mt_bench_metrics(records: list[dict], model: str | None = None) -> dict[str, float]:
    """Flat ``mtbench_*`` metrics of one model (the only one in the records unless named)."""
    table = mt_bench_table(records)
    if not table:
        return {"mtbench_score": float("nan"), "mtbench_turn1": float("nan"), "mtbench_n_valid": 0,
                "mtbench_n_failed": 0}
    model = model or next(iter(table))
    row = table[model]
    metrics = {"mtbench_score": row["score"], "mtbench_turn1": row["turn1"]}
    if "turn2" in row:
        metrics["mtbench_turn2"] = row["turn2"]
    metrics.update({f"mtbench_cat_{metric_name(c)}": v for c, v in row["categories"].items()})
    metrics.update(mtbench_n_valid=row["n_valid"], mtbench_n_failed=row["n_failed"])
    return metrics


def format_mt_bench_table(table: dict[str, dict]) -> str:
    def fmt(value) -> str:
        return "   -  " if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:6.3f}"

    categories = sorted({c for row in table.values() for c in row["categories"]})
    width = max([len("model"), *map(len, table)])
    header = f"{'model':<{width}}  turn1   turn2   score   valid failed"
    lines = [header, "-" * len(header)]
    for model, row in table.items():
        lines.append(f"{model:<{width}}  {fmt(row['turn1'])}  {fmt(row.get('turn2'))}  {fmt(row['score'])}  "
                     f"{row['n_valid']:5d} {row['n_failed']:6d}")
    if categories:
        lines += ["", "per category (mean over both turns):"]
        cat_width = max(map(len, categories))
        for model, row in table.items():
            lines.append(f"  {model}")
            lines += [f"    {c:<{cat_width}}  {fmt(row['categories'].get(c))}" for c in categories]
    return "\n".join(lines)
