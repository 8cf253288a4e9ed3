"""Stage `reward_model`: a Bradley-Terry reward model on preference pairs.

loss = -log sigmoid(r(chosen) - r(rejected) - margin)

After training, the reward is normalised against the policy PPO starts from:
a gain and bias such that that policy's samples score mean 0 and std 1
(Ziegler et al. 2019; N implementation details #23). Both PPO methods use the
same normalisation, so a given response earns the same reward in either.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time

import torch
import torch.nn.functional as F

from salsa import artifacts, distributed, training
from salsa.args import arg, parse
from salsa.generation import encode_prompts, left_pad, sample
from salsa.modeling import (check_same_tokenizer, disable_dropout, keep_trainable_in_fp32, load_causal_lm,
                            load_reward_model, load_tokenizer, save_model, sequence_scores, torch_dtype)

NORMALIZATION_FILE = "reward_normalization.json"


@dataclasses.dataclass
class RewardConfig(training.TrainingConfig):
    """Train a Bradley-Terry reward model and normalise it against a policy's samples."""

    model: str = arg(help="initialisation: an SFT model or the base (a causal-LM directory or Hub id)")
    data: str = arg(help="prepared data directory (prefs_train/, prefs_eval/, ppo_prompts/)")
    out: str = arg(help="output reward-model directory")
    normalize_policy: str = arg("", help="policy whose samples define mean 0 / std 1 (empty: skip, gain 1 bias 0)")
    seed: int = arg(0, help="data order and score-head init")
    init_head: str = arg("", help="start the score head from this file (salsa.reward_probe's score_head.safetensors: "
                         "WARM's shared linear probe) instead of a fresh one from --seed")
    steps: int = arg(300, help="optimiser steps")
    batch_size: int = arg(32, help="preference pairs per optimiser step, over all processes")
    warmup_steps: int = arg(20, help="linear warm-up steps, then linear decay to zero")
    margin_column: str = arg("", help="dataset column with a per-pair margin (empty: no margin)")
    margin_scale: float = arg(1.0, help="multiplier on the margin column")
    max_examples: int = arg(0, help="use only the first N training pairs (0 = all)")
    normalize_samples: int = arg(256, help="policy samples used for the normalisation")
    max_new_tokens: int = arg(16, help="response length of normalisation samples")
    temperature: float = arg(1.0, help="sampling temperature of normalisation samples (match PPO's)")


def pair_tokens(tokenizer, prompts: list[str], responses: list[str]) -> list[list[int]]:
    """Generation prompt + response tokens + EOS of each pair, unpadded.

    Built the way PPO's rollouts are (not from the full chat template, which may add
    text after EOS), so the reward model is trained on the very token it is read at.
    """
    ids = []
    for prompt, response in zip(prompts, responses):
        query = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True)
        ids.append(tokenizer(query, add_special_tokens=False)["input_ids"]
                   + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return ids


def encode_pairs(tokenizer, prompts: list[str], responses: list[str]):
    """``pair_tokens`` left-padded into one batch."""
    return left_pad(pair_tokens(tokenizer, prompts, responses), tokenizer.pad_token_id)


def bradley_terry_losses(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None):
    """Per-pair -log sigmoid(r(chosen) - r(rejected) - margin)."""
    return -F.logsigmoid(chosen - rejected - (margin if margin is not None else 0.0))


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None):
    return bradley_terry_losses(chosen, rejected, margin).mean()


def load_pairs(path: str, margin_column: str = "", max_examples: int = 0) -> dict[str, list]:
    needed = {"prompt", "chosen", "rejected"} | ({margin_column} if margin_column else set())
    dataset = artifacts.load_split(path, tuple(sorted(needed)))
    if max_examples:
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    return {name: list(dataset[name]) for name in needed}


@torch.no_grad()
def score_texts(model, tokenizer, prompts, responses, batch_size: int = 128) -> torch.Tensor:
    scores = []
    for i in range(0, len(prompts), batch_size):
        ids, mask = encode_pairs(tokenizer, prompts[i:i + batch_size], responses[i:i + batch_size])
        scores.append(sequence_scores(model, ids.to(model.device), mask.to(model.device)).cpu())
    return torch.cat(scores) if scores else torch.zeros(0)


def evaluate_pairs(model, tokenizer, pairs: dict[str, list]) -> dict:
    chosen = score_texts(model, tokenizer, pairs["prompt"], pairs["chosen"])
    rejected = score_texts(model, tokenizer, pairs["prompt"], pairs["rejected"])
    def describe(x: torch.Tensor) -> dict:
        q = torch.quantile(x, torch.tensor([0.1, 0.5, 0.9]))
        return {"mean": x.mean().item(), "std": x.std().item(), "p10": q[0].item(), "p50": q[1].item(),
                "p90": q[2].item()}
    return {"accuracy": (chosen > rejected).float().mean().item()
            + 0.5 * (chosen == rejected).float().mean().item(),
            "pairs": len(chosen), "chosen": describe(chosen), "rejected": describe(rejected),
            # per pair, in the split's order: McNemar between reward models on the same pairs (reward_report)
            "correct": ((chosen > rejected).float() + 0.5 * (chosen == rejected).float()).tolist(),
            "margin": (chosen - rejected).tolist()}


class SequenceScorer(torch.nn.Module):
    """The reward model behind one forward(), so DDP and accelerate's autocast wrap the scores."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return sequence_scores(self.model, input_ids, attention_mask)


@torch.no_grad()
def normalization_stats(reward_model, tokenizer, policy_path: str, prompts: list[str], config,
                        autocast=contextlib.nullcontext) -> dict:
    """``autocast``: the context PPO samples and scores its rollouts under (the stage's mixed precision)."""
    device = reward_model.device
    with distributed.whole_models():  # frozen and unprepared: never partitioned by a ZeRO-3 config
        policy = distributed.frozen(load_causal_lm(policy_path, config.dtype), device)
    disable_dropout(policy)
    generator = torch.Generator(device=device).manual_seed(config.seed)  # on the device: no per-token copies
    scores = []
    for i in range(0, len(prompts), 128):  # scored on the sampled ids, exactly as PPO scores them
        ids, mask = encode_prompts(tokenizer, prompts[i:i + 128], device)
        with autocast():
            rollout = sample(policy, ids, mask, max_new_tokens=config.max_new_tokens,
                             eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                             temperature=config.temperature, generator=generator)
            scores.append(sequence_scores(reward_model, rollout.input_ids, rollout.attention_mask).cpu())
    scores = torch.cat(scores)
    return {"mean": scores.mean().item(), "std": max(scores.std().item(), 1e-6), "samples": len(scores),
            "policy": policy_path, "temperature": config.temperature}


def pair_batch(chosen: list[list[int]], rejected: list[list[int]], pad_id: int, device):
    """Chosen rows then rejected rows, left-padded to this batch's own longest sequence."""
    ids, mask = left_pad(chosen + rejected, pad_id)
    return ids.to(device), mask.to(device)


def train(config: RewardConfig, model, tokenizer, train_pairs: dict) -> tuple:
    """The Bradley-Terry loop; returns (accelerator, prepared model, losses, gathered state dict or None)."""
    accelerator = training.make_accelerator(config)
    batching = distributed.Batching.of(config.batch_size, config.micro_batch_size, distributed.world_size())
    distributed.configure_batching(accelerator, batching, config.max_grad_norm)
    chosen = pair_tokens(tokenizer, train_pairs["prompt"], train_pairs["chosen"])
    rejected = pair_tokens(tokenizer, train_pairs["prompt"], train_pairs["rejected"])
    margins = (torch.tensor(train_pairs[config.margin_column], dtype=torch.float) * config.margin_scale
               if config.margin_column else torch.zeros(len(chosen)))
    if config.gradient_checkpointing:
        training.enable_gradient_checkpointing(model)
    keep_trainable_in_fp32(model, accelerator)
    optimizer = training.adamw(model, config.lr, config.weight_decay)
    scheduler = training.linear_schedule(optimizer, config.steps, config.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(SequenceScorer(model), optimizer, scheduler)
    start = training.try_resume(accelerator, config.out, config)
    batches = training.batch_indices(len(chosen), config.batch_size, config.seed, start)
    bar = training.progress(config.steps, start, "reward_model", disable=not distributed.is_main())
    losses = training.resume_extra(config.out).get("losses", []) if start else []
    training.start_tracking(accelerator, config, "reward_model", resumed=start > 0)
    model.train()
    for step in range(start, config.steps):
        mine = distributed.shard(next(batches))
        summed, correct = 0.0, 0.0
        for idx in mine.split(batching.micro):
            # chosen and rejected in one forward pass: same batch statistics, half the calls
            ids, mask = pair_batch([chosen[i] for i in idx], [rejected[i] for i in idx], tokenizer.pad_token_id,
                                   accelerator.device)
            with training.micro_step(accelerator, model):
                good, bad = model(ids, mask).chunk(2)
                pair_losses = bradley_terry_losses(good, bad, margins[idx].to(accelerator.device))
                accelerator.backward(pair_losses.sum() * (training.loss_scale(batching) / config.batch_size))
            summed += pair_losses.sum().item()
            correct += (good > bad).float().sum().item()
        learning_rate = scheduler.get_last_lr()[0]
        training.finish_step(accelerator, model, optimizer, scheduler, config.max_grad_norm)
        totals = distributed.all_sum(torch.tensor([summed, correct], dtype=torch.float64)) / config.batch_size
        training.after_step(accelerator, config, bar, losses, totals[0].item(), step, "reward")
        training.log_metrics(accelerator, {"loss": losses[-1], "lr": learning_rate,
                                           "accuracy": totals[1].item()}, step + 1)
    bar.close()
    training.end_tracking(accelerator)
    state_dict = training.full_state_dict(accelerator, model)
    if state_dict is not None:  # keys of the reward model, not of its SequenceScorer wrapper
        state_dict = {k.removeprefix("model."): v for k, v in state_dict.items()}
    return accelerator, model, losses, state_dict


def main(argv: list[str] | None = None) -> None:
    config = parse(RewardConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model)
    if config.normalize_policy:  # the reward model reads the policy's token ids
        check_same_tokenizer(tokenizer, config.model, config.normalize_policy)
    train_pairs = load_pairs(f"{config.data}/prefs_train", config.margin_column, config.max_examples)
    eval_pairs = load_pairs(f"{config.data}/prefs_eval")
    normalize_prompts = []
    if config.normalize_policy:  # read now: a bad split should not surface after training
        normalize_prompts = list(artifacts.load_split(f"{config.data}/ppo_prompts", ("prompt",))["prompt"])
    model = load_reward_model(config.model, config.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    if config.init_head:  # WARM: every replica fine-tuned from one linear-probed head
        from salsa.reward_probe import load_head
        load_head(model, config.init_head)

    started = time.time()
    accelerator, prepared, losses, state_dict = train(config, model, tokenizer, train_pairs)
    peak_mb = distributed.all_max(distributed.peak_memory_mb(accelerator.device))
    trained, processes = accelerator.unwrap_model(prepared).model, distributed.world_size()
    if state_dict is None and torch_dtype(config.dtype) is not None:
        trained.to(torch_dtype(config.dtype))  # saved as PPO loads it; ZeRO-3's gathered copy is already 16-bit
    if not distributed.release_workers():
        return  # the main process evaluates, normalises and saves the whole model
    with artifacts.atomic_dir(config.out) as tmp:
        save_model(trained, tokenizer, tmp, state_dict)
        # from here on frozen, as PPO loads it: whole, in `dtype`, on this process's device
        with distributed.whole_models():
            model = distributed.frozen(load_reward_model(str(tmp), config.dtype), accelerator.device)
        report = {"train": evaluate_pairs(model, tokenizer, {k: v[:1000] for k, v in train_pairs.items()}),
                  "eval": evaluate_pairs(model, tokenizer, eval_pairs),
                  "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "seconds": time.time() - started,
                  "processes": processes, "peak_memory_mb": peak_mb}
        if config.normalize_policy:
            normalization = normalization_stats(model, tokenizer, config.normalize_policy,
                                                normalize_prompts[:config.normalize_samples], config,
                                                accelerator.autocast)
        else:
            normalization = {"mean": 0.0, "std": 1.0, "samples": 0, "policy": None}
        artifacts.write_json(tmp / NORMALIZATION_FILE, normalization)
        artifacts.write_json(tmp / "reward_eval.json", report)
        artifacts.write_metadata(tmp, "reward_model", config, config.seed,
                                 extra={"eval_accuracy": report["eval"]["accuracy"]})
    training.clear_checkpoints(config.out)
    print(f"reward_model: held-out accuracy {report['eval']['accuracy']:.3f} "
          f"(train {report['train']['accuracy']:.3f}), normalisation mean {normalization['mean']:.3f} "
          f"std {normalization['std']:.3f} -> {config.out}")


def load_normalization(reward_dir: str) -> tuple[float, float]:
    stats = artifacts.read_json(f"{reward_dir}/{NORMALIZATION_FILE}")
    try:
        return float(stats["mean"]), float(stats["std"])
    except (KeyError, TypeError, ValueError):
        raise artifacts.StageError(f"{reward_dir}/{NORMALIZATION_FILE}: needs numeric `mean` and `std`") from None


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
