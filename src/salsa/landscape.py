"""Stage `landscape`: gold (where the task has one), proxy reward and KL along the line through two SFT models.

SALSA's premise is that a soup of two fine-tunes sits in a better region
than either ingredient. This stage makes that visible: for each alpha it
builds the model (1 - alpha) * SFT1 + alpha * SFT2 with the soup stage's own
averaging (negative weights allowed here: alpha < 0 and alpha > 1 are the
line beyond the ingredients), samples it on held-out in-distribution
prompts and measures the gold reward, the normalised proxy reward and the
sequence KL to each ingredient. alpha = 0 and 1 are the ingredients, 0.5 the
uniform soup. Data without a gold reward (Hub data) compare the soup with the
ingredients by the proxy reward instead, and say so in every output.

Every alpha is sampled with the same seed on the same prompts (common random
numbers), and the soup is compared with each ingredient by a paired bootstrap
over prompts. Those intervals cover prompt and sampling noise only, not the
variance of training the ingredients again: that is what `--labels`
(one pair per outer replicate) shows.

Writes landscape.csv, landscape.md and landscape.png.
"""

from __future__ import annotations

import dataclasses
import random
import tempfile
from pathlib import Path

import torch

from salsa import artifacts
from salsa.args import arg, parse

SOUP_ALPHA = 0.5


@dataclasses.dataclass
class LandscapeConfig:
    """Evaluate models on the line SFT1 -> SFT2 (the uniform soup at alpha 0.5)."""

    ingredients: list[str] = arg(help="model directories in pairs: SFT1 SFT2 [SFT1' SFT2' ...], one pair per label")
    reward_models: list[str] = arg(help="reward-model directory per pair")
    data: str = arg(help="prepared data directory (eval_id/, task.json)")
    out: str = arg(help="output directory: landscape.csv, landscape.md, landscape.png")
    labels: list[str] = arg([], help="name per pair, e.g. rep1 rep2 (default: pair1, pair2, ...)")
    alphas: list[float] = arg([-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5],
                              help="weights of SFT2 on the line (must include 0, 0.5 and 1)")
    max_prompts: int = arg(256, help="evaluate on the first N eval_id prompts (0 = all)")
    seed: int = arg(0, help="sampling seed, the same at every alpha; and the bootstrap seed")
    max_new_tokens: int = arg(16, help="response length limit")
    temperature: float = arg(1.0, help="sampling temperature")
    batch_size: int = arg(128, help="prompts per forward pass")
    n_boot: int = arg(2000, help="bootstrap resamples over prompts for the paired soup - ingredient intervals")
    dtype: str = arg("float32", help="weights dtype")
    threads: int = arg(0, help="torch CPU threads (0 = torch default)")

    def validate(self) -> None:
        if not self.ingredients or len(self.ingredients) % 2:
            raise ValueError("ingredients: give the models in pairs (SFT1 SFT2 per replicate)")
        pairs = len(self.ingredients) // 2
        if len(self.reward_models) != pairs:
            raise ValueError(f"reward_models: {len(self.reward_models)} given for {pairs} pair(s)")
        if self.labels and len(self.labels) != pairs:
            raise ValueError(f"labels: {len(self.labels)} given for {pairs} pair(s)")
        missing = [a for a in (0.0, SOUP_ALPHA, 1.0) if a not in self.alphas]
        if missing:
            raise ValueError(f"alphas: must include 0, 0.5 and 1 (the ingredients and the soup); missing {missing}")


def paired_interval(a: list[float], b: list[float], n_boot: int, seed: int,
                    level: float = 0.95) -> tuple[float, float, float]:
    """Mean of a - b over prompts and its percentile-bootstrap interval at `level` (prompts resampled)."""
    diffs = [x - y for x, y in zip(a, b)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    tail = (1 - level) / 2
    return sum(diffs) / n, means[int(tail * n_boot)], means[min(n_boot - 1, int((1 - tail) * n_boot))]


def parameter_distance(a: Path, b: Path) -> float:
    """L2 norm of the difference of two checkpoints' floating-point tensors."""
    from salsa.soup import read_tensor, read_tensor_table

    table_a, table_b = read_tensor_table(a), read_tensor_table(b)
    total = 0.0
    for name, info in table_a.items():
        x = read_tensor(info)
        if x.is_floating_point():
            total += float((x.double() - read_tensor(table_b[name]).double()).square().sum())
    return total ** 0.5


def evaluate_line(config: LandscapeConfig, first: Path, second: Path, reward_dir: str, prompts: list[str],
                  work: Path) -> list[dict]:
    """One record per alpha: metrics and the per-prompt scores (gold, or the proxy where there is no gold)."""
    from salsa.evaluate import evaluate_split
    from salsa.modeling import default_device, load_causal_lm, load_reward_model, load_tokenizer
    from salsa.ppo import gold_judge
    from salsa.reward import load_normalization
    from salsa.soup import average_checkpoints

    device = default_device()
    tokenizer = load_tokenizer(str(first))
    reward_model = load_reward_model(reward_dir, config.dtype).to(device).eval()
    norm = load_normalization(reward_dir)
    ends = {"sft1": load_causal_lm(str(first), config.dtype).to(device).eval(),
            "sft2": load_causal_lm(str(second), config.dtype).to(device).eval()}
    gold = gold_judge(config.data)
    rows = []
    for alpha in config.alphas:
        point = work / f"alpha{alpha}"
        average_checkpoints([first, second], [1.0 - alpha, alpha], point, max_shard_bytes=10**12,
                            allow_extrapolation=True)
        model = load_causal_lm(str(point), config.dtype).to(device).eval()
        generator = torch.Generator().manual_seed(config.seed)  # the same draws at every alpha
        metrics, records = evaluate_split(prompts, ["all"] * len(prompts), model, tokenizer, reward_model, norm,
                                          ends, gold, config, generator)
        rows.append({"alpha": alpha, "gold": metrics["gold"], "proxy": metrics["proxy"],
                     "kl_sft1": sum(r["kl_sft1"] for r in records) / len(records),
                     "kl_sft2": sum(r["kl_sft2"] for r in records) / len(records),
                     "length": metrics["length"], "empty": metrics["empty"], "metric": "gold" if gold else "proxy",
                     "scores": [r["gold"] if gold else r["proxy"] for r in records]})
        print(f"landscape: alpha {alpha:+.2f}: gold {metrics['gold']:.3f}, proxy {metrics['proxy']:.3f}, "
              f"KL to SFT1 {rows[-1]['kl_sft1']:.2f}, to SFT2 {rows[-1]['kl_sft2']:.2f}")
        del model
    return rows


def soup_comparison(rows: list[dict], n_boot: int, seed: int) -> dict:
    by_alpha = {r["alpha"]: r["scores"] for r in rows}
    out = {}
    for name, alpha in (("sft1", 0.0), ("sft2", 1.0)):
        mean, lo, hi = paired_interval(by_alpha[SOUP_ALPHA], by_alpha[alpha], n_boot, seed)
        out[f"soup_minus_{name}"], out[f"soup_minus_{name}_lo"], out[f"soup_minus_{name}_hi"] = mean, lo, hi
    best = max((0.0, 1.0), key=lambda a: sum(by_alpha[a]))
    mean, lo, hi = paired_interval(by_alpha[SOUP_ALPHA], by_alpha[best], n_boot, seed)
    out.update(soup_minus_best=mean, soup_minus_best_lo=lo, soup_minus_best_hi=hi)
    if lo > 0:
        out["verdict"] = "above both ingredients"
    elif hi < 0:
        out["verdict"] = "below the better ingredient"
    else:
        out["verdict"] = "not separated from the better ingredient"
    return out


def fmt(value: float) -> str:
    return f"{value:.3f}"


def render(frame, comparisons: dict, distances: dict, config: LandscapeConfig) -> str:
    lines = ["# Interpolation landscape", "",
             f"Models (1 - α)·SFT1 + α·SFT2 (α = 0: SFT1, 1: SFT2, 0.5: the uniform soup), sampled at temperature "
             f"{config.temperature} on {frame.n_prompts.iloc[0]} eval_id prompts with the same seed at every α. "
             f"± = 95% prompt-bootstrap half-width of {frame.metric.iloc[0]}; KL = sequence KL on the model's own "
             "samples (nats)." + ("" if frame.metric.iloc[0] == "gold" else " No gold reward in these data: "
                                  "the soup is compared by the proxy reward, the reward model it is trained against."),
             ""]
    for label, group in frame.groupby("label", sort=False):
        d, c = distances[label], comparisons[label]
        lines += [f"## {label}", "",
                  f"Ingredients: parameter L2 distance {fmt(d['l2'])}; KL(SFT1‖SFT2) {fmt(d['kl_12'])}, "
                  f"KL(SFT2‖SFT1) {fmt(d['kl_21'])} nats.", "",
                  f"| α | gold | ± ({group.metric.iloc[0]}) | proxy | KL to SFT1 | KL to SFT2 | length | empty |",
                  "|---|---|---|---|---|---|---|---|"]
        for _, row in group.iterrows():
            lines.append(f"| {row.alpha:g} | {fmt(row.gold)} | {fmt(row.score_ci)} | {fmt(row.proxy)} | "
                         f"{fmt(row.kl_sft1)} | {fmt(row.kl_sft2)} | {fmt(row.length)} | {fmt(row.empty)} |")
        lines += ["", f"Soup (α = 0.5) minus each ingredient, {group.metric.iloc[0]}, paired over prompts "
                  "(95% bootstrap):", "",
                  f"* soup − SFT1: {fmt(c['soup_minus_sft1'])} [{fmt(c['soup_minus_sft1_lo'])}, "
                  f"{fmt(c['soup_minus_sft1_hi'])}]",
                  f"* soup − SFT2: {fmt(c['soup_minus_sft2'])} [{fmt(c['soup_minus_sft2_lo'])}, "
                  f"{fmt(c['soup_minus_sft2_hi'])}]",
                  f"* soup − better ingredient: {fmt(c['soup_minus_best'])} [{fmt(c['soup_minus_best_lo'])}, "
                  f"{fmt(c['soup_minus_best_hi'])}] → the soup is **{c['verdict']}**", ""]
    return "\n".join(lines)


def plot(frame, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for i, (label, group) in enumerate(frame.groupby("label", sort=False)):
        color = plt.get_cmap("tab10").colors[i % 10]
        if group.metric.iloc[0] == "gold":
            axes[0].errorbar(group.alpha, group.gold, yerr=group.score_ci, color=color, marker="o", label=label,
                             capsize=2)
            axes[1].plot(group.alpha, group.proxy, color=color, marker="o", label=label)
        else:   # no gold: the interval belongs to the proxy
            axes[1].errorbar(group.alpha, group.proxy, yerr=group.score_ci, color=color, marker="o", label=label,
                             capsize=2)
        axes[2].plot(group.alpha, group.kl_sft1, color=color, marker="o", label=f"{label}: KL to SFT1")
        axes[2].plot(group.alpha, group.kl_sft2, color=color, marker="s", linestyle="--",
                     label=f"{label}: KL to SFT2")
    for ax, ylabel in zip(axes, ("gold reward (eval_id)", "proxy reward (normalised)", "KL (nats)")):
        ax.axvspan(0, 1, color="grey", alpha=0.08)
        ax.axvline(SOUP_ALPHA, color="black", linewidth=0.8, linestyle=":")
        ax.set_xlabel("α  (0 = SFT1, 0.5 = soup, 1 = SFT2)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    if not axes[0].lines:
        axes[0].text(0.5, 0.5, "no gold reward in these data", transform=axes[0].transAxes, ha="center")
    fig.suptitle("Along the line SFT1 → SFT2 (shaded: between the ingredients)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    import pandas as pd
    from datasets import load_from_disk

    config = parse(LandscapeConfig, argv)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    path = f"{config.data}/eval_id"
    try:
        prompts = list(load_from_disk(path)["prompt"])
    except FileNotFoundError:
        raise artifacts.StageError(f"{path}: evaluation split not found") from None
    prompts = prompts[:config.max_prompts] if config.max_prompts else prompts
    pairs = len(config.ingredients) // 2
    labels = config.labels or [f"pair{i + 1}" for i in range(pairs)]
    records, comparisons, distances = [], {}, {}
    Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".landscape-", dir=Path(config.out).parent) as work:
        for i, label in enumerate(labels):
            first, second = Path(config.ingredients[2 * i]), Path(config.ingredients[2 * i + 1])
            rows = evaluate_line(config, first, second, config.reward_models[i], prompts, Path(work) / label)
            comparisons[label] = soup_comparison(rows, config.n_boot, config.seed)
            by_alpha = {r["alpha"]: r for r in rows}
            distances[label] = {"l2": parameter_distance(first, second), "kl_12": by_alpha[0.0]["kl_sft2"],
                                "kl_21": by_alpha[1.0]["kl_sft1"]}
            for row in rows:
                scores = row.pop("scores")
                _, lo, hi = paired_interval(scores, [0.0] * len(scores), config.n_boot, config.seed)
                records.append({"label": label, **row, "score_ci": (hi - lo) / 2, "n_prompts": len(scores)})
    frame = pd.DataFrame(records)
    with artifacts.atomic_dir(config.out) as tmp:
        frame.to_csv(tmp / "landscape.csv", index=False)
        summary = pd.DataFrame([{"label": k, **comparisons[k], **{f"ingredients_{n}": v
                                                                  for n, v in distances[k].items()}}
                                for k in labels])
        summary.to_csv(tmp / "soup_vs_ingredients.csv", index=False)
        (tmp / "landscape.md").write_text(render(frame, comparisons, distances, config))
        plot(frame, tmp / "landscape.png")
        artifacts.write_metadata(tmp, "landscape", config, config.seed)
    print((Path(config.out) / "landscape.md").read_text())


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
