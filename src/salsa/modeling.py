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
from safetensors import SafetensorError

from salsa.artifacts import StageError, check_safetensors
from salsa.model_specs import (GGUF_SEPARATOR, gguf_source, hub_spec, is_gguf, resolve_model_path,  # noqa: F401
                               split_revision)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str | None) -> torch.dtype | None:
    if name in (None, "", "auto"):
        return None
    try:
        return DTYPES[name]
    except KeyError:
        raise StageError(f"dtype: unknown {name!r}; choose from {sorted(DTYPES)}") from None


# accelerate's autocast mode implied by low-precision weights when none is configured
AUTOCAST_FOR_DTYPE = {"bfloat16": "bf16", "float16": "fp16"}


def mixed_precision_mode(dtype: str | None, mixed_precision: str = "no") -> str:
    """The autocast a training stage runs under: the configured one, else the one its weights' dtype implies.

    Trainable weights are kept in fp32 (``keep_trainable_in_fp32``), so bf16 weights without autocast
    would silently train in fp32; bf16 weights under fp16 autocast (or the reverse) is refused.
    """
    implied = AUTOCAST_FOR_DTYPE.get(dtype or "", "no")
    if mixed_precision in (None, "", "no"):
        return implied
    if implied != "no" and implied != mixed_precision:
        raise StageError(f"dtype {dtype} with mixed_precision {mixed_precision}: use mixed_precision {implied}")
    return mixed_precision


def keep_trainable_in_fp32(model, accelerator=None) -> int:
    """fp32 master weights: upcast trainable parameters loaded in bf16/fp16; frozen ones stay as loaded.

    Adam moves each weight by about the learning rate per step; bf16 keeps 8 significant bits, so a
    step below w * 2**-9 rounds away and a 1e-5 step leaves every weight above ~0.005 where it was.
    Compute still runs in low precision under autocast. DeepSpeed keeps fp32 master copies itself
    (from the model in bf16), so there nothing is cast. Returns the number of parameters upcast.
    """
    if accelerator is not None:
        from accelerate.utils import DistributedType

        if accelerator.distributed_type == DistributedType.DEEPSPEED:
            return 0
    upcast = 0
    for param in model.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()
            upcast += param.numel()
    return upcast


# For tokenizers that ship without one (base Llama-2 / Mistral checkpoints): the Zephyr
# format, which is what UltraChat SFT recipes for those models used.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token if bos_token else '' }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}"
    "{% if message['role'] != 'assistant' or not loop.last %}{{ '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
def _from_pretrained(auto_class, spec: str, what: str, **kwargs):
    """Load an HF directory, a Hub id or a GGUF model (dequantised) with one error style."""
    gguf = gguf_source(spec)
    try:
        if gguf:
            directory, revision = split_revision(gguf[0])
            pinned = {"revision": revision} if revision else {}
            loaded = auto_class.from_pretrained(directory, gguf_file=gguf[1], **pinned, **kwargs)
            return _forget_gguf_quantization(loaded)
        name, revision = split_revision(spec)
        path = resolve_model_path(name)
        if os.path.isdir(path):
            check_safetensors(path)
        return auto_class.from_pretrained(path, **({"revision": revision} if revision else {}), **kwargs)
    except (OSError, ValueError, SafetensorError) as err:
        raise StageError(f"{spec}: cannot load {what} ({str(err).splitlines()[0]})") from None


def _forget_gguf_quantization(loaded):
    """GGUF weights arrive dequantised to plain tensors, but transformers still tags the
    model as quantised and then refuses save_pretrained; the tag no longer describes it."""
    if getattr(loaded, "hf_quantizer", None) is not None:
        loaded.hf_quantizer = None
        loaded.is_quantized = False
        if hasattr(loaded.config, "quantization_config"):
            del loaded.config.quantization_config
    return loaded


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(AutoTokenizer, path, "tokenizer")
    if tokenizer.pad_token_id is None:  # many chat models ship without one
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    return tokenizer


def check_same_tokenizer(tokenizer, path: str, other_path: str) -> None:
    """Refuse a model whose tokenizer would read the policy's token ids differently.

    PPO scores the policy's token ids with the reference, value and reward models as they are,
    so their vocabularies and special-token ids must be the policy's.
    """
    if same_path(path, other_path):
        return
    other = load_tokenizer(other_path)
    problems = []
    vocab, other_vocab = tokenizer.get_vocab(), other.get_vocab()
    if vocab != other_vocab:
        changed = sorted(set(vocab.items()) ^ set(other_vocab.items()), key=lambda item: item[1])
        problems.append(f"vocabularies differ ({len(vocab)} vs {len(other_vocab)} tokens, "
                        f"first difference {changed[0][0]!r})")
    for name in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id"):
        if getattr(tokenizer, name, None) != getattr(other, name, None):
            problems.append(f"{name} {getattr(tokenizer, name, None)} vs {getattr(other, name, None)}")
    if problems:
        raise StageError(f"{other_path}: tokenizer does not match {path}'s: {'; '.join(problems)}")


def same_path(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b) if os.path.exists(a) and os.path.exists(b) else a == b


def load_causal_lm(path: str, dtype: str | None = None):
    from transformers import AutoModelForCausalLM

    return _from_pretrained(AutoModelForCausalLM, path, "model", dtype=torch_dtype(dtype))


def load_reward_model(path: str, dtype: str | None = None):
    from transformers import AutoModelForSequenceClassification

    return _from_pretrained(AutoModelForSequenceClassification, path, "reward model", num_labels=1,
                            dtype=torch_dtype(dtype))


def default_device() -> torch.device:
    """The GPU when there is one (single-process stages: evaluation)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def disable_dropout(model: torch.nn.Module) -> None:
    """RLHF needs deterministic log-probs: no dropout anywhere (N implementation details, #13)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):  # attention layers copy the rate at construction
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
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
    """Log-probs of tokens ``input_ids[:, query_length:]`` under temperature-scaled logits.

    The last token is not fed (its prediction is never used; attention is causal, so the
    other positions do not change) and the LM head only runs on the response positions.
    The entropy, if asked for, is a statistic: it carries no gradient.
    """
    inputs, mask = input_ids[:, :-1], attention_mask[:, :-1]
    logits = model(input_ids=inputs, attention_mask=mask, position_ids=position_ids_from_mask(mask),
                   use_cache=False, logits_to_keep=input_ids.shape[1] - query_length).logits
    logprobs_all = F.log_softmax(logits.float() / temperature, dim=-1)
    logprobs = logprobs_all.gather(-1, input_ids[:, query_length:, None]).squeeze(-1)
    if not return_entropy:
        return logprobs
    with torch.no_grad():
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
    head = score_head(model)
    with torch.autocast(hidden.device.type, enabled=False):  # the scalar head runs in its own (fp32) dtype
        return head(hidden.to(next(head.parameters()).dtype)).squeeze(-1).float()


def response_values(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, query_length: int) -> torch.Tensor:
    """Value-model outputs at the positions that predict the response tokens: [batch, response]
    (``token_scores(...)[:, query_length - 1:-1]`` without running the unused last position)."""
    return token_scores(model, input_ids[:, :-1], attention_mask[:, :-1])[:, query_length - 1:]


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


def save_model(model, tokenizer, directory: str | Path, state_dict: dict | None = None) -> None:
    """``state_dict``: the gathered full weights when ZeRO-3 / FSDP shard them over processes."""
    model.save_pretrained(directory, safe_serialization=True, state_dict=state_dict)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
