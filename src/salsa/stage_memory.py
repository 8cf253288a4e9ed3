"""Memory per device and disk of a GPU training job, from its settings and the packaged measurement.

The measured figures (bytes autograd saves per token per decoder layer, by model family and precision
regime) are bench/memory_7b.py's; that benchmark writes them to ``memory_measured.json`` beside this file
with its provenance. ``salsa.memory`` turns them into model states + activations. Two callers:
``salsa plan`` (settings parsed from each job's command, so the figure is for what will run) and the
benchmark (settings from the overlays, plus what-if backends).

A setting is a dict: gpus, width (padded tokens per sequence), batch (global: sequences, pairs or PPO
rollouts per update), micro_batch (per process per forward), checkpointing, lora_r, lora_targets and,
for PPO, response_width, value_lora_r; for DPO response_width.
"""

from __future__ import annotations

import json
from pathlib import Path

from salsa import memory

MEASURED_FILE = Path(__file__).with_name("memory_measured.json")
# the precision each backend trains in (bench/memory_7b.py's regimes)
REGIME_OF = {"zero3": "full-bf16", "fsdp": "full-bf16-autocast", "ddp": "full-fp32-autocast"}
LORA_REGIME = "lora-bf16-autocast"
STAGES = ("sft", "reward_model", "dpo", "ppo")
# bytes per parameter a resume state holds: weights as trained plus the optimiser (memory.TRAINED_BYTES)
RESUME_BYTES = {backend: weights + optimizer for backend, (weights, _, optimizer) in memory.TRAINED_BYTES.items()}


def load_measured(path: Path = MEASURED_FILE) -> dict:
    """{"source": provenance, "families": {family: {"hub_models", "architecture", "regimes"}}}."""
    return json.loads(Path(path).read_text())


def architecture(entry: dict) -> dict:
    return memory.architecture(**entry["architecture"])


def layer_shape(shape: dict) -> tuple:
    return tuple(shape[k] for k in ("hidden", "intermediate", "heads", "kv_heads", "head_dim"))


def shape_from_config(config: dict) -> dict:
    """salsa.memory's architecture keywords from a transformers config.json."""
    heads = config["num_attention_heads"]
    return {"vocab": config["vocab_size"], "hidden": config["hidden_size"],
            "intermediate": config["intermediate_size"], "layers": config["num_hidden_layers"], "heads": heads,
            "kv_heads": config.get("num_key_value_heads") or heads,
            "head_dim": config.get("head_dim") or config["hidden_size"] // heads,
            "tied_embeddings": bool(config.get("tie_word_embeddings", False))}


def model_config(model: str) -> dict | None:
    """A model's config.json: from its directory, else from the Hugging Face cache (no download)."""
    from salsa.model_specs import is_gguf, split_revision

    if is_gguf(model):
        return None
    name, revision = split_revision(model)
    local = Path(name) / "config.json"
    if local.is_file():
        return json.loads(local.read_text())
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except ValueError:  # not a valid Hub id either (e.g. a stage output that does not exist yet)
        return None
    return json.loads(Path(found).read_text()) if isinstance(found, str) else None


def resolve_family(model: str, measured: dict) -> tuple[str, dict] | None:
    """(family, architecture) of a model: by its Hub name, else by a cached config.json whose decoder
    layer has a measured family's shape (layers and vocabulary then taken from that config)."""
    from salsa.model_specs import split_revision

    name = split_revision(model)[0] if not model.startswith("pypi:") else model
    families = measured["families"]
    for family, entry in families.items():
        if name in entry["hub_models"]:
            return family, architecture(entry)
    config = model_config(model)
    if not config or "hidden_size" not in config:
        return None
    shape = shape_from_config(config)
    for family, entry in families.items():
        if layer_shape(entry["architecture"]) == layer_shape(shape):
            return family, memory.architecture(**shape)
    return None


def _measured(measured: dict, family: str, regime: str) -> dict:
    return measured["families"][family]["regimes"][regime]


def _adapter(arch: dict, lora_r: int, targets) -> int:
    if not lora_r:
        return 0
    shape = {k: arch[k] for k in ("hidden", "layers", "heads", "kv_heads", "head_dim", "intermediate")}
    return memory.lora_parameters(**shape, lora_r=lora_r, targets=tuple(targets))


def stage_peak(measured: dict, family: str, arch: dict, stage: str, backend: str, setting: dict,
               micro_batch: int | None = None, checkpointing: bool | None = None) -> dict:
    """Bytes per device of one job (salsa.memory's parts and "peak"), at the setting's micro-batch and
    checkpointing unless others are given. backend: zero3, fsdp or ddp (LoRA: ddp with lora_r > 0)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
    micro_batch = setting["micro_batch"] if micro_batch is None else micro_batch
    checkpointing = setting["checkpointing"] if checkpointing is None else checkpointing
    shards = setting["gpus"] if backend in memory.SHARDED else 1
    targets = setting.get("lora_targets", ("q_proj", "k_proj", "v_proj", "o_proj"))
    policy_adapter = _adapter(arch, setting.get("lora_r", 0), targets)
    regime = LORA_REGIME if policy_adapter else REGIME_OF[backend]
    if stage == "ppo":
        value_adapter = _adapter(arch, setting.get("value_lora_r", 0), targets)
        value_adapter += arch["hidden"] if value_adapter else 0  # the score head trains in full
        return memory.ppo_memory(
            model=arch, backend=backend, shards=shards, micro_batch=micro_batch, width=setting["width"],
            response_width=setting["response_width"], rollouts=setting["batch"] // setting["gpus"],
            checkpointing=checkpointing, policy_measured=_measured(measured, family, regime),
            value_measured=_measured(measured, family, LORA_REGIME if value_adapter else REGIME_OF[backend]),
            policy_adapter_params=policy_adapter, value_adapter_params=value_adapter,
            reference_copy=not policy_adapter)
    if stage == "reward_model" and policy_adapter:
        policy_adapter += arch["hidden"]
    return memory.training_memory(stage=stage, model=arch, backend=backend, shards=shards, micro_batch=micro_batch,
                                  width=setting["width"], checkpointing=checkpointing,
                                  measured=_measured(measured, family, regime),
                                  response_width=setting.get("response_width", 0), adapter_params=policy_adapter)


def stage_disk(arch: dict, stage: str, backend: str, setting: dict, saved_bytes: int) -> dict:
    """Bytes a job writes (estimates from parameter counts): the final model, and the resume state that
    exists while it runs (weights as trained + Adam, over all processes; LoRA: adapters and frozen bases).

    ``saved_bytes``: bytes per parameter of the saved model (2 for bf16 weights, 4 for fp32 master weights).
    """
    params = arch["score_params"] if stage == "reward_model" else arch["params"]
    targets = setting.get("lora_targets", ("q_proj", "k_proj", "v_proj", "o_proj"))
    trained = [(params, _adapter(arch, setting.get("lora_r", 0), targets))]
    if stage == "ppo":
        trained.append((arch["score_params"], _adapter(arch, setting.get("value_lora_r", 0), targets)))
    resume = 0
    for full, adapter in trained:
        resume += adapter * RESUME_BYTES[backend] + full * memory.BF16 if adapter else full * RESUME_BYTES[backend]
    return {"model": params * saved_bytes, "resume": resume}
