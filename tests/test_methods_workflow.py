"""The DPO, WARM and moving-anchor wiring of the workflow, checked by dry runs (no training)."""

import dataclasses

import yaml

from test_workflow import DEFAULT, REPO, TINY, scheduled_rules, snakemake

METHODS = str(REPO / "config" / "experiments" / "toy-methods.yaml")
TINY_DPO = str(REPO / "tests" / "config" / "tiny-dpo.yaml")


def test_default_run_schedules_no_dpo_or_warm_jobs(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", DEFAULT)
    rules = scheduled_rules(proc.stdout)
    assert not {"dpo", "dpo_reference", "reward_replica", "reward_soup", "reward_probe"} & set(rules)
    assert "--init-head" not in proc.stdout


def test_methods_overlay_wires_dpo_warm_and_anchor_runs(tmp_path):
    proc = snakemake(tmp_path, "-n", "-p", "--configfile", DEFAULT, METHODS)
    rules = scheduled_rules(proc.stdout)
    # 3 DPO methods x 3 seeds; one reference cache per reference model (sft/seed1, soup/uniform), not per run
    assert rules["dpo"] == 9 and rules["dpo_reference"] == 2
    # PPO at two betas, SALSA, WARM-PPO, WARM-SALSA, EMA anchor: 6 methods x 3 seeds
    assert rules["reward_replica"] == 2 and rules["reward_soup"] == 1 and rules["ppo"] == 18
    assert rules["evaluate"] == 2 + 1 + 18 + 9  # SFTs, soup, PPO runs, DPO runs
    assert "--kl-coef 0.02" in next(line for line in proc.stdout.splitlines()
                                    if "--out results/toy-methods/ppo/ppo-kl_coef0.02/seed1 " in line)
    commands = [line for line in proc.stdout.splitlines() if "python -m salsa." in line]

    def command(stage, out):
        # `python -m salsa.<stage>`, or through the launcher: `python -m salsa.launch ... -- salsa.<stage>`
        return next(c for c in commands if (f"-m salsa.{stage} " in c or f"-- salsa.{stage} " in c)
                    and f"--out {out} " in c)

    results = "results/toy-methods"
    assert "--reference-logprobs results/toy-methods/dpo_ref/soup/uniform" in command(
        "dpo", f"{results}/dpo/ipo_soup/seed2")
    assert "--loss ipo" in command("dpo", f"{results}/dpo/ipo_soup/seed2")
    assert f"--reward-model {results}/reward_soup/uniform" in command("ppo", f"{results}/ppo/warm_salsa/seed1")
    assert f"--reward-model {results}/reward_model" in command("ppo", f"{results}/ppo/salsa/seed1")
    assert "--anchor ema --anchor-rate 0.05" in command("ppo", f"{results}/ppo/ppo_ema/seed3")
    assert (f"--inputs {results}/reward_model {results}/reward/seed2 {results}/reward/seed3"
            in command("reward_soup", f"{results}/reward_soup/uniform"))
    assert "--seed 3" in command("reward", f"{results}/reward/seed3")
    # WARM: one score head linear-probed on the frozen init, the start of every reward model of the run
    assert rules["reward_probe"] == 1
    assert f"--model {results}/base_model " in command("reward_probe", f"{results}/reward_probe")
    head = f"--init-head {results}/reward_probe/score_head.safetensors"
    assert all(head in command("reward", f"{results}/{r}") for r in ("reward_model", "reward/seed2", "reward/seed3"))
    tables = next(c for c in commands if "-m salsa.tables " in c)
    assert "--reference-method ppo-kl_coef0.05" in tables
    assert "--pairs dpo/dpo_soup:dpo/dpo_sft warm_salsa:warm_ppo" in tables
    assert "--reward-models reward_model reward/seed2 reward/seed3 reward_soup/uniform " in tables
    # DPO runs are evaluated against their own reference, like PPO runs
    evaluate = next(c for c in commands if f"--out {results}/eval/dpo/dpo_sft/seed1 " in c)
    assert f"--model {results}/dpo/dpo_sft/seed1/model --reference '{results}/sft/seed1'" in evaluate


def test_dpo_sweep_expands_like_ppo_and_a_dpo_typo_is_refused(tmp_path):
    rules = scheduled_rules(snakemake(tmp_path, "-n", "--configfile", DEFAULT, TINY, TINY_DPO).stdout)
    assert rules["dpo"] == 3 and rules["dpo_reference"] == 2  # dpo-beta0.1, dpo-beta0.5, ipo_soup
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("dpo:\n  seeds: [1]\n  methods:\n    d: {init: sft/seed1, reference: sft/seed1, "
                       "params: {betta: 0.1}}\n")
    proc = snakemake(tmp_path, "-n", "--configfile", DEFAULT, str(overlay), check=False)
    assert proc.returncode != 0 and "betta" in proc.stdout + proc.stderr


def test_undefined_reward_or_reference_names_are_refused_at_parse_time(tmp_path):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("reward_models: {seed2: {seed: 2}}\n"
                       "reward_soups: {uniform: {ingredients: [reward_model, reward/seed3]}}\n"
                       "ppo:\n  methods:\n    warm: {init: sft/seed1, reference: sft/seed1, reward: reward_soup/unform}\n"
                       "dpo:\n  seeds: [1]\n  methods:\n    d: {init: sft/seed1, reference: soup/unform}\n")
    proc = snakemake(tmp_path, "-n", "--configfile", DEFAULT, str(overlay), check=False)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for key in ("ppo.methods.warm.reward: 'reward_soup/unform'", "reward_soups.uniform.ingredients[1]: 'reward/seed3'",
                "dpo.methods.d.reference: 'soup/unform'"):
        assert key in output, output[-2000:]


def test_schema_lists_only_real_dpo_and_ppo_flags():
    from salsa.dpo import DPOConfig
    from salsa.ppo import PPOConfig

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    assert set(schema["definitions"]["dpo_params"]["properties"]) <= {f.name for f in dataclasses.fields(DPOConfig)}
    assert {"anchor", "anchor_rate"} <= set(schema["definitions"]["ppo_params"]["properties"])
    assert {f.name for f in dataclasses.fields(PPOConfig)} >= {"anchor", "anchor_rate", "anchor_sync_every"}
