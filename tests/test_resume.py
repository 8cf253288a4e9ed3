"""A training job killed after a checkpoint resumes where it stopped and ends where an uninterrupted run ends.

The kill is real (SIGKILL, as a preemption or a SLURM time limit delivers it) but placed
deterministically: SALSA_KILL_AFTER_CHECKPOINT=N makes the stage kill itself right after
the checkpoint of step N is complete.
"""

import json
import os
import signal
import subprocess
import sys

import pandas as pd
import torch
from safetensors.torch import load_file

from salsa import ppo, sft, training

SFT_ARGS = ["--seed", "1", "--steps", "20", "--batch-size", "16", "--threads", "1"]  # = the tiny fixture's sft1
PPO_ARGS = ["--updates", "3", "--batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "2",
            "--max-new-tokens", "6", "--threads", "1", "--rollout-samples", "4"]


def killed_run(module: str, args: list[str], step: int) -> None:
    env = {**os.environ, training.KILL_AFTER_CHECKPOINT: str(step)}
    proc = subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def test_sft_killed_after_a_checkpoint_resumes_and_matches_an_uninterrupted_run(tiny, tmp_path, capsys):
    out = tmp_path / "sft"
    args = ["--model", str(tiny["base"]), "--data", str(tiny["data"] / "sft"), "--out", str(out), *SFT_ARGS,
            "--checkpoint-every", "5"]
    killed_run("salsa.sft", args, step=10)
    assert not out.exists()  # the final artifact appears only when the stage completes
    assert json.loads((training.resume_dir(out) / training.LATEST).read_text())["step"] == 10

    sft.main(args)
    assert "resuming from step 10" in capsys.readouterr().out
    assert json.loads((out / "train_summary.json").read_text())["resumed_from_step"] == 10
    assert not training.resume_dir(out).exists()
    # Same data order (replayed from the seed), optimiser moments, schedule and RNG: on CPU
    # with a fixed thread count the weights are bitwise those of the uninterrupted run.
    resumed, uninterrupted = load_file(out / "model.safetensors"), load_file(tiny["sft1"] / "model.safetensors")
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)
    summary = json.loads((tiny["sft1"] / "train_summary.json").read_text())
    assert json.loads((out / "train_summary.json").read_text())["final_loss"] == summary["final_loss"]


def test_ppo_killed_after_a_checkpoint_resumes_and_matches_an_uninterrupted_run(tiny, tmp_path, capsys):
    def args(out):
        return ["--policy", str(tiny["sft1"]), "--reference", str(tiny["soup"]), "--reward-model",
                str(tiny["reward"]), "--data", str(tiny["data"]), "--out", str(out), *PPO_ARGS]

    ppo.main(args(tmp_path / "straight"))
    resumed = tmp_path / "resumed"
    killed_run("salsa.ppo", [*args(resumed), "--checkpoint-every", "1"], step=2)
    assert not resumed.exists()
    ppo.main([*args(resumed), "--checkpoint-every", "1"])
    assert "resuming from step 2" in capsys.readouterr().out

    # metrics rows 1-2 come from the killed run's checkpoint, row 3 from the resumed run;
    # the sampler state makes the third rollout the one the uninterrupted run drew.
    straight_metrics = pd.read_csv(tmp_path / "straight" / "metrics.csv")
    resumed_metrics = pd.read_csv(resumed / "metrics.csv")
    columns = [c for c in straight_metrics.columns if not c.startswith(("time_", "peak_memory"))]  # machine readings
    pd.testing.assert_frame_equal(straight_metrics[columns], resumed_metrics[columns])
    assert (resumed / "rollouts.jsonl").read_text() == (tmp_path / "straight" / "rollouts.jsonl").read_text()
    a = load_file(tmp_path / "straight" / "model" / "model.safetensors")
    b = load_file(resumed / "model" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_from_other_settings_is_not_resumed(tiny, tmp_path, capsys):
    out = tmp_path / "sft"
    base = ["--model", str(tiny["base"]), "--data", str(tiny["data"] / "sft"), "--out", str(out),
            "--steps", "6", "--batch-size", "8", "--threads", "1", "--checkpoint-every", "2"]
    killed_run("salsa.sft", base, step=2)
    sft.main([*base, "--lr", "0.01"])  # the user changed the config before resubmitting
    assert "written with different settings" in capsys.readouterr().out
    assert json.loads((out / "train_summary.json").read_text())["resumed_from_step"] == 0


def test_a_stop_signal_checkpoints_exits_for_requeue_and_the_rerun_matches(tiny, tmp_path):
    """A stop signal mid-run (SLURM sends SIGTERM through --signal; SIGUSR1 is kept too): the stage finishes its step,
    checkpoints, exits with PREEMPTED_EXIT_CODE, and a rerun ends bitwise where an uninterrupted run ends."""
    out = tmp_path / "sft"
    args = ["--model", str(tiny["base"]), "--data", str(tiny["data"] / "sft"), "--out", str(out), "--seed", "1",
            "--steps", "600", "--batch-size", "16", "--threads", "1"]
    proc = subprocess.Popen([sys.executable, "-m", "salsa.sft", *args], stderr=subprocess.PIPE, text=True)
    for line in iter(proc.stderr.readline, ""):  # the progress bar appears once the loop has started
        if line.startswith("sft:"):
            break
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=300) == training.PREEMPTED_EXIT_CODE
    stopped_at = json.loads((training.resume_dir(out) / training.LATEST).read_text())["step"]
    assert 0 < stopped_at < 600 and not out.exists()
    assert subprocess.run([sys.executable, "-m", "salsa.sft", *args], capture_output=True).returncode == 0
    assert json.loads((out / "train_summary.json").read_text())["resumed_from_step"] == stopped_at
    sft.main([*args[:5], str(tmp_path / "straight"), *args[6:]])
    resumed, straight = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
