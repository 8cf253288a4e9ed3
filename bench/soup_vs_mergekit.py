"""Benchmark: `python -m salsa.soup` against mergekit's linear merge.

Generates two random bf16 Llama checkpoints (sharded in two, like
save_pretrained), averages them 0.5/0.5 with our soup and with mergekit 0.1.5
(installed in its own venv, bench/.venv-mergekit, because it pins its own
torch/transformers), and reports the best of N runs of wall time and peak RSS
(from /usr/bin/time -v), next to the disk-bound limit: reading both inputs
plus writing one output of the same size. Ours is also run at a second, smaller
size to show that its peak RSS does not grow with the model.

    .venv/bin/python bench/soup_vs_mergekit.py            # writes the "Soup vs mergekit" section of BENCHMARKS.md

mergekit setup (once):
    python3 -m venv bench/.venv-mergekit
    bench/.venv-mergekit/bin/pip install torch==2.13.0 && bench/.venv-mergekit/bin/pip install mergekit==0.1.5
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import benchmarks_md  # bench/ is on sys.path when a script here runs

REPO = Path(__file__).resolve().parents[1]
SECTION = "## Soup vs mergekit"
HIDDEN, INTERMEDIATE, HEADS, VOCAB = 2048, 5632, 16, 16000


def llama_config(size_gb: float):
    """A Llama config whose bf16 weights take about size_gb (only the layer count varies)."""
    from transformers import LlamaConfig

    per_layer = 2 * (4 * HIDDEN * HIDDEN + 3 * HIDDEN * INTERMEDIATE + 2 * HIDDEN)
    embeddings = 2 * (2 * VOCAB * HIDDEN + HIDDEN)
    layers = max(1, round((size_gb * 1e9 - embeddings) / per_layer))
    return LlamaConfig(hidden_size=HIDDEN, intermediate_size=INTERMEDIATE, num_attention_heads=HEADS,
                       num_key_value_heads=HEADS, num_hidden_layers=layers, vocab_size=VOCAB,
                       tie_word_embeddings=False, dtype="bfloat16",
                       architectures=["LlamaForCausalLM"])


def write_checkpoint(directory: Path, config, seed: int) -> int:
    """Random bf16 weights in two shards + index, config and a tiny tokenizer, like save_pretrained."""
    import torch
    from safetensors.torch import save_file
    from tokenizers import Tokenizer, models
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    with torch.device("meta"):
        shapes = {name: tuple(t.shape) for name, t in LlamaForCausalLM(config).state_dict().items()}
    total = sum(2 * torch.Size(s).numel() for s in shapes.values())
    shards, current, size = [], {}, 0
    for name, shape in shapes.items():
        if current and not shards and size + 2 * torch.Size(shape).numel() > total / 2:  # exactly 2 shards
            shards.append(current)
            current, size = {}, 0
        current[name] = shape
        size += 2 * torch.Size(shape).numel()
    shards.append(current)
    directory.mkdir(parents=True)
    generator = torch.Generator().manual_seed(seed)
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        file_name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        tensors = {name: (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
                   for name, shape in shard.items()}
        save_file(tensors, directory / file_name, metadata={"format": "pt"})
        weight_map.update({name: file_name for name in shard})
        del tensors
    (directory / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    config.save_pretrained(directory)
    vocab = {f"w{i}": i for i in range(32)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="w0")),
                                        unk_token="w0")
    tokenizer.save_pretrained(directory)
    return total


def timed(command: list[str], log: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (GB) of one run, from GNU time."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        proc = subprocess.run(["/usr/bin/time", "-v", *command], stdout=handle, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    text = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(command)}\n{text[-3000:]}")
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1))
    return wall, peak_kb * 1024 / 1e9


def best_of(repeats: int, command: list[str], out: Path, log: Path) -> tuple[float, float]:
    runs = []
    for _ in range(repeats):
        shutil.rmtree(out, ignore_errors=True)
        subprocess.run(["sync"], check=True)  # start each run without the last one's dirty pages
        runs.append(timed(command, log))
    return min(r[0] for r in runs), min(r[1] for r in runs)


def disk_bound(inputs: list[Path], nbytes: int, scratch: Path) -> float:
    """Seconds to read every input shard and write nbytes (page cache as it is, no fsync, like the merges)."""
    subprocess.run(["sync"], check=True)
    shards = [p for d in inputs for p in sorted(d.glob("*.safetensors"))]
    chunk = bytearray(64 << 20)
    start = time.perf_counter()
    for shard in shards:  # read into a buffer: `cat > /dev/null` splices without reading
        with open(shard, "rb", buffering=0) as handle:
            while handle.readinto(chunk):
                pass
    with open(scratch, "wb") as handle:
        for _ in range(nbytes // len(chunk)):
            handle.write(chunk)
        handle.write(chunk[: nbytes % len(chunk)])
    seconds = time.perf_counter() - start
    scratch.unlink()
    return seconds


def same_as_mergekit(ours: Path, theirs: Path) -> str:
    """Bitwise comparison of every tensor of the two outputs."""
    import torch
    from safetensors import safe_open

    def locate(directory: Path) -> dict[str, Path]:
        index = directory / "model.safetensors.index.json"
        if index.exists():
            return {k: directory / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        with safe_open(str(directory / "model.safetensors"), "pt") as f:
            return {k: directory / "model.safetensors" for k in f.keys()}

    ours_map, theirs_map = locate(ours), locate(theirs)
    checked = sorted(ours_map)
    if set(checked) != set(theirs_map):
        return "different tensor names"
    equal = 0
    for name in checked:
        with safe_open(str(ours_map[name]), "pt") as a, safe_open(str(theirs_map[name]), "pt") as b:
            equal += torch.equal(a.get_tensor(name), b.get_tensor(name))
    return f"{equal}/{len(checked)} tensors bitwise equal"


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(re.search(r"MemTotal:\s+(\d+)", Path("/proc/meminfo").read_text()).group(1))
    load = Path("/proc/loadavg").read_text().split()[:3]
    return f"{os.cpu_count()}-core {cpu}, {mem_kb / 2**20:.0f} GiB RAM, load average at the end {' '.join(load)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gb", type=float, default=1.3, help="size of each bf16 input")
    parser.add_argument("--small-size-gb", type=float, default=0.3, help="second size for ours (RSS vs size)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/soup_bench"))
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--mergekit-venv", type=Path, default=REPO / "bench" / ".venv-mergekit")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()

    python = str(REPO / ".venv" / "bin" / "python")
    mergekit_yaml = args.mergekit_venv / "bin" / "mergekit-yaml"
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    rows, notes = [], []
    try:
        for size in sorted({args.size_gb, args.small_size_gb}, reverse=True):
            config = llama_config(size)
            inputs = [args.workdir / f"{size}gb-a", args.workdir / f"{size}gb-b"]
            nbytes = [write_checkpoint(d, config, seed) for seed, d in enumerate(inputs)][0]
            label = f"{nbytes / 1e9:.2f} GB x2 ({config.num_hidden_layers} layers)"
            limit = min(disk_bound(inputs, nbytes, args.workdir / "scratch.bin") for _ in range(args.repeats))
            ours_out = args.workdir / "soup"
            ours = best_of(args.repeats, [python, "-m", "salsa.soup", "--inputs", *map(str, inputs),
                                          "--weights", "0.5", "0.5", "--out", str(ours_out)],
                           ours_out, args.workdir / "soup.log")
            rows.append((label, "salsa.soup", *ours, limit))
            if size == args.size_gb and mergekit_yaml.exists():
                recipe = args.workdir / "linear.yml"
                recipe.write_text("merge_method: linear\ndtype: float32\nout_dtype: bfloat16\nmodels:\n" + "".join(
                    f"  - model: {d}\n    parameters: {{weight: 0.5}}\n" for d in inputs))
                theirs_out = args.workdir / "mergekit"
                theirs = best_of(args.repeats, [str(mergekit_yaml), str(recipe), str(theirs_out), "--no-cuda",
                                                "--quiet"], theirs_out, args.workdir / "mergekit.log")
                rows.append((label, "mergekit 0.1.5 linear", *theirs, limit))
                notes.append(f"speed-up {theirs[0] / ours[0]:.1f}x, peak RSS {ours[1] / theirs[1]:.2f} of "
                             f"mergekit's; outputs: {same_as_mergekit(ours_out, theirs_out)}")
            elif size == args.size_gb:
                notes.append(f"mergekit not measured: {mergekit_yaml} not found")
            for d in inputs:
                shutil.rmtree(d)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)  # multi-GB scratch

    df = subprocess.run(["df", "-h", str(args.workdir.parent)], capture_output=True, text=True).stdout.split("\n")[1]
    table = ["| inputs (bf16) | tool | wall s (best of %d) | peak RSS GB | disk-bound s (read 2 + write 1) |"
             % args.repeats, "|---|---|---|---|---|"]
    table += [f"| {label} | {tool} | {wall:.2f} | {rss:.2f} | {limit:.2f} |" for label, tool, wall, rss, limit in rows]
    markdown = "\n".join([
        SECTION, "",
        f"Date {dt.date.today()}; machine: {machine()}; disk: `{' '.join(df.split())}` (df -h).",
        f"Command: `{' '.join([os.path.relpath(sys.executable, REPO), *sys.argv])}` (from the repository root).",
        "Two random bf16 Llama checkpoints (2 shards each, like save_pretrained), averaged 0.5/0.5. "
        "Ours: `python -m salsa.soup --inputs A B --weights 0.5 0.5 --out OUT` (float32 accumulation, bf16 out). "
        "mergekit: `mergekit-yaml linear.yml OUT --no-cuda --quiet`, linear merge with `dtype: float32`, "
        "`out_dtype: bfloat16`, weights 0.5/0.5 (its own venv, torch 2.13.0 CPU). "
        "Wall time and peak RSS from `/usr/bin/time -v`, each the best of the runs; "
        "the disk-bound limit is reading both inputs into a buffer plus a plain write of the output's bytes "
        "(page cache warm, no fsync, best of the runs). The machine is shared: other jobs ran at the same time.",
        "", *table, "", *[f"- {note}" for note in notes], ""])
    print(markdown)
    if not args.no_write:
        benchmarks_md.write_section(SECTION, markdown)


if __name__ == "__main__":
    main()
