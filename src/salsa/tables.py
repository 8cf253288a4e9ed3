"""Stage `tables`: one row per model, PPO methods aggregated over seeds, plots.

Writes summary.csv (every model and every aggregate), summary.md (the
tables a reader decides from), ppo_curves.png (gold and proxy reward against
KL during PPO training) and frontier.png (final gold and proxy reward against
KL to the first SFT, one point per run: comparisons at matched KL).

Confidence intervals are t-intervals over seeds (95%); a method's difference
from the reference method uses Welch's interval and is starred when the
interval excludes zero.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd

from salsa import artifacts
from salsa.args import arg, parse

# two-sided 95% Student-t critical values by degrees of freedom (1..30); 1.96 beyond
T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]
HEADLINE = ["gold_id", "gold_ood", "proxy_id", "kl_ref_id", "kl_sft_id", "length_id", "empty_id",
            "rm_winrate_hard", "rm_winrate_soft"]


def t_critical(df: float) -> float:
    if not df or df < 1 or math.isnan(df):
        return math.nan
    return T_975[int(df) - 1] if df <= 30 else 1.96


@dataclasses.dataclass
class TablesConfig:
    """Collect evaluation results into tables and plots."""

    results: str = arg(help="experiment results directory (results/<experiment>)")
    models: list[str] = arg(help="model ids, e.g. sft/seed1 soup/uniform ppo/salsa/seed1")
    out: str = arg(help="output directory for the tables and plots")
    baseline: str = arg("", help="model id the reward win rates compare against (default: first model)")
    reference_method: str = arg("ppo", help="PPO method the others are compared with")
    seed: int = arg(0, help="bootstrap seed for win-rate intervals")


def split_replicate(model_id: str) -> tuple[str, str]:
    """'rep2/ppo/salsa/seed1' -> ('2', 'ppo/salsa/seed1'); ids without the prefix -> ('', id)."""
    head, _, rest = model_id.partition("/")
    if rest and head.startswith("rep") and head[3:].isdigit():
        return head[3:], rest
    return "", model_id


def parse_model_id(model_id: str) -> dict:
    """kind, method, seed and replicate ('' without outer replicates) of a model id."""
    replicate, rest = split_replicate(model_id)
    parts = rest.split("/")
    if parts[0] == "ppo" and len(parts) == 3:
        return {"kind": "ppo", "method": parts[1], "seed": parts[2].removeprefix("seed"), "replicate": replicate}
    if parts[0] in ("sft", "soup") and len(parts) == 2:
        return {"kind": parts[0], "method": parts[1], "seed": parts[1].removeprefix("seed")
                if parts[1].startswith("seed") else "", "replicate": replicate}
    raise artifacts.StageError(f"model id {model_id!r}: expected [rep<r>/]sft/<name>, [rep<r>/]soup/<name> or "
                               "[rep<r>/]ppo/<method>/seed<N>")


def read_samples(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def gold_breakdown(samples: list[dict]) -> dict:
    """Gold per list length and per operation (gold_id_len3, gold_id_sort, ...) for embedded-task samples."""
    from salsa.task import parse_prompt

    groups: dict[str, list[float]] = {}
    for record in samples:
        if record.get("gold") is None:
            continue
        try:
            problem = parse_prompt(record["prompt"])
        except ValueError:
            return {}
        for key in (f"len{len(problem.numbers)}", problem.op):
            groups.setdefault(f"gold_{record['split']}_{key}", []).append(record["gold"])
    return {key: sum(values) / len(values) for key, values in sorted(groups.items())}


def collect_rows(config: TablesConfig) -> pd.DataFrame:
    from salsa.benchmarks.scoring import reward_win_rate

    results = Path(config.results)
    baseline = split_replicate(config.baseline or config.models[0])[1]
    baselines: dict[str, dict] = {}  # per replicate: each model against its own replicate's baseline
    rows = []
    for model_id in config.models:
        row = {"model": model_id, **parse_model_id(model_id)}
        if row["replicate"] not in baselines:
            own = f"rep{row['replicate']}/{baseline}" if row["replicate"] else baseline
            baselines[row["replicate"]] = {(r["split"], r["prompt"]): r["proxy"]
                                           for r in read_samples(results / "eval" / own / "samples.jsonl")}
        baseline_samples = baselines[row["replicate"]]
        row.update(artifacts.read_json(results / "eval" / model_id / "metrics.json"))
        samples = read_samples(results / "eval" / model_id / "samples.jsonl")
        row.update(gold_breakdown(samples))
        paired = [(r["proxy"], baseline_samples[("id", r["prompt"])])
                  for r in samples if r["split"] == "id" and ("id", r["prompt"]) in baseline_samples]
        if paired:
            rates = reward_win_rate([m for m, _ in paired], [b for _, b in paired], n_boot=1000, seed=config.seed)
            row.update({f"rm_winrate_{k}": v for k, v in rates.items()})
        for scores in sorted((results / "bench").glob(f"*/{model_id}/judged/scores.json")):
            row.update(artifacts.read_json(scores))
        rows.append(row)
    return pd.DataFrame(rows)


def aggregate(frame: pd.DataFrame, reference_method: str) -> pd.DataFrame:
    """Mean and 95% CI per PPO method over seeds, and Welch differences from the reference method."""
    ppo = frame[frame.kind == "ppo"]
    numeric = [c for c in ppo.columns if c not in ("model", "kind", "method", "seed", "replicate")
               and pd.api.types.is_numeric_dtype(ppo[c])]
    out = []
    reference = ppo[ppo.method == reference_method]
    for method, group in ppo.groupby("method", sort=False):
        row = {"method": method, "seeds": len(group)}
        for column in numeric:
            values = group[column].dropna()
            n, mean = len(values), values.mean()
            half = t_critical(n - 1) * values.std(ddof=1) / math.sqrt(n) if n > 1 else math.nan
            row[column], row[f"{column}_ci"] = mean, half
            if method != reference_method and len(reference):
                diff, diff_half = welch_difference(values, reference[column].dropna())
                row[f"{column}_diff"], row[f"{column}_diff_ci"] = diff, diff_half
                row[f"{column}_significant"] = bool(abs(diff) > diff_half) if not math.isnan(diff_half) else False
        out.append(row)
    return pd.DataFrame(out)


def welch_difference(a: pd.Series, b: pd.Series) -> tuple[float, float]:
    if len(a) < 2 or len(b) < 2:
        return (a.mean() - b.mean() if len(a) and len(b) else math.nan), math.nan
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return a.mean() - b.mean(), 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return a.mean() - b.mean(), t_critical(df) * se


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def markdown_table(frame: pd.DataFrame, columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(fmt(row.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def render_markdown(frame: pd.DataFrame, agg: pd.DataFrame, reference_method: str, baseline: str) -> str:
    metrics = [c for c in HEADLINE if c in frame.columns]
    extra = [c for c in ("mtbench_score", "arena_winrate") if c in frame.columns]
    parts = ["# Summary", "",
             "gold = the task's gold reward (higher is better, 1 = perfect); proxy = normalised reward-model score; "
             "kl_ref / kl_sft = sequence KL to the model's own reference / to the first SFT; "
             f"rm_winrate = reward-model win rate against `{baseline}` on the same prompts; "
             "_id = in-distribution prompts, _ood = longer lists than any seen in training.", "",
             "## Every model", "", markdown_table(frame, ["model", *metrics, *extra]), ""]
    if len(agg):
        columns = ["method", "seeds"]
        for metric in [*metrics, *extra]:
            if metric in agg.columns:
                agg[f"{metric} (95% CI)"] = [
                    f"{fmt(m)} ± {fmt(h)}" for m, h in zip(agg[metric], agg.get(f"{metric}_ci", [math.nan] * len(agg)))]
                columns.append(f"{metric} (95% CI)")
        parts += ["## PPO methods over seeds (mean ± 95% t-interval)", "", markdown_table(agg, columns), ""]
        diff_rows = []
        for _, row in agg[agg.method != reference_method].iterrows():
            cells = [row["method"]]
            for metric in [*metrics, *extra]:
                if f"{metric}_diff" in row:
                    star = " *" if row.get(f"{metric}_significant") else ""
                    cells.append(f"{fmt(row[f'{metric}_diff'])} ± {fmt(row[f'{metric}_diff_ci'])}{star}")
            diff_rows.append(cells)
        if diff_rows:
            header = ["method", *[m for m in [*metrics, *extra] if f"{m}_diff" in agg.columns]]
            parts += [f"## Difference from `{reference_method}` (Welch 95% interval; * = excludes 0)", "",
                      "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *["| " + " | ".join(cells) + " |" for cells in diff_rows], ""]
    return "\n".join(parts)


def plot_curves(results: Path, frame: pd.DataFrame, path: Path) -> None:
    """Gold and proxy reward against KL (and KL against episodes), per method, mean over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    ppo = frame[frame.kind == "ppo"]
    colors = plt.get_cmap("tab20").colors
    for i, (method, group) in enumerate(ppo.groupby("method", sort=False)):
        curves = [pd.read_csv(results / model / "metrics.csv") for model in group.model]  # the id is the run's path
        mean = pd.concat(curves).groupby("update").mean(numeric_only=True)
        smooth = mean.rolling(10, min_periods=1).mean()  # rollout batches are noisy
        color = colors[i % len(colors)]
        axes[0].plot(smooth["kl"], smooth["gold"], color=color, label=method)
        axes[1].plot(smooth["kl"], smooth["proxy_score"], color=color, label=method)
        axes[2].plot(smooth["episodes"], smooth["kl"], color=color, label=method)
    labels = [("KL to reference (nats)", "gold reward"), ("KL to reference (nats)", "proxy reward (normalised)"),
              ("episodes", "KL to reference (nats)")]
    for ax, (xlabel, ylabel) in zip(axes, labels):
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("PPO rollout batches, mean over seeds (10-update moving average)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_frontier(frame: pd.DataFrame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("gold_id", "proxy_id")):
        for kind, marker in (("sft", "s"), ("soup", "D")):
            part = frame[frame.kind == kind]
            ax.scatter(part.kl_sft_id, part[metric], marker=marker, color="black", label=kind)
        palette = plt.get_cmap("tab20").colors  # enough distinct colours for a sweep plus ablations
        for i, (method, group) in enumerate(frame[frame.kind == "ppo"].groupby("method", sort=False)):
            ax.scatter(group.kl_sft_id, group[metric], label=method, alpha=0.8, color=palette[i % len(palette)])
        ax.set_xlabel("KL to the first SFT (nats)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Final models: reward against KL (one point per run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    config = parse(TablesConfig, argv)
    frame = collect_rows(config)
    agg = aggregate(frame, config.reference_method)
    with artifacts.atomic_dir(config.out) as tmp:
        frame.to_csv(tmp / "summary.csv", index=False)
        agg.to_csv(tmp / "methods.csv", index=False)
        (tmp / "summary.md").write_text(render_markdown(frame, agg, config.reference_method,
                                                        config.baseline or config.models[0]))
        plot_curves(Path(config.results), frame, tmp / "ppo_curves.png")
        plot_frontier(frame, tmp / "frontier.png")
        artifacts.write_metadata(tmp, "tables", config, config.seed)
    print((Path(config.out) / "summary.md").read_text())


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
