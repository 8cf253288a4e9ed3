"""Log-probs that PPO and evaluation rely on, checked against independent computations."""

import json

import pytest
import torch

from salsa.modeling import load_causal_lm, load_tokenizer, response_logprobs
from test_stages import reference_logprob, run_ppo


def test_sampled_token_logprobs_equal_response_logprobs(tiny):
    """The distribution tokens are drawn from (KV cache, left padding, temperature) is the one PPO scores."""
    from datasets import load_from_disk

    from salsa.generation import encode_prompts, sample

    model, tokenizer = load_causal_lm(str(tiny["sft1"])).eval(), load_tokenizer(str(tiny["sft1"]))
    prompts = list(load_from_disk(str(tiny["data"] / "eval_ood"))["prompt"][:6]) + \
        list(load_from_disk(str(tiny["data"] / "eval_id"))["prompt"][:10])  # two prompt lengths: left padding
    ids, mask = encode_prompts(tokenizer, prompts)
    assert (mask == 0).any()
    for temperature in (1.0, 0.7):
        rollout = sample(model, ids, mask, max_new_tokens=8, eos_id=tokenizer.eos_token_id,
                         pad_id=tokenizer.pad_token_id, temperature=temperature,
                         generator=torch.Generator().manual_seed(3))
        assert rollout.ended_with_eos.any() and rollout.response_lengths.min() < rollout.response_lengths.max()
        with torch.no_grad():
            scored = response_logprobs(model, rollout.input_ids, rollout.attention_mask, ids.shape[1], temperature)
        response_mask = rollout.response_mask.bool()
        torch.testing.assert_close(rollout.logprobs[response_mask], scored[response_mask],
                                   atol=1e-5, rtol=0)


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_reference_logprobs_after_the_policy_moved_equal_an_independent_reference(tiny, tmp_path, lora):
    """init = reference: a reference that shared the policy's weights (or an adapter left on) would move with it."""
    extra = ["--lr", "3e-3"] + (["--lora-r", "4"] if lora else [])
    metrics, rollouts = run_ppo(tiny, tmp_path / "run", tiny["sft1"], tiny["sft1"], *extra)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["reference_via_disabled_adapter"] is lora
    late = [r for r in rollouts if r["update"] == 2]
    assert late and metrics["kl"].iloc[-1] != 0.0  # the policy has moved away from the reference...
    moved = [abs(reference_logprob(tmp_path / "run" / "model", r) - r["ref_logprob"]) for r in late]
    assert max(moved) > 1e-3  # ...so the final policy's log-probs differ from the reference's
    for record in late:
        assert record["ref_logprob"] == pytest.approx(reference_logprob(tiny["sft1"], record), abs=1e-5)


def test_evaluate_kl_matches_an_independent_computation(tiny, tmp_path):
    """Per-sample KL of the soup to sft1 (reference) and to sft2 (yardstick), recomputed from the saved text."""
    from salsa import evaluate
    from salsa.generation import encode_prompts

    evaluate.main(["--model", str(tiny["soup"]), "--reference", str(tiny["sft1"]), "--first-sft", str(tiny["sft2"]),
                   "--reward-model", str(tiny["reward"]), "--data", str(tiny["data"]), "--out", str(tmp_path / "e"),
                   "--max-new-tokens", "6", "--threads", "1", "--max-prompts", "6"])
    records = [json.loads(line) for line in open(tmp_path / "e" / "samples.jsonl")]
    tokenizer = load_tokenizer(str(tiny["soup"]))
    models = {name: load_causal_lm(str(tiny[name])).eval() for name in ("soup", "sft1", "sft2")}
    for record in records:
        query, _ = encode_prompts(tokenizer, [record["prompt"]])
        response = tokenizer(record["response"], add_special_tokens=False)["input_ids"]
        response += [tokenizer.eos_token_id] if record["eos"] else []
        ids = torch.cat([query, torch.tensor([response], dtype=torch.long)], 1)
        with torch.no_grad():
            logp = {n: response_logprobs(m, ids, torch.ones_like(ids), query.shape[1]).sum().item()
                    for n, m in models.items()}
        assert record["kl_ref"] == pytest.approx(logp["soup"] - logp["sft1"], abs=1e-4)
        assert record["kl_sft"] == pytest.approx(logp["soup"] - logp["sft2"], abs=1e-4)
    assert any(abs(r["kl_ref"]) > 1e-3 for r in records)
