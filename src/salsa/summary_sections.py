"""Sections of summary.md that render the method comparisons, the power statement and gold at matched KL.

Formatting rules: t-intervals as estimate ± half-width, percentile intervals as [lower, upper]; variances
(often below 1e-3) in scientific notation. Nothing here is a test: the only tests are the pre-registered
endpoints (salsa.preregistration); these sections are descriptive.
"""

from __future__ import annotations

import math

import pandas as pd

from salsa import stats


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def fmt_small(value) -> str:
    """A variance: scientific notation, so 4.1e-05 does not print as 0.000."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2e}"


def pm(value, half) -> str:
    return f"{fmt(value)} ± {fmt(half)}"


def bracket(value, lower, upper) -> str:
    return f"{fmt(value)} [{fmt(lower)}, {fmt(upper)}]"


def markdown_table(frame: pd.DataFrame, columns: list[str], formats: dict | None = None) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join((formats or {}).get(c, fmt)(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def render_comparisons(comparisons: pd.DataFrame, reference_method: str, metrics: list[str]) -> list[str]:
    wide = []
    for (method, other), group in comparisons.groupby(["method", "vs"], sort=False):
        cells = {"method": method, "vs": other, "test": group.test.iloc[0]}
        for _, row in group.iterrows():
            cells[row.metric] = pm(row["diff"], row.diff_ci)
        wide.append(cells)
    wide = pd.DataFrame(wide)
    gold = comparisons[comparisons.metric.isin(["gold_id", "gold_ood"])]
    lines = [f"## Difference from `{reference_method}` at the same sweep value (descriptive)", "",
             "Each method minus its partner (`vs`: the reference method at the same sweep value where there is one). "
             "Paired = mean of per-seed differences (both ran the same seeds); welch = Welch's interval; "
             "replicates = a t-interval over outer replicates of the seed-averaged difference; "
             "contrast = (a − b) − (c − d), rows `a - b` vs `c - d`, over replicates or paired seeds. "
             "± = the 95% interval. These are estimates, not tests: the tested endpoints are the pre-registered "
             "ones at the top (an interval that excludes 0 here is not a finding unless it was declared).", "",
             markdown_table(wide, ["method", "vs", "test", *[m for m in metrics if m in wide.columns]]), "",
             "### Gold differences (unadjusted p-values, descriptive)", "",
             markdown_table(gold.assign(interval=[pm(d, h) for d, h in zip(gold["diff"], gold.diff_ci)]),
                            ["method", "vs", "metric", "test", "interval", "df", "p"]), ""]
    if comparisons.replicates.max() > 1:
        small = {c: fmt_small for c in ("var_between", "var_within", "var_replicate_means")}
        lines += ["### Variance of the difference: outer replicates vs PPO seeds", "",
                  "var_replicate_means = variance of the replicate-level difference (the interval's); "
                  "var_between = the part beyond seed noise, floored at 0; var_within = variance of one seed's "
                  "difference inside a replicate (method of moments; – with one seed per replicate).", "",
                  markdown_table(gold, ["method", "vs", "metric", "replicates", "seeds", "var_replicate_means",
                                        "var_between", "var_within"], small), ""]
    return lines


TARGET = 0.01  # the half-width the decisive overlay is sized for (docs/results.md "Design and power")


def replicates_for_target(sd: float) -> str:
    """'N replicates' for a half-width of TARGET from a per-replicate sd: expected, and with 80% assurance."""
    expected = stats.replicates_for_half_width(sd, TARGET)
    sure = stats.replicates_for_half_width(sd, TARGET, assurance=0.8)
    return (f"±{TARGET:g} takes {expected or '> 1000'} replicates at this sd "
            f"({sure or '> 1000'} for 80% assurance that the realised interval is that narrow)")


def power_line(row: pd.Series) -> str | None:
    """What the design resolves for one comparison: its half-width, the difference detected with 80% power
    (exact, noncentral t) and the replicates (or seeds) that would halve the interval. The variance is the
    printed interval's own: the replicate means' with replicates, the paired seeds' otherwise."""
    if any(math.isnan(float(row[k])) for k in ("replicates", "seeds", "diff_ci")):
        return None  # nothing to power: no gold (Hub data) or too few runs
    replicates, seeds = int(row.replicates), int(round(row.seeds))
    head = f"* `{row.method}` − `{row.vs}` ({row.test}): half-width ±{fmt(row.diff_ci)}"
    if replicates > 1:
        if math.isnan(row.var_replicate_means):
            return None
        cost = stats.halving_cost(row.var_replicate_means, 0.0, replicates, 1)
        se = math.sqrt(row.var_replicate_means / replicates)
        text = (f"{head}; a true difference of {fmt(stats.detectable_at_power(se, replicates - 1), 4)} is detected "
                f"with 80% power (exact, noncentral t, df {replicates - 1}). Halving the interval takes "
                f"{cost['replicates_needed']} replicates instead of {replicates}; "
                f"{replicates_for_target(math.sqrt(row.var_replicate_means))}.")
        share = stats.variance_share(row.var_replicate_means, row.var_within, seeds, replicates,
                                     row.get("within_df", math.nan))
        if seeds < 2 or math.isnan(share["share"]):
            return text + " One PPO seed per replicate: outer and seed variance are not separated."
        return text + (f" Share of a replicate's difference variance between replicates: {fmt(100 * share['share'], 0)}% "
                       f"[{fmt(100 * share['share_lower'], 1)}%, {fmt(100 * share['share_upper'], 1)}%] "
                       f"(F = {fmt(share['F'], 2)}, p = {share['F_p']:.2g}): an estimate, not a known split.")
    if math.isnan(row.var_within) or seeds < 2:
        return None
    cost = stats.halving_cost(0.0, row.var_within, 1, seeds)
    se = math.sqrt(row.var_within / seeds)
    return (f"{head}; a true difference of {fmt(stats.detectable_at_power(se, seeds - 1), 4)} is detected with 80% "
            f"power (exact, noncentral t, df {seeds - 1}). Halving it takes {cost['seeds_needed']} seeds per method "
            f"instead of {seeds}. One replicate: the interval leaves out the variance of redrawing the SFT pair "
            "and the reward model.")


def render_power(comparisons: pd.DataFrame, method: str, vs: str) -> list[str]:
    rows = comparisons[(comparisons.metric == "gold_id") & (comparisons.method == method)
                       & (comparisons.vs == vs)]
    lines = [line for _, row in rows.iterrows() if (line := power_line(row))]
    return ["## Power of the primary comparison", "", *lines, ""] if lines else []


def render_matched(matched: pd.DataFrame) -> list[str]:
    lines = ["## Gold at matched KL (descriptive)", "",
             "A family with one β is a point (mean gold at its mean KL); a family with several β a curve "
             "(gold against sqrt(KL): degree 2 with ≥3 β, 1 with 2; salsa.matched_kl). A point is compared with a "
             "curve at the point's KL, two curves over the KL range both cover, and only where the curve's runs "
             "lie on both sides of the level (curve_kl_below / above: the nearest ones; a gap between them is "
             "interpolated over). Two points are not compared. Interval: t over replicates (each replicate "
             "matched on its own runs), or with one replicate the point's t and the curve's OLS standard error. "
             "Both KL axes are shown: they can disagree.", ""]
    covered = matched[matched.note == ""] if "kl" in matched.columns else matched.iloc[0:0]
    if len(covered):
        covered = covered.assign(interval=[pm(d, h) for d, h in zip(covered["diff"], covered.diff_ci)])
        lines += [markdown_table(covered, ["family", "vs", "axis_label", "kl", "gold_id", "vs_gold_id", "interval",
                                           "unit", "fit_degree", "vs_fit_degree", "curve_kl_below",
                                           "curve_kl_above"]), ""]
    for _, row in covered[covered.replicates > 1].iterrows() if len(covered) else []:
        sd = row.diff_ci * math.sqrt(row.replicates) / stats.t_quantile(row.replicates - 1)
        lines.append(f"* `{row.family}` − `{row.vs}` at KL {fmt(row.kl)} ({row.axis_label}): per-replicate sd "
                     f"{fmt(sd, 4)}; {replicates_for_target(sd)}.")
    for _, row in matched[matched.note != ""].iterrows():
        lines.append(f"* `{row.family}` vs `{row.vs}` ({row.axis_label}): {row.note}.")
    return lines + [""]
