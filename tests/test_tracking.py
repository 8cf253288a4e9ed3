"""Experiment tracking: TensorBoard event files with the per-update PPO metrics and SFT losses."""

import pandas as pd
import pytest

from salsa import ppo, sft

PPO_METRICS = {"proxy_score", "gold", "kl", "kl_k3", "beta", "pg_loss", "vf_loss", "clipfrac", "approx_kl",
               "entropy", "response_length", "sample_logprob_gap", "lr"}


def scalars(run_dir) -> dict[str, list[int]]:
    """Tag -> logged steps, read back from the event files of one run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [e.step for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_report_to_tensorboard_writes_the_ppo_and_sft_curves(tiny, tmp_path):
    from accelerate.utils import is_tensorboard_available

    if not is_tensorboard_available():
        pytest.skip("tensorboard not installed (extra `tracking`)")
    tracking = ["--report-to", "tensorboard", "--tracking-dir", str(tmp_path / "tracking")]
    ppo.main(["--policy", str(tiny["sft1"]), "--reference", str(tiny["sft1"]), "--reward-model",
              str(tiny["reward"]), "--data", str(tiny["data"]), "--out", str(tmp_path / "ppo"), "--updates", "3",
              "--batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "1", "--max-new-tokens", "6",
              "--threads", "1", "--run-name", "ppo/salsa/seed1", *tracking])
    logged = scalars(tmp_path / "tracking" / "ppo" / "salsa" / "seed1")
    assert PPO_METRICS <= set(logged), PPO_METRICS - set(logged)
    assert all(logged[tag] == [1, 2, 3] for tag in PPO_METRICS)  # one point per update
    assert len(pd.read_csv(tmp_path / "ppo" / "metrics.csv")) == 3  # the CSV is still written

    sft.main(["--model", str(tiny["base"]), "--data", str(tiny["data"] / "sft"), "--out", str(tmp_path / "sft"),
              "--steps", "4", "--batch-size", "8", "--threads", "1", *tracking])  # run name: the output's
    assert scalars(tmp_path / "tracking" / "sft")["loss"] == [1, 2, 3, 4]


def test_no_tracking_by_default(tiny, tmp_path):
    sft.main(["--model", str(tiny["base"]), "--data", str(tiny["data"] / "sft"), "--out", str(tmp_path / "sft"),
              "--steps", "1", "--batch-size", "8", "--threads", "1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]
