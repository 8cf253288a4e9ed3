"""The models of a PPO run: the trained policy and value model, the frozen reference and reward model.

Trained models are loaded before ``accelerator.prepare`` and sharded by it under ZeRO-3 / FSDP.
Frozen models are loaded whole (``distributed.whole_models``) and placed on the process's device in
the stage's dtype: a 7B reference and reward model in bf16 take 13.5 GB each beside a sharded policy
and value model (BENCHMARKS.md, memory). Every model reads the policy's token ids, so their
tokenizers must be the policy's.
"""

from __future__ import annotations

import dataclasses

import torch

from salsa import artifacts, distributed
from salsa.modeling import (check_same_tokenizer, disable_dropout, keep_trainable_in_fp32, load_causal_lm,
                            load_reward_model, response_logprobs, response_values, same_path, score_head)


class Reference:
    """Reference log-probs: a frozen model, or the policy with its LoRA adapter disabled."""

    def __init__(self, config, policy, accelerator, tokenizer=None):
        self.policy = policy
        self.accelerator = accelerator  # the reference runs under the policy's autocast: no spurious KL
        self.uses_disabled_adapter = config.lora_r > 0 and same_path(config.policy, config.reference)
        self.model = None
        if tokenizer is not None:
            check_same_tokenizer(tokenizer, config.policy, config.reference)
        if not self.uses_disabled_adapter:
            with distributed.whole_models():
                model = load_causal_lm(config.reference, config.dtype)
            # a fully trained policy holds fp32 weights (DeepSpeed: `dtype`): so does its reference, or
            # KL(init || init) is not 0 in bf16
            weights = next(policy.parameters()).dtype if config.lora_r == 0 else None
            self.model = distributed.frozen(model, accelerator.device, weights)
            disable_dropout(self.model)

    @torch.no_grad()
    def logprobs(self, ids, mask, query_length, temperature):
        with self.accelerator.autocast():
            if self.uses_disabled_adapter:
                with self.policy.disable_adapter():
                    return response_logprobs(self.policy, ids, mask, query_length, temperature)
            return response_logprobs(self.model, ids, mask, query_length, temperature)


class PolicyAndValue(torch.nn.Module):
    """Policy and value model in one module, so a single DDP / DeepSpeed wrapper trains both.

    Values are offset by -mean/std of the reward normalisation: the value model starts as
    the reward model (its head scaled by 1/std), so its outputs begin on the normalised
    reward's scale instead of being shifted by a constant the value clip would take
    many updates to unlearn.
    """

    def __init__(self, policy, value_model, value_offset: float):
        super().__init__()
        self.policy, self.value_model, self.value_offset = policy, value_model, value_offset

    def values(self, ids, mask, query_length):
        return response_values(self.value_model, ids, mask, query_length) + self.value_offset

    def forward(self, ids, mask, query_length, temperature):
        logprobs, entropy = response_logprobs(self.policy, ids, mask, query_length, temperature,
                                              return_entropy=True)
        return logprobs, entropy, self.values(ids, mask, query_length)


@dataclasses.dataclass
class Models:
    trained: PolicyAndValue
    reward_model: torch.nn.Module
    reference: Reference


def check_backend(config, accelerator) -> None:
    """What a sharded PPO run cannot do, refused before any model is loaded."""
    if not distributed.shards_weights(accelerator):
        return
    if config.lora_r > 0 or config.value_lora_r > 0:
        raise artifacts.StageError("ppo: LoRA adapters are merged on one process; with lora_r or value_lora_r "
                                   "use the ddp accelerate config (ZeRO-3 / FSDP train every weight)")
    if config.anchor != "none":
        raise artifacts.StageError("ppo: a moving anchor copies the policy's weights after each update; "
                                   "use the ddp accelerate config with anchor")


def _lora(model, r: int, alpha: int, modules: list[str], task_type: str | None):
    from peft import LoraConfig, get_peft_model

    return get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(modules),
                                            task_type=task_type))


def load_models(config, accelerator, tokenizer, score_mean: float, score_std: float) -> Models:
    """Policy and value model (to be prepared), reward model and reference (frozen, on the device).

    All are loaded whole: ``prepare`` shards the trained ones, and the value head is rescaled in place
    first (a ZeRO-3 partitioned parameter would ignore that)."""
    with distributed.whole_models():
        return _load_models(config, accelerator, tokenizer, score_mean, score_std)


def _load_models(config, accelerator, tokenizer, score_mean: float, score_std: float) -> Models:
    policy = load_causal_lm(config.policy, config.dtype)
    disable_dropout(policy)
    if config.gradient_checkpointing:
        from salsa.training import enable_gradient_checkpointing
        enable_gradient_checkpointing(policy)
        if config.lora_r > 0:
            policy.enable_input_require_grads()
    if config.lora_r > 0:
        policy = _lora(policy, config.lora_r, config.lora_alpha, config.lora_target_modules, "CAUSAL_LM")
    value_model = load_reward_model(config.value_model or config.reward_model, config.dtype)
    disable_dropout(value_model)
    backbone = getattr(value_model, value_model.base_model_prefix)
    if config.gradient_checkpointing:
        from salsa.training import enable_gradient_checkpointing
        enable_gradient_checkpointing(value_model)
        if config.value_lora_r > 0:
            backbone.enable_input_require_grads()
    if config.value_lora_r > 0:  # adapt the backbone only: token_scores reads it by base_model_prefix
        setattr(value_model, value_model.base_model_prefix,
                _lora(backbone, config.value_lora_r, config.lora_alpha, config.lora_target_modules, None))
    keep_trainable_in_fp32(policy, accelerator)  # LoRA: the adapter only; the frozen base stays as loaded
    keep_trainable_in_fp32(value_model, accelerator)  # the value head (and trained backbone) in fp32
    value_offset = 0.0
    if not config.value_model:  # start the values on the normalised reward's scale
        with torch.no_grad():
            score_head(value_model).weight.div_(score_std)
        value_offset = -score_mean / score_std
    reward_model = distributed.frozen(load_reward_model(config.reward_model, config.dtype), accelerator.device)
    reference = Reference(config, policy, accelerator, tokenizer)
    return Models(PolicyAndValue(policy, value_model, value_offset), reward_model, reference)


def policy_state_dict(accelerator, model) -> dict | None:
    """The policy's gathered weights when ZeRO-3 / FSDP shard them (a collective), keys as the policy's own."""
    if not distributed.shards_weights(accelerator):
        return None
    full = accelerator.get_state_dict(model)
    if full is None:  # processes other than the main one
        return None
    return {k.removeprefix("policy."): v for k, v in full.items() if k.startswith("policy.")}

