"""The statistics behind the tables: intervals, tests, multiple comparisons, bootstrap, matched KL, power.

Pure functions on numbers and frames (no files): `salsa.tables` reads the
results and renders what these return. Every interval is two-sided at
`level` (95% by default): t-intervals are reported as estimate ± half-width, percentile
intervals as [lower, upper].
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats
from scipy.optimize import brentq

LEVEL = 0.95
# a method created by a `sweep` entry: <method>-<key><value>, e.g. salsa-kl_coef0.1 (rules/common.smk)
SWEEP_NAME = re.compile(r"^(?P<family>.+)-(?P<key>[A-Za-z_]+?)(?P<value>[-+.0-9][-+.0-9eE]*|True|False|None)$")


def t_quantile(df: float, level: float = LEVEL) -> float:
    """Two-sided Student-t critical value for `df` degrees of freedom (fractional df allowed); NaN if df <= 0."""
    if df is None or math.isnan(df) or df <= 0:
        return math.nan
    return float(scipy_stats.t.ppf(0.5 + level / 2, df))


@dataclasses.dataclass
class Interval:
    """An estimate with its interval half-width, degrees of freedom, two-sided p-value (against 0) and test."""

    estimate: float
    half_width: float = math.nan
    df: float = math.nan
    p_value: float = math.nan
    test: str = ""
    n: int = 0


def _clean(values) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    return array[~np.isnan(array)]


def _t_test(estimate: float, se: float, df: float, level: float, test: str, n: int) -> Interval:
    if math.isnan(se) or math.isnan(df) or df <= 0:
        return Interval(estimate, math.nan, df, math.nan, test, n)
    if se == 0:  # no spread at all: an interval of width 0, but nothing to test against
        return Interval(estimate, 0.0, df, math.nan, test, n)
    p = float(2 * scipy_stats.t.sf(abs(estimate) / se, df))
    return Interval(estimate, t_quantile(df, level) * se, df, p, test, n)


def mean_interval(values, level: float = LEVEL) -> Interval:
    """Mean ± t-interval (df = n - 1); the p-value tests mean = 0 (used for per-seed differences)."""
    x = _clean(values)
    n = len(x)
    if n == 0:
        return Interval(math.nan, test="mean", n=0)
    if n == 1:
        return Interval(float(x[0]), test="mean", n=1)
    return _t_test(float(x.mean()), float(x.std(ddof=1) / math.sqrt(n)), n - 1, level, "mean", n)


def wilson_interval(successes: float, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of a proportion (e.g. a reward model's accuracy on n held-out pairs)."""
    if n <= 0:
        return math.nan, math.nan
    z = float(scipy_stats.norm.ppf(0.5 + level / 2))
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    spread = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - spread, centre + spread


def welch_difference(a, b, level: float = LEVEL) -> Interval:
    """mean(a) - mean(b) with Welch's interval: unpooled variances, Welch-Satterthwaite df (not rounded)."""
    a, b = _clean(a), _clean(b)
    if len(a) == 0 or len(b) == 0:
        return Interval(math.nan, test="welch")
    diff = float(a.mean() - b.mean())
    if len(a) < 2 or len(b) < 2:
        return Interval(diff, test="welch", n=min(len(a), len(b)))
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return _t_test(diff, 0.0, len(a) + len(b) - 2, level, "welch", min(len(a), len(b)))
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return _t_test(diff, math.sqrt(va + vb), df, level, "welch", min(len(a), len(b)))


def paired_difference(a, b, level: float = LEVEL) -> Interval:
    """Mean of the pairwise differences a_i - b_i with a one-sample t-interval (df = pairs - 1)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) != len(b):
        raise ValueError(f"paired difference: {len(a)} vs {len(b)} values")
    result = mean_interval(a - b, level)
    return dataclasses.replace(result, test="paired")


def compare(a: pd.Series, b: pd.Series, level: float = LEVEL) -> Interval:
    """a - b, paired on the index (e.g. seed) when both have the same index values, Welch otherwise."""
    a, b = a.dropna(), b.dropna()
    if len(a) > 1 and a.index.is_unique and b.index.is_unique and set(a.index) == set(b.index):
        return paired_difference(a.sort_index().to_numpy(), b.sort_index().to_numpy(), level)
    return welch_difference(a.to_numpy(), b.to_numpy(), level)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values; NaNs are not tests and stay NaN (the family is the finite ones)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full(p.shape, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))  # monotone: never below an earlier step
        adjusted[index] = running
    return adjusted


def bootstrap_mean(values, n_boot: int = 1000, seed: int = 0, level: float = LEVEL) -> tuple[float, float, float]:
    """Mean and its percentile bootstrap interval (lower, upper), resampling the values with replacement."""
    x = _clean(values)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lower, upper = np.quantile(means, [0.5 - level / 2, 0.5 + level / 2])
    return float(x.mean()), float(lower), float(upper)


def split_sweep(method: str) -> tuple[str, str]:
    """`salsa-kl_coef0.1` -> ('salsa', 'kl_coef0.1'); a method not made by a sweep -> (method, '')."""
    match = SWEEP_NAME.match(method)
    return (match["family"], match["key"] + match["value"]) if match else (method, "")


def partner(method: str, reference_method: str, methods) -> str:
    """The method `method` is compared with: the reference family at the same sweep value when that exists
    (salsa-kl_coef0.1 -> ppo-kl_coef0.1), the reference method otherwise."""
    family, tag = split_sweep(method)
    reference_family, _ = split_sweep(reference_method)
    same_value = f"{reference_family}-{tag}"
    if tag and family != reference_family and same_value in set(methods):
        return same_value
    return reference_method


# --- outer replicates ----------------------------------------------------------
def replicate_difference(frame: pd.DataFrame, metric: str, method: str, other: str,
                         level: float = LEVEL) -> dict:
    """method - other on `metric` with replicates (SFT pair + reward model redrawn) as the unit.

    frame: PPO rows with columns method, seed, replicate and the metric. Within a replicate the
    difference is mean over seeds of method minus mean over seeds of other; the interval is a t-interval
    over replicates. The variance of the difference splits (one-way random effects, method of moments) into
    within = the variance of one seed's difference inside a replicate (paired when the seeds match, the
    sum of the two methods' seed variances otherwise) and between = Var_r(d_r) - within / seeds, floored at 0
    (the floored value is descriptive only: intervals and power use var_replicate_means, the variance the
    interval is built from). within_df: the pooled within-replicate degrees of freedom, for `variance_share`.
    """
    per_replicate, within, within_df, seeds = [], [], [], []
    for _, group in frame.groupby("replicate", sort=True):
        a = group[group.method == method].set_index("seed")[metric].dropna()
        b = group[group.method == other].set_index("seed")[metric].dropna()
        if len(a) == 0 or len(b) == 0:
            continue
        per_replicate.append(a.mean() - b.mean())
        if set(a.index) == set(b.index) and len(a) > 1:
            within.append(float((a - b.reindex(a.index)).var(ddof=1)))
            within_df.append(len(a) - 1)
        elif len(a) > 1 and len(b) > 1:
            within.append(float(a.var(ddof=1) + b.var(ddof=1)))
            within_df.append(len(a) + len(b) - 2)  # Satterthwaite's df for a sum of two equal variances
        seeds.append(min(len(a), len(b)))
    d = np.asarray(per_replicate, dtype=float)
    overall = mean_interval(d, level)
    within_var = float(np.mean(within)) if within else math.nan
    n_seeds = float(np.mean(seeds)) if seeds else math.nan
    observed = float(d.var(ddof=1)) if len(d) > 1 else math.nan
    between_var = max(0.0, observed - within_var / n_seeds) if not math.isnan(observed + within_var) else math.nan
    return {"method": method, "vs": other, "metric": metric, "replicates": len(d), "seeds": n_seeds,
            "diff": overall.estimate, "diff_ci": overall.half_width, "df": overall.df, "p": overall.p_value,
            "var_between": between_var, "var_within": within_var, "var_replicate_means": observed,
            "within_df": float(sum(within_df)) if within_df else math.nan}


def contrast(frame: pd.DataFrame, metric: str, a: str, b: str, c: str, d: str, level: float = LEVEL) -> dict:
    """(a - b) - (c - d): does the a-over-b difference change when the setting behind c and d changes?

    The unit is the outer replicate when there are several (each replicate's seed-mean contrast), else the
    seed, paired (every method must have run the seed; seeds missing from one method are left out).
    """
    wide = frame[frame.method.isin([a, b, c, d])].pivot_table(index=["replicate", "seed"], columns="method",
                                                                values=metric)
    missing = [m for m in (a, b, c, d) if m not in wide.columns]
    if missing:
        raise ValueError(f"contrast: no {metric} for method(s) {missing}")
    per_seed = (wide[a] - wide[b]) - (wide[c] - wide[d])
    replicates = frame.replicate.nunique()
    units = per_seed.groupby(level="replicate").mean() if replicates > 1 else per_seed
    result = mean_interval(units.dropna(), level)
    unit = "replicates" if replicates > 1 else "paired seeds"
    return {"method": f"{a} - {b}", "vs": f"{c} - {d}", "metric": metric, "replicates": replicates,
            "seeds": float(per_seed.groupby(level="replicate").count().mean()), "diff": result.estimate,
            "diff_ci": result.half_width, "df": result.df, "p": result.p_value,
            "test": f"contrast, {unit} (n={result.n})"}


# --- power -----------------------------------------------------------------------
def half_width(var_between: float, var_within: float, replicates: int, seeds: int, level: float = LEVEL) -> float:
    """Interval half-width of a difference averaged over `replicates` x `seeds`: replicates are the unit
    (df = replicates - 1) when there is more than one; otherwise seeds are (df = seeds - 1, paired)."""
    if replicates > 1:
        return t_quantile(replicates - 1, level) * math.sqrt((var_between + var_within / seeds) / replicates)
    return t_quantile(seeds - 1, level) * math.sqrt(var_within / seeds)


def halving_cost(var_between: float, var_within: float, replicates: int, seeds: int, level: float = LEVEL,
                 limit: int = 1000) -> dict:
    """The smallest number of seeds (replicates fixed) and of replicates (seeds fixed) that halve the half-width.

    None where it cannot be reached (more seeds never remove between-replicate variance).
    """
    target = half_width(var_between, var_within, replicates, seeds, level) / 2
    more_seeds = next((n for n in range(seeds + 1, limit) if
                       half_width(var_between, var_within, replicates, n, level) <= target), None)
    more_replicates = next((r for r in range(max(replicates, 2), limit) if
                            half_width(var_between, var_within, r, seeds, level) <= target), None) \
        if replicates > 1 else None
    return {"half_width": 2 * target, "target": target, "seeds_needed": more_seeds,
            "replicates_needed": more_replicates}


def replicates_for_half_width(sd: float, target: float, assurance: float = 0.0, level: float = LEVEL,
                              limit: int = 1000) -> int | None:
    """The fewest units n whose t-interval half-width t(n-1) s / sqrt(n) is at most `target` when the
    per-unit standard deviation is `sd`: with assurance 0 at s = sd, else with probability >= `assurance`
    over the sample s (s^2 ~ sd^2 chi2(n-1) / (n-1)). None if `limit` units do not reach it."""
    for n in range(2, limit):
        bound = target * math.sqrt(n) / t_quantile(n - 1, level)  # the largest s that meets the target
        if (scipy_stats.chi2.cdf((n - 1) * (bound / sd) ** 2, n - 1) >= assurance) if assurance else bound >= sd:
            return n
    return None


def power_two_sided(delta: float, se: float, df: float, level: float = LEVEL) -> float:
    """Exact power of the two-sided t-test at `level` when the true difference is `delta`: the statistic
    follows a noncentral t with `df` degrees of freedom and noncentrality delta / se."""
    critical, noncentrality = t_quantile(df, level), delta / se
    # the lower tail P(T < -c) as P(T' > c) with T' of noncentrality -delta/se: scipy's cdf there can be NaN
    return float(scipy_stats.nct.sf(critical, df, noncentrality) + scipy_stats.nct.sf(critical, df, -noncentrality))


def detectable_at_power(se: float, df: float, power: float = 0.8, level: float = LEVEL) -> float:
    """The smallest true difference a two-sided t-test at `level` detects with probability `power`, solved
    exactly on the noncentral t. The textbook shortcut (t_{1-a/2} + t_power) se is too small at few df:
    at df 1 it has 73% power, not 80%."""
    if math.isnan(se) or math.isnan(df) or df <= 0:
        return math.nan
    if se == 0:
        return 0.0
    high = (t_quantile(df, level) + float(scipy_stats.t.ppf(power, df))) * se
    while power_two_sided(high, se, df, level) < power:
        high *= 2
    return float(brentq(lambda delta: power_two_sided(delta, se, df, level) - power, 0.0, high, xtol=1e-12))


def variance_share(var_replicate_means: float, var_within: float, seeds: float, replicates: int,
                   within_df: float, level: float = LEVEL) -> dict:
    """Share of a replicate's (seed-averaged) difference variance that is between replicates, with its interval.

    One-way random effects: F = seeds * Var_r(d_r) / within estimates 1 + lambda with lambda = seeds *
    between / within, and F / (1 + lambda) ~ F(replicates - 1, within_df). The share lambda / (1 + lambda) is
    1 - 1/F; its interval inverts the F quantiles (Searle 1971): [1 - F_hi / F, 1 - F_lo / F], clipped to [0, 1].
    """
    nan = {"share": math.nan, "share_lower": math.nan, "share_upper": math.nan, "F": math.nan, "F_p": math.nan}
    df1 = replicates - 1
    if df1 < 1 or not within_df > 0 or not var_within > 0 or math.isnan(var_replicate_means):
        return nan
    f_obs = seeds * var_replicate_means / var_within
    if f_obs == 0:
        return {**nan, "share": 0.0, "share_lower": 0.0, "F": 0.0, "F_p": 1.0}
    f_low, f_high = scipy_stats.f.ppf([0.5 - level / 2, 0.5 + level / 2], df1, within_df)
    clip = lambda v: float(min(1.0, max(0.0, v)))  # noqa: E731
    return {"share": clip(1 - 1 / f_obs), "share_lower": clip(1 - f_high / f_obs),
            "share_upper": clip(1 - f_low / f_obs), "F": float(f_obs),
            "F_p": float(scipy_stats.f.sf(f_obs, df1, within_df))}


# --- two classifiers on the same items -----------------------------------------------
def mcnemar(correct_a, correct_b, level: float = LEVEL) -> dict:
    """Accuracy of a minus accuracy of b on the same items (e.g. two reward models on the same held-out pairs).

    correct_*: per item 1 (right), 0 (wrong) or 0.5 (a tie, counted half). Only discordant items inform the
    test: the exact McNemar test is a binomial test of a-only against b-only wins (ties' halves rounded).
    Interval: the paired-proportion Wald interval, se = sqrt(b + c - (b - c)^2 / n) / n (Agresti 2002).
    """
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or len(a) == 0:
        raise ValueError(f"mcnemar: per-item scores of different lengths ({a.shape} vs {b.shape})")
    n = len(a)
    only_a, only_b = float(np.clip(a - b, 0, None).sum()), float(np.clip(b - a, 0, None).sum())
    wins_a, discordant = int(round(only_a)), int(round(only_a)) + int(round(only_b))
    p = float(scipy_stats.binomtest(wins_a, discordant, 0.5).pvalue) if discordant else 1.0
    se = math.sqrt(max(0.0, only_a + only_b - (only_a - only_b) ** 2 / n)) / n
    z = float(scipy_stats.norm.ppf(0.5 + level / 2))
    return {"diff": (only_a - only_b) / n, "diff_ci": z * se, "only_a": only_a, "only_b": only_b, "items": n,
            "p": p, "test": "McNemar exact"}
