"""Stage `sft`: supervised fine-tuning on demonstrations, one run per seed.

The seed changes the data order (and LoRA initialisation); the starting
weights are the same base for every seed, which is what makes the SFT
models soupable. LoRA adapters are merged before saving: a soup averages
weights, and averaging LoRA factors is not the same thing.
"""

from __future__ import annotations

import dataclasses
import time

import torch

from salsa import artifacts
from salsa.args import arg, parse
from salsa.modeling import keep_trainable_in_fp32, load_causal_lm, load_tokenizer, save_model
from salsa import distributed, training


@dataclasses.dataclass
class SFTConfig(training.TrainingConfig, training.LoraSettings):
    """Supervised fine-tuning of a causal LM on `messages` conversations."""

    model: str = arg(help="starting model: a local directory or a Hub id")
    data: str = arg(help="dataset directory (datasets.save_to_disk) with a `messages` column")
    out: str = arg(help="output model directory")
    seed: int = arg(0, help="data order and LoRA init")
    steps: int = arg(300, help="optimiser steps")
    batch_size: int = arg(32, help="global batch size (sequences per optimiser step, over all processes)")
    warmup_steps: int = arg(20, help="linear warm-up steps, then linear decay to zero")
    max_length: int = arg(64, help="truncate conversations to this many tokens")
    loss_on_prompt: bool = arg(False, help="also train on prompt tokens (pretraining-style)")
    max_examples: int = arg(0, help="use only the first N examples (0 = all)")
    data_subset: str = arg("all", help="which examples: all, half1 / half2 (disjoint halves of a shuffle), "
                                       "bootstrap (a resample with replacement)")
    subset_seed: int = arg(0, help="seed of the shuffle (half1/half2) or resample (bootstrap); the two halves "
                                   "of one subset_seed are disjoint")
    lora_dropout: float = arg(0.0, help="LoRA dropout")

    def validate(self) -> None:
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("steps and batch_size must be positive")
        if self.data_subset not in DATA_SUBSETS:
            raise ValueError(f"data_subset: expected one of {', '.join(DATA_SUBSETS)}, got {self.data_subset!r}")


DATA_SUBSETS = ("all", "half1", "half2", "bootstrap")


def subset_indices(n: int, subset: str, subset_seed: int) -> list[int]:
    """Example indices of one data subset: SFT ingredients that saw different data differ far more than
    ingredients that differ by seed only (docs/results.md, ingredient distance)."""
    import random

    rng = random.Random(subset_seed)
    if subset == "all":
        return list(range(n))
    if subset == "bootstrap":
        return [rng.randrange(n) for _ in range(n)]
    order = list(range(n))
    rng.shuffle(order)
    half = order[:n // 2] if subset == "half1" else order[n // 2:]
    return sorted(half)


def tokenize_conversations(tokenizer, conversations: list[list[dict]], max_length: int,
                           loss_on_prompt: bool) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per conversation; labels are -100 where no loss is taken."""
    rows = []
    for messages in conversations:
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full_ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
        prompt_len = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
        labels = list(full_ids) if loss_on_prompt else [-100] * prompt_len + full_ids[prompt_len:]
        rows.append((full_ids, labels[:len(full_ids)]))
    return rows


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-pad one batch to its own longest row: input ids, attention mask, labels."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        attention[i, :len(ids)] = 1
        labels[i, :len(lab)] = torch.tensor(lab)
    return input_ids, attention, labels


def lm_loss(model, input_ids, attention_mask, labels) -> torch.Tensor:
    """Mean next-token cross-entropy over the labelled tokens."""
    total, count = lm_loss_sum(model, input_ids, attention_mask, labels)
    return total / max(count, 1)


def lm_loss_sum(model, input_ids, attention_mask, labels) -> tuple[torch.Tensor, int]:
    """(summed next-token cross-entropy, number of labelled tokens): micro-batches add up exactly."""
    from salsa.modeling import forward_logits

    logits = forward_logits(model, input_ids, attention_mask)[:, :-1].float()
    targets = labels[:, 1:]
    total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                              ignore_index=-100, reduction="sum")
    return total, int((targets != -100).sum())


def labelled_tokens(rows: list[tuple[list[int], list[int]]]) -> int:
    """Tokens that carry a loss (a label after the first position)."""
    return sum(sum(1 for label in labels[1:] if label != -100) for _, labels in rows)


def load_conversations(path: str, max_examples: int = 0) -> list[list[dict]]:
    dataset = artifacts.load_split(path, ("messages",))
    if max_examples:
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    return list(dataset["messages"])


def apply_lora(model, config: SFTConfig):
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(config.lora_target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def train(config: SFTConfig, model, tokenizer, stage: str = "sft") -> dict:
    """The loop shared by `base_model` (from scratch) and `sft` (from a checkpoint)."""
    accelerator = training.make_accelerator(config)
    batching = distributed.Batching.of(config.batch_size, config.micro_batch_size, distributed.world_size())
    distributed.configure_batching(accelerator, batching, config.max_grad_norm)
    conversations = load_conversations(config.data, config.max_examples)
    conversations = [conversations[i] for i in subset_indices(len(conversations), config.data_subset,
                                                              config.subset_seed)]
    rows = tokenize_conversations(tokenizer, conversations, config.max_length, config.loss_on_prompt)
    if config.lora_r > 0 and training.shards_weights(accelerator):
        raise artifacts.StageError("lora_r: LoRA is merged on one process; use the ddp accelerate config, "
                                   "not ZeRO-3/FSDP")
    if config.gradient_checkpointing:
        training.enable_gradient_checkpointing(model)
    if config.lora_r > 0:
        if config.gradient_checkpointing:  # frozen embeddings: checkpointed blocks still need input grads
            model.enable_input_require_grads()
        model = apply_lora(model, config)
    keep_trainable_in_fp32(model, accelerator)  # a bf16/fp16 model trains fp32 weights under autocast
    optimizer = training.adamw(model, config.lr, config.weight_decay)
    scheduler = training.linear_schedule(optimizer, config.steps, config.warmup_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    start = training.try_resume(accelerator, config.out, config)
    batches = training.batch_indices(len(rows), config.batch_size, config.seed, start)
    bar = training.progress(config.steps, start, stage, disable=not distributed.is_main())
    training.start_tracking(accelerator, config, stage, resumed=start > 0)
    model.train()
    losses = training.resume_extra(config.out).get("losses", []) if start else []
    started = time.time()
    for step in range(start, config.steps):
        mine = [rows[int(i)] for i in distributed.shard(next(batches))]
        # every token of the global batch weighs the same, however the batch is split
        tokens = int(distributed.all_sum(torch.tensor(labelled_tokens(mine))))
        summed = 0.0
        for chunk in range(0, len(mine), batching.micro):
            batch = [t.to(accelerator.device) for t in collate(mine[chunk:chunk + batching.micro],
                                                               tokenizer.pad_token_id)]
            with training.micro_step(accelerator, model):
                total, _ = lm_loss_sum(model, *batch)
                accelerator.backward(total * (training.loss_scale(batching) / max(tokens, 1)))
            summed += total.item()
        learning_rate = scheduler.get_last_lr()[0]
        training.finish_step(accelerator, model, optimizer, scheduler, config.max_grad_norm)
        loss = distributed.all_sum(torch.tensor(summed, dtype=torch.float64)).item() / max(tokens, 1)
        training.after_step(accelerator, config, bar, losses, loss, step, stage)
        training.log_metrics(accelerator, {"loss": losses[-1], "lr": learning_rate}, step + 1)
    bar.close()
    training.end_tracking(accelerator)
    peak_mb = distributed.all_max(distributed.peak_memory_mb(accelerator.device))
    state_dict = training.full_state_dict(accelerator, model)
    model = accelerator.unwrap_model(model)
    if config.lora_r > 0:
        model = model.merge_and_unload()
    window = losses[-20:] or [float("nan")]
    summary = {"final_loss": sum(window) / len(window), "steps": config.steps, "seconds": time.time() - started,
               "examples": len(rows), "resumed_from_step": start, "processes": batching.world,
               "micro_batch_size": batching.micro, "accumulation": batching.accumulation,
               "peak_memory_mb": peak_mb}
    if distributed.is_main():
        with artifacts.atomic_dir(config.out) as tmp:
            save_model(model, tokenizer, tmp, state_dict)
            artifacts.write_json(tmp / "train_summary.json", summary)
            artifacts.write_metadata(tmp, stage, config, config.seed, extra={"summary": summary})
        training.clear_checkpoints(config.out)
    distributed.barrier()
    return summary


def main(argv: list[str] | None = None) -> None:
    config = parse(SFTConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    tokenizer = load_tokenizer(config.model)
    model = load_causal_lm(config.model, config.dtype)
    summary = train(config, model, tokenizer)
    print(f"sft: seed {config.seed}, final loss {summary['final_loss']:.4f} in {summary['seconds']:.1f}s -> {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
