"""The reward-model section of the tables: each reward model's held-out accuracy and the gold reached with it.

A PPO run names its reward model in its own metadata (salsa_meta.json, config.reward_model), so the
attribution is read from the run, not from the config the tables were called with. Accuracy is over the
held-out preference pairs (prefs_eval) with a Wilson interval; gold is the mean over the runs trained
with that reward model, per method, with a t-interval over seeds. Two reward models score the same
held-out pairs, so they are compared with McNemar's test on the pairs (`pair_tests`), not by whether
their intervals overlap; that needs the per-pair scores, reward_eval.json eval.correct.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from salsa import artifacts, stats


def reward_of_run(results: Path, model_id: str) -> str | None:
    """The reward model a PPO run was trained with, as a path under results/ (e.g. 'rep1/reward_model');
    None for a run trained on the gold reward itself (--oracle-gold), which only loads it."""
    meta = artifacts.read_json(results / model_id / "salsa_meta.json")
    if meta["config"].get("oracle_gold"):
        return None
    path = Path(meta["config"]["reward_model"])
    try:
        return path.relative_to(results).as_posix()
    except ValueError:  # trained against a reward model outside this experiment
        return path.as_posix()


def accuracy_rows(results: Path, reward_ids: list[str]) -> pd.DataFrame:
    rows = []
    for reward in reward_ids:
        held_out = artifacts.read_json(results / reward / "reward_eval.json")["eval"]
        pairs = int(held_out["pairs"])
        lower, upper = stats.wilson_interval(held_out["accuracy"] * pairs, pairs)
        rows.append({"reward": reward, "eval_accuracy": held_out["accuracy"], "pairs": pairs,
                     "accuracy_lower": lower, "accuracy_upper": upper})
    return pd.DataFrame(rows, columns=["reward", "eval_accuracy", "pairs", "accuracy_lower", "accuracy_upper"])


PER_PAIR = "correct"  # reward_eval.json eval.correct: per held-out pair 1 / 0.5 (tie) / 0, prefs_eval order


def pair_tests(results: Path, reward_ids: list[str]) -> pd.DataFrame:
    """Every two reward models: accuracy difference on the shared held-out pairs, exact McNemar p-value.
    A model whose reward_eval.json has no per-pair scores gets a row that says so instead of a test."""
    scores = {r: artifacts.read_json(results / r / "reward_eval.json")["eval"].get(PER_PAIR) for r in reward_ids}
    rows = []
    for a, b in combinations(reward_ids, 2):
        if scores[a] is None or scores[b] is None:
            rows.append({"reward": a, "vs": b, "note": f"no per-pair scores (reward_eval.json eval.{PER_PAIR})"})
        elif len(scores[a]) != len(scores[b]):
            raise artifacts.StageError(f"{results / a / 'reward_eval.json'}: eval.{PER_PAIR} has {len(scores[a])} "
                                       f"pairs, {b} has {len(scores[b])}: not the same held-out pairs")
        else:
            rows.append({"reward": a, "vs": b, **stats.mcnemar(scores[a], scores[b]), "note": ""})
    return pd.DataFrame(rows, columns=["reward", "vs", "diff", "diff_ci", "only_a", "only_b", "items", "p", "test",
                                       "note"])


def soup_ingredients(results: Path, reward_id: str) -> list[str] | None:
    """A reward soup's ingredients as paths under results/ (its salsa_meta.json, which the soup code writes
    under stage "soup", config.inputs); None for a trained reward model."""
    meta = artifacts.read_json(results / reward_id / "salsa_meta.json")
    if meta.get("stage") != "soup" or "inputs" not in meta.get("config", {}):
        return None
    found = []
    for path in meta["config"]["inputs"]:
        try:
            found.append(Path(path).relative_to(results).as_posix())
        except ValueError:
            found.append(Path(path).as_posix())
    return found


def ensemble_correct(results: Path, ingredients: list[str]) -> list[float] | None:
    """WARM's other baseline, the prediction ensemble: per held-out pair, the mean of the ingredients'
    normalised margins (each model's margin over its reward_normalization.json std, the scale PPO sees),
    scored 1 / 0.5 / 0 as a reward model's pairs are. None when an ingredient lacks per-pair margins."""
    total = None
    for reward in ingredients:
        margin = artifacts.read_json(results / reward / "reward_eval.json")["eval"].get("margin")
        if margin is None:
            return None
        std = float(artifacts.read_json(results / reward / "reward_normalization.json")["std"])
        scaled = np.asarray(margin, dtype=float) / std
        if total is not None and len(scaled) != len(total):
            raise artifacts.StageError(f"{results / reward / 'reward_eval.json'}: eval.margin has {len(scaled)} "
                                       f"pairs, the other ingredients {len(total)}: not the same held-out pairs")
        total = scaled if total is None else total + scaled
    mean = total / len(ingredients)
    return ((mean > 0) + 0.5 * (mean == 0)).astype(float).tolist()


def ensemble_tests(results: Path, reward_ids: list[str]) -> pd.DataFrame:
    """Each reward soup against the prediction ensemble of its own ingredients, McNemar on the shared pairs."""
    rows = []
    for reward in reward_ids:
        ingredients = soup_ingredients(results, reward)
        if not ingredients:
            continue
        soup = artifacts.read_json(results / reward / "reward_eval.json")["eval"].get(PER_PAIR)
        ensemble = ensemble_correct(results, ingredients)
        if soup is None or ensemble is None:
            rows.append({"reward": reward, "ingredients": len(ingredients), "note": "no per-pair scores"})
            continue
        rows.append({"reward": reward, "ingredients": len(ingredients), "soup_accuracy": float(np.mean(soup)),
                     "ensemble_accuracy": float(np.mean(ensemble)), **stats.mcnemar(soup, ensemble), "note": ""})
    return pd.DataFrame(rows)


def render_ensemble_tests(table: pd.DataFrame, fmt) -> list[str]:
    if table.empty:
        return []
    lines = ["### Reward soups against their ingredients' prediction ensemble (McNemar)", "",
             "The ensemble averages the ingredients' normalised rewards per pair (WARM's other baseline: it costs "
             "one forward per ingredient at PPO time, the soup one). Difference = soup - ensemble with its paired "
             "95% interval (descriptive).", "",
             "| reward soup | ingredients | soup | ensemble | difference | p |", "|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        if row.note:
            lines.append(f"| {row.reward} | {row.ingredients} | {row.note} | – | – | – |")
        else:
            lines.append(f"| {row.reward} | {row.ingredients} | {fmt(row.soup_accuracy)} | {fmt(row.ensemble_accuracy)} "
                         f"| {fmt(row['diff'])} ± {fmt(row.diff_ci)} | {row.p:.3g} |")
    return lines + [""]


def render_pair_tests(table: pd.DataFrame, fmt) -> list[str]:
    if table.empty:
        return []
    lines = ["### Reward models against each other (same held-out pairs, McNemar)", "",
             "Accuracy difference with its paired 95% interval; only_a / only_b = pairs only the first / only the "
             "second ranks right; p = exact McNemar (descriptive: not a pre-registered endpoint).", "",
             "| reward model | vs | difference | only_a | only_b | p |", "|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        if row.note:
            lines.append(f"| {row.reward} | {row.vs} | {row.note} | – | – | – |")
        else:
            lines.append(f"| {row.reward} | {row.vs} | {fmt(row['diff'])} ± {fmt(row.diff_ci)} | {fmt(row.only_a, 1)} | "
                         f"{fmt(row.only_b, 1)} | {row.p:.3g} |")
    return lines + [""]


def reward_models_frame(results: Path, reward_ids: list[str], frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (reward model, PPO method trained with it); reward models no run used get one row alone.
    Without reward models (tables run by hand without --reward-models) the section is left out."""
    if not reward_ids:
        return pd.DataFrame()
    accuracy = accuracy_rows(results, reward_ids)
    ppo = frame[frame.kind == "ppo"]
    runs = pd.DataFrame({"reward": [reward_of_run(results, m) for m in ppo.model], "method": list(ppo.method),
                         "gold_id": list(ppo.get("gold_id", pd.Series(float("nan"), index=ppo.index)))})
    runs = runs[runs.reward.notna()]  # trained on gold: no reward model to credit
    rows = []
    for _, model in accuracy.iterrows():
        used = runs[runs.reward == model.reward]
        if used.empty:
            rows.append({**model.to_dict(), "method": "", "runs": 0})
        for method, group in used.groupby("method", sort=False):
            gold = stats.mean_interval(group.gold_id)
            rows.append({**model.to_dict(), "method": method, "runs": len(group),
                         "gold_id": gold.estimate, "gold_id_ci": gold.half_width})
    unknown = sorted(set(runs.reward) - set(accuracy.reward))
    if unknown:
        raise artifacts.StageError(f"PPO runs were trained with reward models not passed to --reward-models: {unknown}")
    return pd.DataFrame(rows)


def render_reward_models(table: pd.DataFrame, fmt) -> list[str]:
    if table.empty:
        return []
    lines = ["## Reward models", "",
             "Held-out accuracy on the preference pairs no reward model trained on (Wilson 95% interval), and the "
             "gold of the PPO runs trained with each (mean ± t-interval over those runs; – = no run used it).", "",
             "| reward model | accuracy [95% CI] | pairs | method | runs | gold_id |", "|---|---|---|---|---|---|"]
    for _, row in table.iterrows():
        gold = f"{fmt(row.get('gold_id'))} ± {fmt(row.get('gold_id_ci'))}" if row.runs else "–"
        lines.append(f"| {row.reward} | {fmt(row.eval_accuracy)} [{fmt(row.accuracy_lower)}, "
                     f"{fmt(row.accuracy_upper)}] | {row.pairs} | {row.method or '–'} | {row.runs} | {gold} |")
    return lines + [""]
