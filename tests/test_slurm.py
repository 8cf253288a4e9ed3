"""profiles/slurm on a real one-node SLURM (tests/slurm/start_cluster.sh), with the real executor plugin.

A tiny DAG (data, base, two SFTs, soup) goes through sbatch; every job must show up in SLURM's
job-completion record, on the partition the config names, with the memory it asked for, and its
outputs must equal a local run's byte for byte. Then a damaged input makes the soup job fail
on the cluster, and Snakemake must fail and show that job's log. An SFT job sent SIGTERM, as before a time
limit, must save, fail and resume in its retry. Skipped where SLURM cannot be installed or started (not root,
no apt-get, another cluster in the way).
"""

import filecmp
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from test_workflow import DEFAULT, REPO, SNAKEMAKE, TINY

SCRIPTS = REPO / "tests" / "slurm"
PROFILE = str(REPO / "profiles" / "slurm")
TARGET = "results/tiny/soup/uniform"
OUTPUTS = ["data", "base_model", "sft/seed1", "sft/seed2", "soup/uniform"]
# Outer limit on every command here; SIGKILL to the whole process group, so a scheduler that
# never answers (or a Snakemake waiting on one) cannot hang CI.
TIME_LIMIT = 480
# Where the test's jobs go: CPU-only stages on the `cpu` partition, SFT (by its own entry) on
# `gpu`, 1 GB each so the two SFT jobs share the node.
CLUSTER_OVERLAY = """\
resources:
  default: {mem_mb: 1000, runtime: 10, slurm_partition: gpu}
  cpu: {slurm_partition: cpu}
  sft: {slurm_partition: gpu}
"""
EXPECTED_PARTITION = {"prepare_data": "cpu", "base_model": "cpu", "sft": "gpu", "soup": "cpu"}


def run_killed_after(command, seconds=TIME_LIMIT, **kwargs) -> subprocess.CompletedProcess:
    """Run in a new process group; past `seconds`, SIGKILL the group and fail."""
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kwargs)
    try:
        out, err = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"killed after {seconds} s: {command}\n{out[-3000:]}\n{err[-3000:]}") from None
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node SLURM; its state dir (slurm.conf, jobcomp.txt, daemon logs)."""
    state = tmp_path_factory.mktemp("slurm")
    start = run_killed_after(["bash", str(SCRIPTS / "start_cluster.sh"), str(state)], seconds=300)
    if start.returncode == 3:
        pytest.skip(start.stderr.strip().splitlines()[-1])
    if start.returncode != 0:
        run_killed_after(["bash", str(SCRIPTS / "stop_cluster.sh"), str(state)], seconds=120)
        pytest.fail(f"tests/slurm/start_cluster.sh failed:\n{start.stderr}")
    try:
        yield state
    finally:
        run_killed_after(["bash", str(SCRIPTS / "stop_cluster.sh"), str(state)], seconds=120)


def slurm_env(state: Path) -> dict:
    return {**os.environ, "SLURM_CONF": str(state / "slurm.conf"), "OMP_NUM_THREADS": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def through_slurm(state: Path, workdir: Path, overlay: Path, *args: str) -> subprocess.CompletedProcess:
    # polls start 1 s after each submission or finished job (the profile's 10 s is for real clusters)
    return run_killed_after([*SNAKEMAKE, "-d", str(workdir), "--profile", PROFILE, "--configfile", DEFAULT, TINY,
                             str(overlay), "--slurm-init-seconds-before-status-checks", "1", *args, "--", TARGET],
                            env=slurm_env(state), cwd=REPO)


def submitted(log: str) -> dict[str, tuple[str, Path]]:
    """SLURM job id -> (rule, SLURM log file) from the plugin's submission lines."""
    found = re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+/slurm_logs/rule_(\w+)/\S+)\)", log)
    return {job: (rule, Path(path)) for job, path, rule in found}


def completions(state: Path) -> dict[str, dict[str, str]]:
    """SLURM job id -> its jobcomp/filetxt record (JobState, Partition, Tres, ...)."""
    records = [dict(re.findall(r"(\w+)=(\S*)", line)) for line in (state / "jobcomp.txt").read_text().splitlines()]
    return {record["JobId"]: record for record in records if "JobId" in record}


def differing_files(left: Path, right: Path) -> tuple[list[str], int]:
    """Files that differ or exist on one side only, and how many were compared. salsa_meta.json
    (it records the output path and when it ran) and train_summary.json (wall times) are skipped."""
    skip = {"salsa_meta.json", "train_summary.json"}
    differ, compared = [], 0
    for name in OUTPUTS:
        files = {p.relative_to(left) for p in (left / "results/tiny" / name).rglob("*") if p.is_file()}
        files |= {p.relative_to(right) for p in (right / "results/tiny" / name).rglob("*") if p.is_file()}
        for rel in sorted(f for f in files if f.name not in skip):
            compared += 1
            if not ((left / rel).is_file() and (right / rel).is_file()
                    and filecmp.cmp(left / rel, right / rel, shallow=False)):
                differ.append(str(rel))
    return differ, compared


@pytest.mark.slow
def test_tiny_dag_runs_through_sbatch_and_matches_a_local_run(slurm_cluster, tmp_path):
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text(CLUSTER_OVERLAY)
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    # the local run goes on beside the cluster run, which mostly waits for polls
    local = subprocess.Popen([*SNAKEMAKE, "-d", str(local_dir), "--configfile", DEFAULT, TINY, "--", TARGET],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=slurm_env(slurm_cluster), start_new_session=True)
    try:
        proc = through_slurm(slurm_cluster, slurm_dir, overlay)
        local_out, _ = local.communicate(timeout=TIME_LIMIT)
    finally:
        if local.poll() is None:
            os.killpg(local.pid, signal.SIGKILL)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert local.returncode == 0, local_out[-3000:]

    # every job went through sbatch and completed in SLURM, where the config sent it
    jobs = submitted(log)
    assert sorted(rule for rule, _ in jobs.values()) == ["base_model", "prepare_data", "sft", "sft", "soup"], log
    assert log.count("Finished jobid") == 5
    records = completions(slurm_cluster)
    for job, (rule, _) in jobs.items():
        record = records[job]
        assert record["JobState"] == "COMPLETED", record
        assert record["Partition"] == EXPECTED_PARTITION[rule], (rule, record)
        assert "mem=1000M" in record["Tres"], record
        assert record["WorkDir"] == str(slurm_dir)

    # 1 GB and 1 CPU each: the two SFT jobs share the node (when it has two CPUs)
    node_cpus = int(re.search(r"^NodeName=\S+ CPUs=(\d+)", (slurm_cluster / "slurm.conf").read_text(), re.M).group(1))
    sft1, sft2 = (records[job] for job, (rule, _) in jobs.items() if rule == "sft")
    if node_cpus >= 2:
        assert sft1["StartTime"] < sft2["EndTime"] and sft2["StartTime"] < sft1["EndTime"], (sft1, sft2)

    differ, compared = differing_files(local_dir, slurm_dir)
    assert differ == [], differ
    assert compared >= 20  # data splits, tokenizer, and the safetensors of base, both SFTs and the soup
    for name in OUTPUTS[1:]:
        assert (slurm_dir / "results/tiny" / name / "model.safetensors").is_file()

    # a job that fails on the cluster: damaged SFT weights, the soup rerun
    weights = slurm_dir / "results/tiny/sft/seed2/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    failed = through_slurm(slurm_cluster, slurm_dir, overlay, "--forcerun", "soup", "--retries", "0")
    failed_log = failed.stdout + failed.stderr
    assert failed.returncode != 0, failed_log[-4000:]
    [(job, (rule, slurm_log))] = submitted(failed_log).items()
    assert rule == "soup" and completions(slurm_cluster)[job]["JobState"] == "FAILED"
    assert f"SLURM-job '{job}' failed" in failed_log
    # the stage's own error, printed from the job's log by the profile's show-failed-logs
    assert re.search(r"error: \S*sft/seed2/model.safetensors: not a readable safetensors file", failed_log), \
        failed_log[-4000:]
    assert slurm_log.is_file()  # SLURM's log of a failed job is kept (successful ones are deleted)
    assert "Error in rule soup" in slurm_log.read_text()
    assert not [p for _, p in jobs.values() if p.exists()]


@pytest.mark.slow
def test_a_training_job_signalled_on_the_cluster_checkpoints_and_its_retry_resumes(slurm_cluster, tmp_path):
    """What --signal=TERM@300 does before a time limit (and SLURM on preemption): SIGTERM to the job's steps, here
    sent with scancel --signal=TERM once the SFT's loop runs. Without periodic checkpoints, the only one it can
    resume from is the one it saved on the signal; the job fails, the profile's retry resumes it, and the weights
    equal an uninterrupted local run's."""
    overlay = tmp_path / "cluster.yaml"
    overlay.write_text(CLUSTER_OVERLAY + "sft:\n  steps: 2000\n  checkpoint_every: 0\n")
    target = "results/tiny/sft/seed1"
    local_dir, slurm_dir = tmp_path / "local", tmp_path / "slurm"
    env = slurm_env(slurm_cluster)
    local = subprocess.Popen([*SNAKEMAKE, "-d", str(local_dir), "--configfile", DEFAULT, TINY, str(overlay), "--",
                              target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                             start_new_session=True)
    log_file = tmp_path / "snakemake.log"
    with log_file.open("w") as log_handle:
        run = subprocess.Popen([*SNAKEMAKE, "-d", str(slurm_dir), "--profile", PROFILE, "--configfile", DEFAULT, TINY,
                                str(overlay), "--slurm-init-seconds-before-status-checks", "1", "--", target],
                               stdout=log_handle, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
    stage_log = slurm_dir / "results/tiny/logs/sft/seed1.log"
    try:
        deadline = time.monotonic() + TIME_LIMIT
        while run.poll() is None and time.monotonic() < deadline and not (
                stage_log.exists() and "sft:" in stage_log.read_text(errors="replace")):   # its progress bar
            time.sleep(0.05)
        running = [job for job, (rule, _) in submitted(log_file.read_text()).items() if rule == "sft"]
        assert run.poll() is None and len(running) == 1, log_file.read_text()[-4000:]
        sft_job = running[0]
        subprocess.run(["scancel", "--signal=TERM", sft_job], env=env, check=True)   # the steps, not the batch shell
        run.wait(timeout=TIME_LIMIT)
        local_out, _ = local.communicate(timeout=TIME_LIMIT)
    finally:
        for proc in (run, local):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    log = log_file.read_text()
    assert run.returncode == 0 and local.returncode == 0, log[-4000:] + local_out[-2000:]
    sft_jobs = [(job, path) for job, (rule, path) in submitted(log).items() if rule == "sft"]
    assert len(sft_jobs) == 2 and sft_jobs[0][0] == sft_job, log[-4000:]   # the signalled job and its retry
    records = completions(slurm_cluster)
    assert [records[job]["JobState"] for job, _ in sft_jobs] == ["FAILED", "COMPLETED"]
    assert 0 < json.loads((slurm_dir / target / "train_summary.json").read_text())["resumed_from_step"] < 2000
    assert filecmp.cmp(slurm_dir / target / "model.safetensors", local_dir / target / "model.safetensors",
                       shallow=False)
