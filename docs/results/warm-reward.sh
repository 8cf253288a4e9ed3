#!/usr/bin/env bash
# WARM's reward models alone (docs/results.md "Other references and rewards"): toy-methods' reward soup and
# everything it needs (the shared linear probe, reward_model and the seed-2 / seed-3 replicas, all fine-tuned
# from the probe), then the tables' own comparisons of them: accuracy with Wilson intervals, McNemar between
# every two, and the soup against its ingredients' prediction ensemble. No PPO runs. Run from the repository
# root; writes docs/results/warm-reward/*.csv and probe_eval.json.
set -euo pipefail
OUT=${OUT:-docs/results/warm-reward}
.venv/bin/snakemake --cores 2 results/toy-methods/reward_soup/uniform \
    --configfile config/config.yaml config/experiments/toy-methods.yaml
mkdir -p "$OUT"
cp results/toy-methods/reward_probe/probe_eval.json "$OUT/"
.venv/bin/python - "$OUT" <<'PY'
import sys
from pathlib import Path

from salsa import reward_report

out, root = Path(sys.argv[1]), Path("results/toy-methods")
ids = ["reward_model", "reward/seed2", "reward/seed3", "reward_soup/uniform"]
reward_report.accuracy_rows(root, ids).to_csv(out / "accuracy.csv", index=False)
reward_report.pair_tests(root, ids).to_csv(out / "pairs.csv", index=False)
reward_report.ensemble_tests(root, ids).to_csv(out / "ensembles.csv", index=False)
# how far fine-tuning moved each replica's score head from the shared probe
import pandas as pd
import torch
from safetensors.torch import load_file

probe = load_file(str(root / "reward_probe" / "score_head.safetensors"))["score.weight"].flatten()
rows = [{"reward": r, "cosine_to_probe": float(torch.nn.functional.cosine_similarity(
    load_file(str(root / r / "model.safetensors"))["score.weight"].flatten(), probe, dim=0))} for r in ids[:3]]
pd.DataFrame(rows).to_csv(out / "heads.csv", index=False)
PY
