"""Every training stage under the shipped accelerate configs, 2 processes on this CPU (gloo).

The configs are used as shipped; only the process count and precision come from the command line,
as `accelerate launch` flags (the launcher sets the count the same way). DeepSpeed picks its CPU
accelerator by itself; DDP runs as MULTI_CPU (salsa.distributed tells accelerate it is on CPUs).
FSDP cannot run here: accelerate refuses it without an accelerator device (see
test_fsdp_is_refused_here_with_accelerates_error), so its code paths are the ZeRO-3 ones
(sharded weights, gathered state dict) and are exercised through DeepSpeed.

Tolerance: a 2-process run of the same global batch computes the same sums in another order, so
weights agree to float32 rounding (measured 7.5e-9 for SFT/DPO, 1e-7 for reward and PPO over a few
Adam steps, 2.4e-7 for the 300-step SFT of the stop-signal test). Each Adam step moves every weight by
about lr (1e-3 here), so a run that trains on the wrong examples, normalises per rank or lets a rank
train alone is off by ~1e-3: 1e-5 separates the two by two orders of magnitude.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
CONFIGS = ["ddp", "deepspeed-zero3"]

pytestmark = pytest.mark.skipif(not __import__("importlib").util.find_spec("deepspeed"),
                                reason="deepspeed not installed (pip install -e '.[distributed]')")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(config: str, module: str, args: list, processes: int = 2, kill_after: int | None = None,
           extensions: Path | None = None):
    """`accelerate launch` of a stage with a shipped config; returns the completed process. ``extensions``: the
    torch extensions directory the processes JIT-build into (default: the user's cache)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           **({"TORCH_EXTENSIONS_DIR": str(extensions)} if extensions else {})}
    env.pop("SALSA_KILL_AFTER_CHECKPOINT", None)
    if kill_after is not None:
        env["SALSA_KILL_AFTER_CHECKPOINT"] = str(kill_after)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO / "config" / "accelerate" / f"{config}.yaml"), "--num_processes", str(processes),
               "--mixed_precision", "no", "--main_process_port", str(free_port()), "-m", f"salsa.{module}",
               *map(str, args), "--threads", "1"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def max_difference(a: Path, b: Path) -> float:
    x, y = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert set(x) == set(y) and all(x[k].shape == y[k].shape for k in x)  # whole tensors, not shards
    return max((x[k].float() - y[k].float()).abs().max().item() for k in x)


def loads_with_transformers(directory: Path, auto: str = "AutoModelForCausalLM"):
    import transformers

    model = getattr(transformers, auto).from_pretrained(directory)
    assert all(p.numel() > 0 for p in model.parameters())
    return model


# --- SFT ---------------------------------------------------------------------------------------
def sft_args(tiny, out, steps=4):
    return ["--model", tiny["base"], "--data", tiny["data"] / "sft", "--out", out, "--seed", 1, "--steps", steps,
            "--batch-size", 8, "--lr", 1e-3]


def single_sft(tiny, out, steps):
    from salsa import sft
    sft.main([*map(str, sft_args(tiny, out, steps)), "--threads", "1"])
    return out


def job_launch(config: str, module: str, args: list, log: Path, processes: int = 2) -> subprocess.Popen:
    """A stage started as a Snakemake job starts it (rules/jobs.smk: launcher), in a session of its own like a SLURM
    job step's processes; `processes` on CPU. The machine's slot directory, shared with tests/test_launch.py's
    launches, so two launches running at once never take the same rendezvous port."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for name in ("SALSA_KILL_AFTER_CHECKPOINT", "TORCH_ELASTIC_SHUTDOWN_TIMEOUT", "CUDA_VISIBLE_DEVICES",
                 "SALSA_SLOT_DIR"):
        env.pop(name, None)
    command = [sys.executable, "-m", "salsa.launch", "--gpus", "0", "--processes", str(processes),
               "--accelerate-config", f"config/accelerate/{config}.yaml", "--", f"salsa.{module}", *map(str, args),
               "--threads", "1"]
    with log.open("w") as handle:   # the job's log, as its rule's `log:`
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def test_sft_stopped_by_sigterm_in_its_job_checkpoints_on_every_rank_and_resumes_like_one_process(tiny, tmp_path):
    """What a training job's step gets before its SLURM time limit (--signal=TERM@300): SIGTERM, here to the job's
    session, which holds torchelastic's launcher; it passes the signal on to the processes (each in a session of its
    own; SLURM signals them directly too). The ranks agree to stop after the same step, save it and exit; the job's
    retry resumes there and ends where one process ends (DDP, 2 processes, accumulation 2)."""
    out, steps = tmp_path / "sft", 300
    args = [*sft_args(tiny, out, steps), "--micro-batch-size", 2, "--checkpoint-every", 20]
    latest = tmp_path / ".sft.resume" / "latest.json"
    job = job_launch("ddp", "sft", args, tmp_path / "job.log")
    deadline = time.monotonic() + 300
    while not latest.exists() and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)   # the loop runs once the first periodic checkpoint (step 20) is written
    assert job.poll() is None, (tmp_path / "job.log").read_text()[-3000:]
    os.killpg(job.pid, signal.SIGTERM)
    job.wait(timeout=300)
    log = (tmp_path / "job.log").read_text()
    assert job.returncode != 0 and "stop signal: checkpointed step" in log, log[-3000:]
    stopped_at = json.loads(latest.read_text())["step"]
    assert 20 < stopped_at < steps and not out.exists(), log[-3000:]
    retry = job_launch("ddp", "sft", args, tmp_path / "retry.log")
    assert retry.wait(timeout=300) == 0, (tmp_path / "retry.log").read_text()[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == stopped_at and summary["processes"] == 2 and summary["accumulation"] == 2
    assert summary["peak_memory_mb"] > 0
    assert max_difference(out, single_sft(tiny, tmp_path / "single", steps)) < TOLERANCE
    loads_with_transformers(out)


# ZeRO-3's kill-and-resume runs three DeepSpeed launches (~100 s): slow, in `make test-slow`
@pytest.mark.slow
def test_sft_under_zero3_with_accumulation_killed_and_resumed_equals_one_process(tiny, tmp_path):
    out = tmp_path / "sft"
    args = [*sft_args(tiny, out), "--micro-batch-size", 2, "--checkpoint-every", 2]
    killed = launch("deepspeed-zero3", "sft", args, kill_after=2)
    assert killed.returncode != 0 and (tmp_path / ".sft.resume" / "latest.json").exists()
    ok(launch("deepspeed-zero3", "sft", args))
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["resumed_from_step"] == 2 and summary["processes"] == 2 and summary["accumulation"] == 2
    assert summary["peak_memory_mb"] > 0
    assert max_difference(out, single_sft(tiny, tmp_path / "single", 4)) < TOLERANCE
    loads_with_transformers(out)


# --- reward model --------------------------------------------------------------------------------
def reward_args(tiny, out):
    return ["--model", tiny["sft1"], "--data", tiny["data"], "--out", out, "--normalize-policy", tiny["sft1"],
            "--steps", 4, "--batch-size", 8, "--normalize-samples", 16, "--max-new-tokens", 4]


@pytest.mark.parametrize("config", CONFIGS)
def test_reward_model_two_processes_writes_model_and_normalisation_like_one_process(tiny, tmp_path, config):
    from salsa import reward
    single = tmp_path / "single"
    reward.main([*map(str, reward_args(tiny, single)), "--threads", "1"])
    out, extensions = tmp_path / "rm", tmp_path / "torch_extensions"
    ok(launch(config, "reward", [*reward_args(tiny, out), "--micro-batch-size", 2], extensions=extensions))
    assert max_difference(out, single) < TOLERANCE
    # DeepSpeed's inference-only shared-memory op is not JIT-built (about a minute of a fresh machine)
    assert not list(extensions.rglob("*shm*")), sorted(extensions.rglob("*"))
    mine, theirs = (json.loads((d / "reward_normalization.json").read_text()) for d in (out, single))
    assert mine["mean"] == pytest.approx(theirs["mean"], abs=1e-5) and mine["samples"] == 16
    loads_with_transformers(out, "AutoModelForSequenceClassification")


# --- PPO -----------------------------------------------------------------------------------------
def ppo_args(tiny, out, *extra):
    return ["--policy", tiny["sft1"], "--reference", tiny["sft1"], "--reward-model", tiny["reward"],
            "--data", tiny["data"], "--out", out, "--updates", 3, "--batch-size", 8, "--mini-batch-size", 2,
            "--ppo-epochs", 2, "--max-new-tokens", 4, *extra]


@pytest.mark.slow  # four launches, two of them killed and resumed (~75 s): `make test-slow`
def test_full_parameter_ppo_under_zero3_matches_ddp_and_resumes(tiny, tmp_path):
    """Each process samples its own stream, so the 2-process runs are compared with each other."""
    ddp, zero3 = tmp_path / "ddp", tmp_path / "zero3"
    ok(launch("ddp", "ppo", ppo_args(tiny, ddp)))
    ok(launch("deepspeed-zero3", "ppo", ppo_args(tiny, zero3)))
    assert max_difference(ddp / "model", zero3 / "model") < TOLERANCE
    resumed = tmp_path / "resumed"
    args = ppo_args(tiny, resumed, "--checkpoint-every", 1, "--micro-batch-size", 1)
    assert launch("deepspeed-zero3", "ppo", args, kill_after=2).returncode != 0
    assert {p.name for p in (tmp_path / ".resumed.resume").glob("step-*/rank*-sampler.pt")} == \
        {"rank0-sampler.pt", "rank1-sampler.pt"}
    ok(launch("deepspeed-zero3", "ppo", args))
    assert json.loads((resumed / "summary.json").read_text())["resumed_from_update"] == 2
    # micro-batches of 1 accumulate to the same minibatch update
    assert max_difference(resumed / "model", zero3 / "model") < TOLERANCE
    straight = [r.split(",")[:3] for r in (zero3 / "metrics.csv").read_text().splitlines()]
    again = [r.split(",")[:3] for r in (resumed / "metrics.csv").read_text().splitlines()]
    assert straight == again
    loads_with_transformers(zero3 / "model")


def test_lora_ppo_runs_under_ddp_and_lora_is_refused_under_zero3(tiny, tmp_path):
    ok(launch("ddp", "ppo", ppo_args(tiny, tmp_path / "lora", "--lora-r", 4, "--value-lora-r", 4)))
    loads_with_transformers(tmp_path / "lora" / "model")
    refused = launch("deepspeed-zero3", "ppo", ppo_args(tiny, tmp_path / "no", "--lora-r", 4))
    assert refused.returncode != 0 and "use the ddp accelerate config" in refused.stderr + refused.stdout


# --- DPO -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", CONFIGS)
def test_dpo_two_processes_equals_one_process(tiny, tmp_path, config):
    from salsa import dpo
    args = ["--policy", tiny["sft1"], "--reference", tiny["sft1"], "--data", tiny["data"], "--steps", 4,
            "--batch-size", 8, "--eval-every", 2]
    dpo.main([*map(str, args), "--out", str(tmp_path / "single"), "--threads", "1"])
    ok(launch(config, "dpo", [*args, "--out", tmp_path / "two", "--micro-batch-size", 2]))
    assert max_difference(tmp_path / "two" / "model", tmp_path / "single" / "model") < TOLERANCE
    rows = (tmp_path / "two" / "metrics.csv").read_text().splitlines()
    single = (tmp_path / "single" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    column = header.index("eval_accuracy")
    # metrics over the global batch and the whole held-out split, not one rank's shard
    assert [r.split(",")[column] for r in rows] == [r.split(",")[column] for r in single]
    loads_with_transformers(tmp_path / "two" / "model")


# --- process exit --------------------------------------------------------------------------------
def test_a_worker_whose_native_threads_outlive_main_still_exits_cleanly(tmp_path):
    """In CI a ZeRO-3 DPO worker aborted after its job was done: native code re-entered Python while the
    interpreter was finalising ("terminate called without an active exception", exit -6), and the launcher
    failed the job. A stage's process that joined a group leaves without finalising (end_process); the probe
    widens that race until it happens every time without it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), str(REPO / "tests" / "helpers" / "exit_probe.py"), str(tmp_path)]
    proc = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "terminate called" not in log, log[-3000:]
    assert (tmp_path / "done").read_text() == "2\n"
    assert "rank 0 returns" in log and "rank 1 returns" in log


def test_fsdp_is_refused_here_with_accelerates_error(tiny, tmp_path):
    """Recorded, not hidden: on a machine without an accelerator accelerate will not start FSDP."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: FSDP can run")
    proc = launch("fsdp", "sft", sft_args(tiny, tmp_path / "sft"))
    assert proc.returncode != 0 and "There are currently no available devices found" in proc.stderr
