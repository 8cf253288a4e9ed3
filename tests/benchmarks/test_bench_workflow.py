"""Benchmark wiring in the DAG: fetched data, rule inputs, answer labels and resources (dry runs only)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT = REPO / "config" / "config.yaml"


def dry_run(workdir: Path, *configfiles) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2",
                           "-d", str(workdir), "-n", "-p", "--configfile", str(DEFAULT), *map(str, configfiles)],
                          capture_output=True, text=True, env=env, timeout=600)


def job_blocks(output: str) -> list[str]:
    return [b for b in re.split(r"\n(?=rule \w+:)", output) if re.match(r"rule \w+:", b)]


def test_paper_overlay_fetches_its_data_and_labels_and_sizes_its_jobs(tmp_path):
    proc = dry_run(tmp_path, REPO / "config" / "experiments" / "llama2-7b.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-2000:]
    out = proc.stdout
    assert "shared/benchmarks" not in out and "--from-dir" not in out
    blocks = job_blocks(out)
    fetches = [b for b in blocks if b.startswith("rule fetch_benchmark:")]
    assert sorted(re.search(r"wildcards: benchmark=(\S+)", b).group(1) for b in fetches) == [
        "arena_hard_v0.1", "mt_bench"]
    answers = [b for b in blocks if b.startswith("rule evaluate_answers:")]
    judges = [b for b in blocks if b.startswith("rule evaluate_judge:")]
    assert len(answers) == len(judges) == 18
    assert all("gpu=1" in b and "results/llama2-7b/benchmark_data/" in b for b in answers)
    assert all("gpu=0" in b and "mem_mb=8000" in b for b in judges)          # an API judge asks for no GPU
    salsa = next(b for b in answers if "model=ppo/salsa/seed1" in b)
    assert "--model-id ppo/salsa/seed1 " in salsa
    # every benchmark and evaluation job records its wall time
    mine = [b for b in blocks if b.startswith(("rule fetch_benchmark:", "rule evaluate"))]
    assert len(mine) == 2 + 9 + 18 + 18 and all("\n    benchmark: " in b for b in mine)


def test_missing_benchmark_data_or_judge_model_fails_the_dry_run(tmp_path):
    missing_data = tmp_path / "data.yaml"
    missing_data.write_text("benchmarks:\n  mt_bench: {judge: openai, judging: {judge_model: gpt-4.1-2025-04-14}, "
                            f"data_dir: {tmp_path / 'no-benchmarks'}}}\n")
    proc = dry_run(tmp_path / "a", missing_data)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    assert "Missing input files for rule fetch_benchmark" in output and str(tmp_path / "no-benchmarks") in output
    missing_judge = tmp_path / "judge.yaml"
    missing_judge.write_text("benchmarks:\n  embedded_mt: {judge: local, judging: "
                             f"{{judge_model: {tmp_path / 'no-judge'}, judge_prompts: p.jsonl}}}}\n")
    proc = dry_run(tmp_path / "b", missing_judge)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr
    # refused by the parse-time config check (salsa.config_check), before the DAG is built
    assert "benchmarks.embedded_mt.judging.judge_model" in output and str(tmp_path / "no-judge") in output
    assert "Traceback" not in output


def test_nothing_shipped_names_the_shared_folder():
    shipped = [*(REPO / "config").rglob("*.yaml"), *(REPO / "rules").glob("*.smk"), REPO / "docs" / "judging.md",
               *(REPO / "src").rglob("*.py")]
    assert [str(p) for p in shipped if "../shared" in p.read_text() or "/work/" in p.read_text()] == []
