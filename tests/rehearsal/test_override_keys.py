"""Each rehearsal override changes sizes only (override_keys.disallowed), and the checker refuses the rest."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from override_keys import disallowed
from test_rehearsal import OVERLAYS, REPO, stacked

HERE = Path(__file__).parent


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_each_override_changes_only_sizes(overlay):
    override = yaml.safe_load((HERE / f"{overlay}.yaml").read_text())
    assert disallowed(override, stacked(overlay)) == []


def test_every_shipped_real_model_overlay_has_a_rehearsal():
    shipped = {p.stem for p in (REPO / "config" / "experiments").glob("*.yaml") if not p.stem.startswith("toy")}
    assert shipped == set(OVERLAYS)


@pytest.mark.parametrize("change, key", [
    ({"sft": {"lr": 1.0e-3}}, "sft.lr"),
    ({"ppo": {"params": {"kl_coef": 0.5}}}, "ppo.params.kl_coef"),
    ({"ppo": {"methods": {"salsa": {"reference": "sft/seed1"}}}}, "ppo.methods.salsa.reference"),
    ({"benchmarks": {"mt_bench": {"judge": "local"}}}, "benchmarks.mt_bench.judge"),
    ({"benchmarks": {"mt_bench": {"judging": {"judge_model": "gpt-4o"}}}}, "benchmarks.mt_bench.judging.judge_model"),
    ({"benchmarks": {"mt_bench": {"judging": {"max_failure_fraction": 1.0}}}},
     "benchmarks.mt_bench.judging.max_failure_fraction"),
    ({"resources": {"sft": {"accelerate_config": "ddp"}}}, "resources.sft.accelerate_config"),
    ({"sft": {"dtype": "float32"}}, "sft.dtype"),
    ({"base_model": {"model": "HuggingFaceTB/SmolLM2-135M"}}, "base_model.model"),
    ({"data": {"hub": {"sft_split": "test_sft"}}}, "data.hub.sft_split"),
    ({"sft": {"steps": 2.5}}, "sft.steps"),
    ({"ppo": {"seeds": [2]}}, "ppo.seeds"),                       # another seed, not fewer seeds
    ({"landscape": {"alphas": [0.25]}}, "landscape.alphas"),      # a point the overlay does not walk
    ({"resources": {"ppo": {"slurm_partition": "cpu"}}}, "resources.ppo.slurm_partition"),
])
def test_the_checker_refuses_anything_but_sizes(change, key):
    overlay = stacked("llama2-7b")
    override = yaml.safe_load((HERE / "llama2-7b.yaml").read_text())
    merged = merge(override, change)
    assert disallowed(merged, {**overlay, "landscape": {"alphas": [0.0, 0.5, 1.0]}}) == [key]


def merge(base: dict, change: dict) -> dict:
    out = dict(base)
    for key, value in change.items():
        out[key] = merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out
