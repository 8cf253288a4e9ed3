"""Bytes autograd saves for backward in one decoder layer of a 7B-shaped model, measured on CPU.

Used by bench/memory_7b.py (its docstring says what is measured and how it is used). A
``saved_tensors_hooks`` pack hook records every saved tensor's storage once (by data_ptr; the
model's parameters excluded, they are model states), attributed to the layer whose forward
pre-hook ran last (the final norm's pre-hook closes the last layer).
"""

from __future__ import annotations

import gc
import os
import sys
import time
from pathlib import Path

KIB = 1024
# the families' shapes (their Hub configs): config class, shape, layers, vocabulary, tied embeddings;
# the measured model keeps 2 layers and a 512-token vocabulary: the layer is what is measured
FAMILIES = {
    "llama2-7b": ("LlamaConfig", dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                                      num_key_value_heads=32, head_dim=128), 32, 32000, False),
    "mistral-7b": ("MistralConfig", dict(hidden_size=4096, intermediate_size=14336, num_attention_heads=32,
                                         num_key_value_heads=8, head_dim=128, sliding_window=None), 32, 32000, False),
    "gemma-2b": ("GemmaConfig", dict(hidden_size=2048, intermediate_size=16384, num_attention_heads=8,
                                     num_key_value_heads=1, head_dim=256), 18, 256000, True),
}
REGIMES = ("full-fp32-autocast", "full-bf16", "full-bf16-autocast", "lora-bf16-autocast")
LORA_R, LORA_ALPHA, LORA_TARGETS = 64, 128, ["q_proj", "k_proj", "v_proj", "o_proj"]


class SavedTensorMeter:
    """Bytes of the storages autograd saves, each counted once, per region (layer index or 'outside')."""

    def __init__(self, model, layers, final_norm):
        self.parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.region = "outside"
        self.first_seen: dict[int, tuple[object, int, str]] = {}
        self.kept: list = []
        for index, layer in enumerate(layers):
            layer.register_forward_pre_hook(lambda *_, i=index: setattr(self, "region", i))
        final_norm.register_forward_pre_hook(lambda *_: setattr(self, "region", "outside"))

    def pack(self, tensor):
        # keep every saved tensor alive here, so no freed address is reused (and counted as seen) during
        # the forward; hand autograd nothing: a saved output packed as itself would form a reference
        # cycle through the C++ graph that gc cannot break (a model's worth of memory leaked per build)
        self.kept.append(tensor)
        storage = tensor.untyped_storage()
        pointer = storage.data_ptr()
        if storage.nbytes() and pointer not in self.parameters and pointer not in self.first_seen:
            self.first_seen[pointer] = (self.region, storage.nbytes(), saved_by(tensor))

    def bytes_in(self, region) -> int:
        return sum(n for r, n, _ in self.first_seen.values() if r == region)

    def bytes_by_kind(self, region) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for r, n, kind in self.first_seen.values():
            if r == region:
                kinds[kind] = kinds.get(kind, 0) + n
        return kinds


def saved_by(tensor) -> str:
    """A label for the breakdown: the op that produced the tensor, and its dtype."""
    producer = type(tensor.grad_fn).__name__.removesuffix("Backward0") if tensor.grad_fn else "no grad"
    return f"{producer} {str(tensor.dtype).removeprefix('torch.')}"


def build(family: str, regime: str, checkpointing: bool):
    import torch
    import transformers

    class_name, shape, _, _, tied = FAMILIES[family]
    config = getattr(transformers, class_name)(num_hidden_layers=2, vocab_size=512, max_position_embeddings=4096,
                                               tie_word_embeddings=tied, attention_dropout=0.0, **shape)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if regime != "full-fp32-autocast":
        model.to(torch.bfloat16)
    if regime.startswith("lora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, target_modules=LORA_TARGETS,
                                                 lora_dropout=0.0, task_type="CAUSAL_LM"))
        for param in model.parameters():  # keep_trainable_in_fp32: fp32 adapters over the bf16 base
            if param.requires_grad:
                param.data = param.data.float()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
        if regime.startswith("lora"):  # as salsa.sft: a frozen embedding still needs input grads
            model.enable_input_require_grads()
    model.train()
    named = dict(model.named_modules())
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    final_norm = next(m for name, m in named.items() if name.endswith("model.norm"))
    return model, layers, final_norm


def saved_bytes(model, layers, final_norm, regime: str, micro_batch: int, length: int) -> dict:
    import torch

    ids = torch.randint(0, 512, (micro_batch, length))
    mask = torch.ones_like(ids)
    mask[:, 0] = 0  # one left-padded position: the stages' padding mask reaches SDPA
    meter = SavedTensorMeter(model, layers, final_norm)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=regime.endswith("autocast"))
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, unpack_refused), autocast:
        out = model(input_ids=ids, attention_mask=mask, use_cache=False)
    result = {"layer": meter.bytes_in(1), "kinds": meter.bytes_by_kind(1)}
    del out
    meter.kept.clear()
    return result


def unpack_refused(_):
    raise RuntimeError("measurement graphs are forward-only: no backward")


def fit(points: list[tuple[int, int, int]]) -> dict:
    """Least squares bytes = per_token x tokens + per_square x sequences x length^2 + constant.

    ``points``: (sequences, length, bytes). The square term is the padding mask each layer
    saves as a [sequences, 1, length, length] bf16 tensor on this path; the constant is the
    bf16 casts of fp32 weights under autocast.
    """
    import torch

    design = torch.tensor([[b * t, b * t * t, 1.0] for b, t, _ in points], dtype=torch.float64)
    target = torch.tensor([[float(y)] for _, _, y in points], dtype=torch.float64)
    solution = torch.linalg.lstsq(design, target).solution.flatten().tolist()
    predicted = (design @ torch.tensor(solution, dtype=torch.float64)[:, None]).flatten().tolist()
    residual = max(abs(p - y) / y for p, (_, _, y) in zip(predicted, points))
    return {"per_token_bytes": solution[0], "per_square_bytes": solution[1], "constant_bytes": solution[2],
            "max_residual": residual}


def rss_gib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def release_freed_memory() -> None:
    """Hand freed heap pages back (glibc keeps them otherwise: RSS would grow by a model per build)."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measure(families, regimes, lengths, micro_batch: int) -> dict:
    import torch

    results: dict = {}
    for family in families:
        for regime in regimes:
            for checkpointing in (False, True):
                started = time.time()
                model, layers, final_norm = build(family, regime, checkpointing)
                points = []
                for length in lengths:
                    got = saved_bytes(model, layers, final_norm, regime, micro_batch, length)
                    points.append((micro_batch, length, got["layer"]))
                key = f"{family}/{regime}/{'checkpointed' if checkpointing else 'full'}"
                results[key] = fit(points) | {"points": points, "seconds": time.time() - started,
                                              "kinds_at_longest": got["kinds"]}
                got = results[key]
                print(f"{key}: {got['per_token_bytes'] / KIB:.2f} KiB/token/layer, mask {got['per_square_bytes']:.2f} "
                      f"B/position^2, constant {got['constant_bytes'] / 2**20:.1f} MiB, residual "
                      f"{got['max_residual']:.1e}, {got['seconds']:.0f} s, RSS after {rss_gib():.1f} GiB", file=sys.stderr)
                del model, layers, final_norm
                gc.collect()  # the models' reference cycles would keep every earlier model alive
                release_freed_memory()
    return results
