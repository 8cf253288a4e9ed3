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
    rows = [{"alpha": 0.0, "scores": [0.6] * n}, {"alpha": 1.0, "scores": [0.7] * n},
            {"alpha": 0.5, "scores": [0.75 + (0.2 if i % 2 else -0.2) for i in range(n)]}]
    result = landscape.soup_comparison(rows, n_boot=500, seed=0)
    assert result["soup_minus_best"] == pytest.approx(0.05) and result["soup_minus_sft1"] == pytest.approx(0.15)
    assert result["verdict"] == "above both ingredients"
    rows[2]["scores"] = [0.7 + (0.2 if i % 2 else -0.2) for i in range(n)]
    assert landscape.soup_comparison(rows, 500, 0)["verdict"] == "not separated from the better ingredient"


def test_alphas_must_include_the_ingredients_and_the_soup():
    with pytest.raises(SystemExit):
        landscape.main(["--ingredients", "a", "b", "--reward-models", "r", "--data", "d", "--out", "o",
                        "--alphas", "0", "1"])


def test_the_landscape_runs_on_data_without_gold_and_compares_by_the_proxy(tmp_path):
    """Hub data have no gold reward: the stage still walks the line and compares the soup by the proxy reward."""
    import json
    import sys

    import pandas as pd

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "benchmarks"))
    from bench_helpers import save_tiny_llama
    from salsa import data

    prepared = tmp_path / "data"
    data.main(["--out", str(prepared), "--n-pretrain", "4", "--n-sft", "4", "--n-prefs-train", "4",
               "--n-prefs-eval", "4", "--n-ppo-prompts", "4", "--n-eval-id", "6", "--n-eval-ood", "4"])
    (prepared / "task.json").unlink()                      # as prepared Hub data: no gold reward
    first = save_tiny_llama(prepared / "tokenizer", tmp_path / "sft1", seed=1)
    second = save_tiny_llama(prepared / "tokenizer", tmp_path / "sft2", seed=2)
    reward = save_tiny_llama(prepared / "tokenizer", tmp_path / "reward", seed=3, head="reward")
    (reward / "reward_normalization.json").write_text(json.dumps({"mean": 0.0, "std": 1.0}))
    out = tmp_path / "landscape"
    landscape.main(["--ingredients", str(first), str(second), "--reward-models", str(reward), "--data",
                    str(prepared), "--out", str(out), "--alphas", "0", "0.5", "1", "--max-new-tokens", "3",
                    "--n-boot", "50", "--threads", "1"])
    frame = pd.read_csv(out / "landscape.csv")
    assert set(frame.metric) == {"proxy"} and frame.gold.isna().all() and frame.proxy.notna().all()
    assert frame.score_ci.notna().all() and sorted(frame.alpha) == [0.0, 0.5, 1.0]
    summary = (out / "landscape.md").read_text()
    assert "compared by the proxy reward" in summary and "minus each ingredient, proxy" in summary
    assert (out / "landscape.png").is_file()
