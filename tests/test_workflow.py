"""The Snakemake workflow: validation, dry runs, a full tiny run, and what a change reruns."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# not `from conftest import REPO`: tests/benchmarks/conftest.py can take the module name first
REPO = Path(__file__).resolve().parents[1]

SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--cores", "2"]
DEFAULT = str(REPO / "config" / "config.yaml")
TINY = str(REPO / "tests" / "config" / "tiny.yaml")


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run([*SNAKEMAKE, "-d", str(workdir), *args], capture_output=True, text=True, env=env,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def scheduled_rules(output: str) -> dict[str, int]:
    """Rule -> job count from a dry run's 'Job stats' table."""
    table = output.split("Job stats:")[-1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)
            if m.group(1) != "total"}


def test_default_config_dry_run(tmp_path):
    proc = snakemake(tmp_path, "-n", "--configfile", DEFAULT)
    rules = scheduled_rules(proc.stdout)
    # three outer replicates, each with its own SFT pair, soup and reward model; one PPO seed of 2 methods and
    # 2 more PPO βs (ppo.kl_arms) each; the embedded benchmark protocols on replicate 1's PPO and SALSA runs
    assert rules["sft"] == 6 and rules["soup"] == 3 and rules["reward_model"] == 3 and rules["ppo"] == 12
    assert "results/toy/rep3/ppo/ppo-kl_coef0.01/seed1" in proc.stdout
    assert rules["tables"] == 1 and rules["landscape"] == 1
    # answers: PPO and SALSA per protocol, plus the arena's baseline; judged: the two runs per protocol
    assert rules["evaluate_answers"] == 5 and rules["evaluate_judge"] == 4, rules
    assert "bench/embedded_mt/rep1/ppo/salsa/seed1" in proc.stdout and "bench/embedded_mt/rep2" not in proc.stdout
    assert "results/toy/rep2/sft/seed2" in proc.stdout and "results/toy/rep1/reward_model" in proc.stdout


@pytest.mark.parametrize("overlay", ["", "toy-methods.yaml", "llama2-7b.yaml"])
def test_snakemake_lint_is_clean(tmp_path, overlay):
    """`snakemake --lint` exits non-zero on any lint; the default run, the widest toy overlay and a 7B one."""
    extra = [str(REPO / "config" / "experiments" / overlay)] if overlay else []
    proc = snakemake(tmp_path, "--lint", "--configfile", DEFAULT, *extra, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_unknown_config_key_is_refused(tmp_path):
    overlay = tmp_path / "typo.yaml"
    overlay.write_text("ppo:\n  params:\n    kl_cooef: 0.1\n")
    proc = snakemake(tmp_path, "-n", "--configfile", DEFAULT, str(overlay), check=False)
    assert proc.returncode != 0
    assert "kl_cooef" in proc.stdout + proc.stderr


def test_schema_lists_only_real_stage_flags():
    import dataclasses
    import yaml
    from salsa.base import BaseModelConfig
    from salsa.data import PrepareDataConfig
    from salsa.evaluate import EvaluateConfig
    from salsa.landscape import LandscapeConfig
    from salsa.ppo import PPOConfig
    from salsa.reward import RewardConfig
    from salsa.sft import SFTConfig

    schema = yaml.safe_load((REPO / "config" / "schema.yaml").read_text())
    blocks = {"data": (PrepareDataConfig, {"source", "hub"}), "base_model": (BaseModelConfig, set()),
              "sft": (SFTConfig, {"seeds", "extra", "data_subsets"}), "evaluate": (EvaluateConfig, set()),
              "landscape": (LandscapeConfig, {"pair", "enabled"}),
              "reward_model": (RewardConfig, {"init", "normalize_policy"})}
    for block, (config_cls, wiring) in blocks.items():
        fields = {f.name for f in dataclasses.fields(config_cls)}
        assert set(schema["properties"][block]["properties"]) - wiring <= fields, block
    ppo_fields = {f.name for f in dataclasses.fields(PPOConfig)}
    assert set(schema["definitions"]["ppo_params"]["properties"]) <= ppo_fields


@pytest.mark.slow
def test_tiny_workflow_end_to_end_then_caching(tmp_path):
    snakemake(tmp_path, "--configfile", DEFAULT, TINY)
    tables = tmp_path / "results" / "tiny" / "tables"
    summary = pd.read_csv(tables / "summary.csv")
    expected = {f"rep{r}/{m}" for r in (1, 2)
                for m in ("sft/seed1", "sft/seed2", "soup/uniform", "ppo/ppo/seed1", "ppo/salsa/seed1")}
    assert set(summary.model) == expected
    assert sorted(summary.replicate.unique()) == [1, 2]
    for column in ("gold_id", "gold_ood", "proxy_id", "kl_sft_id", "length_id", "empty_id", "rm_winrate_hard",
                   "embedded_mt_score", "embedded_arena_winrate", "judge_failures"):
        assert column in summary.columns, column
    # benchmarks.<name>.seeds: [1] and replicates: [1] (the default): replicate 1's PPO runs only
    judged = (summary.kind.eq("ppo") & summary.model.str.startswith("rep1/")).values
    for column in ("embedded_arena_winrate", "embedded_mt_score"):
        scores = summary.set_index("model")[column]
        assert scores[judged].notna().all() and scores[~judged].isna().all(), scores
    # each replicate's KL yardstick is its own first SFT (rep2's SFTs are redrawn: another seed, other halves)
    assert (summary.loc[summary.model.str.endswith("/sft/seed1"), "kl_sft_id"] == 0.0).all()
    assert (summary.loc[summary.model.str.endswith("/sft/seed2"), "kl_sft_id"] != 0.0).all()
    landscape = pd.read_csv(tmp_path / "results" / "tiny" / "landscape" / "landscape.csv")
    assert list(landscape.label.unique()) == ["rep1", "rep2"] and sorted(landscape.alpha.unique()) == [-0.5, 0, 0.5, 1]
    at = landscape.set_index(["label", "alpha"])
    assert at.loc[("rep1", 0.0), "kl_sft1"] == pytest.approx(0.0, abs=1e-5)  # alpha 0 is SFT1 itself
    assert at.loc[("rep1", 1.0), "kl_sft2"] == pytest.approx(0.0, abs=1e-5)
    sft_gold = summary.set_index("model").gold_id
    assert sft_gold["rep1/sft/seed1"] != sft_gold["rep2/sft/seed1"]
    markdown = (tables / "summary.md").read_text()
    assert "PPO methods over seeds" in markdown and "salsa" in markdown
    # the comparisons the tables generate: SALSA against PPO paired by seed, Holm, power, matched KL, single models
    comparisons = pd.read_csv(tables / "comparisons.csv")
    gold = comparisons[comparisons.metric == "gold_id"]
    assert gold[["method", "vs", "test"]].values.tolist() == [["salsa", "ppo", "replicates (n=2)"]]
    assert markdown.split("\n## ")[1].startswith("Pre-registered result")  # summary.md opens with the primary
    assert "## Power" in markdown and "## Gold at matched KL" in markdown
    assert set(pd.read_csv(tables / "endpoints.csv").role) == {"primary", "secondary"}
    assert (tables / "matched_kl.csv").stat().st_size > 0
    assert set(pd.read_csv(tables / "single_models.csv").vs) == {f"rep{r}/sft/seed{s}" for r in (1, 2) for s in (1, 2)}
    assert summary.loc[summary.model == "rep1/soup/uniform", "gold_id_ci"].item() > 0
    assert (tables / "ppo_curves.png").stat().st_size > 0 and (tables / "frontier.png").stat().st_size > 0

    again = snakemake(tmp_path, "-n", "--configfile", DEFAULT, TINY)
    assert "Nothing to be done" in again.stdout + again.stderr
    # switching live curves on reruns nothing (trackers travel as a resource), yet reaches the stages
    tracked = tmp_path / "tracked.yaml"
    tracked.write_text("report_to: [tensorboard]\n")
    with_tracking = snakemake(tmp_path, "-n", "--configfile", DEFAULT, TINY, str(tracked))
    assert "Nothing to be done" in with_tracking.stdout + with_tracking.stderr
    forced = snakemake(tmp_path, "-n", "-p", "--configfile", DEFAULT, TINY, str(tracked),
                       "-f", "results/tiny/rep1/ppo/salsa/seed1")
    assert "--report-to tensorboard --tracking-dir results/tiny/tracking" in forced.stdout

    overlay = tmp_path / "change.yaml"
    overlay.write_text("ppo:\n  params:\n    kl_coef: 0.2\n")
    changed = snakemake(tmp_path, "-n", "--configfile", DEFAULT, TINY, str(overlay))
    rules = scheduled_rules(changed.stdout)
    assert rules.get("ppo") == 4  # 2 methods x 1 seed x 2 replicates
    assert set(rules) - {"all"} <= {"ppo", "evaluate", "evaluate_answers", "evaluate_judge", "tables"}, rules


def test_a_moved_checkout_reruns_nothing(tmp_path):
    """Source inputs are relative paths: a finished job stays finished after `mv checkout elsewhere`."""
    import shutil

    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Snakefile", "rules", "config", "envs", "src"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy2
        copy(REPO / name, checkout / name)
    (checkout / "tests" / "config").mkdir(parents=True)
    shutil.copy2(TINY, checkout / "tests" / "config")

    def run(where: Path, *args: str) -> str:
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        proc = subprocess.run([sys.executable, "-m", "snakemake", "results/tiny/data", "--cores", "1", *args,
                               "--configfile", "config/config.yaml", "tests/config/tiny.yaml"],
                              cwd=where, capture_output=True, text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        return proc.stdout + proc.stderr

    run(checkout)
    assert (checkout / "results" / "tiny" / "data" / "task.json").exists()
    moved = shutil.move(checkout, tmp_path / "moved")
    assert "Nothing to be done" in run(Path(moved), "-n")
