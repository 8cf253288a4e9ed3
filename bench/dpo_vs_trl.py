"""Benchmark: our DPO (salsa.dpo with a cached reference) against TRL 1.12's DPOTrainer, one process.

Both sides load the same random Llama policy (LlamaForCausalLM) from a temp dir,
the same WordLevel tokenizer and the same preference pairs, and run the same
work per optimiser step: 32 pairs, prompts of 16 tokens, chosen and rejected
responses of 32 tokens plus EOS (no padding anywhere), the sigmoid (DPO) loss
with beta 0.1, AdamW (eps 1e-8, no weight decay), lr 1e-4 annealed linearly
without warm-up, gradient norm clipped to 1, float32, CPU.

Equal tokens: the tokenizer's chat template emits the user content unchanged,
so our chat-formatted prompt is the prompt's 16 ids, as TRL's plain-text prompt
is; both append EOS to each response. EOS and PAD are in the model's vocabulary
here (unlike bench/ppo_vs_trl.py, nothing is sampled).

The design difference measured: ours reads the reference log-probs from the cache
the `dpo_reference` stage writes once per reference model (timed separately below
and amortised over every beta and loss that shares the reference); TRL, by default
(precompute_ref_log_probs=False), runs the reference model on every batch.
`--trl-precompute` also times TRL with its own up-front reference pass.

Timing: wall time between consecutive step ends (ours: the loop's progress tick;
TRL: on_step_end); the first step (warm-up) and the last (ours evaluates on
prefs_eval there) are not timed. Implementations alternate, --repeats runs each.
The figures are only meaningful on a quiet machine: use --quiet-wait on a shared one.

    .venv/bin/pip install -e '.[bench]' -c constraints.txt   # trl==1.12.0
    .venv/bin/python bench/dpo_vs_trl.py --threads 1 2        # writes the "DPO vs TRL" section of BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchmarks_md  # bench/ is on sys.path when a script here runs
from ppo_vs_trl import (GC_SECONDS, _gc_clock, loadavg, machine, per_update, tick, ticking_progress, versions,
                        wait_for_quiet)

REPO = Path(__file__).resolve().parents[1]
SECTION = "## DPO vs TRL"
VOCAB, HIDDEN, LAYERS, HEADS, INTERMEDIATE = 258, 128, 2, 4, 512  # ids 256, 257: EOS, PAD
BATCH, QUERY_LEN, RESPONSE_LEN, NUM_PAIRS, NUM_EVAL = 32, 16, 32, 512, 32
LR, BETA = 1e-4, 0.1


def build(root: Path) -> dict[str, Path]:
    """Tokenizer, policy and preference pairs, saved once for both implementations."""
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(VOCAB - 2)} | {"<eos>": VOCAB - 2, "<pad>": VOCAB - 1}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="t0", eos_token="<eos>",
                                        pad_token="<pad>")
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    paths = {"policy": root / "policy", "data": root / "data", "cache": root / "dpo_ref"}
    torch.manual_seed(1234)
    policy = LlamaForCausalLM(LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=HEADS, max_position_embeddings=256,
        tie_word_embeddings=False, pad_token_id=VOCAB - 1, bos_token_id=None, eos_token_id=VOCAB - 2))
    policy.save_pretrained(paths["policy"])
    tokenizer.save_pretrained(paths["policy"])
    generator = torch.Generator().manual_seed(99)

    def words(n):
        return " ".join(f"t{i}" for i in torch.randint(0, VOCAB - 2, (n,), generator=generator).tolist())

    for split, n in (("prefs_train", NUM_PAIRS), ("prefs_eval", NUM_EVAL)):
        Dataset.from_dict({"prompt": [words(QUERY_LEN) for _ in range(n)],
                           # leading space: TRL tokenises prompt + response as one text
                           "chosen": [" " + words(RESPONSE_LEN) for _ in range(n)],
                           "rejected": [" " + words(RESPONSE_LEN) for _ in range(n)]}).save_to_disk(str(paths["data"] / split))
    return paths


def build_cache(paths: dict[str, Path], threads: int) -> float:
    """The dpo_reference stage, once; returns its wall time."""
    from salsa import dpo_reference

    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        dpo_reference.main(["--model", str(paths["policy"]), "--data", str(paths["data"]), "--out",
                            str(paths["cache"]), "--threads", str(threads), "--batch-size", str(BATCH)])
    return time.perf_counter() - started


def run_ours(paths: dict[str, Path], out: Path, steps: int, threads: int) -> dict:
    import pandas as pd
    import torch
    from salsa import dpo

    ticks: list[tuple[float, float, float]] = []
    torch.set_num_threads(threads)
    argv = ["--policy", str(paths["policy"]), "--reference", str(paths["policy"]), "--data", str(paths["data"]),
            "--reference-logprobs", str(paths["cache"]), "--out", str(out), "--steps", str(steps),
            "--batch-size", str(BATCH), "--lr", str(LR), "--warmup-steps", "0", "--beta", str(BETA),
            "--eval-every", str(steps), "--threads", str(threads), "--seed", "0"]
    with ticking_progress(ticks), contextlib.redirect_stdout(io.StringIO()):
        dpo.main(argv)
    assert len(pd.read_csv(out / "metrics.csv")) == steps
    deltas = per_update(ticks)
    return {k: v[:-1] for k, v in deltas.items()} | {"argv": argv}


def run_trl(paths: dict[str, Path], out: Path, steps: int, threads: int, precompute: bool) -> dict:
    import torch
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    torch.set_num_threads(threads)
    tokenizer = AutoTokenizer.from_pretrained(paths["policy"])
    dataset = load_from_disk(str(paths["data"] / "prefs_train"))
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(paths["policy"], dtype=torch.float32)
    config = DPOConfig(
        output_dir=str(out), use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
        per_device_train_batch_size=BATCH, gradient_accumulation_steps=1, max_steps=steps, learning_rate=LR,
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, adam_epsilon=1e-8, max_grad_norm=1.0,
        beta=BETA, loss_type=["sigmoid"], precompute_ref_log_probs=precompute, max_length=None,
        report_to="none", save_strategy="no", eval_strategy="no", logging_steps=1, seed=0,
        dataloader_num_workers=0, disable_tqdm=True)
    ticks: list[tuple[float, float, float]] = []

    class Ticks(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ticks.append(tick())

    trainer = DPOTrainer(model=policy, ref_model=ref, args=config, train_dataset=dataset,
                         processing_class=tokenizer, callbacks=[Ticks()])
    sample = trainer.train_dataset[0]
    lengths = {k: len(v) for k, v in sample.items() if k.endswith("_ids")}
    assert sorted(lengths.values()) == [QUERY_LEN, RESPONSE_LEN + 1, RESPONSE_LEN + 1], lengths  # the tokens ours sees
    with contextlib.redirect_stdout(io.StringIO()):
        trainer.train()
    assert len(ticks) == steps, ticks
    deltas = per_update(ticks)
    return {k: v[:-1] for k, v in deltas.items()} | {"token_lengths": lengths}


def summarise(wall: list[float]) -> dict[str, float]:
    median = statistics.median(wall)
    return {"median_s": median, "best_s": min(wall), "mean_s": statistics.fmean(wall),
            "pairs_per_s": BATCH / median, "n": len(wall)}


def render(results: dict, args, loads: list[str]) -> str:
    lines = [SECTION, "",
             f"Date {time.strftime('%Y-%m-%d')}; machine: {machine()}; Python {platform.python_version()}, "
             f"{versions()}. Load average (1/5/15 min): {'; '.join(loads)}.",
             f"Command: `{' '.join([os.path.relpath(sys.executable, REPO), *sys.argv])}`.", "",
             f"Settings: random Llama policy = reference ({LAYERS} layers, width {HIDDEN}, {HEADS} heads, MLP "
             f"{INTERMEDIATE}, vocab {VOCAB}, float32, CPU); {BATCH} pairs per step, prompts {QUERY_LEN} tokens, "
             f"responses {RESPONSE_LEN} tokens + EOS; sigmoid loss, beta {BETA}, lr {LR} linear, no warm-up, "
             f"AdamW eps 1e-8, clip 1.0. TRL token lengths (prompt, chosen, rejected): {results['trl_lengths']}. "
             f"Ours reads the reference from the dpo_reference cache, built once in {results['cache_s']:.2f} s "
             f"({NUM_PAIRS + NUM_EVAL} pairs) and not in the per-step figures. Steps 2..{args.steps - 1} of "
             f"each run timed; {args.repeats} alternating runs each.", "",
             "| threads | implementation | s/step median (best) | pairs/s | mean s/step | timed steps |",
             "|---|---|---|---|---|---|"]
    for threads, res in results["by_threads"].items():
        for name, label in (("ours", "salsa.dpo, cached reference"), ("trl", "TRL 1.12 DPOTrainer"),
                            ("trl_precompute", "TRL 1.12 DPOTrainer, precompute_ref_log_probs")):
            if name in res:
                s = res[name]
                lines.append(f"| {threads} | {label} | {s['median_s']:.3f} ({s['best_s']:.3f}) | "
                             f"{s['pairs_per_s']:.1f} | {s['mean_s']:.3f} | {s['n']} |")
    lines.append("")
    for threads, res in results["by_threads"].items():
        lines.append(f"- {threads} thread(s): ours / TRL throughput = **{res['ratio']:.2f}x** on medians")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=12, help="optimiser steps per run (first and last untimed)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each implementation, alternating")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch CPU thread counts")
    parser.add_argument("--trl-precompute", action="store_true", help="also time TRL with precompute_ref_log_probs")
    parser.add_argument("--quiet-wait", type=float, default=0, help="before each run, wait up to this many seconds "
                                                                    "for the CPUs to go idle (a shared machine)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    parser.add_argument("--json", type=Path, help="also write the raw timings here")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import torch  # noqa: F401  (imports before timing)
    import trl  # noqa: F401

    gc.callbacks.append(_gc_clock)
    loads = [loadavg()]
    results: dict = {"by_threads": {}}
    with tempfile.TemporaryDirectory(prefix="dpo_vs_trl.") as tmp:
        root = Path(tmp)
        paths = build(root)
        results["cache_s"] = build_cache(paths, max(args.threads))
        for threads in args.threads:
            runners = {"ours": lambda out: run_ours(paths, out, args.steps, threads),
                       "trl": lambda out: run_trl(paths, out, args.steps, threads, False)}
            if args.trl_precompute:
                runners["trl_precompute"] = lambda out: run_trl(paths, out, args.steps, threads, True)
            walls: dict[str, list[float]] = {name: [] for name in runners}
            for repeat in range(args.repeats):
                for name, runner in runners.items():
                    if args.quiet_wait:
                        loads.append(f"before {name} {repeat + 1}: {wait_for_quiet(args.quiet_wait)}")
                    got = runner(root / f"{name}-{threads}-{repeat}")
                    walls[name] += got["per_update"]
                    if "token_lengths" in got:
                        results["trl_lengths"] = got["token_lengths"]
                    loads.append(loadavg())
                    print(f"threads {threads} run {repeat + 1} {name}: median {statistics.median(got['per_update']):.3f}"
                          f" s/step; load {loads[-1]}", file=sys.stderr)
            res = {name: summarise(wall) for name, wall in walls.items()}
            res["ratio"] = res["trl"]["median_s"] / res["ours"]["median_s"]
            results["by_threads"][threads] = res
    results["gc_s"] = GC_SECONDS[0]
    markdown = render(results, args, loads)
    benchmarks_md.publish(SECTION, markdown, results, args.json, write=not args.no_write)


if __name__ == "__main__":
    main()
