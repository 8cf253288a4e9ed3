"""The tables stage's figures: PPO training curves and the final reward-vs-KL frontier."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


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


def plot_frontier(frame: pd.DataFrame, path: Path, curves: dict | None = None) -> None:
    """One point per final model (PPO and DPO runs, SFTs, soups); `curves` (family -> (KL grid, fitted gold)) are the matched-KL fits."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, ("gold_id", "proxy_id")):
        for kind, marker in (("sft", "s"), ("soup", "D")):
            part = frame[frame.kind == kind]
            ax.scatter(part.kl_sft_id, part[metric], marker=marker, color="black", label=kind)
        palette = plt.get_cmap("tab20").colors  # enough distinct colours for a sweep plus ablations
        trained = frame[frame.kind.isin(["ppo", "dpo"])]  # DPO runs (method dpo/<name>) as crosses beside PPO's
        for i, (method, group) in enumerate(trained.groupby("method", sort=False)):
            ax.scatter(group.kl_sft_id, group[metric], label=method, alpha=0.8, color=palette[i % len(palette)],
                       marker="x" if method.startswith("dpo/") else "o")
        if metric == "gold_id":
            for family, (grid, fitted) in (curves or {}).items():
                ax.plot(grid, fitted, linestyle="--", linewidth=1, label=f"{family} fit")
        ax.set_xlabel("KL to the first SFT (nats)")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("Final models: reward against KL (one point per run)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
