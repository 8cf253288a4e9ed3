"""The pre-registered endpoints: the primary unadjusted, Holm over the declared secondary family only."""

import pandas as pd
import pytest
from scipy import stats as scipy_stats

from salsa import preregistration, tables

GOLD = {  # replicate: (sft, soup, ppo, salsa) gold_id, and (ppo, salsa) gold_ood
    "1": ((0.50, 0.55, 0.60, 0.66), (0.30, 0.34)),
    "2": ((0.52, 0.56, 0.63, 0.67), (0.33, 0.371)),
    "3": ((0.48, 0.55, 0.59, 0.63), (0.31, 0.349)),
}


def frame():
    rows = []
    for rep, ((sft, soup, ppo, salsa), (ppo_ood, salsa_ood)) in GOLD.items():
        for model, gold, ood in ((f"rep{rep}/sft/seed1", sft, None), (f"rep{rep}/soup/uniform", soup, None),
                                 (f"rep{rep}/ppo/ppo/seed1", ppo, ppo_ood), (f"rep{rep}/ppo/salsa/seed1", salsa, salsa_ood)):
            rows.append({"model": model, **tables.parse_model_id(model), "gold_id": gold, "gold_ood": ood})
    return pd.DataFrame(rows)


def test_primary_is_unadjusted_and_holm_runs_over_the_secondary_family_only():
    data = frame()
    primary = preregistration.Endpoint.parse("gold_id:salsa:ppo", "--primary")
    secondary = [preregistration.Endpoint.parse(s, "--secondary")
                 for s in ("gold_ood:salsa:ppo", "gold_id:salsa:ppo:gain_over_start")]
    starts = {"ppo": "sft/seed1", "salsa": "soup/uniform"}
    table = preregistration.endpoints_frame(primary, secondary, data, tables.ppo_runs(data), starts, 0.05)
    # by hand: replicate differences; the gain contrast is (salsa - soup) - (ppo - sft)
    primary_d, ood_d, gain_d = [0.06, 0.04, 0.04], [0.04, 0.041, 0.039], [0.01, 0.0, -0.03]
    p_primary, p_ood, p_gain = (scipy_stats.ttest_1samp(d, 0).pvalue for d in (primary_d, ood_d, gain_d))
    rows = table.set_index("role", append=True)
    assert table.estimate.tolist() == pytest.approx([0.04667, 0.04, -0.00667], abs=1e-4)
    assert p_ood < p_primary  # so Holm over all three would differ from Holm over the two secondaries
    assert table.p.tolist() == pytest.approx([p_primary, p_ood, p_gain], rel=1e-9)
    assert pd.isna(table.p_holm.iloc[0])  # the primary is not adjusted
    low, high = sorted([p_ood, p_gain])
    holm = {low: min(1, 2 * low), high: max(min(1, 2 * low), high)}  # m = 2, not 3
    assert table.p_holm.iloc[1:].tolist() == pytest.approx([holm[p_ood], holm[p_gain]], rel=1e-9)
    assert table.separated.iloc[0] == (p_primary < 0.05) and len(rows) == 3
    text = "\n".join(preregistration.render(table))
    assert text.startswith("## Pre-registered result") and "Holm over these 2 tests only" in text


def test_endpoints_that_name_nothing_are_refused():
    data = frame()
    with pytest.raises(tables.artifacts.StageError, match="metric:method:vs"):
        preregistration.Endpoint.parse("gold_id:salsa:ppo:matched", "--primary")
    with pytest.raises(tables.artifacts.StageError, match="salsa_typo"):
        preregistration.evaluate(preregistration.Endpoint("gold_id", "salsa_typo", "ppo"), data,
                                 tables.ppo_runs(data), {})
    with pytest.raises(tables.artifacts.StageError, match="no evaluated start"):
        preregistration.evaluate(preregistration.Endpoint("gold_id", "salsa", "ppo", "gain_over_start"), data,
                                 tables.ppo_runs(data), {})


def test_the_config_check_names_an_endpoint_or_arm_that_names_nothing():
    from salsa import config_check

    methods = ["ppo", "salsa", "ppo-kl_coef0.02"]
    tables_block = {"primary": {"method": "salsa_typo", "vs": "ppo"},
                    "secondary": [{"method": "salsa", "vs": "ppo", "at": "matched_kl_sft"},   # a family: fine
                                  {"method": "salsa", "vs": "pp0"}]}
    found = list(config_check._check_endpoints(tables_block, methods, methods))
    assert found == ["tables.primary.method: 'salsa_typo' is not a method (methods: ppo, salsa, ppo-kl_coef0.02)",
                     "tables.secondary[1].vs: 'pp0' is not a method (methods: ppo, salsa, ppo-kl_coef0.02)"]
    config = {"ppo": {"methods": {"ppo": {"init": "sft/seed1", "reference": "sft/seed1"}},
                      "kl_arms": {"ppo": [0.02], "salsa": [0.1]}}}
    assert list(config_check.ppo_methods(config)) == ["ppo", "ppo-kl_coef0.02", "salsa-kl_coef0.1"]
    assert "ppo.kl_arms.salsa: not a PPO method (arm salsa-kl_coef0.1)" in list(config_check._check_models(config))
