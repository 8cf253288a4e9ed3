"""Benchmark: per-device memory of the 7B overlays' training stages, from activations measured on CPU.

Measured here: the bytes autograd saves for backward in ONE decoder layer of each family's real
shape (Llama-2-7B, Mistral-7B, Gemma-2B), built from its transformers config class with two layers
and a small vocabulary; the second layer is the one measured, so its input is a real hidden state
that requires grad (LoRA included) and the rotary tables shared by all layers are not charged to it.
A ``saved_tensors_hooks`` pack hook records every saved tensor's storage once (bench/
saved_activations.py). Forward only: what is saved is known when the forward ends. SDPA attention,
one padded position per sequence (so the stages' padding mask is passed, as it is with per-batch
padding), micro-batch 2, four sequence lengths, and a least-squares fit bytes = per_token x tokens
+ per_square x sequences x length^2 (the padding mask, bf16, per layer on this path) + constant (the
bf16 casts of fp32 weights under autocast, which autograd keeps until backward).

Regimes (what each backend runs, src/salsa/modeling.keep_trainable_in_fp32 and accelerate):
  full-fp32-autocast   full fine-tuning, fp32 weights under bf16 autocast (DDP)
  full-bf16            full fine-tuning, bf16 weights, no autocast (DeepSpeed bf16: ZeRO-3)
  full-bf16-autocast   bf16 compute weights under autocast (FSDP MixedPrecision bf16 + accelerate's autocast)
  lora-bf16-autocast   frozen bf16 base, fp32 LoRA r=64 adapters on q,k,v,o under autocast (DDP LoRA)
each without and with gradient checkpointing (use_reentrant=True, so the kept layer input is a saved
tensor the hook sees; the non-reentrant default keeps the same input in its closure).

Then src/salsa/memory.py turns the figures into per-stage, per-backend memory at the overlays'
micro-batches and widths, and the micro-batch / checkpointing that fits 80 GiB. Writing BENCHMARKS.md
also writes the per-layer figures to src/salsa/memory_measured.json, which `salsa plan` reads.

    .venv/bin/python bench/memory_7b.py              # writes the "Memory of the 7B overlays" section
    .venv/bin/python bench/memory_7b.py --no-write --json /tmp/memory.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import benchmarks_md  # bench/ is on sys.path when a script here runs
from ppo_vs_trl import machine
from saved_activations import FAMILIES, KIB, LORA_R, LORA_TARGETS, REGIMES, measure

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Memory of the 7B overlays"
PACKAGED = REPO / "src" / "salsa" / "memory_measured.json"


def versions() -> str:
    from importlib.metadata import version
    return ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "peft"))


# the regime each backend trains in (module docstring)
REGIME_OF = {"zero3": "full-bf16", "fsdp": "full-bf16-autocast", "ddp": "full-fp32-autocast",
             "lora": "lora-bf16-autocast"}
BACKEND_LABEL = {"zero3": "ZeRO-3", "fsdp": "FSDP", "ddp": "DDP", "lora": "LoRA r64 (DDP)"}
DEVICE_GIB, RESERVE_GIB = 80, 4  # ours: headroom for the CUDA context, NCCL buffers, fragmentation


def measured_for(results: dict, family: str, regime: str) -> dict:
    full = results["measured"][f"{family}/{regime}/full"]
    kept = results["measured"][f"{family}/{regime}/checkpointed"]
    return {"per_token": full["per_token_bytes"], "per_square": max(0.0, full["per_square_bytes"]),
            "constant": max(0.0, full["constant_bytes"]), "kept_per_token": kept["per_token_bytes"]}


def merged(base: dict, overlay: dict) -> dict:
    """``overlay`` over ``base``, nested mappings merged key by key."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def overlay_settings(name: str) -> dict:
    """What the overlay configures for each GPU stage (DPO: not in the 7B overlays, DPOConfig's defaults)."""
    import yaml
    from salsa.dpo import DPOConfig

    overlay = merged(yaml.safe_load((REPO / "config" / "config.yaml").read_text()),  # as snakemake --configfile A B
                     yaml.safe_load((REPO / "config" / "experiments" / f"{name}.yaml").read_text()))
    hub, res, ppo = overlay["data"]["hub"], overlay["resources"], overlay["ppo"]["params"]
    pair_width = hub["max_prompt_length"] + hub["max_response_length"]

    def stage(block: dict, resources: dict, width: int, batch: int, **extra) -> dict:
        gpus = resources["gpus"]
        return {"gpus": gpus, "accelerate_config": resources["accelerate_config"], "width": width, "batch": batch,
                "micro_batch": block.get("micro_batch_size") or batch // gpus, "lora_targets": LORA_TARGETS,
                "checkpointing": bool(block.get("gradient_checkpointing", False))} | extra

    dpo_default = DPOConfig.__dataclass_fields__["batch_size"].default
    return {
        "sft": stage(overlay["sft"], res["sft"], overlay["sft"]["max_length"], overlay["sft"]["batch_size"],
                     lora_r=overlay["sft"].get("lora_r", 0)),
        "reward_model": stage(overlay["reward_model"], res["reward_model"], pair_width,
                              overlay["reward_model"]["batch_size"]),
        "dpo": stage({}, res["reward_model"], pair_width, dpo_default, response_width=hub["max_response_length"]),
        "ppo": stage(ppo, res["ppo"], hub["max_prompt_length"] + ppo["max_new_tokens"], ppo["batch_size"],
                     response_width=ppo["max_new_tokens"], lora_r=ppo["lora_r"], value_lora_r=ppo["value_lora_r"],
                     lora_targets=ppo.get("lora_target_modules", LORA_TARGETS)) | {"micro_batch": ppo.get("micro_batch_size")
                                                                                     or ppo["mini_batch_size"]},
    }


# the Hub models each measured family stands for (salsa plan finds others by their config.json's layer shape)
HUB_MODELS = {"llama2-7b": ["meta-llama/Llama-2-7b-hf"], "mistral-7b": ["mistralai/Mistral-7B-v0.1"],
              "gemma-2b": ["google/gemma-2b"]}


def family_shape(family: str) -> dict:
    """salsa.memory.architecture's keywords for a measured family."""
    _, shape, layers, vocab, tied = FAMILIES[family]
    return {"vocab": vocab, "hidden": shape["hidden_size"], "intermediate": shape["intermediate_size"],
            "layers": layers, "heads": shape["num_attention_heads"], "kv_heads": shape["num_key_value_heads"],
            "head_dim": shape["head_dim"], "tied_embeddings": tied}


def packaged(results: dict) -> dict:
    """The measurement as src/salsa/memory_measured.json holds it (salsa.stage_memory reads it)."""
    families = {family: {"hub_models": HUB_MODELS[family], "architecture": family_shape(family),
                         "regimes": {regime: measured_for(results, family, regime) for regime in REGIMES}}
                for family in sorted({key.split("/")[0] for key in results["measured"]})}
    source = {key: results[key] for key in ("date", "machine", "versions", "lengths", "micro_batch")}
    return {"source": source | {"command": sanitized(results["command"]), "benchmark": "bench/memory_7b.py"},
            "families": families}


def architecture_of(family: str) -> dict:
    from salsa import memory

    return memory.architecture(**family_shape(family))


def stage_peak(measured: dict, family: str, stage: str, backend: str, setting: dict, micro_batch: int,
               checkpointing: bool) -> dict:
    """salsa.stage_memory's figure (``measured``: packaged(results)); backend "lora" is DDP with r 64
    adapters where the overlay trains in full."""
    from salsa import stage_memory

    if backend == "lora":
        backend, setting = "ddp", setting | {"lora_r": setting.get("lora_r") or LORA_R,
                                             "value_lora_r": setting.get("value_lora_r") or LORA_R}
    else:
        setting = setting | {"lora_r": 0, "value_lora_r": 0}
    return stage_memory.stage_peak(measured, family, architecture_of(family), stage, backend, setting,
                                   micro_batch, checkpointing)


def plan(results: dict) -> list[dict]:
    """Every overlay x stage x backend: peak at the configured setting and the largest micro-batch that
    fits without and with checkpointing."""
    from salsa import memory

    budget = (DEVICE_GIB - RESERVE_GIB) * memory.GIB
    measured = packaged(results)  # once: every row and candidate micro-batch reads it
    rows = []
    for family in FAMILIES:
        for stage, setting in overlay_settings(family).items():
            for backend in ("zero3", "fsdp", "ddp", "lora"):
                def peak(micro_batch, checkpointing):
                    return stage_peak(measured, family, stage, backend, setting, micro_batch, checkpointing)

                share = memory.divisors_descending(setting["batch"] // setting["gpus"])
                fits = {ckpt: memory.largest_fitting(share, lambda mb: peak(mb, ckpt)["peak"], budget)
                        for ckpt in (False, True)}
                rows.append({"overlay": family, "stage": stage, "backend": backend, "setting": setting,
                             "configured": peak(setting["micro_batch"], setting["checkpointing"]),
                             "fits": {ckpt: (mb, peak(mb, ckpt)["peak"]) if mb else None
                                      for ckpt, mb in fits.items()}})
    return rows


def overlay_backend(stage: str, setting: dict) -> str:
    """The backend the overlay runs the stage with (DPO: none configured; the reward stage's)."""
    backend = {"deepspeed-zero3": "zero3", "fsdp": "fsdp", "ddp": "ddp"}[setting["accelerate_config"]]
    return "lora" if backend == "ddp" and setting.get("lora_r", 0) > 0 else backend


def sanitized(command: str) -> str:
    """No path of this machine in BENCHMARKS.md."""
    return " ".join("FILE" if part.startswith("/") else part for part in command.split())


def gib(n: float) -> str:
    return f"{n / 2**30:.1f}"


def phases(parts: dict) -> tuple[float, float, float]:
    """(states + frozen copies, update: activations + logits + working set, generation) in bytes."""
    fixed = parts["states"] + parts.get("frozen", 0)
    if "update" in parts:
        return fixed, parts["update"], parts["generation"]
    return fixed, parts["activations"] + parts["logits"] + parts["working_set"], 0.0


def breakdown_lines(results: dict, family: str = "llama2-7b") -> list[str]:
    regimes = ("full-fp32-autocast", "full-bf16", "lora-bf16-autocast")
    longest = max(results["lengths"]) * results["micro_batch"]
    kinds = {r: results["measured"][f"{family}/{r}/full"]["kinds_at_longest"] for r in regimes}
    names = sorted({k for r in regimes for k in kinds[r]}, key=lambda k: -kinds[regimes[0]].get(k, 0))
    lines = [f"Where a {family} layer's bytes go, by the op that produced each saved tensor (at length "
             f"{max(results['lengths'])}, KiB per token; 'T' rows are transposed bf16 weight casts, the per-layer "
             "constant, in MiB):", "",
             "| saved tensor from | " + " | ".join(regimes) + " |", "|---|" + "---|" * len(regimes)]
    for name in names:
        cells = []
        for r in regimes:
            n = kinds[r].get(name, 0)
            cells.append(f"{n / 2**20:.1f} MiB" if name.startswith("T ") and n else f"{n / longest / KIB:.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def render(results: dict) -> str:
    from salsa import memory

    m = results["measured"]
    lines = [SECTION, "",
             f"Date {results['date']}; machine: {results['machine']}; Python {platform.python_version()}, "
             f"{results['versions']}. Load average (1/5/15 min) before {' '.join(f'{x:.2f}' for x in results['load_before'])}, "
             f"after {' '.join(f'{x:.2f}' for x in results['load_after'])} (the machine is shared with other "
             f"engineers' jobs; saved bytes do not depend on load). Measurement took {results['seconds']:.0f} s.",
             f"Command: `{sanitized(results['command'])}` (from the repository root)"
             + (f", this section then written by `{sanitized(results['written_by'])}`" if "written_by" in results else "")
             + ".", "",
             "Measured: bytes autograd saves for backward in one decoder layer of each family's real shape (the "
             "second of a 2-layer model built from its transformers config class, vocabulary 512), SDPA attention, "
             f"micro-batch {results['micro_batch']}, one padded position per sequence, lengths "
             f"{', '.join(map(str, results['lengths']))}; fitted as bytes = per-token x tokens + mask x sequences "
             "x length^2 + constant per layer (largest relative residual of the fit in the last column). "
             "Regimes and the backend each stands for: bench/memory_7b.py's docstring.", "",
             "| family | regime (backend) | KiB/token/layer | checkpointed: KiB/token/layer kept | mask B/position^2 | "
             "constant MiB/layer | residual |", "|---|---|---|---|---|---|---|"]
    used_by = {regime: ", ".join(BACKEND_LABEL[b] for b, r in REGIME_OF.items() if r == regime) for regime in REGIMES}
    for family in FAMILIES:
        for regime in REGIMES:
            full, kept = m[f"{family}/{regime}/full"], m[f"{family}/{regime}/checkpointed"]
            lines.append(f"| {family} | {regime} ({used_by[regime]}) | {full['per_token_bytes'] / KIB:.2f} | "
                         f"{kept['per_token_bytes'] / KIB:.2f} | {max(0.0, full['per_square_bytes']):.2f} | "
                         f"{max(0.0, full['constant_bytes']) / 2**20:.1f} | "
                         f"{max(full['max_residual'], kept['max_residual']):.0e} |")
    llama = m["llama2-7b/full-fp32-autocast/full"]
    layer_params = architecture_of("llama2-7b")["layer_params"]
    lines += ["", f"- The autocast constant is the bf16 copy of the layer's fp32 matrices autograd keeps: "
              f"2 bytes x {layer_params:,} layer parameters x {llama['constant_bytes'] / (2 * layer_params):.5f} (the norm "
              "weights, not cast, are the difference). Checkpointed, a layer keeps only its input: the hidden size x 4 bytes "
              "(fp32 residual stream under autocast with fp32 weights) or x 2 (bf16).",
              f"- Issue 17 reported 190.6 KiB/token/layer for a Llama-7B layer, full fine-tuning, bf16 autocast; "
              f"measured here {llama['per_token_bytes'] / KIB:.2f} with fp32 weights under autocast (what DDP runs) "
              f"and {m['llama2-7b/full-bf16/full']['per_token_bytes'] / KIB:.2f} with bf16 weights. The issue does "
              "not say how it counted; the table below shows where the bytes go. Under autocast with fp32 weights "
              "the residual stream is fp32 (each RMSNorm saves its 16 KiB input and 16 KiB normalised output) and "
              "the normalised fp32 hidden state is cast to bf16 once per consuming projection (q, k, v: 3 copies; "
              "gate, up: 2), which bf16 weights avoid."]
    mistral = m["mistral-7b/full-fp32-autocast/full"]["per_token_bytes"]
    mlp_extra = 4 * (FAMILIES["mistral-7b"][1]["intermediate_size"] - FAMILIES["llama2-7b"][1]["intermediate_size"]) * 2
    lines += [f"- Mistral-7B minus Llama-2-7B (fp32 weights, autocast): {(mistral - llama['per_token_bytes']) / KIB:.2f} "
              f"KiB/token/layer; the four bf16 MLP tensors of its wider MLP account for {mlp_extra / KIB:.2f}. Its 8 KV "
              "heads (Llama: 32) save no activation memory here: with a padding mask, transformers repeats keys and values to all 32 heads "
              "before SDPA (integrations/sdpa_attention.use_gqa_in_sdpa), and the repeated ones are what SDPA saves.",
              ""]
    lines += breakdown_lines(results)
    lines += ["Per device, in GiB, from src/salsa/memory.py with these figures (its docstring lists what is and is "
              "not counted). Configured: the overlay's per-process micro-batch (micro_batch_size, else batch / GPUs; "
              "PPO: micro_batch_size, else mini_batch_size rollouts), padded width (SFT max_length; reward model and "
              "DPO max_prompt_length + max_response_length, chosen and rejected in one forward; PPO "
              "max_prompt_length + max_new_tokens) and gradient_checkpointing. `salsa plan` prints the same "
              "figures for a resolved config, from each job's own command. The 7B overlays run no "
              "DPO: its rows use DPOConfig's default batch (32 pairs) on the reward stage's GPUs, reference "
              "log-probs from the cache. PPO: policy and value trained, reward model (and, without LoRA, the "
              "reference) as bf16 device copies; generation holds the rollouts' KV cache and, under ZeRO-3/FSDP, the "
              "policy's gathered bf16 weights; the peak is the larger phase. LoRA rows: r 64 on q, k, v, o (PPO: "
              "the overlay's lora_r / value_lora_r where set, else 64 for both; reference = the policy with its "
              "adapter off). Fits: the largest "
              f"micro-batch dividing the per-process share, under {DEVICE_GIB} GiB less {RESERVE_GIB} GiB headroom "
              "(ours), without / with gradient checkpointing. (overlay): the backend the overlay configures.", "",
              "| overlay | stage | backend | GPUs | configured: micro-batch x width | states + frozen | update | "
              "generation | peak configured | fits without ckpt (peak) | fits with ckpt (peak) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    budget = (DEVICE_GIB - RESERVE_GIB) * memory.GIB
    rows = plan(results)
    for row in rows:
        setting, cfg = row["setting"], row["configured"]
        fixed, update, generation = phases(cfg)
        current = f"{setting['micro_batch']} x {setting['width']}{' ckpt' if setting['checkpointing'] else ''}"
        fits = [f"{got[0]} ({gib(got[1])})" if got else "nothing" for got in (row["fits"][False], row["fits"][True])]
        mark = "" if cfg["peak"] <= budget else " **over**"
        ours = " (overlay)" if row["stage"] != "dpo" and row["backend"] == overlay_backend(row["stage"], setting) else ""
        lines.append(f"| {row['overlay']} | {row['stage']} | {BACKEND_LABEL[row['backend']]}{ours} | {setting['gpus']} | "
                     f"{current} | {gib(fixed)} | {gib(update)} | {gib(generation) if generation else '-'} | "
                     f"{gib(cfg['peak'])}{mark} | {fits[0]} | {fits[1]} |")
    lines.append("")
    for family in ("llama2-7b", "mistral-7b"):
        setting = overlay_settings(family)["ppo"]
        zero3 = next(r for r in rows if r["overlay"] == family and r["stage"] == "ppo" and r["backend"] == "zero3")
        for ckpt in (False, True):
            if not zero3["fits"][ckpt]:
                lines.append(f"- {family}, full-parameter PPO under ZeRO-3 on {setting['gpus']} x {DEVICE_GIB} GiB "
                             f"{'with' if ckpt else 'without'} checkpointing: nothing fits.")
                continue
            mb, peak_bytes = zero3["fits"][ckpt]
            parts = stage_peak(packaged(results), family, "ppo", "zero3", setting, mb, ckpt)
            lines.append(
                f"- {family}, full-parameter PPO on {setting['gpus']} x {DEVICE_GIB} GiB, ZeRO-3 "
                f"{'with' if ckpt else 'without'} gradient checkpointing: up to {mb} rollouts per process per "
                f"forward, peak {gib(peak_bytes)} GiB = policy + value states sharded over {setting['gpus']} GPUs "
                f"{gib(parts['states'])} + reference and reward bf16 copies {gib(parts['frozen'])} + the larger of "
                f"generation {gib(parts['generation'])} (KV cache of {setting['batch'] // setting['gpus']} rollouts x "
                f"{setting['width']} tokens + the gathered bf16 policy) and update {gib(parts['update'])}.")
    lines.append("- Not in these figures: ppo.py today casts a fully trained policy's reference to the policy's "
                 "dtype (fp32 under DDP), 2 bytes per parameter more than the bf16 copy counted; sharding the frozen "
                 "reference and reward model as well (ZeRO-3 inference) would save most of their copies.")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--lengths", type=int, nargs="+", default=[128, 256, 384, 512],
                        help="sequence lengths measured (at least three: per token, per sequence^2, constant)")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per measured forward")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch default)")
    parser.add_argument("--measured", type=Path, help="reuse the measurements of an earlier --json instead of measuring")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    parser.add_argument("--json", type=Path, help="also write the measurements and tables here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.measured:
        results = json.loads(args.measured.read_text())
        results["written_by"] = " ".join([os.path.relpath(sys.executable, REPO), *sys.argv])
    else:
        started = time.time()
        load_before = os.getloadavg()
        results = {"measured": measure(args.families, REGIMES, args.lengths, args.micro_batch),
                   "lengths": args.lengths, "micro_batch": args.micro_batch, "seconds": time.time() - started,
                   "load_before": load_before, "load_after": os.getloadavg(), "machine": machine(),
                   "versions": versions(), "date": time.strftime("%Y-%m-%d"),
                   "command": " ".join([os.path.relpath(sys.executable, REPO), *sys.argv])}
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    markdown = render(results)
    benchmarks_md.publish(SECTION, markdown, results, args.json, write=not args.no_write)
    if not args.no_write:  # what `salsa plan` reads (salsa.stage_memory)
        tmp = PACKAGED.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(packaged(results), indent=1, sort_keys=True) + "\n")
        tmp.replace(PACKAGED)
        print(f"wrote {PACKAGED.relative_to(REPO)}")


if __name__ == "__main__":
    main()
