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

Under ZeRO-3 the policy and value model are sharded and trained in full; sampling runs on
the policy's gathered weights (salsa.distributed.gathered_for_generation). Statistics that
shape the update (advantage whitening, the adaptive KL) are over every process's rollouts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from salsa import artifacts, distributed, training
from salsa.anchor import MovingAnchor
from salsa.args import arg, parse
from salsa.generation import Rollout, decode_responses, encode_prompts, sample
from salsa.modeling import load_tokenizer, response_logprobs, save_model, sequence_scores
from salsa.ppo_math import (AdaptiveKLController, FixedKLController, generalized_advantages, kl_per_token,
                            masked_mean, masked_whiten, policy_loss, token_rewards, value_loss)
from salsa.ppo_models import PolicyAndValue, Reference, check_backend, load_models, policy_state_dict  # noqa: F401
from salsa.reward import load_normalization


@dataclasses.dataclass
class PPOConfig(training.TrainingConfig, training.LoraSettings):
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
    mini_batch_size: int = arg(32, help="rollouts per gradient step on each process (micro_batch_size splits it "
                                        "further by gradient accumulation)")
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
    value_lora_r: int = arg(0, help="LoRA rank for the value model's backbone, score head trained fully "
                                    "(0 = full fine-tuning; 7B models need it on 80 GB GPUs)")
    rollout_samples: int = arg(16, help="rollouts written to rollouts.jsonl at the first and last update")
    anchor: str = arg("none", help="moving KL reference: none, ema (ref <- (1-rate) ref + rate policy after "
                                   "each update) or sync (ref <- policy every anchor_sync_every updates)",
                      choices=["none", "ema", "sync"])
    anchor_rate: float = arg(0.01, help="anchor ema: the rate eta")
    anchor_sync_every: int = arg(10, help="anchor sync: updates between syncs")

    def validate(self) -> None:
        if self.batch_size % self.mini_batch_size:
            raise ValueError("batch_size must be a multiple of mini_batch_size")
        if self.updates < 1 or self.ppo_epochs < 1:
            raise ValueError("updates and ppo_epochs must be positive")
        if self.micro_batch_size and self.mini_batch_size % self.micro_batch_size:
            raise ValueError("micro_batch_size must divide mini_batch_size")


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


@dataclasses.dataclass
class Scored:
    """A rollout with everything the update needs, computed before the policy moves."""

    rollout: Rollout
    prompts: list[str]
    texts: list[str]
    old_logprobs: torch.Tensor
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    raw_scores: torch.Tensor
    scores: torch.Tensor
    kl: torch.Tensor
    epoch_orders: list[torch.Tensor]


def generate(config, accelerator, model, unwrapped, tokenizer, prompts, sampler) -> Rollout:
    """1. Sample responses (under the autocast that scores them below) on the policy's full weights."""
    query_ids, query_mask = encode_prompts(tokenizer, prompts, accelerator.device)
    model.eval()
    with distributed.gathered_for_generation(accelerator, model, unwrapped.policy) as policy:
        with accelerator.autocast():
            return sample(policy, query_ids, query_mask, max_new_tokens=config.max_new_tokens,
                          eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                          temperature=config.temperature, generator=sampler)


@torch.no_grad()
def score(config, accelerator, unwrapped, models, tokenizer, rollout, prompts, sampler, gold, norm) -> Scored:
    """2-3. Old log-probs, reference log-probs, values and scores, in the minibatch chunks the first PPO
    epoch will use, so the first ratio is exactly 1 (same rows, same kernels)."""
    device = accelerator.device
    n = len(prompts)
    mb = min(config.mini_batch_size, n)
    epoch_orders = [torch.randperm(n, generator=sampler, device=sampler.device).to(device)
                    for _ in range(config.ppo_epochs)]
    ids, mask, q_len = rollout.input_ids, rollout.attention_mask, rollout.query_ids.shape[1]
    response_mask = rollout.response_mask.float()
    old_logprobs, ref_logprobs, old_values = (torch.zeros_like(response_mask) for _ in range(3))
    raw_scores = torch.zeros(n, device=device)
    for chunk in epoch_orders[0].split(mb):
        with accelerator.autocast():
            old_logprobs[chunk] = response_logprobs(unwrapped.policy, ids[chunk], mask[chunk], q_len,
                                                    config.temperature)
            old_values[chunk] = unwrapped.values(ids[chunk], mask[chunk], q_len)
            raw_scores[chunk] = sequence_scores(models.reward_model, ids[chunk], mask[chunk])
        ref_logprobs[chunk] = models.reference.logprobs(ids[chunk], mask[chunk], q_len, config.temperature)
    score_mean, score_std = norm
    scores = (raw_scores - score_mean) / score_std
    texts = decode_responses(tokenizer, rollout)
    if config.oracle_gold:
        if gold is None:
            raise artifacts.StageError(f"{config.data}/task.json: oracle_gold needs a task with a gold reward")
        scores = torch.tensor([gold(p, t) for p, t in zip(prompts, texts)], device=device)
    if config.missing_eos_score is not None:
        scores = torch.where(rollout.ended_with_eos, scores, torch.full_like(scores, config.missing_eos_score))
    else:
        scores = scores - config.missing_eos_penalty * (~rollout.ended_with_eos).float()
    old_logprobs, ref_logprobs = old_logprobs * response_mask, ref_logprobs * response_mask
    kl = kl_per_token(old_logprobs, ref_logprobs, config.kl_estimator) * response_mask
    return Scored(rollout, prompts, texts, old_logprobs, ref_logprobs, old_values, raw_scores, scores, kl,
                  epoch_orders)


def advantages(config, scored: Scored, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """4. Rewards = -beta * KL per token + score on the last token; GAE; whitening over all processes."""
    response_mask = scored.rollout.response_mask.float()
    rewards = token_rewards(scored.scores, scored.kl, response_mask, beta)
    adv, returns = generalized_advantages(rewards, scored.old_values, response_mask, config.gamma, config.lam)
    if config.whiten_advantages:
        adv = masked_whiten(adv, response_mask, all_sum=distributed.all_sum)
    return adv, returns


def optimise(config, accelerator, model, optimizer, scored: Scored, adv, returns, batching) -> dict:
    """5. Clipped policy and value loss, several epochs over minibatches (micro-batches accumulate)."""
    model.train()  # dropout is off everywhere; train() only matters for DDP's gradient hooks
    ids, mask = scored.rollout.input_ids, scored.rollout.attention_mask
    q_len, response_mask = scored.rollout.query_ids.shape[1], scored.rollout.response_mask.float()
    stats: dict[str, list[float]] = {k: [] for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac",
                                                     "approx_kl", "entropy")}
    first_ratio_deviation = None
    for order in scored.epoch_orders:
        for minibatch in order.split(min(config.mini_batch_size, len(order))):
            tokens = response_mask[minibatch].sum()
            sums = dict.fromkeys(stats, 0.0)
            for chunk in minibatch.split(batching.micro):
                m = response_mask[chunk]
                share = m.sum() / tokens  # 1 with one micro-batch: the minibatch's token mean, as before
                with training.micro_step(accelerator, model):
                    new_logprobs, entropy, new_values = model(ids[chunk], mask[chunk], q_len, config.temperature)
                    pg, clipfrac, approx_kl, ratio = policy_loss(new_logprobs, scored.old_logprobs[chunk],
                                                                 adv[chunk], m, config.cliprange)
                    vf, vf_clipfrac = value_loss(new_values, scored.old_values[chunk], returns[chunk], m,
                                                 config.cliprange_value)
                    loss = (pg + config.vf_coef * vf) * share
                    accelerator.backward(loss * batching.accumulation if batching.accumulation > 1 else loss)
                if first_ratio_deviation is None:
                    first_ratio_deviation = ((ratio - 1.0).abs() * m).max().item()
                for key, value in (("pg_loss", pg), ("vf_loss", vf), ("clipfrac", clipfrac),
                                   ("vf_clipfrac", vf_clipfrac), ("approx_kl", approx_kl),
                                   ("entropy", masked_mean(entropy.detach(), m))):
                    sums[key] += (value * share).item()
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            for key, value in sums.items():
                stats[key].append(value)
    # losses: this process's minibatches, averaged over processes
    return {**{k: distributed.all_mean(sum(v) / len(v)) for k, v in stats.items()},
            "ratio_deviation_first_minibatch": distributed.all_max(first_ratio_deviation)}


def bookkeeping(config, scored: Scored, update: int, beta: float, gold) -> tuple[dict, dict]:
    """Per-update metrics over the whole batch (every process's rollouts), so all processes agree."""
    rollout, device = scored.rollout, scored.scores.device
    response_mask = rollout.response_mask.float()
    sequence_kl = scored.kl.sum(1)
    lengths = rollout.response_lengths.float() - rollout.ended_with_eos.float()  # EOS is not content
    gold_scores = torch.tensor([gold(p, t) for p, t in zip(scored.prompts, scored.texts)] if gold
                               else [math.nan] * len(scored.prompts), device=device)
    per_sample = {name: distributed.gather(value.float()) for name, value in {
        "score": scored.scores, "raw": scored.raw_scores, "gold": gold_scores, "kl": sequence_kl,
        "kl_k1": (kl_per_token(scored.old_logprobs, scored.ref_logprobs, "k1") * response_mask).sum(1),
        "kl_k3": (kl_per_token(scored.old_logprobs, scored.ref_logprobs, "k3") * response_mask).sum(1),
        "length": lengths, "no_eos": (~rollout.ended_with_eos).float()}.items()}
    row = {
        "update": update + 1, "episodes": (update + 1) * config.batch_size,
        "proxy_score": per_sample["score"].mean().item(), "proxy_score_raw": per_sample["raw"].mean().item(),
        "gold": per_sample["gold"].mean().item(),
        "kl": per_sample["kl_k1"].mean().item(), "kl_k3": per_sample["kl_k3"].mean().item(),
        "beta": beta, "non_score_reward": (-beta * per_sample["kl"]).mean().item(),
        "response_length": per_sample["length"].mean().item(),
        "empty_fraction": (per_sample["length"] == 0).float().mean().item(),
        "no_eos_fraction": per_sample["no_eos"].mean().item(),
    }
    return row, per_sample


def main(argv: list[str] | None = None) -> None:
    config = parse(PPOConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    accelerator = training.make_accelerator(config)
    world = distributed.world_size()
    if config.batch_size % (world * config.mini_batch_size):
        raise artifacts.StageError(f"ppo: batch_size {config.batch_size} must be a multiple of mini_batch_size "
                                   f"{config.mini_batch_size} x {world} processes")
    batching = distributed.Batching.of(world * config.mini_batch_size, config.micro_batch_size, world,
                                       "mini_batch_size x processes")
    distributed.configure_batching(accelerator, batching, config.max_grad_norm)
    check_backend(config, accelerator)
    device = accelerator.device
    tokenizer = load_tokenizer(config.policy)
    for other in (config.reward_model, config.value_model):  # all read the policy's ids (the reference: below)
        if other:
            from salsa.modeling import check_same_tokenizer
            check_same_tokenizer(tokenizer, config.policy, other)
    prompts = load_prompts(config.data)
    gold = gold_judge(config.data)
    norm = load_normalization(config.reward_model)
    models = load_models(config, accelerator, tokenizer, *norm)
    anchor = MovingAnchor(config, models.reference, accelerator)  # anchor none: the reference stays put
    # plain Adam as in the reference implementation: no weight decay pulling toward zero
    optimizer = torch.optim.AdamW([p for p in models.trained.parameters() if p.requires_grad], lr=config.lr,
                                  eps=config.adam_eps, weight_decay=config.weight_decay,
                                  fused=device.type in ("cpu", "cuda") and not distributed.uses_deepspeed(accelerator))
    scheduler = training.linear_schedule(optimizer, config.updates, config.warmup_updates)
    model, optimizer, scheduler = accelerator.prepare(models.trained, optimizer, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    kl_controller = (AdaptiveKLController(config.kl_coef, config.target_kl, config.kl_horizon)
                     if config.adaptive_kl else FixedKLController(config.kl_coef))
    # each process draws its own samples, on its device (no copy per sampled token); process 0 keeps the
    # single-process stream
    sampler = torch.Generator(device=device).manual_seed(config.seed + 1_000_003 * distributed.rank())
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
    bar = training.progress(config.updates, start, "ppo", disable=not distributed.is_main())
    training.start_tracking(accelerator, config, "ppo", resumed=start > 0)
    started = time.time()

    for update in range(start, config.updates):
        t0 = time.time()
        batch_prompts = [prompts[int(i)] for i in distributed.shard(next(prompt_batches))]
        rollout = generate(config, accelerator, model, unwrapped, tokenizer, batch_prompts, sampler)
        t1 = time.time()
        scored = score(config, accelerator, unwrapped, models, tokenizer, rollout, batch_prompts, sampler, gold,
                       norm)
        beta = kl_controller.beta
        adv, returns = advantages(config, scored, beta)
        t2 = time.time()
        losses = optimise(config, accelerator, model, optimizer, scored, adv, returns, batching)
        learning_rate = scheduler.get_last_lr()[0]  # the rate this update used
        scheduler.step()
        anchor.after_update(unwrapped.policy, update)
        t3 = time.time()

        row, per_sample = bookkeeping(config, scored, update, beta, gold)
        kl_controller.update(per_sample["kl"].mean().item(), config.batch_size)
        response_mask = rollout.response_mask.float()
        row.update({
            **losses,
            **anchor.kl_to_initial(scored.old_logprobs, rollout.input_ids, rollout.attention_mask,
                                   rollout.query_ids.shape[1], config.temperature, response_mask,
                                   min(config.mini_batch_size, len(batch_prompts))),
            # sampler vs scorer: 0 up to kernel rounding when both run under the same autocast
            "sample_logprob_gap": distributed.all_max(
                ((rollout.logprobs - scored.old_logprobs).abs() * response_mask).max().item()),
            "lr": learning_rate, "time_generate": t1 - t0, "time_score": t2 - t1, "time_train": t3 - t2,
            "peak_memory_mb": distributed.all_max(distributed.peak_memory_mb(device)),
        })
        rows.append(row)
        training.log_metrics(accelerator, row, update + 1)
        if update == 0 or update == config.updates - 1:
            rollout_log += _rollout_records(update + 1, scored, gold, config.rollout_samples)
        bar.update(1)
        bar.set_postfix(score=f"{row['proxy_score']:.2f}", kl=f"{row['kl']:.2f}", gold=f"{row['gold']:.2f}",
                        refresh=False)
        loop_state = {"beta": kl_controller.beta, "rows": rows, "rollout_log": rollout_log}
        files = {"sampler.pt": sampler.get_state(), **anchor.checkpoint_files()}
        if config.checkpoint_every and (update + 1) % config.checkpoint_every == 0 and update + 1 < config.updates:
            training.save_checkpoint(accelerator, config.out, update + 1, loop_state, config, files=files)
        else:
            training.stop_if_preempted(accelerator, config.out, update + 1, config.updates, loop_state, config,
                                       files)
    bar.close()
    training.end_tracking(accelerator)
    save(config, accelerator, model, tokenizer, rows, rollout_log, models.reference, start, started)


def save(config, accelerator, model, tokenizer, rows, rollout_log, reference, start, started) -> None:
    """The final policy (gathered under ZeRO-3, LoRA merged), metrics, rollouts and summary, by the main process."""
    state_dict = policy_state_dict(accelerator, model)  # a collective: every process gathers
    policy = accelerator.unwrap_model(model).policy
    if config.lora_r > 0:
        policy = policy.merge_and_unload()
    summary = {**rows[-1], "seconds": time.time() - started, "resumed_from_update": start,
               "reference": config.reference, "policy_init": config.policy, "processes": distributed.world_size(),
               "reference_via_disabled_adapter": reference.uses_disabled_adapter}
    if not distributed.release_workers():
        return
    with artifacts.atomic_dir(config.out) as tmp:
        save_model(policy, tokenizer, tmp / "model", state_dict)
        artifacts.write_csv(tmp / "metrics.csv", rows)
        with open(tmp / "rollouts.jsonl", "w") as handle:
            for record in rollout_log:
                handle.write(json.dumps(record) + "\n")
        artifacts.write_json(tmp / "summary.json", summary)
        artifacts.write_metadata(tmp, "ppo", config, config.seed)
    training.clear_checkpoints(config.out)
    row = rows[-1]
    print(f"ppo: {config.updates} updates in {summary['seconds']:.1f}s; last batch score {row['proxy_score']:.3f}, "
          f"KL {row['kl']:.3f}, gold {row['gold']:.3f}, length {row['response_length']:.2f} -> {config.out}")


def _rollout_records(update, scored: Scored, gold, limit):
    rollout, records = scored.rollout, []
    sequence_kl, ref_logprob = scored.kl.sum(1), scored.ref_logprobs.sum(1)
    for i in range(min(limit, len(scored.prompts))):
        records.append({
            "update": update, "prompt": scored.prompts[i], "response": scored.texts[i],
            "query_ids": rollout.query_ids[i][rollout.query_mask[i].bool()].tolist(),
            "response_ids": rollout.response_ids[i][rollout.response_mask[i].bool()].tolist(),
            "score": scored.scores[i].item(), "kl": sequence_kl[i].item(), "ref_logprob": ref_logprob[i].item(),
            "gold": gold(scored.prompts[i], scored.texts[i]) if gold else None,
        })
    return records


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
