"""salsa.tables on synthetic frames: which methods are compared, how, and what summary.md says."""

import math

import pandas as pd
import pytest

from salsa import summary_sections, tables


def run_frame(values: dict, replicate_prefix: str = "") -> pd.DataFrame:
    """{method: [gold per seed]} -> rows as collect_rows makes them (kl_sft_id grows with the seed)."""
    rows = []
    for method, golds in values.items():
        for seed, gold in enumerate(golds, start=1):
            model = f"{replicate_prefix}ppo/{method}/seed{seed}"
            rows.append({"model": model, **tables.parse_model_id(model), "gold_id": gold,
                         "kl_sft_id": 1.0 + 0.1 * seed})
    return pd.DataFrame(rows)


def test_model_ids_with_and_without_an_outer_replicate():
    assert tables.parse_model_id("ppo/salsa-kl_coef0.1/seed2") == {
        "kind": "ppo", "method": "salsa-kl_coef0.1", "seed": "2", "replicate": "1"}
    assert tables.parse_model_id("rep3/sft/seed1")["replicate"] == "3"
    with pytest.raises(tables.artifacts.StageError):
        tables.parse_model_id("rep3/ppo/salsa")


def test_each_method_is_compared_at_its_own_sweep_value_and_paired_by_seed():
    frame = run_frame({"ppo-kl_coef0.05": [0.70, 0.72, 0.74], "ppo-kl_coef0.1": [0.60, 0.61, 0.65],
                       "salsa-kl_coef0.05": [0.71, 0.74, 0.75], "salsa-kl_coef0.1": [0.70, 0.70, 0.75]})
    comparisons = tables.compare_methods(frame, "ppo-kl_coef0.05", ["gold_id", "kl_sft_id"])
    gold = comparisons[comparisons.metric == "gold_id"].set_index("method")
    assert gold.loc["salsa-kl_coef0.1", "vs"] == "ppo-kl_coef0.1"
    assert gold.loc["salsa-kl_coef0.05", "vs"] == "ppo-kl_coef0.05"
    assert gold.loc["ppo-kl_coef0.1", "vs"] == "ppo-kl_coef0.05"
    # salsa-kl_coef0.1 - ppo-kl_coef0.1 per seed: 0.10, 0.09, 0.10 -> paired, mean 0.096667
    assert gold.loc["salsa-kl_coef0.1", "diff"] == pytest.approx(0.0966667, abs=1e-6)
    assert gold.loc["salsa-kl_coef0.1", "test"] == "paired (n=3)"
    # descriptive: unadjusted p-values, no Holm over the whole table (only the declared secondary family)
    assert comparisons.p.notna().sum() == 3
    assert "p_holm" not in comparisons.columns and "significant" not in comparisons.columns


def test_unshared_seeds_fall_back_to_welch():
    frame = run_frame({"ppo": [0.70, 0.72, 0.74], "salsa": [0.71, 0.74]})
    comparisons = tables.compare_methods(frame, "ppo", ["gold_id"])
    assert comparisons.test.item() == "welch (n=2)"


def test_replicates_become_the_unit_of_the_interval():
    parts = [run_frame({"ppo": [0.60 + r / 10, 0.62 + r / 10], "salsa": [0.65 + r / 10, 0.66 + r / 9]}, f"rep{r}/")
             for r in (1, 2, 3)]
    frame = pd.concat(parts, ignore_index=True)
    comparisons = tables.compare_methods(frame, "ppo", ["gold_id"])
    assert comparisons.test.item() == "replicates (n=3)" and comparisons.replicates.item() == 3
    # seed differences 0.05 and 0.04 + r/90: replicate means 0.045 + r/180 (variance 1/180^2); within-replicate
    # variance (0.01 - r/90)^2 / 2, mean 1.1576e-4; between = 1/180^2 - within / 2 < 0 -> floored at 0
    within = sum((0.01 - r / 90) ** 2 / 2 for r in (1, 2, 3)) / 3
    assert comparisons.var_within.item() == pytest.approx(within, rel=1e-9)
    assert comparisons.var_replicate_means.item() == pytest.approx(1 / 180 ** 2, rel=1e-9)
    assert comparisons.var_between.item() == 0.0
    agg = tables.aggregate(frame).set_index("method")
    assert agg.loc["salsa", "replicates"] == 3 and agg.loc["salsa", "seeds"] == 2
    # mean over replicate means, t over 3 replicates (df 2)
    means = [(0.65 + r / 10 + 0.66 + r / 9) / 2 for r in (1, 2, 3)]
    assert agg.loc["salsa", "gold_id"] == pytest.approx(sum(means) / 3)
    sd = pd.Series(means).std()
    assert agg.loc["salsa", "gold_id_ci"] == pytest.approx(4.3026527 * sd / math.sqrt(3), abs=1e-6)


def test_prompt_intervals_per_split():
    samples = [{"split": "id", "gold": float(i % 2), "proxy": 0.0, "length": i % 3, "kl_sft": 0.0}
               for i in range(200)] + [{"split": "ood", "gold": 1.0, "proxy": 0.0, "length": 2} for _ in range(10)]
    ci = tables.prompt_intervals(samples, n_boot=500, seed=0)
    assert 0.05 < ci["gold_id_ci"] < 0.09  # binomial se 0.035 -> about 0.069
    assert ci["gold_ood_ci"] == 0.0 and ci["proxy_id_ci"] == 0.0
    assert 0.04 < ci["empty_id_ci"] < 0.08  # a third of the lengths are 0
    assert "kl_sft_ood_ci" not in ci
    # a percentile interval is kept as its two ends (it need not be symmetric) and printed as [lower, upper]
    assert ci["empty_id_ci"] == pytest.approx((ci["empty_id_ci_upper"] - ci["empty_id_ci_lower"]) / 2)
    row = {"model": "sft/seed1", "kind": "sft", "method": "seed1", "seed": "1", "replicate": "1", "empty_id": 1 / 3,
           "gold_id": 0.5, **ci}
    config = tables.TablesConfig(results="r", models=["sft/seed1"], out="o", n_boot=500)
    markdown = tables.render_markdown(pd.DataFrame([row]), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), config)
    assert f"0.333 [{ci['empty_id_ci_lower']:.3f}, {ci['empty_id_ci_upper']:.3f}]" in markdown
    assert "0.333 ±" not in markdown


def test_summary_opens_with_the_primary_and_marks_nothing_else():
    frame = run_frame({"ppo": [0.70, 0.72, 0.74], "salsa": [0.73, 0.74, 0.78]})
    config = tables.TablesConfig(results="r", models=list(frame.model), out="o", n_boot=100,
                                 secondary=["gold_id:salsa:ppo:matched_kl_sft"])
    comparisons = tables.compare_methods(frame, "ppo", tables.shown_metrics(frame))
    matched = tables.matched_kl_frame(frame, "ppo")
    tested = tables.endpoints(config, frame)
    markdown = tables.render_markdown(frame, tables.aggregate(frame), comparisons, matched, config, endpoints=tested)
    sections = [line for line in markdown.splitlines() if line.startswith("## ")]
    assert sections[0] == "## Pre-registered result"
    assert "**Primary** (declared in the config before the run; two-sided, α 0.05, unadjusted): salsa − ppo, gold_id" \
        in markdown
    assert " *" not in markdown.split("## Every model")[1]  # below the endpoints: no test marks
    assert "## Power of the primary comparison" in markdown and "noncentral t" in markdown
    # one β each: matched KL is refused, in the table and as an endpoint (not tested, not in Holm's family)
    assert "one β on each side" in markdown and tested.p.isna().iloc[1]


def test_single_models_are_compared_on_the_same_prompts(tmp_path):
    import json

    gold = {"sft/seed1": [1.0, 0.0, 1.0, 0.0], "sft/seed2": [1.0, 1.0, 1.0, 0.0], "soup/uniform": [1.0, 1.0, 1.0, 1.0]}
    for model, values in gold.items():
        (tmp_path / "eval" / model).mkdir(parents=True)
        # the rows are written in a different prompt order per model: pairing must follow the prompt
        rows = [{"split": "id", "prompt": f"p{i}", "gold": v} for i, v in enumerate(values)]
        rows = rows[::-1] if model == "soup/uniform" else rows
        (tmp_path / "eval" / model / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = pd.DataFrame([{"model": m, **tables.parse_model_id(m)} for m in gold])
    result = tables.same_prompts.single_model_differences(tmp_path, frame, n_boot=200, seed=0).set_index(["model", "vs"])
    assert set(result.index) == {("soup/uniform", "sft/seed1"), ("soup/uniform", "sft/seed2"),
                                 ("sft/seed2", "sft/seed1")}
    assert result.loc[("soup/uniform", "sft/seed1"), "diff"] == 0.5
    assert result.loc[("soup/uniform", "sft/seed2"), "diff"] == 0.25
    assert result.loc[("sft/seed2", "sft/seed1"), "prompts"] == 4


def test_a_single_method_has_nothing_to_compare():
    frame = run_frame({"ppo": [0.70, 0.72, 0.74]})
    assert tables.compare_methods(frame, "ppo", ["gold_id"]).empty
    with pytest.raises(tables.artifacts.StageError, match="ppo-kl_coef0.1"):  # a typo is refused
        tables.compare_methods(frame, "ppo-kl_coef0.1", ["gold_id"])


def test_power_with_one_seed_per_replicate_counts_replicates_only():
    # salsa - ppo per replicate: 0.03, 0.01, 0.04 -> sd 0.015275, half-width t(2) 4.3027 * sd / sqrt(3) = 0.0379;
    # halving needs t(n-1) * sd / sqrt(n) <= 0.01897: n = 4 gives 0.0243, n = 5 gives 0.01897
    frame = pd.concat([run_frame({"ppo": [gold_ppo], "salsa": [gold_salsa]}, f"rep{r}/")
                       for r, (gold_ppo, gold_salsa) in enumerate([(0.70, 0.73), (0.72, 0.73), (0.74, 0.78)], 1)],
                      ignore_index=True)
    comparisons = tables.compare_methods(frame, "ppo", ["gold_id"])
    row = comparisons.iloc[0]
    assert row.test == "replicates (n=3)" and row["diff"] == pytest.approx(0.026667, abs=1e-6)
    assert row.diff_ci == pytest.approx(0.03795, abs=1e-4)
    power = "\n".join(tables.render_power(comparisons, "salsa", "ppo"))
    assert "±0.038" in power and "Halving the interval takes 5 replicates instead of 3" in power
    # the variance the interval used (not a floored split), exact power: 0.0153 / sqrt(3) at df 2
    detected = tables.stats.detectable_at_power(0.015275252 / math.sqrt(3), 2)
    assert f"a true difference of {detected:.4f} is detected with 80% power" in power
    assert "outer and seed variance are not separated" in power


def test_power_without_gold_says_nothing_and_does_not_crash():
    # Hub data has no gold reward: every gold_id is NaN, so no replicate has a seed to count
    frame = run_frame({"ppo": [math.nan], "salsa": [math.nan]})
    comparisons = tables.compare_methods(frame, "ppo", ["gold_id"])
    assert math.isnan(comparisons.iloc[0].seeds)
    assert summary_sections.render_power(comparisons, "salsa", "ppo") == []


def test_pairs_replace_the_partner_and_contrasts_difference_two_differences():
    # per replicate (seed means): salsa - ppo = 0.05, 0.03; salsa_seedonly - ppo_seedonly = 0.01, 0.02
    # contrast per replicate 0.04, 0.01 -> mean 0.025, sd 0.021213, half-width t(1) 12.7062 * 0.015 = 0.19059
    values = {1: {"ppo": [0.70, 0.72], "salsa": [0.76, 0.76], "ppo_seedonly": [0.60, 0.60],
                  "salsa_seedonly": [0.61, 0.61]},
              2: {"ppo": [0.70, 0.70], "salsa": [0.74, 0.72], "ppo_seedonly": [0.65, 0.63],
                  "salsa_seedonly": [0.66, 0.66]}}
    frame = pd.concat([run_frame(v, f"rep{r}/") for r, v in values.items()], ignore_index=True)
    comparisons = tables.compare_methods(frame, "ppo", ["gold_id"], pairs={"salsa_seedonly": "ppo_seedonly"},
                                         contrasts=[("salsa", "ppo", "salsa_seedonly", "ppo_seedonly")])
    rows = comparisons.set_index("method")
    assert rows.loc["salsa_seedonly", "vs"] == "ppo_seedonly"  # not the reference method
    assert rows.loc["salsa_seedonly", "diff"] == pytest.approx(0.015)
    assert rows.loc["ppo_seedonly", "vs"] == "ppo"  # methods without a pair keep the default partner
    contrast = rows.loc["salsa - ppo"]
    assert contrast.vs == "salsa_seedonly - ppo_seedonly" and contrast.test == "contrast, replicates (n=2)"
    assert contrast["diff"] == pytest.approx(0.025) and contrast.diff_ci == pytest.approx(0.19059, abs=1e-4)
    assert len(comparisons) == 4
    with pytest.raises(tables.artifacts.StageError, match="salsa_typo"):
        tables.compare_methods(frame, "ppo", ["gold_id"], pairs={"salsa_typo": "ppo"})


def test_each_run_is_compared_with_the_model_its_metadata_says_it_started_from(tmp_path):
    import json

    gold = {"sft/seed1": [0.0, 0.5, 1.0, 0.5], "soup/uniform": [0.5, 0.5, 0.5, 0.5],
            "ppo/salsa/seed1": [1.0, 1.0, 1.0, 0.5], "ppo/from_base/seed1": [1.0, 1.0, 1.0, 1.0]}
    starts = {"ppo/salsa/seed1": tmp_path / "soup/uniform", "ppo/from_base/seed1": tmp_path / "base_model"}
    for model, values in gold.items():
        (tmp_path / "eval" / model).mkdir(parents=True)
        rows = [{"split": "id", "prompt": f"p{i}", "gold": v} for i, v in enumerate(values)]
        (tmp_path / "eval" / model / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        if model in starts:
            (tmp_path / model).mkdir(parents=True)
            meta = {"config": {"policy": str(starts[model])}}
            (tmp_path / model / tables.artifacts.METADATA_FILE).write_text(json.dumps(meta))
    frame = pd.DataFrame([{"model": m, **tables.parse_model_id(m)} for m in gold])
    result = tables.same_prompts.run_start_differences(tmp_path, frame, n_boot=200, seed=0)
    # salsa started from the soup (not the first SFT): 0.5, 0.5, 0.5, 0 -> 0.375; the base model is not evaluated
    assert result[["model", "vs"]].values.tolist() == [["ppo/salsa/seed1", "soup/uniform"]]
    assert result["diff"].item() == pytest.approx(0.375) and result.excludes_zero.item()


def test_each_run_is_compared_with_its_partner_methods_run_of_the_same_seed_and_replicate(tmp_path):
    import json

    # per prompt gold; rep2's salsa seed 2 has no ppo partner (that run failed or was not asked for)
    gold = {"rep1/ppo/ppo/seed1": [0.0, 0.5, 1.0, 0.5], "rep1/ppo/salsa/seed1": [1.0, 0.5, 1.0, 1.0],
            "rep1/ppo/ppo/seed2": [1.0, 1.0, 1.0, 1.0], "rep1/ppo/salsa/seed2": [0.0, 0.0, 0.0, 0.0],
            "rep2/ppo/ppo/seed1": [0.5, 0.5, 0.5, 0.5], "rep2/ppo/salsa/seed1": [0.5, 0.5, 0.5, 0.75],
            "rep2/ppo/salsa/seed2": [1.0, 1.0, 1.0, 1.0],
            "rep1/ppo/warm/seed1": [1.0, 1.0, 1.0, 1.0], "rep1/ppo/warm_salsa/seed1": [0.5, 1.0, 1.0, 1.0]}
    for model, values in gold.items():
        (tmp_path / "eval" / model).mkdir(parents=True)
        rows = [{"split": "id", "prompt": f"p{i}", "gold": v} for i, v in enumerate(values)]
        (tmp_path / "eval" / model / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    frame = pd.DataFrame([{"model": m, **tables.parse_model_id(m)} for m in gold])
    methods = list(dict.fromkeys(tables.ppo_runs(frame).method))
    partners = tables.method_partners(methods, "ppo", {"warm_salsa": "warm"})
    assert partners == {"salsa": "ppo", "warm": "ppo", "warm_salsa": "warm"}
    result = tables.same_prompts.run_partner_differences(tmp_path, frame, partners, n_boot=200, seed=0)
    diffs = {(row.model, row.vs): row.diff for row in result.itertuples()}
    assert diffs == pytest.approx({("rep1/ppo/salsa/seed1", "rep1/ppo/ppo/seed1"): 0.375,
                                   ("rep1/ppo/salsa/seed2", "rep1/ppo/ppo/seed2"): -1.0,
                                   ("rep2/ppo/salsa/seed1", "rep2/ppo/ppo/seed1"): 0.0625,
                                   ("rep1/ppo/warm/seed1", "rep1/ppo/ppo/seed1"): 0.5,
                                   ("rep1/ppo/warm_salsa/seed1", "rep1/ppo/warm/seed1"): -0.125})
