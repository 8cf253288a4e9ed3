"""Stage `ppo`: PPO against a learned reward with a KL penalty to a reference.

The reference is whatever the config names - an SFT model for plain PPO,
the soup for SALSA - and it is loaded from that path, never inferred. The
one shortcut: when the policy trains a LoRA adapter on top of the very
checkpoint that is also the reference, the reference is that checkpoint
with the adapter disabled (one copy of the weights in memory).

One update, top to bottom (Huang et al. 2024, "The N implementation
details of RLHF with PPO", for the choices):
  1. sample responses to a batch of left-padded prompts (top-k 0, top-p 1);
  2. truncate after EOS; score with the reward model, normalised; penalise
     responses without EOS;
  3. log-probs of policy and reference, values from the value model;
  4. rewards = -beta * KL per token + score on the last token; GAE; whiten;
  5. several epochs of clipped policy and value loss over minibatches.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from salsa import artifacts, training
from salsa.anchor import MovingAnchor
from salsa.args import arg, parse
from salsa.generation import Rollout, decode_responses, encode_prompts, sample
from salsa.modeling import (check_same_tokenizer, disable_dropout, keep_trainable_in_fp32, load_causal_lm,
                            load_reward_model, load_tokenizer, mixed_precision_mode, response_logprobs,
                            response_values, same_path, save_model, score_head, sequence_scores)
from salsa.ppo_math import (AdaptiveKLController, FixedKLController, generalized_advantages, kl_per_token,
                            masked_mean, masked_whiten, policy_loss, token_rewards, value_loss)
from salsa.reward import load_normalization


@dataclasses.dataclass
class PPOConfig:
    """PPO with a KL penalty to a configurable reference (SFT model or soup)."""

    policy: str = arg(help="initial policy (model directory or Hub id)")
    reference: str = arg(help="KL reference (model directory or Hub id)")
    reward_model: str = arg(help="reward-model directory (with reward_normalization.json)")
    data: str = arg(help="prepared data directory with ppo_prompts/ (and task.json for the gold reward)")
    out: str = arg(help="output directory: final policy, metrics.csv, rollouts.jsonl")
    value_model: str = arg("", help="value-model init (default: the reward model)")
    seed: int = arg(0, help="prompt order and sampling")
    updates: int = arg(40, help="PPO updates (each: one rollout batch)")
    batch_size: int = arg(64, help="prompts per rollout batch")
    mini_batch_size: int = arg(32, help="rollouts per gradient step on each process")
    ppo_epochs: int = arg(4, help="passes over each rollout batch")
    max_new_tokens: int = arg(16, help="response length limit")
    temperature: float = arg(1.0, help="sampling temperature (log-probs use the same scaling)")
    lr: float = arg(3e-4, help="learning rate, annealed linearly to zero")
    warmup_updates: int = arg(0, help="linear learning-rate warm-up over the first N updates: Adam's first steps "
                                      "move every weight by ~lr whatever its gradient (docs/results.md, early KL jump)")
    adam_eps: float = arg(1e-5, help="Adam epsilon")
    max_grad_norm: float = arg(1.0, help="gradient clipping")
    kl_coef: float = arg(0.05, help="beta: weight of the KL penalty (initial value when adaptive)")
    kl_estimator: str = arg("k1", help="per-token KL estimator in the reward", choices=["k1", "k3"])
    adaptive_kl: bool = arg(False, help="adapt beta to reach target_kl")
    target_kl: float = arg(1.0, help="adaptive KL: target sequence KL (nats)")
    kl_horizon: int = arg(10000, help="adaptive KL: horizon in episodes")
    gamma: float = arg(1.0, help="discount")
    lam: float = arg(0.95, help="GAE lambda")
    cliprange: float = arg(0.2, help="policy ratio clip")
    cliprange_value: float = arg(0.2, help="value clip")
    vf_coef: float = arg(0.1, help="value loss weight")
    whiten_advantages: bool = arg(True, help="whiten advantages per batch")
    missing_eos_penalty: float = arg(1.0, help="subtracted from the score of a response without EOS")
    missing_eos_score: float | None = arg(None, help="if set, replaces the score of a response without EOS")
    oracle_gold: bool = arg(False, help="score with the task's gold reward instead of the reward model (upper bound)")
    lora_r: int = arg(0, help="LoRA rank for the policy (0 = full fine-tuning)")
    lora_alpha: int = arg(16, help="LoRA alpha")
    lora_target_modules: list[str] = arg(["q_proj", "k_proj", "v_proj", "o_proj"], help="modules LoRA adapts")
    value_lora_r: int = arg(0, help="LoRA rank for the value model's backbone, score head trained fully "
                                    "(0 = full fine-tuning; 7B models need it on 80 GB GPUs)")
    dtype: str = arg("float32", help="weights dtype")
    mixed_precision: str = arg("no", help="accelerate mixed precision: no, bf16 or fp16")
    rollout_samples: int = arg(16, help="rollouts written to rollouts.jsonl at the first and last update")
    checkpoint_every: int = arg(0, help="save a resumable checkpoint every N updates (0 = never)")
    threads: int = arg(0, help="torch CPU threads (0 = torch default)")
    anchor: str = arg("none", help="moving KL reference: none, ema (ref <- (1-rate) ref + rate policy after "
                                   "each update) or sync (ref <- policy every anchor_sync_every updates)",
                      choices=["none", "ema", "sync"])
    anchor_rate: float = arg(0.01, help="anchor ema: the rate eta")
    anchor_sync_every: int = arg(10, help="anchor sync: updates between syncs")
    report_to: list[str] = arg([], help="experiment trackers: tensorboard, wandb (none by default)")
    tracking_dir: str = arg("", help="tracking logs root (default: <out>.tracking next to the output)")
    run_name: str = arg("", help="tracker run name (default: the output's path below --tracking-dir's parent, else its name)")

    def validate(self) -> None:
        if self.batch_size % self.mini_batch_size:
            raise ValueError("batch_size must be a multiple of mini_batch_size")
        if self.updates < 1 or self.ppo_epochs < 1:
            raise ValueError("updates and ppo_epochs must be positive")


class Reference:
    """Reference log-probs: a frozen model, or the policy with its LoRA adapter disabled."""

    def __init__(self, config: PPOConfig, policy, accelerator):
        self.policy = policy
        self.accelerator = accelerator  # the reference runs under the policy's autocast: no spurious KL
        self.uses_disabled_adapter = config.lora_r > 0 and same_path(config.policy, config.reference)
        self.model = None
        if not self.uses_disabled_adapter:
            self.model = load_causal_lm(config.reference, config.dtype).to(accelerator.device).eval()
            if config.lora_r == 0:  # a fully trained policy holds fp32 weights: so does its reference, or
                self.model.to(next(policy.parameters()).dtype)  # KL(init || init) is not 0 in bf16
            disable_dropout(self.model)
            self.model.requires_grad_(False)

    @torch.no_grad()
    def logprobs(self, ids, mask, query_length, temperature):
        with self.accelerator.autocast():
            if self.uses_disabled_adapter:
                with self.policy.disable_adapter():
                    return response_logprobs(self.policy, ids, mask, query_length, temperature)
            return response_logprobs(self.model, ids, mask, query_length, temperature)


class PolicyAndValue(torch.nn.Module):
    """Policy and value model in one module, so a single DDP wrapper synchronises both.

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


def load_prompts(data: str) -> list[str]:
    return list(artifacts.load_split(f"{data}/ppo_prompts", ("prompt",))["prompt"])


def gold_judge(data: str):
    """The embedded task's gold reward, or None for data without one."""
    task_file = Path(data) / "task.json"
    if not task_file.exists():
        return None
    from salsa.task import gold_reward

    penalty = float(artifacts.read_json(task_file).get("extra_penalty", 1.0))
    return lambda prompt, response: gold_reward(prompt, response, penalty)


def main(argv: list[str] | None = None) -> None:
    config = parse(PPOConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    accelerator = training.make_accelerator(mixed_precision_mode(config.dtype, config.mixed_precision), config.seed,
                                            training.experiment_trackers(config))
    if training.shards_weights(accelerator):  # each process samples its own rollouts: no weight sharding
        raise artifacts.StageError("ppo: use the ddp accelerate config (with lora_r for 7B models), "
                                   "not ZeRO-3/FSDP")
    if config.batch_size % (accelerator.num_processes * config.mini_batch_size):
        raise artifacts.StageError(f"ppo: batch_size {config.batch_size} must be a multiple of mini_batch_size "
                                   f"{config.mini_batch_size} x {accelerator.num_processes} processes")
    device = accelerator.device
    tokenizer = load_tokenizer(config.policy)
    for other in (config.reference, config.reward_model, config.value_model):  # all read the policy's ids
        if other:
            check_same_tokenizer(tokenizer, config.policy, other)
    prompts = load_prompts(config.data)
    gold = gold_judge(config.data)
    score_mean, score_std = load_normalization(config.reward_model)

    policy = load_causal_lm(config.policy, config.dtype)
    disable_dropout(policy)
    if config.lora_r > 0:
        from peft import LoraConfig, get_peft_model
        policy = get_peft_model(policy, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                   target_modules=list(config.lora_target_modules),
                                                   task_type="CAUSAL_LM"))
    value_model = load_reward_model(config.value_model or config.reward_model, config.dtype)
    disable_dropout(value_model)
    if config.value_lora_r > 0:  # adapt the backbone only: token_scores reads it by base_model_prefix
        from peft import LoraConfig, get_peft_model
        backbone = getattr(value_model, value_model.base_model_prefix)
        setattr(value_model, value_model.base_model_prefix, get_peft_model(backbone, LoraConfig(
            r=config.value_lora_r, lora_alpha=config.lora_alpha, target_modules=list(config.lora_target_modules))))
    keep_trainable_in_fp32(policy, accelerator)  # LoRA: the adapter only; the frozen base stays as loaded
    keep_trainable_in_fp32(value_model, accelerator)  # the value head (and trained backbone) in fp32
    value_offset = 0.0
    if not config.value_model:  # start the values on the normalised reward's scale
        with torch.no_grad():
            score_head(value_model).weight.div_(score_std)
        value_offset = -score_mean / score_std
    reward_model = load_reward_model(config.reward_model, config.dtype).to(device).eval()
    reward_model.requires_grad_(False)
    reference = Reference(config, policy, accelerator)
    anchor = MovingAnchor(config, reference, accelerator)  # anchor none: the reference stays where it is
    model = PolicyAndValue(policy, value_model, value_offset)

    # plain Adam as in the reference implementation: no weight decay pulling toward zero
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.lr,
                                  eps=config.adam_eps, weight_decay=0.0, fused=device.type in ("cpu", "cuda"))
    scheduler = training.linear_schedule(optimizer, config.updates, config.warmup_updates)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    kl_controller = (AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                     if config.adaptive_kl else FixedKLController(config.kl_coef))
    # each process draws its own samples; process 0 keeps the single-process stream
    sampler = torch.Generator().manual_seed(config.seed + 1_000_003 * accelerator.process_index)
    start = training.try_resume(accelerator, config.out, config)
    rows: list[dict] = []
    rollout_log: list[dict] = []
    if start:  # the loop state accelerate does not know about
        state = training.resume_extra(config.out)
        kl_controller.beta, rows, rollout_log = state["beta"], state["rows"], state["rollout_log"]
        sampler.set_state(torch.load(training.resume_file(config.out, "sampler.pt")))
        if anchor.active:
            anchor.resume(training.resume_file(config.out, "anchor.pt"))
    prompt_batches = training.batch_indices(len(prompts), config.batch_size, config.seed, start)
    bar = training.progress(config.updates, start, "ppo", disable=not accelerator.is_main_process)
    training.start_tracking(accelerator, config, "ppo", resumed=start > 0)
    started = time.time()

    for update in range(start, config.updates):
        # 1-2. rollout
        t0 = time.time()
        batch_prompts = [prompts[int(i)] for i in training.shard_for_process(next(prompt_batches), accelerator)]
        query_ids, query_mask = encode_prompts(tokenizer, batch_prompts, device)
        model.eval()
        with accelerator.autocast():  # the autocast that scores the rollout below
            rollout = sample(unwrapped.policy, query_ids, query_mask, max_new_tokens=config.max_new_tokens,
                             eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                             temperature=config.temperature, generator=sampler)
        t1 = time.time()

        # 3. old log-probs, reference log-probs, values, scores - in the minibatch chunks the
        # first PPO epoch will use, so the first ratio is exactly 1 (same rows, same kernels)
        n = len(batch_prompts)
        mb = min(config.mini_batch_size, n)
        epoch_orders = [torch.randperm(n, generator=sampler) for _ in range(config.ppo_epochs)]
        ids, mask, q_len = rollout.input_ids, rollout.attention_mask, rollout.query_ids.shape[1]
        response_mask = rollout.response_mask.float()
        old_logprobs = torch.zeros_like(response_mask)
        ref_logprobs = torch.zeros_like(response_mask)
        old_values = torch.zeros_like(response_mask)
        raw_scores = torch.zeros(n, device=device)
        with torch.no_grad():
            for chunk in epoch_orders[0].split(mb):
                with accelerator.autocast():
                    old_logprobs[chunk] = response_logprobs(unwrapped.policy, ids[chunk], mask[chunk], q_len,
                                                            config.temperature)
                    old_values[chunk] = unwrapped.values(ids[chunk], mask[chunk], q_len)
                    raw_scores[chunk] = sequence_scores(reward_model, ids[chunk], mask[chunk])
                ref_logprobs[chunk] = reference.logprobs(ids[chunk], mask[chunk], q_len, config.temperature)
        scores = (raw_scores - score_mean) / score_std
        texts = decode_responses(tokenizer, rollout)
        if config.oracle_gold:
            if gold is None:
                raise artifacts.StageError(f"{config.data}/task.json: oracle_gold needs a task with a gold reward")
            scores = torch.tensor([gold(p, t) for p, t in zip(batch_prompts, texts)], device=device)
        if config.missing_eos_score is not None:
            scores = torch.where(rollout.ended_with_eos, scores, torch.full_like(scores, config.missing_eos_score))
        else:
            scores = scores - config.missing_eos_penalty * (~rollout.ended_with_eos).float()

        # 4. rewards and advantages
        old_logprobs, ref_logprobs = old_logprobs * response_mask, ref_logprobs * response_mask
        kl = kl_per_token(old_logprobs, ref_logprobs, config.kl_estimator) * response_mask
        beta = kl_controller.beta
        rewards = token_rewards(scores, kl, response_mask, beta)
        advantages, returns = generalized_advantages(rewards, old_values, response_mask, config.gamma, config.lam)
        if config.whiten_advantages:
            advantages = masked_whiten(advantages, response_mask)
        t2 = time.time()

        # 5. optimisation epochs
        model.train()  # dropout is off everywhere; train() only matters for DDP's gradient hooks
        stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac",
                                                         "approx_kl", "entropy")}
        first_ratio_deviation = None
        for order in epoch_orders:
            for chunk in order.split(mb):
                m = response_mask[chunk]
                new_logprobs, entropy, new_values = model(ids[chunk], mask[chunk], q_len, config.temperature)
                pg, clipfrac, approx_kl, ratio = policy_loss(new_logprobs, old_logprobs[chunk], advantages[chunk],
                                                             m, config.cliprange)
                vf, vf_clipfrac = value_loss(new_values, old_values[chunk], returns[chunk], m, config.cliprange_value)
                if first_ratio_deviation is None:
                    first_ratio_deviation = ((ratio - 1.0).abs() * m).max().item()
                loss = pg + config.vf_coef * vf
                accelerator.backward(loss)
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                for key, value in (("pg_loss", pg), ("vf_loss", vf), ("clipfrac", clipfrac),
                                   ("vf_clipfrac", vf_clipfrac), ("approx_kl", approx_kl),
                                   ("entropy", masked_mean(entropy.detach(), m))):
                    stats[key].append(value.item())
        learning_rate = scheduler.get_last_lr()[0]  # the rate this update used
        scheduler.step()
        anchor.after_update(unwrapped.policy, update)
        t3 = time.time()

        # bookkeeping over the whole batch (every process's rollouts), so all processes agree on beta
        sequence_kl = kl.sum(1)
        lengths = rollout.response_lengths.float() - rollout.ended_with_eos.float()  # EOS is not content
        gold_scores = torch.tensor([gold(p, t) for p, t in zip(batch_prompts, texts)] if gold else [math.nan] * n,
                                   device=device)
        per_sample = {name: accelerator.gather(value.float()) for name, value in {
            "score": scores, "raw": raw_scores, "gold": gold_scores, "kl": sequence_kl,
            "kl_k1": (kl_per_token(old_logprobs, ref_logprobs, "k1") * response_mask).sum(1),
            "kl_k3": (kl_per_token(old_logprobs, ref_logprobs, "k3") * response_mask).sum(1),
            "length": lengths, "no_eos": (~rollout.ended_with_eos).float()}.items()}
        kl_controller.update(per_sample["kl"].mean().item(), config.batch_size)
        row = {
            "update": update + 1, "episodes": (update + 1) * config.batch_size,
            "proxy_score": per_sample["score"].mean().item(), "proxy_score_raw": per_sample["raw"].mean().item(),
            "gold": per_sample["gold"].mean().item(),
            "kl": per_sample["kl_k1"].mean().item(), "kl_k3": per_sample["kl_k3"].mean().item(),
            "beta": beta, "non_score_reward": (-beta * per_sample["kl"]).mean().item(),
            "response_length": per_sample["length"].mean().item(),
            "empty_fraction": (per_sample["length"] == 0).float().mean().item(),
            "no_eos_fraction": per_sample["no_eos"].mean().item(),
            **{k: sum(v) / len(v) for k, v in stats.items()},  # losses: this process's minibatches
            "ratio_deviation_first_minibatch": first_ratio_deviation,
            **anchor.kl_to_initial(old_logprobs, ids, mask, q_len, config.temperature, response_mask, mb),
            # sampler vs scorer: 0 up to kernel rounding when both run under the same autocast
            "sample_logprob_gap": ((rollout.logprobs - old_logprobs).abs() * response_mask).max().item(),
            "lr": learning_rate,
            "time_generate": t1 - t0, "time_score": t2 - t1, "time_train": t3 - t2,
        }
        rows.append(row)
        training.log_metrics(accelerator, row, update + 1)
        if update == 0 or update == config.updates - 1:
            rollout_log += _rollout_records(update + 1, batch_prompts, texts, rollout, scores, sequence_kl,
                                            ref_logprobs.sum(1), gold, config.rollout_samples)
        bar.update(1)
        bar.set_postfix(score=f"{row['proxy_score']:.2f}", kl=f"{row['kl']:.2f}", gold=f"{row['gold']:.2f}",
                        refresh=False)
        if config.checkpoint_every and (update + 1) % config.checkpoint_every == 0 and update + 1 < config.updates:
            training.save_checkpoint(accelerator, config.out, update + 1,
                                     {"beta": kl_controller.beta, "rows": rows, "rollout_log": rollout_log},
                                     config, files={"sampler.pt": sampler.get_state(), **anchor.checkpoint_files()})
    bar.close()
    training.end_tracking(accelerator)

    policy = accelerator.unwrap_model(model).policy
    if config.lora_r > 0:
        policy = policy.merge_and_unload()
    summary = {**rows[-1], "seconds": time.time() - started, "resumed_from_update": start,
               "reference": config.reference, "policy_init": config.policy,
               "reference_via_disabled_adapter": reference.uses_disabled_adapter}
    if accelerator.is_main_process:
        with artifacts.atomic_dir(config.out) as tmp:
            save_model(policy, tokenizer, tmp / "model")
            artifacts.write_csv(tmp / "metrics.csv", rows)
            with open(tmp / "rollouts.jsonl", "w") as handle:
                for record in rollout_log:
                    handle.write(json.dumps(record) + "\n")
            artifacts.write_json(tmp / "summary.json", summary)
            artifacts.write_metadata(tmp, "ppo", config, config.seed)
        training.clear_checkpoints(config.out)
    print(f"ppo: {config.updates} updates in {summary['seconds']:.1f}s; last batch score {row['proxy_score']:.3f}, "
          f"KL {row['kl']:.3f}, gold {row['gold']:.3f}, length {row['response_length']:.2f} -> {config.out}")


def _rollout_records(update, prompts, texts, rollout: Rollout, scores, sequence_kl, ref_logprob, gold, limit):
    records = []
    for i in range(min(limit, len(prompts))):
        records.append({
            "update": update, "prompt": prompts[i], "response": texts[i],
            "query_ids": rollout.query_ids[i][rollout.query_mask[i].bool()].tolist(),
            "response_ids": rollout.response_ids[i][rollout.response_mask[i].bool()].tolist(),
            "score": scores[i].item(), "kl": sequence_kl[i].item(), "ref_logprob": ref_logprob[i].item(),
            "gold": gold(prompts[i], texts[i]) if gold else None,
        })
    return records


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
