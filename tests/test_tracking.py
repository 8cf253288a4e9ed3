"""Experiment tracking: TensorBoard event files with the per-update PPO metrics and SFT losses."""

from types import SimpleNamespace

import pandas as pd
import pytest

from salsa import ppo, sft, training

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
              str(tiny["reward"]), "--data", str(tiny["data"]), "--out", str(tmp_path / "ppo" / "salsa" / "seed1"),
              "--updates", "3", "--batch-size", "8", "--mini-batch-size", "4", "--ppo-epochs", "1",
              "--max-new-tokens", "6", "--threads", "1", *tracking])
    logged = scalars(tmp_path / "tracking" / "ppo" / "salsa" / "seed1")  # named by its path next to tracking/
    assert PPO_METRICS <= set(logged), PPO_METRICS - set(logged)
    assert all(logged[tag] == [1, 2, 3] for tag in PPO_METRICS)  # one point per update
    assert len(pd.read_csv(tmp_path / "ppo" / "salsa" / "seed1" / "metrics.csv")) == 3  # the CSV is still written

    sft.main(["--model", str(tiny["base"]), "--data", str(tiny["data"] / "sft"), "--out", str(tmp_path / "sft"),
              "--steps", "4", "--batch-size", "8", "--threads", "1", *tracking])  # run name: the output's
    assert scalars(tmp_path / "tracking" / "sft")["loss"] == [1, 2, 3, 4]


def test_no_tracking_by_default(tiny, tmp_path):
    sft.main(["--model", str(tiny["base"]), "--data", str(tiny["data"] / "sft"), "--out", str(tmp_path / "sft"),
              "--steps", "1", "--batch-size", "8", "--threads", "1"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sft"]


def test_report_to_accepts_the_workflows_comma_lists_and_none():
    # the workflow passes trackers as one resource string: "none" when off, "a,b" for several
    def names(*report_to):
        return training.requested_trackers(SimpleNamespace(report_to=list(report_to)))

    assert names("none") == [] and names() == []
    assert names("tensorboard,wandb") == ["tensorboard", "wandb"]
    assert names("tensorboard", "tensorboard,none") == ["tensorboard"]


def test_a_run_is_named_by_its_path_below_the_tracking_dirs_parent(tmp_path):
    def where(out, tracking_dir="", run_name=""):
        return training.tracking_location(SimpleNamespace(out=str(out), tracking_dir=str(tracking_dir),
                                                          run_name=run_name))

    results = tmp_path / "results" / "x"
    assert where(results / "ppo" / "salsa" / "seed1", results / "tracking") == (results / "tracking",
                                                                                 "ppo/salsa/seed1")
    assert where(results / "sft" / "seed2", results / "tracking", "mine")[1] == "mine"
    assert where(tmp_path / "elsewhere" / "seed1", results / "tracking")[1] == "seed1"
    assert where(results / "sft" / "seed2") == (results / "sft" / "seed2.tracking", "seed2")
