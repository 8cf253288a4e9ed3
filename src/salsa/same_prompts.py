"""Two trained models compared on the same evaluation prompts: gold differences with a paired bootstrap.

Pairs: each soup against each SFT and each SFT against the first (within an outer replicate); each
PPO or DPO run against the model it started from (read from the run's own metadata), so a single run
says whether training moved gold beyond evaluation noise; and each PPO or DPO run against its partner
method's run of the same seed and replicate (SALSA seed 1 against PPO seed 1), the only interval a
one-seed-per-method run has. One run per model: the interval is over prompts, not over retraining.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from salsa import artifacts, stats


def read_samples(path: Path) -> list[dict]:
    with open(path) as handle:
        return [json.loads(line) for line in handle]


def ingredient_pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    pairs = []
    replicates = frame.replicate if "replicate" in frame.columns else pd.Series("1", index=frame.index)
    for _, group in frame.groupby(replicates, sort=True):  # within an outer replicate only
        sfts, soups = list(group.model[group.kind == "sft"]), list(group.model[group.kind == "soup"])
        pairs += [(soup, sft) for soup in soups for sft in sfts] + [(sft, sfts[0]) for sft in sfts[1:]]
    return pairs


def start_of_run(results: Path, model_id: str) -> str:
    """The model a PPO or DPO run started from, as a model id under results/ ('' when outside them)."""
    start = Path(artifacts.read_json(results / model_id / artifacts.METADATA_FILE)["config"]["policy"])
    if start.name == "model":  # a trained run's policy directory
        start = start.parent
    try:
        return start.relative_to(results).as_posix()
    except ValueError:
        return ""


def start_pairs(results: Path, frame: pd.DataFrame) -> list[tuple[str, str]]:
    evaluated = set(frame.model)
    runs = frame.model[frame.kind.isin(["ppo", "dpo"])]
    return [(run, start) for run in runs if (start := start_of_run(results, run)) in evaluated]


def partner_pairs(frame: pd.DataFrame, partners: dict[str, str]) -> list[tuple[str, str]]:
    """(run, the partner method's run with the same seed and replicate) for every PPO or DPO run whose method
    has a partner (`partners`: method -> method, as the method comparisons pair them)."""
    ppo = frame[frame.kind.isin(["ppo", "dpo"])]
    replicates = ppo.replicate.astype(str) if "replicate" in ppo.columns else pd.Series("1", index=ppo.index)
    run_of = {(method, str(seed), rep): model
              for model, method, seed, rep in zip(ppo.model, ppo.method, ppo.seed.astype(str), replicates)}
    return [(model, run_of[(partners[method], seed, rep)]) for (method, seed, rep), model in run_of.items()
            if method in partners and (partners[method], seed, rep) in run_of]


def gold_differences(results: Path, pairs: list[tuple[str, str]], n_boot: int, seed: int) -> pd.DataFrame:
    """model - vs in gold per split, on the prompts both answered (percentile bootstrap over prompts)."""
    gold = {m: {(r["split"], r["prompt"]): r.get("gold") for r in read_samples(results / "eval" / m / "samples.jsonl")}
            for m in {m for pair in pairs for m in pair}}
    rows = []
    for model, other in pairs:
        for split in ("id", "ood"):
            keys = [k for k in gold[model] if k[0] == split and gold[model][k] is not None
                    and gold[other].get(k) is not None]
            if not keys:
                continue
            diff, lower, upper = stats.bootstrap_mean([gold[model][k] - gold[other][k] for k in keys], n_boot, seed)
            rows.append({"model": model, "vs": other, "metric": f"gold_{split}", "prompts": len(keys),
                         "diff": diff, "lower": lower, "upper": upper, "excludes_zero": bool(lower > 0 or upper < 0)})
    return pd.DataFrame(rows)


def single_model_differences(results: Path, frame: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Soups against SFTs and SFTs against the first: single_models.csv."""
    return gold_differences(results, ingredient_pairs(frame), n_boot, seed)


def run_start_differences(results: Path, frame: pd.DataFrame, n_boot: int, seed: int) -> pd.DataFrame:
    """Each trained run against its starting model: runs_vs_start.csv."""
    return gold_differences(results, start_pairs(results, frame), n_boot, seed)


def run_partner_differences(results: Path, frame: pd.DataFrame, partners: dict[str, str], n_boot: int,
                            seed: int) -> pd.DataFrame:
    """Each run against its partner method's run of the same seed: runs_vs_partner.csv."""
    return gold_differences(results, partner_pairs(frame, partners), n_boot, seed)


def render(frame: pd.DataFrame, heading: str, note: str, fmt) -> list[str]:
    if frame is None or frame.empty:
        return []
    lines = [heading, "", note, "", "| model | vs | metric | prompts | interval |", "|---|---|---|---|---|"]
    for _, row in frame.iterrows():
        star = " *" if row.excludes_zero else ""
        lines.append(f"| {row.model} | {row.vs} | {row.metric} | {row.prompts} | "
                     f"{fmt(row['diff'])} [{fmt(row.lower)}, {fmt(row.upper)}]{star} |")
    return lines + [""]
