"""DPO-family stage: losses against hand-computed values, cached reference log-probs, a real tiny run."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from salsa import artifacts, dpo, dpo_reference

# Two pairs of summed log-probs: (policy chosen, policy rejected, reference chosen, reference rejected).
# Pair 1: h = (-1 - -2) - (-3 - -2.5) = 1 - (-0.5) = 1.5.   Pair 2: h = (-2 - -2) - (-1 - -2) = -1.
POLICY_CHOSEN, POLICY_REJECTED = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
REF_CHOSEN, REF_REJECTED = torch.tensor([-2.0, -2.0]), torch.tensor([-2.5, -2.0])


def loss(kind, beta, eps=0.0):
    return dpo.preference_loss(POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED, kind, beta, eps).item()


def test_dpo_loss_matches_hand_computed_value():
    # beta 0.5: beta*h = 0.75 and -0.5; -log sigmoid(0.75) = log(1 + e^-0.75) = 0.386871,
    # -log sigmoid(-0.5) = log(1 + e^0.5) = 0.974077; mean 0.680474
    assert loss("dpo", 0.5) == pytest.approx(0.680474, abs=1e-6)


def test_conservative_dpo_loss_matches_hand_computed_value():
    # -(1-eps) log s(x) - eps log s(-x) = -log s(x) + eps x:  0.386871 + 0.1 * 0.75 = 0.461871,
    # 0.974077 + 0.1 * -0.5 = 0.924077; mean 0.692974
    assert loss("cdpo", 0.5, 0.1) == pytest.approx(0.692974, abs=1e-6)


def test_ipo_loss_matches_hand_computed_value():
    # target 1 / (2 beta) = 1 at beta 0.5: (1.5 - 1)^2 = 0.25, (-1 - 1)^2 = 4; mean 2.125
    assert loss("ipo", 0.5) == pytest.approx(2.125, abs=1e-6)
    # beta 0.25: target 2: (1.5 - 2)^2 = 0.25, (-1 - 2)^2 = 9; mean 4.625
    assert loss("ipo", 0.25) == pytest.approx(4.625, abs=1e-6)


def test_implicit_reward_accuracy_counts_ties_as_half():
    assert dpo.implicit_reward_accuracy(torch.tensor([1.5, -1.0, 0.0, 2.0])) == pytest.approx(0.625)


def test_config_refuses_label_smoothing_outside_cdpo():
    base = ["--policy", "p", "--reference", "r", "--data", "d", "--out", "o"]
    with pytest.raises(SystemExit, match="label_smoothing"):
        dpo.parse(dpo.DPOConfig, [*base, "--loss", "dpo", "--label-smoothing", "0.1"])
    with pytest.raises(SystemExit, match="cdpo needs"):
        dpo.parse(dpo.DPOConfig, [*base, "--loss", "cdpo"])


def _tests_conftest():
    """tests/conftest.py by path: `import conftest` can find tests/benchmarks/conftest.py first."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("tests_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def prefs_data(tmp_path_factory):
    """The tiny task (same tokenizer as the tiny fixture) with 2000 training pairs: its 200 are too
    few for any model to rank held-out pairs reliably (the tiny reward model is at 0.48 on them)."""
    from salsa import data

    TINY_DATA = _tests_conftest().TINY_DATA

    out = tmp_path_factory.mktemp("dpo_data") / "data"
    args = dict(zip(TINY_DATA[::2], TINY_DATA[1::2]))
    args.update({"--n-prefs-train": "2000", "--n-prefs-eval": "400"})  # 99 distinct held-out prompts remain
    data.main(["--out", str(out), *[x for kv in args.items() for x in kv]])
    return out


@pytest.fixture(scope="module")
def sft1_cache(tiny, prefs_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("dpo_ref") / "sft1"
    dpo_reference.main(["--model", str(tiny["sft1"]), "--data", str(prefs_data), "--out", str(out),
                        "--batch-size", "64", "--threads", "1"])
    return out


def on_the_fly(tiny, data, cache, lora_r: int, perturb_adapter: bool = False):
    """Reference log-probs of a few training batches computed in-process, and the cached values."""
    from salsa import training
    from salsa.modeling import load_causal_lm, load_tokenizer

    config = dpo.parse(dpo.DPOConfig, ["--policy", str(tiny["sft1"]), "--reference", str(tiny["sft1"]),
                                       "--data", str(data), "--out", "unused", "--lora-r", str(lora_r)])
    tokenizer = load_tokenizer(config.policy)
    train = dpo_reference.load_split(tokenizer, config.data, "prefs_train")
    held_out = dpo_reference.load_split(tokenizer, config.data, "prefs_eval")
    policy = load_causal_lm(config.policy)
    if lora_r:
        from peft import LoraConfig, get_peft_model
        policy = get_peft_model(policy, LoraConfig(r=lora_r, target_modules=["q_proj", "v_proj"],
                                                   task_type="CAUSAL_LM"))
        if perturb_adapter:  # a trained adapter: the policy now differs from the reference
            with torch.no_grad():
                for name, param in policy.named_parameters():
                    if "lora_B" in name:
                        param.normal_(0, 0.5)
    reference = dpo.ReferenceLogprobs(config, policy, training.make_accelerator(config), train, held_out,
                                      tokenizer.pad_token_id)
    cached = dpo_reference.read_cache(str(cache), {"prefs_train": train.fingerprint(),
                                                   "prefs_eval": held_out.fingerprint()})
    computed, expected = [], []
    for idx in (torch.tensor([3, 0, 17, 42, 5]), torch.tensor([1999, 100, 7])):
        batch = dpo_reference.pair_batch(train, idx, tokenizer.pad_token_id)
        with torch.no_grad():
            computed += [torch.cat(reference("prefs_train", idx, *batch))]
        expected += [torch.cat([cached["prefs_train/chosen"][idx], cached["prefs_train/rejected"][idx]])]
    return reference, policy, train, torch.cat(computed), torch.cat(expected)


def test_cached_reference_logprobs_equal_on_the_fly_ones(tiny, prefs_data, sft1_cache):
    reference, _, train, computed, expected = on_the_fly(tiny, prefs_data, sft1_cache, lora_r=0)
    assert reference.model is not None and not reference.uses_disabled_adapter
    assert len(train) == 2000 and (expected < 0).all()
    torch.testing.assert_close(computed, expected, rtol=0, atol=1e-5)


def test_lora_reference_is_the_policy_with_its_adapter_disabled(tiny, prefs_data, sft1_cache):
    reference, policy, train, computed, expected = on_the_fly(tiny, prefs_data, sft1_cache, lora_r=2,
                                                              perturb_adapter=True)
    assert reference.uses_disabled_adapter and reference.model.model is None
    torch.testing.assert_close(computed, expected, rtol=0, atol=1e-5)
    # the adapter does change the policy: the reference is not merely the policy
    ids, mask, response_mask, q_len = dpo_reference.pair_batch(train, [3, 0, 17], 0)
    with torch.no_grad():
        policy_lp = torch.cat(dpo_reference.sequence_logprobs(policy, ids, mask, response_mask, q_len))
    assert (policy_lp - torch.cat([expected[[0, 1, 2]], expected[[5, 6, 7]]])).abs().max() > 1e-2


def test_cache_from_other_data_is_refused(sft1_cache):
    with pytest.raises(artifacts.StageError, match="other prefs_train tokens"):
        dpo_reference.read_cache(str(sft1_cache), {"prefs_train": "0" * 16})


def test_tiny_dpo_run_ranks_held_out_pairs_well_above_chance(tiny, prefs_data, sft1_cache, tmp_path):
    out = tmp_path / "dpo"
    dpo.main(["--policy", str(tiny["sft1"]), "--reference", str(tiny["sft1"]), "--data", str(prefs_data),
              "--reference-logprobs", str(sft1_cache), "--out", str(out), "--beta", "0.1", "--steps", "200",
              "--batch-size", "16", "--lr", "1e-3", "--eval-every", "50", "--seed", "1", "--threads", "1"])
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.step) == list(range(1, 201))
    assert list(metrics.step[metrics.eval_accuracy.notna()]) == [50, 100, 150, 200]
    summary = json.loads((out / "summary.json").read_text())
    # Chance is 0.5: the initial policy is the reference, so h = 0 ties every pair. Measured on this
    # CPU: 0.64-0.66 over seeds 1-3 (99 held-out pairs; the tiny reward model reaches 0.65).
    assert summary["eval_accuracy"] > 0.6, summary
    assert metrics.eval_accuracy.dropna().mean() > 0.58
    assert summary["reference_cached"] and not summary["reference_via_disabled_adapter"]
    assert (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / artifacts.METADATA_FILE).read_text())["config"]["beta"] == 0.1


def test_dpo_killed_after_a_checkpoint_resumes_and_matches_an_uninterrupted_run(tiny, tmp_path, capsys):
    from safetensors.torch import load_file
    from test_resume import killed_run

    def args(out):  # no cache: the reference log-probs are computed in-process here
        return ["--policy", str(tiny["sft1"]), "--reference", str(tiny["soup"]), "--data", str(tiny["data"]),
                "--out", str(out), "--loss", "cdpo", "--label-smoothing", "0.2", "--steps", "6",
                "--batch-size", "8", "--eval-every", "3", "--threads", "1"]

    dpo.main(args(tmp_path / "straight"))
    resumed = tmp_path / "resumed"
    killed_run("salsa.dpo", [*args(resumed), "--checkpoint-every", "2"], step=4)
    assert not resumed.exists()
    dpo.main([*args(resumed), "--checkpoint-every", "2"])
    assert "resuming from step 4" in capsys.readouterr().out
    straight = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    pd.testing.assert_frame_equal(straight, pd.read_csv(resumed / "metrics.csv"))
    a, b = (load_file(p / "model" / "model.safetensors") for p in (tmp_path / "straight", resumed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((resumed / "summary.json").read_text())["resumed_from_step"] == 4


def stage(module: str, *args) -> subprocess.CompletedProcess:
    """A stage in its own process: accelerate's state is per process, and these runs use bf16 autocast."""
    return subprocess.run([sys.executable, "-m", f"salsa.{module}", *map(str, args), "--threads", "1"],
                          capture_output=True, text=True, timeout=300)


def test_cache_at_the_policys_precision_gives_a_zero_initial_margin(tiny, tmp_path):
    """bf16 weights: the policy trains fp32 weights under bf16 autocast, and so must the cached reference
    compute, or DPO starts from a spurious preference (issue: accuracy 0.438 at lr 0 with a bf16 cache)."""
    cache = tmp_path / "cache"
    assert stage("dpo_reference", "--model", tiny["base"], "--data", tiny["data"], "--out", cache,
                 "--dtype", "bfloat16").returncode == 0
    run = stage("dpo", "--policy", tiny["base"], "--reference", tiny["base"], "--data", tiny["data"],
                "--out", tmp_path / "run", "--steps", 1, "--batch-size", 8, "--lr", 0, "--dtype", "bfloat16",
                "--reference-logprobs", cache)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["eval_margin"] == 0.0 and summary["eval_accuracy"] == 0.5


def test_a_cache_of_another_precision_or_reference_is_refused(tiny, tmp_path):
    bf16 = tmp_path / "bf16"
    assert stage("dpo_reference", "--model", tiny["base"], "--data", tiny["data"], "--out", bf16,
                 "--dtype", "bfloat16", "--weights-dtype", "bfloat16").returncode == 0
    run = ["--data", tiny["data"], "--out", tmp_path / "run", "--steps", 1, "--batch-size", 8,
           "--dtype", "bfloat16", "--reference-logprobs", bf16]
    wrong_precision = stage("dpo", "--policy", tiny["base"], "--reference", tiny["base"], *run)
    assert wrong_precision.returncode != 0
    assert "computed at {'weights_dtype': 'bfloat16', 'autocast': 'bf16'}, but this policy trains at " \
           "{'weights_dtype': 'float32'" in wrong_precision.stderr
    wrong_model = stage("dpo", "--policy", tiny["sft1"], "--reference", tiny["sft1"], *run)  # base's cache
    assert wrong_model.returncode != 0 and "not with the reference" in wrong_model.stderr
