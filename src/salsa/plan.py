"""`salsa plan`: the bill of a run before anything is submitted.

  salsa plan --profile profiles/slurm --configfile config/config.yaml config/experiments/llama2-7b.yaml my.yaml

Runs `snakemake -n -p` with the given arguments (nothing is submitted or written but Snakemake's own
metadata), and prints, per rule:
  * the jobs and the GPUs x nodes x requested hours they ask of the scheduler. Requested hours are the
    jobs' `runtime` (resources.<stage>.runtime, or derived from seconds_per_step), an upper bound on what
    a job holds its GPUs for;
  * for each GPU training job (SFT, reward model, DPO, PPO), its peak memory per device and the disk it
    writes, from the stage arguments in the job's own command (salsa.stage_memory with the per-layer
    activations bench/memory_7b.py measured; models of an unmeasured architecture get no figure);
  * the API judges' calls and cost (salsa.judges.preflight's estimate, from the judge_preflight job).

  --gpu-gib N   memory of one GPU (default 80): peaks above N less 4 GiB of headroom are flagged
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from collections import defaultdict

from salsa.artifacts import StageError, run_main

GPU_GIB, HEADROOM_GIB = 80, 4  # headroom: CUDA context, NCCL buffers, fragmentation (not in the model)


def dry_run_jobs(output: str) -> list[dict]:
    """rule, input (list), resources (dict), priority and shell command of every job in a `snakemake -n -p` output."""
    jobs = []
    for block in re.split(r"\n(?=\[[^\]]+\]\n(?:local)?rule )", output):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not rule or rule.group(1) == "all":
            continue
        fields = {key: (m.group(1) if (m := re.search(rf"^    {key}: (.*)$", block, re.M)) else "")
                  for key in ("input", "resources", "priority")}
        shell = re.search(r"^Shell command: (.*)$", block, re.M)
        table = dict(item.split("=", 1) for item in fields["resources"].split(", ") if "=" in item)
        jobs.append({"rule": rule.group(1), "input": fields["input"].split(", "), "resources": table,
                     "priority": fields["priority"] or "0", "shell": shell.group(1) if shell else ""})
    return jobs


def gpus_of(resources: dict) -> int:
    """GPUs a job holds: `gpu`, or for a multi-node job --gpus-per-node x nodes (rules/jobs.smk)."""
    per_node = re.search(r"--gpus-per-node=(?:\w+:)?(\d+)", resources.get("slurm_extra", ""))
    if per_node:
        return int(per_node.group(1)) * int(resources.get("nodes", 1))
    return int(resources.get("gpu", 0) or 0)


def summary(jobs: list[dict]) -> str:
    rows: dict[str, dict] = defaultdict(lambda: {"jobs": 0, "gpus": 0, "gpu_hours": 0.0, "hours": 0.0})
    for job in jobs:
        row = rows[job["rule"]]
        hours = int(job["resources"].get("runtime", 0) or 0) / 60
        gpus = gpus_of(job["resources"])
        row["jobs"] += 1
        row["gpus"] = max(row["gpus"], gpus)
        row["hours"] = max(row["hours"], hours)
        row["gpu_hours"] += gpus * hours
    lines = [f"{'rule':<18} {'jobs':>5} {'GPUs/job':>8} {'h/job':>6} {'GPU-h requested':>15}"]
    for rule, row in sorted(rows.items(), key=lambda kv: -kv[1]["gpu_hours"]):
        lines.append(f"{rule:<18} {row['jobs']:>5} {row['gpus']:>8} {row['hours']:>6.1f} {row['gpu_hours']:>15.1f}")
    total = sum(r["gpu_hours"] for r in rows.values())
    lines.append(f"total: {sum(r['jobs'] for r in rows.values())} jobs, {total:.1f} GPU-hours requested "
                 "(runtime limits, not expected use)")
    return "\n".join(lines)


def workdir_of(args: list[str]) -> str:
    """Snakemake's working directory (-d / --directory), against which job paths are relative."""
    for flag in ("-d", "--directory"):
        if flag in args and args.index(flag) + 1 < len(args):
            return args[args.index(flag) + 1]
        for arg in args:
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return "."


def judge_bill(jobs: list[dict]) -> str | None:
    from salsa.judges.preflight import bill, report

    for job in jobs:
        if job["rule"] == "judge_preflight":
            argv = shlex.split(job["shell"])
            return report([bill(entry) for entry in json.loads(argv[argv.index("--plan") + 1])])
    return None


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return
    gpu_gib = float(GPU_GIB)
    if "--gpu-gib" in args:
        at = args.index("--gpu-gib")
        try:
            gpu_gib = float(args[at + 1])
        except (IndexError, ValueError):
            raise StageError("salsa plan: --gpu-gib takes the GiB of one GPU, e.g. --gpu-gib 80") from None
        del args[at:at + 2]
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-p", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        tail = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()][-5:]
        raise StageError("snakemake -n failed: " + " | ".join(tail))
    jobs = dry_run_jobs(proc.stdout + proc.stderr)
    print(summary(jobs))
    from salsa.plan_memory import memory_report

    print(memory_report(jobs, workdir_of(args), gpu_gib, HEADROOM_GIB))
    judges = judge_bill(jobs)
    print(judges if judges else "no API judge configured")


if __name__ == "__main__":
    raise SystemExit(run_main(main))
