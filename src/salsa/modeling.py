"""Loading, saving and running the models every stage shares.

All forward passes here compute position ids from the attention mask, so
left-padded queries (generation) and right-padded responses (training) see
the same positions as an unpadded sequence would.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from salsa.artifacts import StageError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "", "auto"):
        return None
    try:
        return DTYPES[name]
    except KeyError:
        raise StageError(f"dtype: unknown {name!r}; choose from {sorted(DTYPES)}") from None


def resolve_model_path(name_or_path: str) -> str:
    """A local directory as is; anything else is treated as a Hugging Face Hub id."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if name_or_path.startswith((".", "/")) or os.sep in name_or_path.rstrip("/").split("/", 1)[-1]:
        raise StageError(f"{name_or_path}: model directory not found")
    return name_or_path


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    except OSError as err:
        raise StageError(f"{path}: cannot load tokenizer ({str(err).splitlines()[0]})") from None
    if tokenizer.pad_token_id is None:  # many chat models ship without one
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, dtype: str | None = None):
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), dtype=torch_dtype(dtype))
    except OSError as err:
        raise StageError(f"{path}: cannot load model ({str(err).splitlines()[0]})") from None
    return model


def load_reward_model(path: str, dtype: str | None = None):
    from transformers import AutoModelForSequenceClassification

    try:
        return AutoModelForSequenceClassification.from_pretrained(resolve_model_path(path), num_labels=1,
                                                                  dtype=torch_dtype(dtype))
    except OSError as err:
        raise StageError(f"{path}: cannot load reward model ({str(err).splitlines()[0]})") from None


def disable_dropout(model: torch.nn.Module) -> None:
    """RLHF needs deterministic log-probs: no dropout anywhere (N implementation details, #13)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    return model(input_ids=input_ids, attention_mask=attention_mask,
                 position_ids=position_ids_from_mask(attention_mask), use_cache=False).logits


def response_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_length: int,
                      temperature: float = 1.0, return_entropy: bool = False):
    """Log-probs of tokens ``input_ids[:, query_length:]`` under temperature-scaled logits."""
    logits = forward_logits(model, input_ids, attention_mask)[:, query_length - 1:-1].float() / temperature
    logprobs_all = F.log_softmax(logits, dim=-1)
    logprobs = logprobs_all.gather(-1, input_ids[:, query_length:, None]).squeeze(-1)
    if not return_entropy:
        return logprobs
    entropy = -(logprobs_all.exp() * logprobs_all).sum(-1)
    return logprobs, entropy


def score_head(model):
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is None:
        raise StageError(f"{type(model).__name__}: no `score` head; use a *ForSequenceClassification model")
    return head


def token_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token scalar outputs of a sequence-classification model: [batch, seq]."""
    backbone = getattr(model, model.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                      position_ids=position_ids_from_mask(attention_mask), use_cache=False).last_hidden_state
    return score_head(model)(hidden).squeeze(-1).float()


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended token in each row (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.long() * positions).argmax(-1)


def sequence_scores(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Reward-model score at the final token of each sequence: [batch]."""
    scores = token_scores(model, input_ids, attention_mask)
    return scores.gather(1, last_token_index(attention_mask)[:, None]).squeeze(1)


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def save_model(model, tokenizer, directory: str | Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
