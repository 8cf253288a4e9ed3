"""The reward win rate of a model against a baseline on the same prompts (UltraFeedback-style).

Per prompt, the model's reward against the baseline's: hard = mean of 1[win] + 0.5*1[tie],
soft = mean sigmoid(r_m - r_b), each with a seeded paired bootstrap 95% percentile interval.
Used by the score judges' Arena-Hard runs and by the summary table (rm_winrate_*).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def reward_win_rate(model_scores: Sequence[float], baseline_scores: Sequence[float], n_boot: int = 1000,
                    seed: int = 0) -> dict[str, float]:
    """Hard and soft win rates of a model over a baseline on the same prompts, with 95% bootstrap CIs.

    hard: a strictly higher reward wins (1), an equal one ties (1/2); soft: sigmoid(r_m - r_b).
    The bootstrap resamples prompts (pairs) with replacement, ``n_boot`` times, from
    ``numpy.random.default_rng(seed)``; the CI is the 2.5th-97.5th percentile. Rates are fractions.
    """
    model = np.asarray(model_scores, dtype=float)
    baseline = np.asarray(baseline_scores, dtype=float)
    if model.shape != baseline.shape or model.ndim != 1:
        raise ValueError(f"need two equal-length score lists, got {model.shape} and {baseline.shape}")
    if model.size == 0:
        raise ValueError("no scores")
    if not (np.isfinite(model).all() and np.isfinite(baseline).all()):
        raise ValueError("scores must be finite")
    hard = (model > baseline) + 0.5 * (model == baseline)
    soft = _sigmoid(model - baseline)
    result = {"hard": float(hard.mean()), "soft": float(soft.mean()), "n": int(model.size), "n_boot": int(n_boot)}
    if n_boot > 0:
        rows = np.random.default_rng(seed).integers(0, model.size, size=(n_boot, model.size))
        for name, values in (("hard", hard), ("soft", soft)):
            low, high = np.percentile(values[rows].mean(axis=1), [2.5, 97.5])
            result[f"{name}_ci_low"], result[f"{name}_ci_high"] = float(low), float(high)
    return result
