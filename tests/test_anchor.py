"""Moving KL anchor for PPO: the EMA formula, and a real run that logs KL to both references."""

import pandas as pd
import pytest
import torch

from salsa import ppo
from salsa.anchor import ema_update
from salsa.modeling import load_causal_lm


def test_ema_update_moves_each_parameter_by_eta_towards_the_policy(tiny):
    anchor, policy = load_causal_lm(str(tiny["sft1"])), load_causal_lm(str(tiny["sft2"]))
    old = {name: p.detach().clone() for name, p in anchor.named_parameters()}
    ema_update(anchor, policy, 0.1)
    moved = 0
    anchor_params = dict(anchor.named_parameters())
    for name, p in policy.named_parameters():
        # by hand: 0.9 * old + 0.1 * policy (to float32 rounding)
        torch.testing.assert_close(anchor_params[name].detach(), 0.9 * old[name] + 0.1 * p.detach(), rtol=0, atol=1e-6)
        moved += not torch.equal(old[name], p.detach())
    assert moved > 0  # the two SFT seeds differ, so the check is not vacuous
    ema_update(anchor, policy, 1.0)  # sync: a copy
    assert all(torch.equal(a, p) for a, p in zip(anchor.parameters(), policy.parameters()))


@pytest.mark.parametrize("anchor", ["ema", "sync"])
def test_ppo_with_a_moving_anchor_logs_kl_to_the_anchor_and_to_the_initial_reference(tiny, tmp_path, anchor):
    out = tmp_path / "ppo"
    ppo.main(["--policy", str(tiny["sft1"]), "--reference", str(tiny["sft1"]), "--reward-model", str(tiny["reward"]),
              "--data", str(tiny["data"]), "--out", str(out), "--updates", "3", "--batch-size", "8",
              "--mini-batch-size", "4", "--ppo-epochs", "2", "--max-new-tokens", "6", "--threads", "1",
              "--lr", "1e-3", "--anchor", anchor, "--anchor-rate", "0.5", "--anchor-sync-every", "1"])
    metrics = pd.read_csv(out / "metrics.csv")
    # update 1: the anchor has not moved yet, so both KLs are the same number
    assert metrics.kl[0] == pytest.approx(metrics.kl_initial_ref[0], abs=1e-5)
    # later the anchor follows the policy: the penalised KL is no longer the KL to the start
    assert (metrics.kl[1:] - metrics.kl_initial_ref[1:]).abs().max() > 1e-3


def test_ppo_with_an_ema_anchor_resumes_with_the_moved_anchor(tiny, tmp_path):
    from test_resume import PPO_ARGS, killed_run

    def args(out):
        return ["--policy", str(tiny["sft1"]), "--reference", str(tiny["sft1"]), "--reward-model",
                str(tiny["reward"]), "--data", str(tiny["data"]), "--out", str(out), *PPO_ARGS, "--lr", "1e-3",
                "--anchor", "ema", "--anchor-rate", "0.5"]

    ppo.main(args(tmp_path / "straight"))
    resumed = tmp_path / "resumed"
    killed_run("salsa.ppo", [*args(resumed), "--checkpoint-every", "1"], step=2)
    ppo.main([*args(resumed), "--checkpoint-every", "1"])
    # the third update's KL is to the anchor as it had moved by then: restored, not reloaded from disk
    columns = ["kl", "kl_initial_ref", "proxy_score", "gold"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "straight" / "metrics.csv")[columns],
                                  pd.read_csv(resumed / "metrics.csv")[columns])
