#!/usr/bin/env bash
# The early KL jump (docs/results.md): the first 12 PPO updates of the default `ppo` method
# (rep1 sft/seed1, rep1 reward model), one setting changed at a time. Run from the repository root
# after `make run`; writes docs/results/kl-jump/<variant>/metrics.csv and kl-jump.md.
set -euo pipefail
R=results/toy
OUT=${OUT:-docs/results/kl-jump}
COMMON=(--policy $R/rep1/sft/seed1 --reference $R/rep1/sft/seed1 --reward-model $R/rep1/reward_model
        --data $R/data --updates 12 --batch-size 64 --mini-batch-size 32 --ppo-epochs 4 --lr 1e-4
        --kl-coef 0.05 --max-new-tokens 16 --seed 1 --threads 1)
declare -A VARIANTS=(
  [default]=""
  [lr3e-5]="--lr 3e-5"
  [epochs1]="--ppo-epochs 1"
  [value_from_sft]="--value-model $R/rep1/sft/seed1"
  [no_whitening]="--whiten-advantages false"
  [warmup10]="--warmup-updates 10"
)
mkdir -p "$OUT"
for name in "${!VARIANTS[@]}"; do
  [ -f "$OUT/$name/metrics.csv" ] && continue
  tmp=$(mktemp -d)
  .venv/bin/python -m salsa.ppo "${COMMON[@]}" ${VARIANTS[$name]} --out "$tmp/run" > "$tmp/log" 2>&1
  mkdir -p "$OUT/$name" && cp "$tmp/run/metrics.csv" "$OUT/$name/" && rm -rf "$tmp"
done
.venv/bin/python - "$OUT" <<'PY'
import sys, pandas as pd, pathlib
out = pathlib.Path(sys.argv[1])
cols = ["kl", "gold", "proxy_score", "response_length", "entropy", "clipfrac", "approx_kl", "vf_loss"]
lines = ["# Early KL jump: first 12 PPO updates (rep1 sft/seed1 -> itself, batch 64, 4 epochs x 2 minibatches)", "",
         "Per-update rollout-batch means (KL = k1 sequence KL to the reference, nats) at updates 1, 2, 3, 5, 8, 12.", ""]
for run in sorted(out.glob("*/metrics.csv")):
    m = pd.read_csv(run).set_index("update")
    lines += [f"## {run.parent.name}", "", "| update | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for u in (1, 2, 3, 5, 8, 12):
        lines.append(f"| {u} | " + " | ".join(f"{m.loc[u, c]:.3f}" for c in cols) + " |")
    lines.append("")
(out / "kl-jump.md").write_text("\n".join(lines))
print((out / "kl-jump.md").read_text())
PY
