"""salsa.matched_kl against values computed independently (scipy's linregress and t quantiles, by hand)."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from salsa import matched_kl


def runs(family, kls_by_beta, golds_by_beta, replicate="1", axis="kl_sft_id"):
    return [{"family": family, "stratum": beta, "replicate": replicate, axis: kl, "gold_id": gold}
            for beta in kls_by_beta for kl, gold in zip(kls_by_beta[beta], golds_by_beta[beta])]


def test_a_point_against_a_line_with_t_and_ols_intervals():
    # SALSA, one β, 3 seeds: KL 1.0, 1.21, 1.44 (mean 1.2167), gold 0.70, 0.74, 0.72 (mean 0.72, sd 0.02)
    # PPO, two β x 3 seeds: a straight line in sqrt(KL) with noise
    salsa = runs("salsa", {"": [1.0, 1.21, 1.44]}, {"": [0.70, 0.74, 0.72]})
    ppo_kl = {"b0.05": [0.81, 0.9, 1.0], "b0.02": [1.69, 1.96, 2.25]}
    ppo_gold = {"b0.05": [0.62, 0.66, 0.65], "b0.02": [0.70, 0.69, 0.73]}
    frame = pd.DataFrame(salsa + runs("ppo", ppo_kl, ppo_gold))
    result = matched_kl.matched_kl(frame, "salsa", "ppo")
    assert len(result) == 1
    row = result.iloc[0]
    level = np.mean([1.0, 1.21, 1.44])
    # the comparator: OLS of gold on sqrt(KL), confidence interval of the mean at sqrt(level)
    x = np.sqrt(ppo_kl["b0.05"] + ppo_kl["b0.02"])
    y = np.array(ppo_gold["b0.05"] + ppo_gold["b0.02"])
    fit = scipy_stats.linregress(x, y)
    x0 = math.sqrt(level)
    residual_sd = math.sqrt(np.sum((y - fit.intercept - fit.slope * x) ** 2) / 4)
    se_curve = residual_sd * math.sqrt(1 / 6 + (x0 - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2))
    se_point = 0.02 / math.sqrt(3)
    df = (se_point ** 2 + se_curve ** 2) ** 2 / (se_point ** 4 / 2 + se_curve ** 4 / 4)  # Welch-Satterthwaite
    expected = 0.72 - (fit.intercept + fit.slope * x0)
    half = scipy_stats.t.ppf(0.975, df) * math.hypot(se_point, se_curve)
    assert row.kl == pytest.approx(level) and math.isnan(row.fit_degree) and row.vs_fit_degree == 1
    assert row["diff"] == pytest.approx(expected, abs=1e-10)
    assert row.df == pytest.approx(df, rel=1e-9)
    assert row.diff_ci == pytest.approx(half, rel=1e-9)
    assert row.p == pytest.approx(2 * scipy_stats.t.sf(abs(expected) / math.hypot(se_point, se_curve), df), rel=1e-9)
    assert (row.curve_kl_below, row.curve_kl_above) == (1.0, 1.69)  # the gap the line interpolates over
    assert row.axis_label == "KL to the first SFT" and row.note == ""


def test_one_beta_on_each_side_is_refused_not_averaged():
    # the old code returned mean - mean (0.72 - 0.70) "at matched KL", whatever the KLs
    frame = pd.DataFrame(runs("salsa", {"": [1.0, 1.4, 1.8]}, {"": [0.70, 0.74, 0.72]})
                         + runs("ppo", {"": [1.2, 1.6, 2.0]}, {"": [0.69, 0.71, 0.70]}))
    result = matched_kl.matched_kl(frame, "salsa", "ppo")
    assert len(result) == 1 and "one β on each side" in result.note.item() and "diff" not in result.columns


def test_a_level_the_comparator_runs_do_not_bracket_is_refused():
    # SALSA at KL 3 lies beyond every PPO run (0.81 .. 2.25): extrapolation, refused
    frame = pd.DataFrame(runs("salsa", {"": [2.9, 3.0, 3.1]}, {"": [0.70, 0.74, 0.72]})
                         + runs("ppo", {"b1": [0.81, 0.9], "b2": [2.0, 2.25]}, {"b1": [0.6, 0.62], "b2": [0.7, 0.7]}))
    result = matched_kl.matched_kl(frame, "salsa", "ppo")
    assert "do not bracket" in result.note.item()


def replicated(salsa_kl_rep3=2.25):
    """3 replicates, 1 seed: PPO at KL 1 and 4 (sqrt 1 and 2), SALSA at 2.25 (sqrt 1.5, the midpoint)."""
    ppo = {"1": (0.60, 0.70), "2": (0.62, 0.74), "3": (0.58, 0.70)}
    salsa = {"1": 0.68, "2": 0.70, "3": 0.70}
    rows = []
    for rep in ppo:
        rows += runs("ppo", {"b0.05": [1.0], "b0.02": [4.0]}, {"b0.05": [ppo[rep][0]], "b0.02": [ppo[rep][1]]}, rep)
        rows += runs("salsa", {"": [salsa_kl_rep3 if rep == "3" else 2.25]}, {"": [salsa[rep]]}, rep)
    return pd.DataFrame(rows)


def test_with_replicates_each_replicate_is_matched_on_its_own_runs_and_t_is_over_replicates():
    # per replicate: salsa - midpoint of the line = 0.68 - 0.65, 0.70 - 0.68, 0.70 - 0.64 = 0.03, 0.02, 0.06
    row = matched_kl.matched_kl(replicated(), "salsa", "ppo").iloc[0]
    d = [0.03, 0.02, 0.06]
    assert row.unit == "replicates (n=3)" and row.df == 2 and row.refused_replicates == 0
    assert row["diff"] == pytest.approx(np.mean(d))
    assert row.diff_ci == pytest.approx(4.3026527 * np.std(d, ddof=1) / math.sqrt(3), abs=1e-9)
    assert row.p == pytest.approx(scipy_stats.ttest_1samp(d, 0).pvalue, abs=1e-9)


def test_a_replicate_whose_curve_does_not_bracket_its_point_is_left_out():
    row = matched_kl.matched_kl(replicated(salsa_kl_rep3=5.0), "salsa", "ppo").iloc[0]
    assert row.unit == "replicates (n=2)" and row.refused_replicates == 1
    assert row["diff"] == pytest.approx(0.025)


def test_two_curves_with_a_known_gap_on_the_kl_to_the_own_reference():
    def quadratic(kls, shift):
        return [0.8 - 0.1 * (math.sqrt(k) - 1) ** 2 + shift + 0.005 * (-1) ** i for i, k in enumerate(kls)]
    a = {"b0.05": [3.0, 3.3, 3.6], "b0.1": [1.0, 1.1, 1.2], "b0.2": [0.4, 0.5, 0.6]}
    b = {"b0.05": [6.0, 6.5, 7.0], "b0.1": [2.0, 2.2, 2.4], "b0.2": [0.8, 0.9, 1.0]}
    frame = pd.DataFrame(runs("salsa", a, {k: quadratic(v, 0.05) for k, v in a.items()}, axis="kl_ref_id")
                         + runs("ppo", b, {k: quadratic(v, 0.0) for k, v in b.items()}, axis="kl_ref_id"))
    result = matched_kl.matched_kl(frame, "salsa", "ppo", kl="kl_ref_id")
    assert result.kl.min() == pytest.approx(0.8) and result.kl.max() == pytest.approx(3.6)
    assert (result.fit_degree == 2).all() and (result.vs_fit_degree == 2).all()
    np.testing.assert_allclose(result["diff"], 0.05, atol=0.01)
    assert (result.lower < 0.05).all() and (result.upper > 0.05).all() and result.excludes_zero.all()
    assert (result.axis_label == "KL to the run's own reference").all()


def test_the_summary_sizes_the_replicates_from_the_matched_difference():
    from salsa.summary_sections import render_matched

    text = "\n".join(render_matched(matched_kl.matched_kl(replicated(), "salsa", "ppo")))
    sd = np.std([0.03, 0.02, 0.06], ddof=1)  # 0.0208
    # smallest n with t(n-1) sd / sqrt(n) <= 0.01, found here with scipy's t quantiles
    expected = next(n for n in range(2, 100) if scipy_stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) <= 0.01)
    assert f"per-replicate sd {sd:.4f}; ±0.01 takes {expected} replicates" in text
