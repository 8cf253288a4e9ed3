"""The landscape stage's comparisons (the stage itself runs in the tiny workflow test)."""

import pytest

from salsa import landscape


def test_paired_interval_is_paired():
    # large prompt-to-prompt spread, constant +0.1 difference: a paired interval has zero width
    a = [0.1 * i + 0.1 for i in range(50)]
    b = [0.1 * i for i in range(50)]
    mean, lo, hi = landscape.paired_interval(a, b, n_boot=500, seed=0)
    assert mean == pytest.approx(0.1) and lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_paired_interval_is_at_95_percent():
    # 0/1 differences: a bootstrap mean is Binomial(100, 0.5) / 100, quantiles 0.40 and 0.60 at 2.5% / 97.5%
    # (scipy.stats.binom.ppf); an 80% interval would be [0.44, 0.56], a 90% one [0.42, 0.58]
    mean, lo, hi = landscape.paired_interval([0.0, 1.0] * 50, [0.0] * 100, n_boot=4000, seed=0)
    assert mean == 0.5 and lo == pytest.approx(0.40, abs=0.011) and hi == pytest.approx(0.60, abs=0.011)


def test_soup_comparison_picks_the_better_ingredient_and_says_what_the_data_show():
    n = 200
    rows = [{"alpha": 0.0, "golds": [0.6] * n}, {"alpha": 1.0, "golds": [0.7] * n},
            {"alpha": 0.5, "golds": [0.75 + (0.2 if i % 2 else -0.2) for i in range(n)]}]
    result = landscape.soup_comparison(rows, n_boot=500, seed=0)
    assert result["soup_minus_best"] == pytest.approx(0.05) and result["soup_minus_sft1"] == pytest.approx(0.15)
    assert result["verdict"] == "above both ingredients"
    rows[2]["golds"] = [0.7 + (0.2 if i % 2 else -0.2) for i in range(n)]
    assert landscape.soup_comparison(rows, 500, 0)["verdict"] == "not separated from the better ingredient"


def test_alphas_must_include_the_ingredients_and_the_soup():
    with pytest.raises(SystemExit):
        landscape.main(["--ingredients", "a", "b", "--reward-models", "r", "--data", "d", "--out", "o",
                        "--alphas", "0", "1"])
