"""salsa.stats against values computed by hand (t quantiles and p-values by numerical integration of the
Student-t density with mpmath, independent of scipy)."""

import math

import numpy as np
import pandas as pd
import pytest

from salsa import stats


@pytest.mark.parametrize("df, expected", [(1, 12.706205), (2, 4.3026527), (4, 2.7764451), (4.5, 2.6589123),
                                          (10, 2.2281389), (30, 2.0422725), (60, 2.0002978)])
def test_t_quantile_is_exact_for_any_df(df, expected):
    # a table floored to integer df, or 1.96 beyond df 30, misses 4.5 and 60
    assert stats.t_quantile(df) == pytest.approx(expected, abs=1e-6)


def test_t_quantile_undefined_without_degrees_of_freedom():
    assert math.isnan(stats.t_quantile(0)) and math.isnan(stats.t_quantile(float("nan")))


def test_welch_difference_hand_computed():
    # a: mean 2.5, var 5/3; b: mean 4, var 4. se^2 = 5/12 + 4/3 = 1.75;
    # df = 1.75^2 / ((5/12)^2/3 + (4/3)^2/2) = 3.2347188 (not floored to 3)
    result = stats.welch_difference([1, 2, 3, 4], [2, 4, 6])
    assert result.estimate == pytest.approx(-1.5)
    assert result.df == pytest.approx(3.2347188, abs=1e-6)
    assert result.half_width == pytest.approx(4.0423280, abs=1e-6)  # a df floored to 3 would give 4.210
    assert result.p_value == pytest.approx(0.3338237, abs=1e-6)
    assert result.test == "welch"


def test_paired_difference_hand_computed():
    # differences 0.5, 1, 1: mean 5/6, sd sqrt(1/12), se 1/6; half = t(2) / 6
    result = stats.paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 3.0])
    assert result.estimate == pytest.approx(5 / 6)
    assert result.df == 2
    assert result.half_width == pytest.approx(0.7171088, abs=1e-6)
    assert result.p_value == pytest.approx(0.0377496, abs=1e-6)


def test_compare_pairs_only_on_matching_seeds():
    a = pd.Series([1.0, 2.0, 4.0], index=["1", "2", "3"])
    b = pd.Series([0.5, 1.0, 3.0], index=["1", "2", "3"])
    assert stats.compare(a, b).test == "paired"
    assert stats.compare(a, b.rename(index={"3": "4"})).test == "welch"
    # pairing follows the seed, not the row order
    shuffled = b.iloc[[2, 0, 1]]
    assert stats.compare(a, shuffled).half_width == pytest.approx(0.7171088, abs=1e-6)


def test_mean_interval_hand_computed():
    result = stats.mean_interval([1.0, 2.0, 3.0, float("nan")])  # sd 1, se 1/sqrt(3), NaN dropped
    assert (result.estimate, result.n, result.df) == (2.0, 3, 2)
    assert result.half_width == pytest.approx(4.3026527 / math.sqrt(3), abs=1e-6)
    assert math.isnan(stats.mean_interval([5.0]).half_width)


def test_holm_step_down_is_monotone_and_skips_nan():
    # m = 4 finite: sorted 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> kept at 0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, float("nan"), 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, np.nan, 0.02])
    assert stats.holm([0.5, 0.9])[1] == 1.0  # capped


def test_bootstrap_mean_is_seeded_and_about_the_normal_width():
    values = [0.0, 1.0] * 200  # mean 0.5, se 0.025: a 95% interval about +-0.049
    mean, lower, upper = stats.bootstrap_mean(values, 2000, seed=3)
    assert mean == 0.5 and 0.04 < (upper - lower) / 2 < 0.06 and lower < 0.5 < upper
    assert stats.bootstrap_mean(values, 2000, seed=3) == (mean, lower, upper)
    assert stats.bootstrap_mean(values, 2000, seed=4) != (mean, lower, upper)
    assert stats.bootstrap_mean([0.7] * 10, 100)[1:] == (pytest.approx(0.7), pytest.approx(0.7))


def test_sweep_names_and_partners():
    assert stats.split_sweep("salsa-kl_coef0.1") == ("salsa", "kl_coef0.1")
    assert stats.split_sweep("ppo-lr1e-05") == ("ppo", "lr1e-05")
    assert stats.split_sweep("salsa_sftinit") == ("salsa_sftinit", "")
    methods = ["ppo-kl_coef0.05", "ppo-kl_coef0.1", "salsa-kl_coef0.1", "salsa-kl_coef0.3", "salsa_w25"]
    assert stats.partner("salsa-kl_coef0.1", "ppo-kl_coef0.05", methods) == "ppo-kl_coef0.1"
    assert stats.partner("salsa-kl_coef0.3", "ppo-kl_coef0.05", methods) == "ppo-kl_coef0.05"  # no PPO at 0.3
    assert stats.partner("ppo-kl_coef0.1", "ppo-kl_coef0.05", methods) == "ppo-kl_coef0.05"
    assert stats.partner("salsa_w25", "ppo-kl_coef0.05", methods) == "ppo-kl_coef0.05"


def replicated_frame():
    """3 replicates x 2 seeds; per-seed salsa - ppo differences (0.10, 0.08), (0.02, 0.04), (0.06, 0.02)."""
    salsa = {"1": [0.70, 0.72], "2": [0.80, 0.84], "3": [0.75, 0.73]}
    ppo = {"1": [0.60, 0.64], "2": [0.78, 0.80], "3": [0.69, 0.71]}
    rows = [{"method": method, "replicate": rep, "seed": str(seed + 1), "gold_id": value}
            for method, table in (("salsa", salsa), ("ppo", ppo))
            for rep, values in table.items() for seed, value in enumerate(values)]
    return pd.DataFrame(rows)


def test_replicate_difference_hand_computed():
    result = stats.replicate_difference(replicated_frame(), "gold_id", "salsa", "ppo")
    # replicate differences 0.09, 0.03, 0.04: mean 0.053333, var 0.00103333, half = t(2) sqrt(var / 3)
    assert result["replicates"] == 3 and result["seeds"] == 2
    assert result["diff"] == pytest.approx(0.0533333, abs=1e-6)
    assert result["diff_ci"] == pytest.approx(0.0798539, abs=1e-6)
    # within: mean of per-replicate variances of the seed differences (0.0002, 0.0002, 0.0008)
    assert result["var_within"] == pytest.approx(0.0004)
    assert result["var_between"] == pytest.approx(0.00103333 - 0.0004 / 2, abs=1e-7)


def test_halving_cost_counts_the_t_quantile_and_the_level_that_dominates():
    # one replicate, 3 seeds: t(2)/sqrt(3)/2 = 1.24207; 5 seeds give t(4)/sqrt(5) = 1.24166 (not 4x = 12)
    single = stats.halving_cost(0.0, 0.01, 1, 3)
    assert single["seeds_needed"] == 5 and single["replicates_needed"] is None
    assert single["half_width"] == pytest.approx(4.3026527 * math.sqrt(0.01 / 3), abs=1e-6)
    # between-replicate variance dominates: more seeds cannot halve it, 5 replicates can
    outer = stats.halving_cost(0.00083333, 0.0004, 3, 2)
    assert outer["seeds_needed"] is None and outer["replicates_needed"] == 5


def test_detectable_difference_at_80_percent_power():
    # (t_0.975(10) + t_0.8(10)) * se with t_0.8(10) = 0.8790578
    assert stats.detectable_at_power(0.1, 10) == pytest.approx((2.2281389 + 0.8790578) * 0.1, abs=1e-6)


def curve_runs(family, shift, kls_by_beta, noise=0.0):
    """Runs whose gold is an exact quadratic in sqrt(KL) (peak 0.8 at KL 1), plus a fixed +-noise pattern."""
    rows = []
    for beta, kls in kls_by_beta.items():
        for i, kl in enumerate(kls):
            gold = 0.8 - 0.1 * (math.sqrt(kl) - 1) ** 2 + shift + noise * (-1) ** i
            rows.append({"family": family, "stratum": beta, "kl_sft_id": kl, "gold_id": gold})
    return rows


def test_fit_curve_recovers_a_quadratic_in_sqrt_kl():
    kl = np.array([0.25, 1.0, 4.0, 9.0])
    coefficients = stats.fit_curve(kl, 0.8 - 0.1 * (np.sqrt(kl) - 1) ** 2, 2)
    np.testing.assert_allclose(coefficients, [-0.1, 0.2, 0.7], atol=1e-10)
    assert [stats.fit_degree(n) for n in (1, 2, 3, 5)] == [0, 1, 2, 2]


def test_matched_kl_finds_a_known_gap_inside_the_common_range():
    betas_a = {"b0.05": [3.0, 3.3, 3.6], "b0.1": [1.0, 1.1, 1.2], "b0.2": [0.4, 0.5, 0.6]}
    betas_b = {"b0.05": [6.0, 6.5, 7.0], "b0.1": [2.0, 2.2, 2.4], "b0.2": [0.8, 0.9, 1.0]}
    frame = pd.DataFrame(curve_runs("salsa", 0.05, betas_a, noise=0.005) + curve_runs("ppo", 0.0, betas_b,
                                                                                       noise=0.005))
    result = stats.matched_kl(frame, "salsa", "ppo", n_boot=200, seed=1)
    assert result.kl.min() == pytest.approx(0.8) and result.kl.max() == pytest.approx(3.6)  # the overlap only
    assert (result.fit_degree == 2).all()
    np.testing.assert_allclose(result["diff"], 0.05, atol=0.01)
    assert (result.lower < 0.05).all() and (result.upper > 0.05).all() and result.excludes_zero.all()
    again = stats.matched_kl(frame, "salsa", "ppo", n_boot=200, seed=1)
    pd.testing.assert_frame_equal(result, again)


def test_matched_kl_says_when_ranges_do_not_overlap():
    frame = pd.DataFrame(curve_runs("salsa", 0.0, {"": [0.5, 0.6, 0.7]}) + curve_runs("ppo", 0.0, {"": [2.0, 2.1]}))
    result = stats.matched_kl(frame, "salsa", "ppo", n_boot=50)
    assert len(result) == 1 and result.note.item() == "KL ranges do not overlap"


def test_matched_kl_with_one_beta_compares_means_over_the_shared_range():
    frame = pd.DataFrame([{"family": "salsa", "stratum": "", "kl_sft_id": k, "gold_id": g}
                          for k, g in ((1.0, 0.70), (1.4, 0.74), (1.8, 0.72))]
                         + [{"family": "ppo", "stratum": "", "kl_sft_id": k, "gold_id": g}
                            for k, g in ((1.2, 0.69), (1.6, 0.71), (2.0, 0.70))])
    result = stats.matched_kl(frame, "salsa", "ppo", n_boot=100)
    assert (result.fit_degree == 0).all() and result.kl.min() == 1.2 and result.kl.max() == 1.8
    np.testing.assert_allclose(result["diff"], 0.72 - 0.70)
