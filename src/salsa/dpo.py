"""Stage `dpo`: direct preference optimisation against a configurable reference.

With h = [log pi(y_w|x) - log pi_ref(y_w|x)] - [log pi(y_l|x) - log pi_ref(y_l|x)]
(summed response log-probs of the chosen y_w and rejected y_l response):

  dpo   (Rafailov et al. 2023):        -log sigmoid(beta h)
  cdpo  (conservative DPO, labels flipped with probability eps):
                                       -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
  ipo   (Azar et al. 2023):            (h - 1 / (2 beta))^2

IPO here regresses the summed (sequence) log-ratio, as the paper defines it; TRL's "ipo"
averages log-probs over response tokens first, so its beta is not interchangeable with
ours when responses are longer than one token (on this task they are a handful).

The reference is whatever the config names (an SFT model, a soup). Its log-probs
come from the cache the `dpo_reference` stage writes, so a beta sweep never runs
it again; without a cache they are computed here, and a LoRA policy on top of the
reference checkpoint uses itself with the adapter disabled (as PPO does).
The implicit reward beta * (log pi - log pi_ref) ranks each held-out pair; its
accuracy on prefs_eval is logged as the run goes.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.nn.functional as F

from salsa import artifacts, distributed, training
from salsa.args import arg, parse
from salsa.dpo_reference import EncodedPairs, load_split, pair_batch, precision, read_cache, sequence_logprobs
from salsa.modeling import (DTYPES, check_same_tokenizer, disable_dropout, keep_trainable_in_fp32, load_causal_lm,
                            load_tokenizer, mixed_precision_mode, save_model)

LOSSES = ("dpo", "cdpo", "ipo")


@dataclasses.dataclass
class DPOConfig(training.TrainingConfig, training.LoraSettings):
    """DPO, conservative DPO or IPO on the preference pairs the reward model learns from."""

    policy: str = arg(help="initial policy (model directory or Hub id)")
    reference: str = arg(help="reference model (model directory or Hub id)")
    data: str = arg(help="prepared data directory with prefs_train/ and prefs_eval/")
    out: str = arg(help="output directory: model/, metrics.csv, summary.json")
    reference_logprobs: str = arg("", help="cache written by salsa.dpo_reference for this reference "
                                           "(empty: compute the reference log-probs here)")
    seed: int = arg(0, help="data order and LoRA init")
    loss: str = arg("dpo", help="preference loss", choices=list(LOSSES))
    beta: float = arg(0.1, help="beta: inverse strength of the implicit KL regularisation")
    label_smoothing: float = arg(0.0, help="cdpo: probability eps that a preference label is flipped")
    steps: int = arg(200, help="optimiser steps")
    batch_size: int = arg(32, help="preference pairs per optimiser step, over all processes")
    lr: float = arg(1e-4, help="peak learning rate")
    warmup_steps: int = arg(10, help="linear warm-up steps, then linear decay to zero")
    max_examples: int = arg(0, help="use only the first N training pairs (0 = all)")
    eval_every: int = arg(20, help="implicit-reward accuracy on prefs_eval every N steps (and at the end)")
    eval_batch_size: int = arg(64, help="pairs per forward pass when evaluating")

    def validate(self) -> None:
        if self.beta <= 0:
            raise ValueError("beta must be positive")
        if self.loss == "cdpo" and not 0 < self.label_smoothing < 0.5:
            raise ValueError("loss cdpo needs 0 < label_smoothing < 0.5")
        if self.loss != "cdpo" and self.label_smoothing:
            raise ValueError(f"label_smoothing is only used by loss cdpo, not {self.loss}")
        if self.steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise ValueError("steps, batch_size and eval_every must be positive")


def log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected) -> torch.Tensor:
    """h: how much more the policy than the reference prefers chosen over rejected."""
    return (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)


def preference_losses(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                      ref_rejected: torch.Tensor, loss: str = "dpo", beta: float = 0.1,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pair loss; the inputs are summed response log-probs, one per pair."""
    h = log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected)
    if loss == "ipo":
        return (h - 1.0 / (2.0 * beta)) ** 2
    if loss not in ("dpo", "cdpo"):
        raise ValueError(f"unknown preference loss {loss!r}; choose from {LOSSES}")
    eps = label_smoothing if loss == "cdpo" else 0.0
    return -(1.0 - eps) * F.logsigmoid(beta * h) - eps * F.logsigmoid(-beta * h)


def preference_loss(*args, **kwargs) -> torch.Tensor:
    """Mean of ``preference_losses`` over pairs."""
    return preference_losses(*args, **kwargs).mean()


def implicit_reward_accuracy(h: torch.Tensor) -> float:
    """Share of pairs whose implicit reward ranks chosen above rejected (ties count half)."""
    return ((h > 0).float().mean() + 0.5 * (h == 0).float().mean()).item()


class ReferenceLogprobs:
    """Summed reference log-probs of pairs by index: from the cache, or computed with a model."""

    def __init__(self, config: DPOConfig, policy, accelerator, train: EncodedPairs, held_out: EncodedPairs,
                 pad_id: int):
        self.pad_id = pad_id
        self.cached = None
        self.model = None
        if config.reference_logprobs:
            self.cached = read_cache(config.reference_logprobs, {"prefs_train": train.fingerprint(),
                                                                 "prefs_eval": held_out.fingerprint()},
                                     config.reference, policy_precision(config, policy, accelerator))
        else:
            from salsa.ppo import Reference  # the same frozen-model / disabled-adapter rule as PPO

            self.model = Reference(config, policy, accelerator)

    @property
    def uses_disabled_adapter(self) -> bool:
        return self.model is not None and self.model.uses_disabled_adapter

    def __call__(self, split: str, idx, ids, mask, response_mask, query_length):
        if self.cached is not None:
            idx = torch.as_tensor(idx, dtype=torch.long)
            device = ids.device
            return self.cached[f"{split}/chosen"][idx].to(device), self.cached[f"{split}/rejected"][idx].to(device)
        logprobs = self.model.logprobs(ids, mask, query_length, 1.0).float()
        return (logprobs * response_mask).sum(1).chunk(2)


def policy_precision(config: DPOConfig, policy, accelerator) -> dict:
    """The weights dtype and autocast the reference must be run at to match this policy."""
    from salsa.modeling import torch_dtype

    if config.lora_r > 0 or distributed.uses_deepspeed(accelerator):  # frozen base / DeepSpeed: `dtype`
        weights = config.dtype if torch_dtype(config.dtype) is not None else "float32"
    else:
        weights = {v: k for k, v in DTYPES.items()}[next(p for p in policy.parameters() if p.requires_grad).dtype]
    return precision(weights, mixed_precision_mode(config.dtype, config.mixed_precision))


def evaluation_shard(n: int) -> tuple[list[int], list[bool]]:
    """This process's held-out pairs, padded with repeats so every process runs as many forward passes
    (a ZeRO-3 forward is a collective); the padding is masked out."""
    mine = list(range(distributed.rank(), n, distributed.world_size()))
    count = -(-n // distributed.world_size())
    padded = (mine + mine[:1] * count)[:count] if mine else [0] * count
    return padded, [i < len(mine) for i in range(count)]


@torch.no_grad()
def evaluate(policy, reference: ReferenceLogprobs, pairs: EncodedPairs, config: DPOConfig, device) -> dict:
    """Implicit-reward accuracy, loss and margin on the held-out pairs, each process a shard, summed over all."""
    indices, real = evaluation_shard(len(pairs))
    totals = torch.zeros(4, dtype=torch.float64)  # correct (ties half), loss, margin, pairs
    for start in range(0, len(indices), config.eval_batch_size):
        idx, keep = indices[start:start + config.eval_batch_size], torch.tensor(real[start:start + config.eval_batch_size])
        ids, mask, response_mask, q_len = [t.to(device) if torch.is_tensor(t) else t
                                           for t in pair_batch(pairs, idx, reference.pad_id)]
        pc, pr = sequence_logprobs(policy, ids, mask, response_mask, q_len)
        rc, rr = reference("prefs_eval", idx, ids, mask, response_mask, q_len)
        h = log_ratio_margin(pc, pr, rc, rr).float().cpu()
        losses = preference_losses(pc, pr, rc, rr, config.loss, config.beta, config.label_smoothing).float().cpu()
        keep = keep.float()
        totals += torch.stack([(((h > 0).float() + 0.5 * (h == 0).float()) * keep).sum(), (losses * keep).sum(),
                               (h * keep).sum(), keep.sum()]).double()
    correct, loss, margin, count = distributed.all_sum(totals).tolist()
    return {"eval_accuracy": correct / count, "eval_loss": loss / count, "eval_margin": config.beta * margin / count}


def main(argv: list[str] | None = None) -> None:
    config = parse(DPOConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    accelerator = training.make_accelerator(config)
    batching = distributed.Batching.of(config.batch_size, config.micro_batch_size, distributed.world_size())
    distributed.configure_batching(accelerator, batching, config.max_grad_norm)
    device = accelerator.device
    tokenizer = load_tokenizer(config.policy)
    check_same_tokenizer(tokenizer, config.policy, config.reference)  # the reference reads the policy's ids
    train = load_split(tokenizer, config.data, "prefs_train")
    held_out = load_split(tokenizer, config.data, "prefs_eval")
    n_train = min(config.max_examples or len(train), len(train))

    with distributed.whole_models():  # loaded whole on each process; prepare shards it
        policy = load_causal_lm(config.policy, config.dtype)
    disable_dropout(policy)
    if config.gradient_checkpointing:
        training.enable_gradient_checkpointing(policy)
    if config.lora_r > 0:
        if training.shards_weights(accelerator):
            raise artifacts.StageError("dpo: LoRA is merged on one process; use the ddp accelerate config")
        from peft import LoraConfig, get_peft_model
        if config.gradient_checkpointing:
            policy.enable_input_require_grads()
        policy = get_peft_model(policy, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                   target_modules=list(config.lora_target_modules),
                                                   task_type="CAUSAL_LM"))
    keep_trainable_in_fp32(policy, accelerator)  # as every training stage: fp32 weights under bf16/fp16 autocast
    reference = ReferenceLogprobs(config, policy, accelerator, train, held_out, tokenizer.pad_token_id)
    optimizer = training.adamw(policy, config.lr, config.weight_decay)
    scheduler = training.linear_schedule(optimizer, config.steps, config.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(policy, optimizer, scheduler)
    start = training.try_resume(accelerator, config.out, config)
    rows: list[dict] = training.resume_extra(config.out).get("rows", []) if start else []
    batches = training.batch_indices(n_train, config.batch_size, config.seed, start)
    bar = training.progress(config.steps, start, "dpo", disable=not distributed.is_main())
    started = time.time()
    for step in range(start, config.steps):
        model.train()
        sums = torch.zeros(5, dtype=torch.float64)  # loss, correct, margin h, chosen and rejected log-ratios
        for idx in distributed.shard(next(batches)).split(batching.micro):
            ids, mask, response_mask, q_len = pair_batch(train, idx, tokenizer.pad_token_id)
            ids, mask, response_mask = ids.to(device), mask.to(device), response_mask.to(device)
            with training.micro_step(accelerator, model):
                pc, pr = sequence_logprobs(model, ids, mask, response_mask, q_len)
                rc, rr = reference("prefs_train", idx, ids, mask, response_mask, q_len)
                losses = preference_losses(pc, pr, rc, rr, config.loss, config.beta, config.label_smoothing)
                accelerator.backward(losses.sum() * (training.loss_scale(batching) / config.batch_size))
            h = log_ratio_margin(pc, pr, rc, rr).detach().float()
            sums += torch.stack([losses.detach().float().sum(), ((h > 0).float() + 0.5 * (h == 0).float()).sum(),
                                 h.sum(), (pc - rc).detach().float().sum(), (pr - rr).detach().float().sum()]).cpu().double()
        learning_rate = scheduler.get_last_lr()[0]
        training.finish_step(accelerator, model, optimizer, scheduler, config.max_grad_norm)
        loss, correct, margin, chosen, rejected = (distributed.all_sum(sums) / config.batch_size).tolist()
        row = {"step": step + 1, "pairs": (step + 1) * config.batch_size,
               "loss": training.finite_or_raise(loss, f"dpo loss at step {step}"),
               "accuracy": correct, "margin": config.beta * margin,
               "chosen_reward": config.beta * chosen, "rejected_reward": config.beta * rejected, "lr": learning_rate,
               "eval_accuracy": math.nan, "eval_loss": math.nan, "eval_margin": math.nan}
        if (step + 1) % config.eval_every == 0 or step + 1 == config.steps:
            model.eval()  # through the prepared model: under ZeRO-3 its forward gathers the shards
            row.update(evaluate(model, reference, held_out, config, device))
        rows.append(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['accuracy']:.2f}", refresh=False)
        if config.checkpoint_every and (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
            training.save_checkpoint(accelerator, config.out, step + 1, {"rows": rows}, config)
        else:
            training.stop_if_preempted(accelerator, config.out, step + 1, config.steps, {"rows": rows}, config)
    bar.close()

    peak_mb = distributed.all_max(distributed.peak_memory_mb(device))
    state_dict = training.full_state_dict(accelerator, model)  # a collective: every process gathers
    policy = accelerator.unwrap_model(model)
    if config.lora_r > 0:
        policy = policy.merge_and_unload()
    summary = {**rows[-1], "seconds": time.time() - started, "resumed_from_step": start,
               "reference": config.reference, "policy_init": config.policy,
               "reference_cached": bool(config.reference_logprobs),
               "reference_via_disabled_adapter": reference.uses_disabled_adapter,
               "processes": batching.world, "micro_batch_size": batching.micro,
               "accumulation": batching.accumulation, "peak_memory_mb": peak_mb}
    if distributed.release_workers():
        with artifacts.atomic_dir(config.out) as tmp:
            save_model(policy, tokenizer, tmp / "model", state_dict)
            artifacts.write_csv(tmp / "metrics.csv", rows)
            artifacts.write_json(tmp / "summary.json", summary)
            artifacts.write_metadata(tmp, "dpo", config, config.seed,
                                     extra={"eval_accuracy": summary["eval_accuracy"]})
        training.clear_checkpoints(config.out)
        print(f"dpo: {config.loss} beta {config.beta}, {config.steps} steps in {summary['seconds']:.1f}s; "
              f"held-out implicit-reward accuracy {summary['eval_accuracy']:.3f} -> {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
