"""Batched sampling with a KV cache, left-padded queries and EOS truncation.

Plain sampling by default (top-k 0, top-p 1): PPO's importance ratios assume
the rollout distribution is exactly softmax(logits / temperature), which any
truncation of the vocabulary would break. Callers sample under the autocast
they later score under, and each rollout keeps the log-prob every token had
when it was drawn, so the two can be compared.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch

from salsa.modeling import position_ids_from_mask


@dataclasses.dataclass
class Rollout:
    query_ids: torch.Tensor        # [B, Q] left-padded
    query_mask: torch.Tensor       # [B, Q]
    response_ids: torch.Tensor     # [B, R] pad after the first EOS
    response_mask: torch.Tensor    # [B, R] 1 up to and including the EOS
    ended_with_eos: torch.Tensor   # [B] bool
    logprobs: torch.Tensor | None = None  # [B, R] each token's log-prob when drawn (0 after EOS)

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.query_ids, self.response_ids], 1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.query_mask, self.response_mask], 1)

    @property
    def response_lengths(self) -> torch.Tensor:
        return self.response_mask.sum(1)


def encode_prompts(tokenizer, prompts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Chat-format single-turn prompts and left-pad them into one batch."""
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    return encode_texts(tokenizer, texts, device)


def encode_texts(tokenizer, texts: list[str], device=None) -> tuple[torch.Tensor, torch.Tensor]:
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    return left_pad(ids, tokenizer.pad_token_id, device)


def left_pad(sequences: list[list[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def truncate_after_eos(response_ids: torch.Tensor, eos_id: int, pad_id: int):
    """Keep tokens up to and including the first EOS; pad the rest."""
    is_eos = response_ids == eos_id
    ended = is_eos.any(1)
    first_eos = torch.where(ended, is_eos.int().argmax(1), response_ids.shape[1])
    positions = torch.arange(response_ids.shape[1], device=response_ids.device)
    mask = (positions[None, :] <= first_eos[:, None]).long()
    return response_ids.masked_fill(mask == 0, pad_id), mask, ended


def _cache_kwarg(model) -> str:
    """transformers >= 5.2x calls the KV cache `cache`; older releases `past_key_values`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # a PEFT wrapper takes **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


@torch.no_grad()
def sample(model, query_ids: torch.Tensor, query_mask: torch.Tensor, *, max_new_tokens: int,
           eos_id: int, pad_id: int, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None, greedy: bool = False) -> Rollout:
    """Sample up to ``max_new_tokens`` per row; stops early once every row has emitted EOS."""
    cache_name = _cache_kwarg(model)
    mask = query_mask
    position_ids = position_ids_from_mask(mask)
    out = model(input_ids=query_ids, attention_mask=mask, position_ids=position_ids, use_cache=True,
                logits_to_keep=1)
    next_position = position_ids[:, -1:] + 1
    finished = torch.zeros(query_ids.shape[0], dtype=torch.bool, device=query_ids.device)
    tokens, token_logprobs = [], []
    for step in range(max_new_tokens):
        logits = out.logits[:, -1, :].float()
        if greedy:
            token = logits.argmax(-1)
        else:
            logits = _filter_logits(logits / temperature, top_k, top_p)  # the distribution sampled from
            probs = logits.softmax(-1)
            if generator is not None and generator.device != probs.device:  # a CPU generator with a GPU model
                token = torch.multinomial(probs.to(generator.device), 1, generator=generator)
                token = token.to(probs.device).squeeze(1)
            else:
                token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        token = token.masked_fill(finished, pad_id)
        tokens.append(token)
        token_logprobs.append(logits.log_softmax(-1).gather(-1, token[:, None]).squeeze(1))
        finished |= token == eos_id
        if finished.all() or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                    use_cache=True, **{cache_name: getattr(out, cache_name)})
        next_position = next_position + 1
    response = torch.stack(tokens, 1)
    response, response_mask, ended = truncate_after_eos(response, eos_id, pad_id)
    logprobs = torch.stack(token_logprobs, 1).masked_fill(response_mask == 0, 0.0)
    return Rollout(query_ids, query_mask, response, response_mask, ended, logprobs)


def decode_responses(tokenizer, rollout: Rollout) -> list[str]:
    """Each response's tokens up to its EOS, special tokens kept.

    A `<pad>` or `<unk>` the policy emits before EOS is part of its answer: the
    reward model and the length see it, so the gold judge must too (it counts
    any word that is not a list item as a wrong item).
    """
    texts = []
    for ids, mask in zip(rollout.response_ids, rollout.response_mask):
        tokens = ids[mask.bool()].tolist()
        if tokens and tokens[-1] == tokenizer.eos_token_id:
            tokens = tokens[:-1]
        texts.append(tokenizer.decode(tokens, skip_special_tokens=False).strip())
    return texts
