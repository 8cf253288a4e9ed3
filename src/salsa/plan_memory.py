"""`salsa plan`'s memory and disk section: each GPU training job's settings, read from its own command.

A job's command is what will run (rules/jobs.smk: `python -m salsa.launch --gpus N --accelerate-config
FILE ... -- salsa.<stage> ARGS`), so the stage's own parser reads ARGS, with its defaults, and the
accelerate config names the backend. Widths come from the data stage: its job in the same dry run,
else the finished data directory's metadata.
"""

from __future__ import annotations

import importlib
import json
import shlex
from pathlib import Path

from salsa import stage_memory
from salsa.artifacts import StageError

# module -> (stage in salsa.stage_memory, config class)
STAGE_MODULES = {"salsa.sft": ("sft", "SFTConfig"), "salsa.reward": ("reward_model", "RewardConfig"),
                 "salsa.dpo": ("dpo", "DPOConfig"), "salsa.ppo": ("ppo", "PPOConfig")}
GIB, GB = 2**30, 1e9
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def job_command(shell: str) -> tuple[dict, str, list[str]] | None:
    """(launch settings, stage module, stage argv) of a job run through salsa.launch, else None."""
    from salsa.launch import parse

    argv = shlex.split(shell)
    argv = argv[:argv.index(">")] if ">" in argv else argv
    if "salsa.launch" not in argv:
        return None
    launch, command = parse(argv[argv.index("salsa.launch") + 1:])
    return vars(launch), command[0], command[1:]


def backend_of(accelerate_config: str | None, workdir: str) -> str:
    """zero3, fsdp or ddp (one process, or DDP) from an accelerate config file."""
    if not accelerate_config:
        return "ddp"
    import yaml

    path = Path(accelerate_config)
    path = path if path.is_absolute() else Path(workdir) / path
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise StageError(f"{accelerate_config}: accelerate config not readable ({error.strerror})") from None
    kind = config.get("distributed_type", "")
    if kind == "DEEPSPEED":
        stage = (config.get("deepspeed_config") or {}).get("zero_stage")
        if stage != 3:
            raise StageError(f"{accelerate_config}: salsa plan models DeepSpeed ZeRO stage 3, not {stage}")
        return "zero3"
    return "fsdp" if kind == "FSDP" else "ddp"


def data_widths(launched: list[tuple], workdir: str) -> dict | None:
    """max_prompt_length / max_response_length (tokens) of the run's data: from the data job in this dry
    run, else from a finished data directory's salsa_meta.json. ``launched``: (job, job_command) pairs."""
    from salsa.hub_data import HubDataConfig

    defaults = {name: HubDataConfig.__dataclass_fields__[f"max_{name}_length"].default for name in ("prompt", "response")}
    for _, found in launched:
        if found[1] == "salsa.data" and "--source" in found[2] \
                and found[2][found[2].index("--source") + 1] == "hub":
            argv = found[2]
            return {name: int(argv[argv.index(flag) + 1]) if (flag := f"--max-{name}-length") in argv else default
                    for name, default in defaults.items()}
    for _, found in launched:
        if found[1] in STAGE_MODULES and "--data" in found[2]:
            meta = Path(workdir) / found[2][found[2].index("--data") + 1]
            for candidate in (meta / "salsa_meta.json", meta.parent / "salsa_meta.json"):
                if candidate.is_file():
                    config = json.loads(candidate.read_text()).get("config", {})
                    if "max_prompt_length" in config:
                        return {"prompt": config["max_prompt_length"], "response": config["max_response_length"]}
    return None


def setting_of(stage: str, config, processes: int, widths: dict | None) -> dict | None:
    """salsa.stage_memory's setting from a parsed stage config (None: widths unknown)."""
    share = max(1, config.batch_size // processes)
    micro = config.micro_batch_size or (config.mini_batch_size if stage == "ppo" else share)
    setting = {"gpus": processes, "batch": config.batch_size, "micro_batch": micro,
               "checkpointing": config.gradient_checkpointing, "lora_r": getattr(config, "lora_r", 0),
               "lora_targets": getattr(config, "lora_target_modules", ("q_proj", "k_proj", "v_proj", "o_proj"))}
    if stage == "sft":
        return setting | {"width": config.max_length}
    if widths is None:
        return None
    if stage == "ppo":
        return setting | {"width": widths["prompt"] + config.max_new_tokens, "response_width": config.max_new_tokens,
                          "value_lora_r": config.value_lora_r}
    return setting | {"width": widths["prompt"] + widths["response"], "response_width": widths["response"]}


def saved_bytes(config, backend: str) -> int:
    """Bytes per parameter of the saved model: ZeRO-3 in bf16/fp16 gathers 16-bit weights; DDP and FSDP
    keep fp32 master weights; a merged LoRA model is in the dtype the base was loaded in."""
    if getattr(config, "lora_r", 0):
        return DTYPE_BYTES[config.dtype]
    if backend == "zero3" and config.mixed_precision in ("bf16", "fp16"):
        return 2
    return 4


def family_of_run(jobs: list[dict], measured: dict) -> tuple[str, str, dict] | None:
    """(model, family, architecture) of the first model named in the jobs that maps to a measured family."""
    seen = set()
    for job in jobs:
        argv = shlex.split(job["shell"])
        for flag in ("--model", "--tokenizer", "--policy"):
            for at, arg in enumerate(argv[:-1]):
                model = argv[at + 1]
                if arg == flag and model not in seen:
                    seen.add(model)
                    found = stage_memory.resolve_family(model, measured)
                    if found:
                        return (model, *found)
    return None


def job_rows(training: list, measured: dict, family: str, arch: dict, widths: dict | None, workdir: str) -> list[dict]:
    """One row per rule and distinct setting: its jobs, backend, setting, peak bytes per device and disk."""
    from salsa.args import parse

    rows: dict[tuple, dict] = {}
    for job, launch, module, argv in training:
        stage, class_name = STAGE_MODULES[module]
        config = parse(getattr(importlib.import_module(module), class_name), argv)
        processes = (launch["processes"] or launch["gpus"]) * launch["nodes"]
        backend = backend_of(launch["accelerate_config"], workdir) if processes > 1 else "ddp"
        setting = setting_of(stage, config, processes, widths)
        key = (job["rule"], backend, json.dumps(setting, sort_keys=True, default=list))
        if key in rows:
            rows[key]["jobs"] += 1
            continue
        row = {"jobs": 1, "rule": job["rule"], "backend": backend, "setting": setting}
        if setting is not None:
            row["peak"] = stage_memory.stage_peak(measured, family, arch, stage, backend, setting)["peak"]
            row["disk"] = stage_memory.stage_disk(arch, stage, backend, setting, saved_bytes(config, backend))
        rows[key] = row
    return list(rows.values())


def memory_report(jobs: list[dict], workdir: str, gpu_gib: float, headroom_gib: float) -> str:
    launched = [(job, found) for job in jobs if (found := job_command(job["shell"]))]
    training = [(job, *found) for job, found in launched
                if found[1] in STAGE_MODULES and int(job["resources"].get("gpu", 0) or 0) > 0]
    if not training:
        return "memory per device: no GPU training job in this run"
    measured = stage_memory.load_measured()
    run_family = family_of_run(jobs, measured)
    if run_family is None:
        return ("memory per device: no measured family matches this run's model (bench/memory_7b.py measures "
                + ", ".join(measured["families"]) + "; its --families adds one)")
    model, family, arch = run_family
    widths = data_widths(launched, workdir)
    budget = (gpu_gib - headroom_gib) * GIB
    source = measured["source"]
    lines = [f"memory per device and disk (estimates): {model} as {family}, {arch['params'] / 1e9:.2f} B parameters; "
             f"activations measured by {source['benchmark']} ({source['date']}); model states, activations, logits "
             f"and the ZeRO-3/FSDP working set; not counted: CUDA context, NCCL buffers, fragmentation",
             f"{'rule':<16} {'jobs':>4} {'backend':>7} {'GPUs':>4} {'micro x width':>15} {'GiB/GPU':>8} "
             f"{'model GB':>8} {'resume GB':>9}"]
    rows = job_rows(training, measured, family, arch, widths, workdir)
    over, models, resume, sft_model = [], 0.0, (0.0, "", 0), 0.0
    for row in rows:
        setting = row["setting"]
        if setting is None:
            lines.append(f"{row['rule']:<16} {row['jobs']:>4} {row['backend']:>7}  widths unknown: no data job "
                         "in this dry run and no finished data directory")
            continue
        width = f"{setting['micro_batch']} x {setting['width']}{' ckpt' if setting['checkpointing'] else ''}"
        mark = " over" if row["peak"] > budget else ""
        lines.append(f"{row['rule']:<16} {row['jobs']:>4} {row['backend']:>7} {setting['gpus']:>4} {width:>15} "
                     f"{row['peak'] / GIB:>8.1f} {row['disk']['model'] / GB:>8.1f} {row['disk']['resume'] / GB:>9.1f}"
                     + mark)
        over += [row["rule"]] if mark else []
        models += row["jobs"] * row["disk"]["model"]
        resume = max(resume, (row["disk"]["resume"], row["rule"], row["jobs"]))
        sft_model = row["disk"]["model"] if row["rule"] == "sft" else sft_model
    soups = sum(job["rule"] == "soup" for job in jobs) * sft_model  # a soup is stored like its ingredients
    largest, rule, count = resume
    if count:
        lines.append(f"disk: {models / GB:.0f} GB of trained models and {soups / GB:.0f} GB of soups (data, rollouts "
                     f"and evaluations not counted); resume states while a job runs, deleted when it finishes: "
                     f"{largest / GB:.0f} GB per {rule} job, {count * largest / GB:.0f} GB if its {count} jobs run at once")
    if over:
        lines.append(f"over {gpu_gib - headroom_gib:g} of {gpu_gib:g} GiB per GPU: {', '.join(sorted(set(over)))}: "
                     "lower micro_batch_size, or set gradient_checkpointing (BENCHMARKS.md, memory)")
    return "\n".join(lines)
