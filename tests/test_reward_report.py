"""The tables' reward-model section: accuracy intervals and which runs each reward model trained."""

import json

import pandas as pd
import pytest

from salsa import reward_report, stats, tables


def test_wilson_interval_matches_the_textbook_value():
    # 80 of 100: Wilson 95% [0.7112, 0.8666]; the normal approximation would give [0.7216, 0.8784]
    lower, upper = stats.wilson_interval(80, 100)
    assert lower == pytest.approx(0.7112, abs=1e-4) and upper == pytest.approx(0.8666, abs=1e-4)
    assert stats.wilson_interval(0, 10)[0] == pytest.approx(0.0, abs=1e-12)



@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results" / "exp"
    for reward, accuracy, pairs in (("reward_model", 0.75, 1000), ("reward_soup/uniform", 0.8, 100),
                                    ("reward/seed2", 0.7, 100)):
        (root / reward).mkdir(parents=True)
        (root / reward / "reward_eval.json").write_text(json.dumps({"eval": {"accuracy": accuracy, "pairs": pairs}}))
    runs = {"ppo/ppo/seed1": ("reward_model", 0.70), "ppo/ppo/seed2": ("reward_model", 0.74),
            "ppo/oracle/seed1": ("reward_model", 0.90),  # --oracle-gold: loads the reward model, trains on gold
            "ppo/warm_ppo/seed1": ("reward_soup/uniform", 0.80), "ppo/warm_ppo/seed2": ("reward_soup/uniform", 0.84)}
    rows = []
    for model, (reward, gold) in runs.items():
        (root / model).mkdir(parents=True)
        meta = {"config": {"reward_model": (root / reward).as_posix(), "oracle_gold": "oracle" in model}}
        (root / model / "salsa_meta.json").write_text(json.dumps(meta))
        rows.append({"model": model, **tables.parse_model_id(model), "gold_id": gold})
    return root, pd.DataFrame(rows)


def test_each_run_is_attributed_to_the_reward_model_in_its_own_metadata(results):
    root, frame = results
    table = reward_report.reward_models_frame(root, ["reward_model", "reward_soup/uniform", "reward/seed2"], frame)
    by_reward = table.set_index("reward")
    assert by_reward.loc["reward_model", "method"] == "ppo"  # one row: the oracle run is not credited to it
    assert by_reward.loc["reward_model", "gold_id"] == pytest.approx(0.72)
    assert by_reward.loc["reward_soup/uniform", "method"] == "warm_ppo"
    assert by_reward.loc["reward_soup/uniform", "gold_id"] == pytest.approx(0.82)
    # two runs 0.04 apart: t(1) * 0.02 = 12.706 * 0.02
    assert by_reward.loc["reward_soup/uniform", "gold_id_ci"] == pytest.approx(12.7062 * 0.02, abs=1e-3)
    assert by_reward.loc["reward/seed2", "runs"] == 0  # a WARM ingredient no run used still gets its accuracy
    assert by_reward.loc["reward_soup/uniform", "accuracy_lower"] == pytest.approx(0.7112, abs=1e-4)
    text = "\n".join(reward_report.render_reward_models(table, tables.fmt))
    assert "| reward_soup/uniform | 0.800 [0.711, 0.867] | 100 | warm_ppo | 2 | 0.820 ± 0.254 |" in text


def test_a_run_whose_reward_model_is_not_listed_is_refused(results):
    root, frame = results
    with pytest.raises(tables.artifacts.StageError, match="reward_soup/uniform"):
        reward_report.reward_models_frame(root, ["reward_model"], frame)


def test_reward_models_are_compared_with_mcnemar_on_the_shared_pairs(tmp_path):
    # per-pair scores as the reward stage writes them (reward_eval.json eval.correct, prefs_eval order):
    # 15 pairs only the soup ranks right, 5 only the ingredient -> exact McNemar p = 0.0413895 (by hand:
    # 2 * 21700 / 2^20); an interval-overlap or unpaired comparison of 0.75 vs 0.65 would not see the pairing
    soup = [1] * 15 + [0] * 5 + [1] * 60 + [0] * 20
    ingredient = [0] * 15 + [1] * 5 + [1] * 60 + [0] * 20
    for reward, correct in (("reward_soup/uniform", soup), ("reward_model", ingredient), ("reward/seed2", None)):
        (tmp_path / reward).mkdir(parents=True)
        held_out = {"accuracy": 0.7, "pairs": 100, **({"correct": correct} if correct else {})}
        (tmp_path / reward / "reward_eval.json").write_text(json.dumps({"eval": held_out}))
    table = reward_report.pair_tests(tmp_path, ["reward_soup/uniform", "reward_model", "reward/seed2"])
    first = table.iloc[0]
    assert (first.reward, first.vs) == ("reward_soup/uniform", "reward_model")
    assert first.p == pytest.approx(0.0413895, abs=1e-6) and first["diff"] == pytest.approx(0.10)
    assert (first.only_a, first.only_b) == (15, 5)
    assert table.note.iloc[1].startswith("no per-pair scores")  # a model without them is not tested
    text = "\n".join(reward_report.render_pair_tests(table, tables.fmt))
    assert "| reward_soup/uniform | reward_model | 0.100 ± 0.085 | 15.0 | 5.0 | 0.0414 |" in text
    (tmp_path / "reward_model" / "reward_eval.json").write_text(json.dumps({"eval": {"correct": [1, 0]}}))
    with pytest.raises(tables.artifacts.StageError, match="not the same held-out pairs"):
        reward_report.pair_tests(tmp_path, ["reward_soup/uniform", "reward_model"])


def test_a_reward_soup_is_compared_with_its_ingredients_prediction_ensemble(tmp_path):
    """Hand-computed: a's margins over its std 1 and b's over its std 2 average to [-0.5, 0, 1.5, 0], so the
    ensemble ranks the pairs [0, 0.5, 1, 0.5]; the soup ranks them [1, 1, 1, 0]: 1.5 pairs only the soup gets,
    0.5 only the ensemble, difference 0.25. (Raw margins averaged would give [0, 1, 1, 1]: difference 0.)"""
    root = tmp_path / "exp"
    models = {"reward/a": ([1.0, -1.0, 2.0, -0.5], 1.0), "reward/b": ([-4.0, 2.0, 2.0, 1.0], 2.0)}
    for name, (margin, std) in models.items():
        (root / name).mkdir(parents=True)
        (root / name / "reward_eval.json").write_text(json.dumps({"eval": {"margin": margin}}))
        (root / name / "reward_normalization.json").write_text(json.dumps({"mean": 0.0, "std": std}))
        (root / name / "salsa_meta.json").write_text(json.dumps({"stage": "reward_model", "config": {}}))
    soup = root / "reward_soup" / "u"
    soup.mkdir(parents=True)
    (soup / "reward_eval.json").write_text(json.dumps({"eval": {"correct": [1, 1, 1, 0]}}))
    (soup / "salsa_meta.json").write_text(json.dumps({"stage": "soup", "config": {   # as salsa.soup writes it
        "inputs": [str(root / "reward/a"), str(root / "reward/b")]}}))
    assert reward_report.ensemble_correct(root, ["reward/a", "reward/b"]) == [0.0, 0.5, 1.0, 0.5]
    table = reward_report.ensemble_tests(root, ["reward/a", "reward/b", "reward_soup/u"])
    assert list(table.reward) == ["reward_soup/u"]      # trained reward models have no ensemble
    row = table.iloc[0]
    assert (row.ingredients, row.soup_accuracy, row.ensemble_accuracy) == (2, 0.75, 0.5)
    assert (row["diff"], row.only_a, row.only_b) == (0.25, 1.5, 0.5)
    # exact McNemar: the half pairs round (to even) to 2 soup-only and 0 ensemble-only wins; scipy's binomtest
    from scipy.stats import binomtest
    assert row.p == pytest.approx(binomtest(2, 2, 0.5).pvalue)
    lines = reward_report.render_ensemble_tests(table, lambda v, d=3: f"{v:.{d}f}")
    assert "| reward_soup/u | 2 | 0.750 | 0.500 | 0.250 ± " in "\n".join(lines)
