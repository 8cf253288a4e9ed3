"""Per-device memory of a training stage: model states plus activations, in bytes.

Plain numbers in, dicts of bytes out, so a planner or a benchmark can call it without loading a
model. What it counts, per device:

- **trained model states**, by backend, bytes per trained parameter (``TRAINED_BYTES``):
  ZeRO-3 (DeepSpeed bf16) bf16 weights 2 + bf16 gradients 2 + fp32 master copy and Adam's two
  moments 12; FSDP (fp32 sharded weights, bf16 compute) 4 + 4 + 8; both divided by the shard count.
  DDP keeps a full replica: fp32 weights 4, fp32 gradients 4 plus the reducer's bucket copy of them
  4 (``gradient_as_bucket_view`` off, accelerate's default), Adam 8. A LoRA model (DDP only: the
  stages refuse LoRA under sharding) keeps its frozen base in bf16 and trains only the adapter.
- **frozen models** (PPO's reference and reward model): a device-placed copy, 2 bytes per parameter
  in bf16.
- **activations**: measured bytes autograd saves per token per layer (bench/memory_7b.py), times
  sequences x padded width x layers; plus a per-sequence width^2 term (the padding mask) and a
  per-layer constant (bf16 casts of fp32 weights under autocast). With gradient checkpointing, each
  layer keeps only its input hidden state, and the one layer being recomputed holds its full
  activations during backward.
- **logits**: vocab x positions x 4 bytes (the fp32 upcast the loss and log-softmax keep).
  Backward briefly holds about two more buffers of that size; not counted.
- **ZeRO-3/FSDP working set**: the gathered bf16 weights of the module computing and the one
  prefetched, 2 x 2 bytes x the larger of a layer and the embedding.

Not counted: the CUDA context, NCCL buffers, allocator fragmentation (leave headroom), the
transient fp32 gradient copy DeepSpeed makes for the optimiser step, and the autocast weight cache
inside checkpointed forwards (freed when the forward ends).
"""

from __future__ import annotations

GIB = 2**30
BF16 = 2
SHARDED = ("zero3", "fsdp")
BACKENDS = SHARDED + ("ddp",)
# (weights, gradients, optimiser) bytes per trained parameter, before sharding
TRAINED_BYTES = {"zero3": (2, 2, 12), "fsdp": (4, 4, 8), "ddp": (4, 8, 8)}


def decoder_parameters(*, vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                       head_dim: int, tied_embeddings: bool = False, head: str = "lm") -> dict:
    """Parameter counts of a Llama-style decoder (gated MLP, RMSNorm, no biases).

    ``head``: "lm" (vocab outputs, shared with the embedding when tied) or "score" (one output:
    the reward / value model).
    """
    attention = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim
    layer = attention + 3 * hidden * intermediate + 2 * hidden
    embedding = vocab * hidden
    if head == "lm":
        output = 0 if tied_embeddings else vocab * hidden
    elif head == "score":
        output = hidden
    else:
        raise ValueError(f"head must be 'lm' or 'score', not {head!r}")
    return {"embedding": embedding, "layer": layer, "head": output,
            "total": embedding + layers * layer + hidden + output}


def lora_parameters(*, hidden: int, layers: int, heads: int, kv_heads: int, head_dim: int, lora_r: int,
                    intermediate: int = 0, targets=("q_proj", "k_proj", "v_proj", "o_proj")) -> int:
    """Adapter parameters: r x (in + out) for each targeted projection of each layer."""
    shapes = {"q_proj": (hidden, heads * head_dim), "k_proj": (hidden, kv_heads * head_dim),
              "v_proj": (hidden, kv_heads * head_dim), "o_proj": (heads * head_dim, hidden),
              "gate_proj": (hidden, intermediate), "up_proj": (hidden, intermediate),
              "down_proj": (intermediate, hidden)}
    unknown = set(targets) - set(shapes)
    if unknown:
        raise ValueError(f"unknown LoRA target modules: {sorted(unknown)}")
    return layers * sum(lora_r * (shapes[t][0] + shapes[t][1]) for t in targets)


def trained_states(*, params: int, backend: str, shards: int = 1, adapter_params: int = 0) -> dict:
    """Weights, gradients and optimiser states of one trained model on one device.

    ``adapter_params`` > 0: LoRA, the base frozen in bf16 and only the adapter (plus any fully
    trained head counted in it) trained, replicated as under DDP.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
    if shards < 1:
        raise ValueError("shards must be at least 1")
    if adapter_params and backend in SHARDED:
        raise ValueError("LoRA runs under DDP: the stages refuse it under ZeRO-3/FSDP")
    divisor = shards if backend in SHARDED else 1
    trained = adapter_params or params
    weights, gradients, optimizer = (trained * b / divisor for b in TRAINED_BYTES[backend])
    frozen = BF16 * params if adapter_params else 0
    return {"weights": weights, "gradients": gradients, "optimizer": optimizer, "frozen_base": frozen,
            "total": weights + gradients + optimizer + frozen}


def frozen_copy(*, params: int, bytes_per_param: int = BF16) -> int:
    """A frozen model placed whole on the device (reference, reward model)."""
    return params * bytes_per_param


def activations(*, per_token: float, layers: int, sequences: int, width: int, checkpointing: bool = False,
                kept_per_token: float = 0.0, per_square: float = 0.0, constant: float = 0.0) -> float:
    """Bytes saved for backward by the decoder layers of one forward of ``sequences`` x ``width``.

    ``per_token``, ``per_square`` and ``constant`` describe one layer without checkpointing (bytes
    per token, per sequence per position^2, per layer); ``kept_per_token`` is what a checkpointed
    layer keeps per token (its input hidden state).
    """
    tokens = sequences * width
    one_layer = per_token * tokens + per_square * sequences * width ** 2 + constant
    if not checkpointing:
        return layers * one_layer
    return layers * kept_per_token * tokens + one_layer


def logits(*, vocab: int, positions: int) -> int:
    """fp32 logits of ``positions`` (sequences x positions scored), kept for the loss."""
    return 4 * vocab * positions


def kv_cache(*, layers: int, kv_heads: int, head_dim: int, sequences: int, width: int,
             bytes_per_value: int = BF16) -> int:
    """Keys and values of every layer for ``sequences`` generated up to ``width`` tokens."""
    return 2 * layers * kv_heads * head_dim * sequences * width * bytes_per_value


def working_set(*, backend: str, layer_params: int, embedding_params: int) -> int:
    """ZeRO-3/FSDP: gathered bf16 weights of the module computing and the one prefetched."""
    return 2 * BF16 * max(layer_params, embedding_params) if backend in SHARDED else 0


def largest_fitting(candidates, peak_bytes, budget_bytes: float):
    """The first candidate (ordered best first) whose ``peak_bytes(candidate)`` fits, else None."""
    for candidate in candidates:
        if peak_bytes(candidate) <= budget_bytes:
            return candidate
    return None


def divisors_descending(n: int) -> list[int]:
    """Micro-batch sizes that split a per-process batch of ``n`` evenly, largest first."""
    return [d for d in range(n, 0, -1) if n % d == 0]


def architecture(*, vocab: int, hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int,
                 head_dim: int, tied_embeddings: bool = False) -> dict:
    """The numbers the stage functions read: parameter counts of the LM and of its score-head twin."""
    shape = dict(vocab=vocab, hidden=hidden, intermediate=intermediate, layers=layers, heads=heads,
                 kv_heads=kv_heads, head_dim=head_dim, tied_embeddings=tied_embeddings)
    lm = decoder_parameters(**shape)
    return shape | {"params": lm["total"], "score_params": decoder_parameters(**shape, head="score")["total"],
                    "layer_params": lm["layer"], "embedding_params": lm["embedding"]}


def _forward(model: dict, measured: dict, sequences: int, width: int, checkpointing: bool) -> float:
    return activations(per_token=measured["per_token"], kept_per_token=measured["kept_per_token"],
                       per_square=measured.get("per_square", 0.0), constant=measured.get("constant", 0.0),
                       layers=model["layers"], sequences=sequences, width=width, checkpointing=checkpointing)


def _total(parts: dict) -> dict:
    return parts | {"peak": sum(parts.values())}


def training_memory(*, stage: str, model: dict, backend: str, shards: int, micro_batch: int, width: int,
                    checkpointing: bool, measured: dict, response_width: int = 0, adapter_params: int = 0) -> dict:
    """Peak bytes per device of one SFT, reward-model or DPO training step.

    ``micro_batch``: sequences (SFT) or preference pairs (reward_model, dpo: chosen and rejected in
    one forward) per forward; ``width``: padded tokens per sequence; ``response_width``: DPO's scored
    response positions (its logits); ``measured``: the layer's per_token / kept_per_token /
    per_square / constant bytes for this backend's precision (bench/memory_7b.py).
    """
    if stage not in ("sft", "reward_model", "dpo"):
        raise ValueError(f"stage must be sft, reward_model or dpo (ppo: ppo_memory), not {stage!r}")
    params = model["score_params"] if stage == "reward_model" else model["params"]
    sequences = micro_batch if stage == "sft" else 2 * micro_batch
    positions = {"sft": micro_batch * width, "reward_model": 0, "dpo": sequences * response_width}[stage]
    return _total({
        "states": trained_states(params=params, backend=backend, shards=shards,
                                 adapter_params=adapter_params)["total"],
        "working_set": working_set(backend=backend, layer_params=model["layer_params"],
                                   embedding_params=model["embedding_params"]),
        "activations": _forward(model, measured, sequences, width, checkpointing),
        "logits": logits(vocab=model["vocab"], positions=positions)})


def ppo_memory(*, model: dict, backend: str, shards: int, micro_batch: int, width: int, response_width: int,
               rollouts: int, checkpointing: bool, policy_measured: dict, value_measured: dict,
               policy_adapter_params: int = 0, value_adapter_params: int = 0, reference_copy: bool = True) -> dict:
    """Peak bytes per device of PPO: trained policy and value model, frozen reference and reward model.

    Two phases share the states: generation (``rollouts`` sequences per process up to ``width``,
    their KV cache, and under ZeRO-3/FSDP the policy's gathered bf16 weights) and the update
    (policy and value forwards of ``micro_batch`` rollouts, one backward for both).
    ``reference_copy`` False: a LoRA policy whose reference is its base with the adapter off.
    """
    states = (trained_states(params=model["params"], backend=backend, shards=shards,
                             adapter_params=policy_adapter_params)["total"]
              + trained_states(params=model["score_params"], backend=backend, shards=shards,
                               adapter_params=value_adapter_params)["total"])
    frozen = frozen_copy(params=model["score_params"]) + (frozen_copy(params=model["params"]) if reference_copy else 0)
    generation = kv_cache(layers=model["layers"], kv_heads=model["kv_heads"], head_dim=model["head_dim"],
                          sequences=rollouts, width=width)
    if backend in SHARDED:
        generation += frozen_copy(params=model["params"])  # the unwrap-for-generation gather
    update = (_forward(model, policy_measured, micro_batch, width, checkpointing)
              + _forward(model, value_measured, micro_batch, width, checkpointing)
              + logits(vocab=model["vocab"], positions=micro_batch * response_width)
              + 2 * working_set(backend=backend, layer_params=model["layer_params"],
                                embedding_params=model["embedding_params"]))
    parts = {"states": states, "frozen": frozen, "generation": generation, "update": update}
    return parts | {"peak": states + frozen + max(generation, update)}
