"""Gold at matched KL: one method family against another at the same KL, on either KL axis.

A family with one β is a point: its runs' mean gold at their mean KL. A family with several β is a curve:
gold fitted against sqrt(KL) (`fit_curve`). A difference is taken only where a curve is compared at a KL
its own runs bracket (runs at or below and at or above the level): a point against a curve at the point's
KL, or two curves over the KL range both cover. Two points are refused: a constant "fit" is the plain
difference of the means, whatever their KLs, and matches nothing.

Intervals. Several outer replicates: the matched difference is taken inside each replicate (its own point,
its own curves) and the t-interval is over replicates (df = replicates - 1); a replicate whose curve does
not bracket the level is left out and counted. One replicate: the point's mean has its t standard error,
the curve's fitted mean its OLS standard error at the level (df = runs - parameters), combined with
Welch-Satterthwaite degrees of freedom. The level itself (the point's mean KL) is treated as fixed.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from salsa.stats import LEVEL, mean_interval, t_quantile

AXES = {"kl_sft_id": "KL to the first SFT", "kl_ref_id": "KL to the run's own reference"}


def fit_degree(strata: int) -> int:
    """Quadratic with three or more β values, linear with two, none (a point, not a curve) with one."""
    return max(0, min(2, strata - 1))


def fit_curve(kl, gold, degree: int) -> np.ndarray:
    """Least-squares polynomial of gold in sqrt(KL).

    Why sqrt(KL) and a quadratic: Gao et al. (2022, "Scaling laws for reward model overoptimization") find
    the gold reward of RL policies follows d (alpha - beta d) in d = sqrt(KL to the initial policy): it rises,
    peaks and falls as the policy over-optimises the proxy. A free intercept absorbs the start's own gold.
    """
    return np.polyfit(np.sqrt(np.maximum(np.asarray(kl, dtype=float), 0.0)), np.asarray(gold, dtype=float), degree)


def curve_at(kl, gold, degree: int, level: float) -> tuple[float, float, int]:
    """Fitted mean at `level`, its OLS standard error and residual df (se NaN without residual df)."""
    x = np.sqrt(np.maximum(np.asarray(kl, dtype=float), 0.0))
    design = np.vander(x, degree + 1)
    coefficients, *_ = np.linalg.lstsq(design, np.asarray(gold, dtype=float), rcond=None)
    at = np.vander(np.array([math.sqrt(max(level, 0.0))]), degree + 1)[0]
    estimate = float(at @ coefficients)
    df = len(x) - (degree + 1)
    if df < 1:
        return estimate, math.nan, df
    residual = np.asarray(gold, dtype=float) - design @ coefficients
    sigma2 = float(residual @ residual) / df
    return estimate, math.sqrt(sigma2 * float(at @ np.linalg.pinv(design.T @ design) @ at)), df


def brackets(kl: pd.Series, level: float) -> bool:
    return bool(kl.min() <= level <= kl.max())


def _side(runs: pd.DataFrame, kl: str, metric: str, level: float | None) -> dict:
    """A point (one β: mean at its mean KL) or a curve at `level` (None for a point)."""
    strata = runs.stratum.nunique()
    if strata == 1:
        mean = mean_interval(runs[metric])
        se = mean.half_width / t_quantile(mean.df) if mean.n > 1 else math.nan
        return {"estimate": mean.estimate, "se": se, "df": mean.n - 1, "degree": math.nan,
                "level": float(runs[kl].mean())}
    degree = fit_degree(strata)
    estimate, se, df = curve_at(runs[kl], runs[metric], degree, level)
    return {"estimate": estimate, "se": se, "df": df, "degree": degree, "level": level}


def _levels(runs: dict, kl: str, n_levels: int) -> np.ndarray | None:
    """The point's KL, or evenly spaced levels over the range both curves cover (None: no overlap)."""
    points = [r for r in runs.values() if r.stratum.nunique() == 1]
    if points:
        return np.array([float(points[0][kl].mean())])
    low, high = max(r[kl].min() for r in runs.values()), min(r[kl].max() for r in runs.values())
    return np.unique(np.linspace(low, high, n_levels)) if low <= high else None


def _difference(runs: dict, family: str, other: str, kl: str, metric: str, level: float) -> dict | None:
    """family - other at `level` inside one set of runs; None when a curve does not bracket the level."""
    curves = [r for r in runs.values() if r.stratum.nunique() > 1]
    if any(not brackets(r[kl], level) for r in curves):
        return None
    a, b = (_side(runs[name], kl, metric, level) for name in (family, other))
    return {"a": a, "b": b, "diff": a["estimate"] - b["estimate"]}


def _nearest(values: pd.Series, level: float) -> tuple[float, float]:
    below, above = values[values <= level], values[values >= level]
    return (float(below.max()) if len(below) else math.nan), (float(above.min()) if len(above) else math.nan)


def matched_kl(frame: pd.DataFrame, family: str, other: str, metric: str = "gold_id", kl: str = "kl_sft_id",
               n_levels: int = 5, level: float = LEVEL) -> pd.DataFrame:
    """`family` - `other` in `metric` at matched `kl` (one row per level, or one row with a note).

    frame: one row per PPO run with columns family, stratum (sweep value, '' if none), replicate, `kl` and
    `metric`. Columns: axis, kl (the level; with replicates the mean of their levels), the two estimates,
    diff, diff_ci, lower, upper, df, p, unit, fit degrees (NaN for a point), the comparator runs nearest the
    level on either side (vs_kl_below, vs_kl_above: a gap between them is interpolated over), note.
    """
    runs = {name: frame[frame.family == name].dropna(subset=[kl, metric]) for name in (family, other)}
    base = {"family": family, "vs": other, "metric": metric, "axis": kl, "axis_label": AXES.get(kl, kl),
            "runs": len(runs[family]), "vs_runs": len(runs[other])}
    refuse = lambda note: pd.DataFrame([{**base, "note": note}])  # noqa: E731
    if min(len(r) for r in runs.values()) == 0:
        return refuse("no runs")
    if all(r.stratum.nunique() == 1 for r in runs.values()):
        return refuse("one β on each side: no curve to match on (a constant fit is the plain difference)")
    levels = _levels(runs, kl, n_levels)
    if levels is None:
        return refuse("KL ranges do not overlap")
    replicates = sorted(set(runs[family].replicate) & set(runs[other].replicate))
    rows = []
    for target in levels:
        if len(replicates) > 1:
            row = _over_replicates(runs, family, other, kl, metric, target, replicates, level)
        else:
            row = _within_runs(runs, family, other, kl, metric, target, level)
        if row is None:
            return refuse(f"the curve's runs do not bracket the level KL {target:.3g}: no comparator runs "
                          "on both sides")
        curve = next(name for name in (other, family) if runs[name].stratum.nunique() > 1)
        below, above = _nearest(runs[curve][kl], row["kl"])
        interval = (row["diff"] - row["diff_ci"], row["diff"] + row["diff_ci"])
        rows.append({**base, **row, "lower": interval[0], "upper": interval[1],
                     "excludes_zero": bool(interval[0] > 0 or interval[1] < 0),
                     "curve_kl_below": below, "curve_kl_above": above, "note": ""})
    return pd.DataFrame(rows)


def _within_runs(runs, family, other, kl, metric, target, level) -> dict | None:
    found = _difference(runs, family, other, kl, metric, target)
    if found is None:
        return None
    a, b = found["a"], found["b"]
    variance = a["se"] ** 2 + b["se"] ** 2
    df = variance ** 2 / (a["se"] ** 4 / a["df"] + b["se"] ** 4 / b["df"]) if variance > 0 else math.nan
    se = math.sqrt(variance) if not math.isnan(variance) else math.nan
    p = float(2 * scipy_stats.t.sf(abs(found["diff"]) / se, df)) if se > 0 and not math.isnan(df) else math.nan
    return {"kl": float(target), metric: a["estimate"], f"vs_{metric}": b["estimate"], "diff": found["diff"],
            "diff_ci": t_quantile(df, level) * se if not math.isnan(df) else math.nan, "df": df, "p": p,
            "unit": "runs (point t / curve OLS, Welch df)", "replicates": 1, "refused_replicates": 0,
            "fit_degree": a["degree"], "vs_fit_degree": b["degree"]}


def _over_replicates(runs, family, other, kl, metric, target, replicates, level) -> dict | None:
    found, refused = [], 0
    for replicate in replicates:
        inside = {name: r[r.replicate == replicate] for name, r in runs.items()}
        if any(r.stratum.nunique() != runs[name].stratum.nunique() for name, r in inside.items()):
            refused += 1  # a β missing in this replicate: its curve is not the same design
            continue
        at = _levels(inside, kl, 1)[0] if any(r.stratum.nunique() == 1 for r in inside.values()) else target
        result = _difference(inside, family, other, kl, metric, at)
        if result is None:
            refused += 1
            continue
        found.append((at, result))
    if len(found) < 2:
        return None
    interval = mean_interval([r["diff"] for _, r in found], level)
    return {"kl": float(np.mean([at for at, _ in found])),
            metric: float(np.mean([r["a"]["estimate"] for _, r in found])),
            f"vs_{metric}": float(np.mean([r["b"]["estimate"] for _, r in found])), "diff": interval.estimate,
            "diff_ci": interval.half_width, "df": interval.df, "p": interval.p_value,
            "unit": f"replicates (n={interval.n})", "replicates": interval.n, "refused_replicates": refused,
            "fit_degree": found[0][1]["a"]["degree"], "vs_fit_degree": found[0][1]["b"]["degree"]}
