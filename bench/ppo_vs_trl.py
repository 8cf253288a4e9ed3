"""Benchmark: our PPO loop (salsa.ppo) against TRL 1.12's PPOTrainer, same work, one process.

Both sides load the same tiny random Llama policy/reference (LlamaForCausalLM)
and value/reward models (LlamaForSequenceClassification, one label) from a temp
dir, the same WordLevel tokenizer and the same prompts, and run the same shapes:
batch 64 prompts of 16 tokens, 32 sampled response tokens, 4 PPO epochs x 2
minibatches of 32 (8 optimiser steps per update), temperature 1, kl_coef 0.05,
lr 3e-4 linearly annealed, AdamW eps 1e-5, float32, CPU.

Equal work, how:
  * prompts: 16 words of the WordLevel vocabulary; the tokenizer's chat template
    emits the user content unchanged, so our chat-formatted prompts and TRL's
    pre-tokenised `input_ids` are the same 16 ids (no padding on either side).
  * full 32-token responses on both sides: the tokenizer's EOS and PAD ids (256,
    257) lie outside the model's 256-token vocabulary, so no sampler can emit
    them. TRL runs with stop_token=None (its default: no truncation, no
    missing-EOS penalty); ours never sees an EOS, so it samples all 32 tokens
    and masks nothing, and runs with --missing-eos-penalty 0 (TRL's None).
  * minibatches: TRL with per_device_train_batch_size=64, gradient_accumulation_steps=1,
    num_mini_batches=2 takes one optimiser step per minibatch of 32, like ours
    (gradient_accumulation_steps=2 would instead accumulate both minibatches into
    one step per epoch).
  * differences left in place (each side's own design): ours clips the gradient
    norm (TRL's PPO does not), ours runs one extra policy forward for the old
    log-probs (TRL takes them from generate()'s scores), TRL calls gc.collect()
    twice per update and logs every update.

Timing: per-update wall time between consecutive update ends (ours: the loop's
progress-bar tick, patched in here; TRL: the on_step_end callback), so each
figure covers one whole update including bookkeeping; update 1 (warm-up) is
excluded. Our breakdown comes from our metrics.csv (time_generate, time_score,
time_train). The two implementations alternate, --repeats times, in this one
process; the table reports the median and best over all timed updates.

    .venv/bin/pip install -e '.[bench]' -c constraints.txt   # trl==1.12.0, torch/transformers stay pinned
    .venv/bin/python bench/ppo_vs_trl.py                      # writes the "PPO vs TRL" section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchmarks_md  # bench/ is on sys.path when a script here runs

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SECTION = "## PPO vs TRL"
VOCAB, HIDDEN, LAYERS, HEADS, INTERMEDIATE = 256, 128, 2, 4, 512
EOS_ID, PAD_ID = VOCAB, VOCAB + 1  # outside the model's vocabulary: never sampled
BATCH, MINI_BATCH, PPO_EPOCHS, QUERY_LEN, RESPONSE_LEN = 64, 32, 4, 16, 32
NUM_PROMPTS = 256
LR, ADAM_EPS, KL_COEF, TEMPERATURE = 3e-4, 1e-5, 0.05, 1.0


# ----------------------------------------------------------------------------- clocks

GC_SECONDS = [0.0]  # time spent in garbage collection (any generation), accumulated by a gc callback
_gc_started = [0.0]


def _gc_clock(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        GC_SECONDS[0] += time.perf_counter() - _gc_started[0]


def tick() -> tuple[float, float, float]:
    """Wall clock, process CPU time, garbage-collection time so far."""
    return time.perf_counter(), time.process_time(), GC_SECONDS[0]


def per_update(ticks: list[tuple[float, float, float]]) -> dict[str, list[float]]:
    """Differences between consecutive update ends: the first update (warm-up) has no start tick."""
    deltas = [[b[i] - a[i] for a, b in zip(ticks, ticks[1:])] for i in range(3)]
    return {"per_update": deltas[0], "cpu_per_update": deltas[1], "gc_per_update": deltas[2]}


# ----------------------------------------------------------------------------- setup

@contextlib.contextmanager
def ticking_progress(ticks: list[tuple[float, float, float]]):
    """Append a tick() at every progress-bar update of salsa's training loops: one per update or step."""
    from salsa import training

    real_progress = training.progress

    class Ticking:
        def __init__(self, bar):
            self.bar = bar

        def update(self, n=1):
            ticks.append(tick())
            return self.bar.update(n)

        def __getattr__(self, name):
            return getattr(self.bar, name)

    training.progress = lambda *a, **k: Ticking(real_progress(*a, **{**k, "disable": True}))
    try:
        yield
    finally:
        training.progress = real_progress


def build(root: Path) -> dict[str, Path]:
    """Tokenizer, policy, reward model and prompts, saved once for both implementations."""
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB)} | {"<eos>": EOS_ID, "<pad>": PAD_ID}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", eos_token="<eos>",
                                        pad_token="<pad>", padding_side="left")
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"

    def config(**extra):
        return LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE,
                           num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                           max_position_embeddings=256, tie_word_embeddings=False, pad_token_id=None,
                           bos_token_id=None, eos_token_id=None, **extra)

    paths = {"policy": root / "policy", "reward": root / "reward", "data": root / "data"}
    torch.manual_seed(1234)
    policy = LlamaForCausalLM(config())
    policy.generation_config.eos_token_id = None
    policy.generation_config.pad_token_id = PAD_ID
    policy.save_pretrained(paths["policy"])
    tokenizer.save_pretrained(paths["policy"])
    reward = LlamaForSequenceClassification(config(num_labels=1))
    reward.save_pretrained(paths["reward"])
    tokenizer.save_pretrained(paths["reward"])
    (paths["reward"] / "reward_normalization.json").write_text(json.dumps({"mean": 0.0, "std": 1.0}))

    generator = torch.Generator().manual_seed(99)
    prompts = [" ".join(f"t{i}" for i in torch.randint(0, VOCAB, (QUERY_LEN,), generator=generator).tolist())
               for _ in range(NUM_PROMPTS)]
    Dataset.from_dict({"prompt": prompts}).save_to_disk(str(paths["data"] / "ppo_prompts"))
    check = tokenizer.apply_chat_template([{"role": "user", "content": prompts[0]}], tokenize=False,
                                          add_generation_prompt=True)
    assert len(tokenizer(check, add_special_tokens=False)["input_ids"]) == QUERY_LEN, check
    return paths


def summarise(run: dict[str, list[float]]) -> dict[str, float]:
    """Median (and best, mean) over the timed updates of all runs of one implementation."""
    wall = run["per_update"]
    median = statistics.median(wall)
    return {"n": len(wall), "median_s": median, "best_s": min(wall), "mean_s": statistics.mean(wall),
            "episodes_per_s": BATCH / median, "tokens_per_s": BATCH * RESPONSE_LEN / median,
            "best_episodes_per_s": BATCH / min(wall),
            "cpu_s": statistics.median(run["cpu_per_update"]), "gc_s": statistics.mean(run["gc_per_update"])}


# ----------------------------------------------------------------------------- ours

def run_ours(paths: dict[str, Path], out: Path, updates: int, threads: int) -> dict:
    """salsa.ppo.main with matching flags; per-update wall time from the loop's progress ticks."""
    import pandas as pd
    import torch
    from salsa import ppo

    ticks: list[tuple[float, float, float]] = []
    torch.set_num_threads(threads)
    argv = ["--policy", str(paths["policy"]), "--reference", str(paths["policy"]),
            "--reward-model", str(paths["reward"]), "--data", str(paths["data"]), "--out", str(out),
            "--updates", str(updates), "--batch-size", str(BATCH), "--mini-batch-size", str(MINI_BATCH),
            "--ppo-epochs", str(PPO_EPOCHS), "--max-new-tokens", str(RESPONSE_LEN),
            "--temperature", str(TEMPERATURE), "--lr", str(LR), "--adam-eps", str(ADAM_EPS),
            "--kl-coef", str(KL_COEF), "--missing-eos-penalty", "0", "--threads", str(threads), "--seed", "0"]
    with ticking_progress(ticks), contextlib.redirect_stdout(io.StringIO()):
        ppo.main(argv)
    metrics = pd.read_csv(out / "metrics.csv")
    assert (metrics["response_length"] == RESPONSE_LEN).all() and (metrics["no_eos_fraction"] == 1).all()
    steady = metrics.iloc[1:]
    return {**per_update(ticks),
            "breakdown": {k: steady[k].tolist() for k in ("time_generate", "time_score", "time_train")},
            "argv": argv}


# ----------------------------------------------------------------------------- TRL

def run_trl(paths: dict[str, Path], out: Path, updates: int, threads: int) -> dict:
    """trl.experimental.ppo.PPOTrainer on the same models and prompts; per-update time from on_step_end."""
    import torch
    from datasets import Dataset, load_from_disk
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                              TrainerCallback)
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(paths["policy"])
    prompts = load_from_disk(str(paths["data"] / "ppo_prompts"))["prompt"]
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True) for p in prompts]
    dataset = Dataset.from_dict({"input_ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]})
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(paths["reward"], num_labels=1, dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(paths["reward"], num_labels=1, dtype=torch.float32)

    config = PPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, num_mini_batches=BATCH // MINI_BATCH,
        num_ppo_epochs=PPO_EPOCHS, total_episodes=updates * BATCH, local_rollout_forward_batch_size=BATCH,
        response_length=RESPONSE_LEN, temperature=TEMPERATURE, kl_coef=KL_COEF, learning_rate=LR,
        adam_epsilon=ADAM_EPS, lr_scheduler_type="linear", warmup_steps=0, stop_token=None,
        missing_eos_penalty=None, num_sample_generations=0, report_to="none", save_strategy="no",
        logging_steps=1, seed=0, dataloader_num_workers=0, disable_tqdm=True)

    ticks: list[tuple[float, float, float]] = []

    class Ticks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ticks.append(tick())

    trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy, ref_model=ref,
                         reward_model=reward, train_dataset=dataset, value_model=value, callbacks=[Ticks()])
    logs: list[dict] = []
    real_log = trainer.log

    def log(metrics, *a, **k):
        logs.append(dict(metrics))
        return real_log(metrics, *a, **k)

    trainer.log = log
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    assert len(ticks) == updates, ticks
    assert all(entry.get("val/num_eos_tokens", 0) == 0 for entry in logs)
    return per_update(ticks)


# ----------------------------------------------------------------------------- report

def run(command: list[str]) -> str:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in run(["lscpu"]).splitlines()
                if line.startswith("Model name")), platform.processor() or "?")
    mem = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    return f"{cpu}, {os.cpu_count()} cores, {mem / 2**20:.0f} GiB RAM"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_busy(seconds: float = 2.0) -> float:
    """Fraction of all CPUs busy over ``seconds`` (from /proc/stat), while this process sleeps."""
    def sample():
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait
    total0, idle0 = sample()
    time.sleep(seconds)
    total1, idle1 = sample()
    return 1.0 - (idle1 - idle0) / max(1, total1 - total0)


def wait_for_quiet(limit_s: float, threshold: float = 0.15) -> str:
    """Wait (up to limit_s) until other processes leave the CPUs idle; return what was seen."""
    deadline = time.time() + limit_s
    busy = cpu_busy()
    while busy > threshold and time.time() < deadline:
        busy = cpu_busy(5.0)
    return f"{loadavg()} (CPUs {busy:.0%} busy just before)"


def versions() -> str:
    from importlib.metadata import version
    return ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "accelerate", "trl"))


def render(results: dict, args, loads: list[str]) -> str:
    ours_flags = " ".join(a for a in results["argv"] if not a.startswith("/"))
    lines = [SECTION, "",
             f"Date {dt.date.today()}; machine: {machine()}; Python {platform.python_version()}, {versions()}.",
             "Load average (1/5/15 min) " + ("before each run: " if args.quiet_wait else
                                             "before, between and after the runs: ") + "; ".join(loads) +
             ". The machine is shared with other engineers' jobs" + (
                 f" (before each run the script waited up to {args.quiet_wait:.0f} s for the CPUs to go idle)."
                 if args.quiet_wait else "."),
             f"Command: `{' '.join([os.path.relpath(sys.executable, REPO), *sys.argv])}` (from the repository root).",
             "",
             f"Settings: random Llama policy/reference and value/reward models ({LAYERS} layers, width {HIDDEN}, "
             f"{HEADS} heads, MLP {INTERMEDIATE}, vocab {VOCAB}, float32, CPU), {BATCH} prompts x {QUERY_LEN} "
             f"tokens, {RESPONSE_LEN} sampled response tokens, {PPO_EPOCHS} PPO epochs x {BATCH // MINI_BATCH} "
             f"minibatches of {MINI_BATCH} (one optimiser step each: 8 per update), temperature {TEMPERATURE}, "
             f"kl_coef {KL_COEF}, lr {LR}, AdamW eps {ADAM_EPS}. Both load the same saved weights, tokenizer and "
             "prompts. Full-length responses on both sides: the tokenizer's EOS and PAD ids (256, 257) lie outside "
             "the models' 256-token vocabulary, so no sampler can emit them; TRL runs with `stop_token=None` (no "
             "truncation), ours samples all 32 tokens and masks none (asserted from both sides' metrics).",
             f"Ours: `salsa.ppo.main([{ours_flags}])` (paths elided). TRL: `trl.experimental.ppo.PPOTrainer` "
             "with an explicit `ref_model` and `PPOConfig(use_cpu=True, bf16=False, gradient_checkpointing=False, "
             "per_device_train_batch_size=64, gradient_accumulation_steps=1, num_mini_batches=2, num_ppo_epochs=4, "
             "response_length=32, local_rollout_forward_batch_size=64, temperature=1.0, kl_coef=0.05, "
             "learning_rate=3e-4, adam_epsilon=1e-5, stop_token=None, missing_eos_penalty=None, "
             "num_sample_generations=0, report_to='none', save_strategy='no')`. Remaining differences are each "
             "side's design: ours clips the gradient norm and runs a policy forward for the old log-probs (TRL "
             "takes them from generate()'s scores); TRL calls gc.collect() twice per update.",
             f"Timing: both run {args.updates} updates per run, alternating, {args.repeats} runs each, in one "
             "process, `torch.set_num_threads` as in the table. Time per update is the wall time between consecutive "
             "update ends (ours: the loop's progress tick; TRL: `on_step_end`), so it covers the whole update; "
             "update 1 of every run is warm-up and not timed. Figures are the median over all timed updates "
             "(best in brackets); tokens/s counts sampled response tokens (64 x 32 per update); CPU s is the "
             "process CPU time per update (median), gc s the mean time per update inside Python's garbage "
             "collector (TRL's explicit gc.collect() calls and automatic collections).",
             "", "| threads | implementation | s/update | episodes/s | tokens/s | mean s/update | CPU s/update "
             "| gc s/update | timed updates |", "|---|---|---|---|---|---|---|---|---|"]
    for threads, res in results["by_threads"].items():
        for name in ("ours", "trl"):
            s = res[name]
            label = "salsa.ppo (ours)" if name == "ours" else "TRL 1.12 PPOTrainer"
            lines.append(f"| {threads} | {label} | {s['median_s']:.3f} ({s['best_s']:.3f}) | "
                         f"{s['episodes_per_s']:.1f} ({s['best_episodes_per_s']:.1f}) | {s['tokens_per_s']:.0f} | "
                         f"{s['mean_s']:.3f} | {s['cpu_s']:.3f} | {s['gc_s']:.3f} | {s['n']} |")
    lines += ["", "Our breakdown (median s per update, from metrics.csv: time_generate, time_score, time_train; "
              "rest = bookkeeping, i.e. the update's median wall time minus the three):", "",
              "| threads | generation | scoring (old/ref log-probs, values, reward, GAE) | training (8 steps) "
              "| rest |", "|---|---|---|---|---|"]
    for threads, res in results["by_threads"].items():
        b = res["ours_breakdown"]
        rest = res["ours"]["median_s"] - sum(b.values())
        lines.append(f"| {threads} | {b['time_generate']:.3f} | {b['time_score']:.3f} | {b['time_train']:.3f} "
                     f"| {rest:.3f} |")
    lines.append("")
    for threads, res in results["by_threads"].items():
        lines.append(f"- {threads} thread(s): ours / TRL throughput = **{res['ratio']:.2f}x** on medians "
                     f"({res['ratio_best']:.2f}x on the best updates, {res['ratio_mean']:.2f}x on means)")
    for threads, res in results["by_threads"].items():
        trl, ours = res["trl"], res["ours"]
        lines.append(f"- {threads} thread(s): TRL spends {trl['gc_s']:.3f} s per update in the garbage collector "
                     f"({trl['gc_s'] / trl['mean_s']:.0%} of its mean update, single-threaded); without it TRL "
                     f"would take about {trl['mean_s'] - trl['gc_s']:.3f} s, and ours would be "
                     f"{(trl['mean_s'] - trl['gc_s']) / ours['mean_s']:.2f}x of that")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--updates", type=int, default=6, help="PPO updates per run (the first is warm-up)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each implementation, alternating")
    parser.add_argument("--threads", type=int, nargs="+", default=[2], help="torch CPU thread counts to run")
    parser.add_argument("--quiet-wait", type=float, default=0,
                        help="before each run, wait up to this many seconds for the other processes to leave "
                             "the CPUs idle (a shared machine)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import torch  # noqa: F401  (imports before timing)
    import trl  # noqa: F401

    gc.callbacks.append(_gc_clock)
    loads = [] if args.quiet_wait else [loadavg()]
    results: dict = {"by_threads": {}}
    keys = ("per_update", "cpu_per_update", "gc_per_update")
    with tempfile.TemporaryDirectory(prefix="ppo_vs_trl.") as tmp:
        root = Path(tmp)
        paths = build(root)
        for threads in args.threads:
            runs = {name: {k: [] for k in keys} for name in ("ours", "trl")}
            breakdown = {"time_generate": [], "time_score": [], "time_train": []}
            for repeat in range(args.repeats):
                for name, runner in (("ours", run_ours), ("trl", run_trl)):
                    if args.quiet_wait:
                        loads.append(f"before {name} run {repeat + 1}, {threads} thread(s): "
                                     f"{wait_for_quiet(args.quiet_wait)}")
                    got = runner(paths, root / f"{name}-{threads}-{repeat}", args.updates, threads)
                    for k in keys:
                        runs[name][k] += got[k]
                    if name == "ours":
                        results["argv"] = got["argv"]
                        for k, v in got["breakdown"].items():
                            breakdown[k] += v
                    if not args.quiet_wait:
                        loads.append(loadavg())
                    print(f"threads {threads} run {repeat + 1} {name}: median "
                          f"{statistics.median(got['per_update']):.3f} s/update; load {loads[-1]}", file=sys.stderr)
            res = {name: summarise(run) for name, run in runs.items()}
            res["ours_breakdown"] = {k: statistics.median(v) for k, v in breakdown.items()}
            res["ratio"] = res["trl"]["median_s"] / res["ours"]["median_s"]
            res["ratio_best"] = res["trl"]["best_s"] / res["ours"]["best_s"]
            res["ratio_mean"] = res["trl"]["mean_s"] / res["ours"]["mean_s"]
            res["raw"] = runs
            results["by_threads"][threads] = res
    if args.quiet_wait:
        loads.append(f"after the last run: {loadavg()}")
    results["loads"] = loads
    markdown = render(results, args, loads)
    benchmarks_md.publish(SECTION, markdown, results, args.json, write=not args.no_write)


if __name__ == "__main__":
    main()
