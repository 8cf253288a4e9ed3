"""Judgments -> the flat, prefixed metrics of scores.json (one column each in the tables stage)."""

from __future__ import annotations

from salsa.benchmarks import ARENA_V2
from salsa.benchmarks.arena_hard_scoring import (arena_v01_scores, arena_v2_scores, format_arena_table,
                                                 legacy_dropped)
from salsa.benchmarks.mt_bench_scoring import metric_name
from salsa.benchmarks.win_rate import reward_win_rate


def _baseline_of(records: list[dict], default: str = "baseline") -> str:
    names = {r.get("baseline") for r in records if r.get("baseline")}
    return names.pop() if len(names) == 1 else default


def arena_metrics(records: list[dict], benchmark: str, n_boot: int = 100, seed: int = 42,
                  strong_weight: int = 3) -> tuple[dict[str, float], str]:
    """arena_winrate / arena_ci_low / arena_ci_high (percent) + counts, and a printable table.

    v0.1 and embedded_arena: Bradley-Terry win rate vs the baseline, 95% CI. v2.0: mean
    score, 90% CI (5th-95th percentile, as upstream), one set of keys per category
    (arena_winrate_<category>); the unsuffixed keys are the first category's.
    """
    models = sorted({r["model"] for r in records})
    if not models:
        return {"arena_n_questions": 0}, "(no judgments)"
    if benchmark == ARENA_V2:
        table = arena_v2_scores(records, n_boot, seed, strong_weight)
        metrics: dict[str, float] = {}
        for key, row in table.items():
            category = key.split("|", 1)[1]
            suffix = f"_{metric_name(category)}"
            for name in ("winrate", "ci_low", "ci_high"):
                if name in row:
                    metrics[f"arena_{name}{suffix}"] = row[name]
                    metrics.setdefault(f"arena_{name}", row[name])
            metrics[f"arena_n_questions{suffix}"] = row["n_questions"]
            metrics.setdefault("arena_n_questions", row["n_questions"])
            metrics["arena_n_dropped"] = metrics.get("arena_n_dropped", 0) + row["n_dropped"]
        title = f"Arena-Hard v2.0 (score %, 90% CI; judge {records[0]['judge']})"
        return metrics, (format_arena_table(table, title) + f"\ndropped: {metrics['arena_n_dropped']} question(s) "
                         f"without a valid verdict in both games")
    baseline = _baseline_of(records)
    table = arena_v01_scores(records, baseline, n_boot, seed, strong_weight)
    row = table[models[0]]
    dropped = legacy_dropped(records)
    metrics = {"arena_n_battles": row["n_battles"], "arena_n_questions": row["n_questions"],
               "arena_n_dropped_games": dropped["games"], "arena_n_dropped": dropped["questions"]}
    if row["n_battles"]:  # without a valid verdict there is no win rate, as MT-Bench has no score
        metrics["arena_winrate"] = row["winrate"]
    if "ci_low" in row:
        metrics.update(arena_ci_low=row["ci_low"], arena_ci_high=row["ci_high"])
    title = f"{benchmark} (Bradley-Terry win rate % vs {baseline}, 95% CI; judge {records[0]['judge']})"
    return metrics, (format_arena_table(table, title) + f"\ndropped: {dropped['games']} game(s) without a valid "
                     f"verdict, {dropped['questions']} question(s) with none in either game")


def score_judge_metrics(records: list[dict], judge_kind: str, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """<judge>_winrate_{hard,soft}[_ci_low|_ci_high] from the per-question scores of both players."""
    pairs = [(r["model_score"], r["baseline_score"]) for r in records if "model_score" in r]
    if not pairs:
        return {}
    rates = reward_win_rate([m for m, _ in pairs], [b for _, b in pairs], n_boot=n_boot, seed=seed)
    prefix = f"{judge_kind}_winrate"
    metrics = {f"{prefix}_{key}": value for key, value in rates.items() if key not in ("n", "n_boot")}
    metrics[f"{judge_kind}_mean_model"] = sum(m for m, _ in pairs) / len(pairs)
    metrics[f"{judge_kind}_mean_baseline"] = sum(b for _, b in pairs) / len(pairs)
    return metrics


def failure_metrics(result) -> dict[str, int]:
    return {"judge_failures": result.failures, "judge_parse_failures": result.parse_failures,
            "judge_api_errors": result.api_errors, "judge_n_judgments": len(result.records)}
