"""Batched chat generation with a Hugging Face causal LM (shared by answers and the local judge).

Prompts are rendered with the tokenizer's chat template and left-padded, so a batch's
new tokens all start at the same column. Requests are grouped by their (temperature,
max new tokens) so each batch shares one generate() call. Sampling is seeded per batch
from (seed, group, batch start): the same inputs give the same answers on a rerun.
"""

from __future__ import annotations

import hashlib
import sys
from typing import Sequence

TEMPERATURE_EPS = 1e-4   # below this, decode greedily (FastChat: do_sample = temperature >= 1e-4)


def _batch_seed(seed: int, *parts) -> int:
    return int.from_bytes(hashlib.sha256(repr((seed, *parts)).encode()).digest()[:4], "little")


def render_prompts(tokenizer, conversations: Sequence[list[dict]]) -> list[list[int]]:
    ids = []
    for messages in conversations:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def fit_to_context(prompt: list[int], max_new_tokens: int, max_positions: int | None) -> tuple[list[int], int, bool]:
    """Left-truncate a prompt (and if needed shrink max_new_tokens) so both fit the model's positions."""
    if not max_positions:
        return prompt, max_new_tokens, False
    max_new_tokens = min(max_new_tokens, max(1, max_positions // 2))
    room = max_positions - max_new_tokens
    if len(prompt) <= room:
        return prompt, max_new_tokens, False
    return prompt[-room:], max_new_tokens, True


def generate_chat(model, tokenizer, conversations: Sequence[list[dict]], settings: Sequence[tuple[float, int]],
                  batch_size: int = 16, seed: int = 0, progress: bool = True, desc: str = "generating",
                  token_counts: list[int] | None = None, keep_special_tokens: bool = False) -> list[str]:
    """The assistant's reply to each conversation; settings[i] = (temperature, max_new_tokens).

    token_counts, when given, receives the number of generated tokens per reply. A reply ends at EOS.
    keep_special_tokens: special tokens the model emitted before EOS (a pad, an unk) stay in the text,
    so a judge sees them (answers under test); off, they are dropped (a judge's own verdicts).
    """
    import torch
    from tqdm import tqdm

    prompts = render_prompts(tokenizer, conversations)
    max_positions = getattr(model.config, "max_position_embeddings", None)
    groups: dict[tuple[float, int], list[int]] = {}
    for i, (temperature, max_new) in enumerate(settings):
        groups.setdefault((float(temperature), int(max_new)), []).append(i)
    replies: list[str] = [""] * len(prompts)
    counts: list[int] = [0] * len(prompts)
    truncated = 0
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, mininterval=1.0)
    device = next(model.parameters()).device
    for group_index, ((temperature, max_new), members) in enumerate(sorted(groups.items())):
        if max_positions and max_new > max(1, max_positions // 2):   # said, not silent: fit_to_context caps it
            print(f"warning: max_new_tokens {max_new} is more than half of the model's {max_positions} positions; "
                  f"replies to {len(members)} prompt(s) are capped at {max(1, max_positions // 2)} new tokens",
                  file=sys.stderr)
        members = sorted(members, key=lambda i: len(prompts[i]))   # similar lengths: less padding
        for start in range(0, len(members), batch_size):
            batch = members[start:start + batch_size]
            fitted = [fit_to_context(prompts[i], max_new, max_positions) for i in batch]
            truncated += sum(f[2] for f in fitted)
            new_tokens = min(f[1] for f in fitted)
            padded = tokenizer.pad({"input_ids": [f[0] for f in fitted]}, return_tensors="pt", padding=True)
            sample = temperature >= TEMPERATURE_EPS
            kwargs = {"do_sample": sample, "max_new_tokens": new_tokens, "pad_token_id": tokenizer.pad_token_id}
            if sample:
                kwargs["temperature"] = temperature
            else:   # unset sampling knobs a model's generation_config may carry, to keep greedy quiet
                kwargs.update(temperature=None, top_p=None, top_k=None)
            torch.manual_seed(_batch_seed(seed, group_index, start))
            with torch.no_grad():
                output = model.generate(input_ids=padded["input_ids"].to(device),
                                        attention_mask=padded["attention_mask"].to(device), **kwargs)
            new = output[:, padded["input_ids"].shape[1]:]
            for row, i in zip(new, batch):
                tokens = row.tolist()
                if tokenizer.eos_token_id is not None and tokenizer.eos_token_id in tokens:
                    tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
                if not keep_special_tokens:
                    tokens = [t for t in tokens if t != tokenizer.pad_token_id]
                counts[i] = len(tokens)
                replies[i] = tokenizer.decode(tokens, skip_special_tokens=not keep_special_tokens).strip()
            bar.update(len(batch))
    bar.close()
    if truncated:
        print(f"warning: {truncated} prompt(s) were longer than the model's context and were left-truncated",
              file=sys.stderr)
    if token_counts is not None:
        token_counts[:] = counts
    return replies
