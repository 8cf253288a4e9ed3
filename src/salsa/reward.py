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

from salsa import artifacts, training
from salsa.args import arg, parse
from salsa.generation import encode_prompts, left_pad, sample
from salsa.modeling import (check_same_tokenizer, disable_dropout, keep_trainable_in_fp32, load_causal_lm,
                            load_reward_model, load_tokenizer, mixed_precision_mode, save_model, sequence_scores,
                            torch_dtype)

NORMALIZATION_FILE = "reward_normalization.json"


@dataclasses.dataclass
class RewardConfig:
    """Train a Bradley-Terry reward model and normalise it against a policy's samples."""

    model: str = arg(help="initialisation: an SFT model or the base (a causal-LM directory or Hub id)")
    data: str = arg(help="prepared data directory (prefs_train/, prefs_eval/, ppo_prompts/)")
    out: str = arg(help="output reward-model directory")
    normalize_policy: str = arg("", help="policy whose samples define mean 0 / std 1 (empty: skip, gain 1 bias 0)")
    seed: int = arg(0, help="data order and score-head init")
    init_head: str = arg("", help="start the score head from this file (salsa.reward_probe's score_head.safetensors: "
                         "WARM's shared linear probe) instead of a fresh one from --seed")
    steps: int = arg(300, help="optimiser steps")
    batch_size: int = arg(32, help="preference pairs per step")
    lr: float = arg(1e-3, help="peak learning rate")
    warmup_steps: int = arg(20, help="linear warm-up steps, then linear decay to zero")
    margin_column: str = arg("", help="dataset column with a per-pair margin (empty: no margin)")
    margin_scale: float = arg(1.0, help="multiplier on the margin column")
    max_examples: int = arg(0, help="use only the first N training pairs (0 = all)")
    normalize_samples: int = arg(256, help="policy samples used for the normalisation")
    max_new_tokens: int = arg(16, help="response length of normalisation samples")
    temperature: float = arg(1.0, help="sampling temperature of normalisation samples (match PPO's)")
    dtype: str = arg("float32", help="weights dtype")
    mixed_precision: str = arg("no", help="accelerate mixed precision: no, bf16 or fp16")
    checkpoint_every: int = arg(0, help="save a resumable checkpoint every N steps (0 = never)")
    threads: int = arg(0, help="torch CPU threads (0 = torch default)")
    report_to: list[str] = arg([], help="experiment trackers: tensorboard, wandb (none by default)")
    tracking_dir: str = arg("", help="tracking logs root (default: <out>.tracking next to the output)")
    run_name: str = arg("", help="tracker run name (default: the output's path below --tracking-dir's parent, else its name)")


def encode_pairs(tokenizer, prompts: list[str], responses: list[str]):
    """Generation prompt + response tokens + EOS, padded into one batch.

    Built the way PPO's rollouts are (not from the full chat template, which may add
    text after EOS), so the reward model is trained on the very token it is read at.
    """
    ids = []
    for prompt, response in zip(prompts, responses):
        query = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                              add_generation_prompt=True)
        ids.append(tokenizer(query, add_special_tokens=False)["input_ids"]
                   + tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    return left_pad(ids, tokenizer.pad_token_id)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None):
    diff = chosen - rejected - (margin if margin is not None else 0.0)
    return -F.logsigmoid(diff).mean()


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
            "pairs": len(chosen), "chosen": describe(chosen), "rejected": describe(rejected)}


class SequenceScorer(torch.nn.Module):
    """The reward model behind one forward(), so DDP and accelerate's autocast wrap the scores."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return sequence_scores(self.model, input_ids, attention_mask)


@torch.no_grad()
def normalization_stats(reward_model, tokenizer, policy_path: str, prompts: list[str], config: RewardConfig,
                        autocast=contextlib.nullcontext) -> dict:
    """``autocast``: the context PPO samples and scores its rollouts under (the stage's mixed precision)."""
    policy = load_causal_lm(policy_path, config.dtype).to(reward_model.device)
    disable_dropout(policy)
    policy.eval()
    generator = torch.Generator().manual_seed(config.seed)
    scores = []
    for i in range(0, len(prompts), 128):  # scored on the sampled ids, exactly as PPO scores them
        ids, mask = encode_prompts(tokenizer, prompts[i:i + 128], reward_model.device)
        with autocast():
            rollout = sample(policy, ids, mask, max_new_tokens=config.max_new_tokens,
                             eos_id=tokenizer.eos_token_id, pad_id=tokenizer.pad_token_id,
                             temperature=config.temperature, generator=generator)
            scores.append(sequence_scores(reward_model, rollout.input_ids, rollout.attention_mask).cpu())
    scores = torch.cat(scores)
    return {"mean": scores.mean().item(), "std": max(scores.std().item(), 1e-6), "samples": len(scores),
            "policy": policy_path, "temperature": config.temperature}


def main(argv: list[str] | None = None) -> None:
    config = parse(RewardConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model)
    if config.normalize_policy:  # the reward model reads the policy's token ids
        check_same_tokenizer(tokenizer, config.model, config.normalize_policy)
    train_pairs = load_pairs(f"{config.data}/prefs_train", config.margin_column, config.max_examples)
    eval_pairs = load_pairs(f"{config.data}/prefs_eval")
    if config.normalize_policy:  # read now: a bad split should not surface after training
        normalize_prompts = list(artifacts.load_split(f"{config.data}/ppo_prompts", ("prompt",))["prompt"])
    model = load_reward_model(config.model, config.dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    if config.init_head:  # WARM: every replica fine-tuned from one linear-probed head
        from salsa.reward_probe import load_head
        load_head(model, config.init_head)

    accelerator = training.make_accelerator(mixed_precision_mode(config.dtype, config.mixed_precision), config.seed,
                                            training.experiment_trackers(config))
    chosen_ids, chosen_mask = encode_pairs(tokenizer, train_pairs["prompt"], train_pairs["chosen"])
    rejected_ids, rejected_mask = encode_pairs(tokenizer, train_pairs["prompt"], train_pairs["rejected"])
    margins = (torch.tensor(train_pairs[config.margin_column], dtype=torch.float) * config.margin_scale
               if config.margin_column else torch.zeros(len(chosen_ids)))
    keep_trainable_in_fp32(model, accelerator)
    optimizer = training.adamw(model, config.lr)
    scheduler = training.linear_schedule(optimizer, config.steps, config.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(SequenceScorer(model), optimizer, scheduler)
    start = training.try_resume(accelerator, config.out, config)
    batches = training.batch_indices(len(chosen_ids), config.batch_size, config.seed, start)
    bar = training.progress(config.steps, start, "reward_model", disable=not accelerator.is_main_process)
    started = time.time()
    losses = training.resume_extra(config.out).get("losses", []) if start else []
    training.start_tracking(accelerator, config, "reward_model", resumed=start > 0)
    model.train()
    for step in range(start, config.steps):
        idx = training.shard_for_process(next(batches), accelerator)
        device = accelerator.device
        # chosen and rejected in one forward pass: same batch statistics, half the calls
        width = max(chosen_ids.shape[1], rejected_ids.shape[1])
        ids = torch.cat([_left_pad_to(chosen_ids[idx], width, tokenizer.pad_token_id),
                         _left_pad_to(rejected_ids[idx], width, tokenizer.pad_token_id)]).to(device)
        mask = torch.cat([_left_pad_to(chosen_mask[idx], width, 0), _left_pad_to(rejected_mask[idx], width, 0)]).to(device)
        chosen, rejected = model(ids, mask).chunk(2)
        loss = bradley_terry_loss(chosen, rejected, margins[idx].to(device))
        learning_rate = scheduler.get_last_lr()[0]
        training.optimizer_step(accelerator, model, optimizer, scheduler, loss)
        training.after_step(accelerator, config, bar, losses, loss.item(), step, "reward")
        training.log_metrics(accelerator, {"loss": losses[-1], "lr": learning_rate,
                                           "accuracy": (chosen > rejected).float().mean().item()}, step + 1)
    bar.close()
    state_dict = training.full_state_dict(accelerator, model)
    if state_dict is not None:  # keys of the reward model, not of its SequenceScorer wrapper
        state_dict = {k.removeprefix("model."): v for k, v in state_dict.items()}
    model = accelerator.unwrap_model(model).model
    model.eval()
    if torch_dtype(config.dtype) is not None:  # from here on frozen, as PPO loads it: in `dtype`
        model.to(torch_dtype(config.dtype))
    report = {"train": evaluate_pairs(model, tokenizer, {k: v[:1000] for k, v in train_pairs.items()}),
              "eval": evaluate_pairs(model, tokenizer, eval_pairs),
              "final_loss": sum(losses[-20:]) / max(1, len(losses[-20:])), "seconds": time.time() - started}
    if config.normalize_policy:
        prompts = normalize_prompts[:config.normalize_samples]
        normalization = normalization_stats(model, tokenizer, config.normalize_policy, prompts, config,
                                            accelerator.autocast)
    else:
        normalization = {"mean": 0.0, "std": 1.0, "samples": 0, "policy": None}
    training.end_tracking(accelerator)
    if accelerator.is_main_process:
        with artifacts.atomic_dir(config.out) as tmp:
            save_model(model, tokenizer, tmp, state_dict)
            artifacts.write_json(tmp / NORMALIZATION_FILE, normalization)
            artifacts.write_json(tmp / "reward_eval.json", report)
            artifacts.write_metadata(tmp, "reward_model", config, config.seed,
                                     extra={"eval_accuracy": report["eval"]["accuracy"]})
        training.clear_checkpoints(config.out)
    print(f"reward_model: held-out accuracy {report['eval']['accuracy']:.3f} "
          f"(train {report['train']['accuracy']:.3f}), normalisation mean {normalization['mean']:.3f} "
          f"std {normalization['std']:.3f} -> {config.out}")


def _left_pad_to(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    return F.pad(x, (width - x.shape[1], 0), value=value)


def load_normalization(reward_dir: str) -> tuple[float, float]:
    stats = artifacts.read_json(f"{reward_dir}/{NORMALIZATION_FILE}")
    try:
        return float(stats["mean"]), float(stats["std"])
    except (KeyError, TypeError, ValueError):
        raise artifacts.StageError(f"{reward_dir}/{NORMALIZATION_FILE}: needs numeric `mean` and `std`") from None


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
