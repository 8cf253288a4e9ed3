"""Arena-Hard scores from pairwise judgments, as upstream arena-hard-auto computes them.

Every question is judged twice: game 1 with the baseline as assistant A, game 2 with
the model as A (position bias cancels).

v0.1 (legacy show_result.py): each game is a battle; A>>B / B>>A count 3 times (strong
  weight), A=B is one tie, any other label drops that game. A Bradley-Terry model is fitted
  by logistic regression (ties = half a win), the baseline anchored; the score is the
  predicted win rate against the baseline (so the baseline itself is 50%). The 95% CI comes
  from 100 bootstrap resamples of the battles (2.5th/97.5th percentiles).
v2.0 (show_result.py at HEAD, default = no style control): each question gives the model's
  scores from both games (A>B -> 1, A=B -> 0.5, strong labels repeated 3 times; game 1 is
  mirrored); a question with a missing verdict in either game is dropped. The score is the
  mean over 100 bootstrap resamples of the mean, the interval the 5th/95th percentiles
  (a 90% interval: what upstream prints). Style control (length/markdown features) is
  optional upstream and not applied here; answers still carry its metadata.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Iterable, Sequence

import numpy as np

LEGACY_PATTERN = r"\[\[([AB<>=]+)\]\]"
STRONG_WEIGHT = 3


def legacy_verdict(judgment: str, pattern: str = LEGACY_PATTERN) -> tuple[str | None, bool]:
    """(label, try_again): no match -> ask again; two different labels -> give up (None)."""
    matches = [m for m in re.findall(pattern, judgment) if m != ""]
    if not matches:
        return None, True
    if len(set(matches)) == 1:
        return matches[0].strip("\n"), False
    return None, False


def v2_verdict(judgment: str, patterns: Sequence[str]) -> str | None:
    """The last match of the first pattern that matches the upper-cased reply, else None."""
    text = judgment.upper()
    for pattern in patterns:
        matches = [m for m in re.findall(pattern, text) if m != ""]
        if matches:
            return matches[-1].strip("\n")
    return None


# ---------------------------------------------------------------- v0.1: battles + Bradley-Terry

# (winner, weight) per label; winner "a" / "b" is the player in that position.
_LEGACY_LABELS = {"A=B": ("tie", 1), "A>B": ("a", 1), "A>>B": ("a", STRONG_WEIGHT),
                  "B>A": ("b", 1), "B>>A": ("b", STRONG_WEIGHT)}


def legacy_battles(records: Iterable[dict], strong_weight: int = STRONG_WEIGHT,
                   first_game_only: bool = False) -> list[tuple[str, float]]:
    """(model, outcome for the model) per battle row: 1 win, 0 loss, 0.5 tie; strong rows repeated."""
    battles = []
    for record in records:
        for game_index, game in enumerate(record["games"][:1 if first_game_only else 2]):
            label = (game or {}).get("score")
            if label not in _LEGACY_LABELS:
                continue
            winner, weight = _LEGACY_LABELS[label]
            weight = strong_weight if weight > 1 else 1
            model_position = "b" if game_index == 0 else "a"    # game 1: baseline is A
            outcome = 0.5 if winner == "tie" else float(winner == model_position)
            battles.extend([(record["model"], outcome)] * weight)
    return battles


def legacy_dropped(records: Iterable[dict]) -> dict[str, int]:
    """Games without a usable verdict, and questions where neither game has one."""
    games = questions = 0
    for record in records:
        bad = [(game or {}).get("score") not in _LEGACY_LABELS for game in record["games"][:2]]
        games += sum(bad)
        questions += all(bad)
    return {"games": games, "questions": questions}


def fit_bradley_terry(pair_wins: np.ndarray, pair_counts: np.ndarray, n_models: int,
                      ridge: float = 1e-8, iterations: int = 200) -> np.ndarray:
    """Strengths theta (baseline = index 0, fixed at 0) from model-vs-baseline results.

    pair_wins[m] = the model m's wins (ties as 1/2) over the baseline out of pair_counts[m]
    battles. This is upstream's logistic regression (one +/- column per player, no intercept,
    ties as one win and one loss) by Newton's method; the tiny ridge keeps a clean sweep finite
    (its win rate then comes out at ~100%, as unpenalised sklearn's large coefficient does).
    """
    theta = np.zeros(n_models)
    free = np.arange(1, n_models)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-theta[free]))
        grad = pair_counts[free] * p - pair_wins[free] + ridge * theta[free]
        hess = pair_counts[free] * p * (1 - p) + ridge
        step = grad / hess          # the Hessian is diagonal: every battle involves the baseline
        theta[free] -= np.clip(step, -5.0, 5.0)
        if np.max(np.abs(step), initial=0.0) < 1e-10:
            break
    return theta


def _win_rate_percent(theta: float) -> float:
    return 100.0 / (1.0 + math.exp(-theta))


def arena_v01_scores(records: list[dict], baseline: str, n_boot: int = 100, seed: int = 42,
                     strong_weight: int = STRONG_WEIGHT) -> dict[str, dict]:
    """Per model: winrate (%, BT vs baseline), ci_low/ci_high (95% bootstrap), battle counts."""
    battles = legacy_battles(records, strong_weight)
    models = sorted({r["model"] for r in records} - {baseline})
    index = {name: i + 1 for i, name in enumerate(models)}       # 0 is the baseline
    who = np.array([index[m] for m, _ in battles], dtype=int)
    outcome = np.array([y for _, y in battles], dtype=float)
    n = len(models) + 1

    def fit(rows: np.ndarray) -> np.ndarray:
        wins = np.bincount(who[rows], weights=outcome[rows], minlength=n)
        counts = np.bincount(who[rows], minlength=n).astype(float)
        return fit_bradley_terry(wins, counts, n)

    all_rows = np.arange(len(battles))
    point = fit(all_rows)
    rng = np.random.default_rng(seed)
    boots = np.array([fit(rng.integers(0, len(battles), len(battles))) for _ in range(n_boot)]) \
        if n_boot > 0 and len(battles) else np.zeros((0, n))
    questions = defaultdict(int)
    for record in records:
        questions[record["model"]] += 1
    table = {}
    for name in models:
        i = index[name]
        n_battles = int((who == i).sum())
        # no valid verdict: no win rate (a fit with no battles would report the prior's 50%)
        row = {"winrate": _win_rate_percent(point[i]) if n_battles else float("nan"), "n_battles": n_battles,
               "n_questions": questions[name]}
        if len(boots) and n_battles:
            row["ci_low"] = _win_rate_percent(np.percentile(boots[:, i], 2.5))
            row["ci_high"] = _win_rate_percent(np.percentile(boots[:, i], 97.5))
        table[name] = row
    table[baseline] = {"winrate": 50.0, "ci_low": 50.0, "ci_high": 50.0, "n_battles": len(battles),
                       "n_questions": 0}
    return table


# ---------------------------------------------------------------- v2.0: mean score + bootstrap

def _v2_label_scores(weight: int) -> dict[str, list[float]]:
    return {"A>B": [1.0], "A>>B": [1.0] * weight, "A=B": [0.5], "A<<B": [0.0] * weight, "A<B": [0.0],
            "B>A": [0.0], "B>>A": [0.0] * weight, "B=A": [0.5], "B<<A": [1.0] * weight, "B<A": [1.0]}


def v2_question_scores(record: dict, weight: int = STRONG_WEIGHT) -> list[float] | None:
    """The model's scores from one question's two games, or None when a verdict is missing."""
    games = record.get("games") or []
    labels = _v2_label_scores(weight)
    if len(games) < 2 or any(g is None or g.get("score") not in labels for g in games[:2]):
        return None
    return labels[games[1]["score"]] + [1.0 - s for s in labels[games[0]["score"]]]


def arena_v2_scores(records: list[dict], n_boot: int = 100, seed: int = 42,
                    weight: int = STRONG_WEIGHT) -> dict[str, dict]:
    """Per (model, category): winrate (%), ci_low/ci_high (5th/95th bootstrap percentiles)."""
    scores: dict[tuple[str, str], list[float]] = defaultdict(list)
    counts: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        key = (record["model"].split("/")[-1], record.get("category", "hard_prompt"))
        values = v2_question_scores(record, weight)
        counts[key][values is None] += 1
        if values is not None:
            scores[key].extend(values)
    rng = np.random.default_rng(seed)
    table = {}
    for key in sorted(counts):
        values = np.asarray(scores.get(key, []), dtype=float)
        row = {"n_questions": counts[key][0], "n_dropped": counts[key][1]}
        if values.size and n_boot > 0:
            means = values[rng.integers(0, values.size, size=(n_boot, values.size))].mean(axis=1)
            row.update(winrate=100 * float(means.mean()), ci_low=100 * float(np.quantile(means, 0.05)),
                       ci_high=100 * float(np.quantile(means, 0.95)))
        else:
            row.update(winrate=100 * float(values.mean()) if values.size else float("nan"))
        table[f"{key[0]}|{key[1]}"] = row
    return table


def is_v2_record(record: dict) -> bool:
    return "uid" in record


def format_arena_table(table: dict[str, dict], title: str) -> str:
    def fmt(row, key):
        value = row.get(key)
        return "   -  " if value is None or math.isnan(value) else f"{value:6.1f}"

    width = max([len("model"), *map(len, table)])
    header = f"{'model':<{width}}  winrate  CI low  CI high  questions"
    lines = [title, header, "-" * len(header)]
    for name, row in sorted(table.items(), key=lambda kv: -(kv[1].get("winrate") or 0)):
        lines.append(f"{name:<{width}}  {fmt(row, 'winrate')}   {fmt(row, 'ci_low')}  {fmt(row, 'ci_high')}"
                     f"   {row.get('n_questions', 0):6d}")
    return "\n".join(lines)
