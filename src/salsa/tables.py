"""Stage `tables`: one row per model, PPO methods aggregated over seeds, comparisons, plots.

Writes summary.csv (every model, with prompt-level percentile bootstrap intervals as
<metric>_ci_lower/_ci_upper and their half-width <metric>_ci), methods.csv (every PPO method over seeds),
endpoints.csv (the pre-registered primary and secondary tests, salsa.preregistration), comparisons.csv
(each method against the reference method at the same sweep value, every metric, unadjusted and
descriptive), matched_kl.csv (gold at matched KL on both KL axes, salsa.matched_kl), single_models.csv,
runs_vs_start.csv and runs_vs_partner.csv (salsa.same_prompts), reward_models.csv and
reward_model_pairs.csv (each reward model's held-out accuracy, the gold of the runs trained with it, and
McNemar tests between reward models on the shared pairs), summary.md (opening with the primary result),
ppo_curves.png and frontier.png.

The statistics live in salsa.stats and salsa.matched_kl; the summary's sections in salsa.summary_sections.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from salsa import artifacts, matched_kl, preregistration, same_prompts, stats
from salsa.summary_sections import bracket, fmt, markdown_table, pm, render_comparisons, render_matched, render_power
from salsa.reward_report import (ensemble_tests, pair_tests, render_ensemble_tests, render_pair_tests,
                                 render_reward_models, reward_models_frame)
from salsa.same_prompts import read_samples
from salsa.plots import plot_curves, plot_frontier
from salsa.args import arg, parse

HEADLINE = ["gold_id", "gold_ood", "proxy_id", "kl_ref_id", "kl_sft_id", "length_id", "empty_id",
            "rm_winrate_hard", "rm_winrate_soft"]
# per-prompt fields of eval/<model>/samples.jsonl that the tables bootstrap (metric = <field>_<split>)
SAMPLE_FIELDS = ("gold", "proxy", "length", "kl_ref", "kl_sft")
RUN_KEYS = ("model", "kind", "method", "seed", "replicate")


@dataclasses.dataclass
class TablesConfig:
    """Collect evaluation results into tables and plots."""

    results: str = arg(help="experiment results directory (results/<experiment>)")
    models: list[str] = arg(help="model ids, e.g. sft/seed1 soup/uniform ppo/salsa/seed1")
    out: str = arg(help="output directory for the tables and plots")
    baseline: str = arg("", help="model id the reward win rates compare against (default: first model)")
    reference_method: str = arg("ppo", help="PPO method the others are compared with")
    seed: int = arg(0, help="bootstrap seed (win rates, single-model intervals, matched KL)")
    n_boot: int = arg(1000, help="bootstrap resamples")
    pairs: list[str] = arg([], help="method:vs pairs that replace a method's default partner, e.g. "
                           "salsa_seedonly:ppo_seedonly")
    contrasts: list[str] = arg([], help="a:b:c:d -> (a - b) - (c - d), e.g. salsa:ppo:salsa_seedonly:ppo_seedonly")
    reward_models: list[str] = arg([], help="reward-model directories under --results (reward_model, "
                                   "rep1/reward_model, reward/seed2, reward_soup/uniform): accuracy and gold per model")
    primary: str = arg("gold_id:salsa:ppo", help="the pre-registered primary endpoint, metric:method:vs[:at] "
                       "(salsa.preregistration): two-sided at --alpha, unadjusted")
    secondary: list[str] = arg([], help="the secondary endpoints, Holm-adjusted over this family only")
    alpha: float = arg(0.05, help="significance level of the primary and the secondary family")


def split_replicate(model_id: str) -> tuple[str, str]:
    """'rep2/ppo/salsa/seed1' -> ('2', 'ppo/salsa/seed1'); ids without the prefix -> ('', id) (the path prefix;
    parse_model_id reports such ids as replicate 1)."""
    head, _, rest = model_id.partition("/")
    if rest and head.startswith("rep") and head[3:].isdigit():
        return head[3:], rest
    return "", model_id


def parse_model_id(model_id: str) -> dict:
    """kind, method, seed and replicate of a model id; an outer replicate is a leading rep<R>/ (default: 1)."""
    parts = model_id.split("/")
    replicate = "1"
    if parts[0].startswith("rep") and parts[0][3:].isdigit() and len(parts) > 1:
        replicate, parts = parts[0][3:], parts[1:]
    return {**_parse_parts(parts, model_id), "replicate": replicate}


def _parse_parts(parts: list[str], model_id: str) -> dict:
    if parts[0] == "ppo" and len(parts) == 3:
        return {"kind": "ppo", "method": parts[1], "seed": parts[2].removeprefix("seed")}
    if parts[0] == "dpo" and len(parts) == 3:  # aggregated beside the PPO methods, named apart from them
        return {"kind": "dpo", "method": f"dpo/{parts[1]}", "seed": parts[2].removeprefix("seed")}
    if parts[0] in ("sft", "soup") and len(parts) == 2:
        return {"kind": parts[0], "method": parts[1], "seed": parts[1].removeprefix("seed")
                if parts[1].startswith("seed") else ""}
    raise artifacts.StageError(f"model id {model_id!r}: expected [rep<r>/]sft/<name>, [rep<r>/]soup/<name>, "
                               "[rep<r>/]ppo/<method>/seed<N> or dpo/<method>/seed<N>")


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
    from salsa.benchmarks.win_rate import reward_win_rate

    results = Path(config.results)
    baseline = split_replicate(config.baseline or config.models[0])[1]
    baselines: dict[str, dict] = {}  # per replicate: each model against its own replicate's baseline
    rows = []
    for model_id in config.models:
        row = {"model": model_id, **parse_model_id(model_id)}
        prefix = split_replicate(model_id)[0]
        if prefix not in baselines:
            own = f"rep{prefix}/{baseline}" if prefix else baseline
            baselines[prefix] = {(r["split"], r["prompt"]): r["proxy"]
                                 for r in read_samples(results / "eval" / own / "samples.jsonl")}
        baseline_samples = baselines[prefix]
        row.update(artifacts.read_json(results / "eval" / model_id / "metrics.json"))
        samples = read_samples(results / "eval" / model_id / "samples.jsonl")
        row.update(prompt_intervals(samples, config.n_boot, config.seed))
        row.update(gold_breakdown(samples))
        paired = [(r["proxy"], baseline_samples[("id", r["prompt"])]) for r in samples
                  if r["split"] == "id" and ("id", r["prompt"]) in baseline_samples]
        if paired:
            rates = reward_win_rate([m for m, _ in paired], [b for _, b in paired], n_boot=1000, seed=config.seed)
            row.update({f"rm_winrate_{k}": v for k, v in rates.items()})
        row.update(benchmark_columns(results, model_id))
        rows.append(row)
    return pd.DataFrame(rows)


def benchmark_columns(results: Path, model_id: str) -> dict:
    """Every benchmark's scores.json, keys prefixed by the benchmark, so two benchmarks never share a column.

    mtbench_score of mt_bench -> mt_bench_score, of embedded_mt -> embedded_mt_score; arena_winrate of
    arena_hard_v0.1 -> arena_hard_v0.1_winrate; other keys are prefixed whole: embedded_arena_judge_failures.
    judge_failures sums the failed verdicts over the model's benchmarks.
    """
    columns: dict = {}
    for path in sorted((results / "bench").glob(f"*/{model_id}/judged/scores.json")):
        benchmark = path.relative_to(results / "bench").parts[0]
        for key, value in artifacts.read_json(path).items():
            columns[f"{benchmark}_{key.removeprefix('mtbench_').removeprefix('arena_')}"] = value
        columns["judge_failures"] = columns.get("judge_failures", 0) + columns.get(f"{benchmark}_judge_failures", 0)
    return columns


def benchmark_headline(columns) -> list[str]:
    """The one score column of each benchmark: <single-grading>_score, <pairwise>_winrate."""
    from salsa.benchmarks import BENCHMARKS, PAIRWISE

    names = [f"{b}_{'winrate' if b in PAIRWISE else 'score'}" for b in BENCHMARKS]
    return [c for c in names if c in columns]


def prompt_intervals(samples: list[dict], n_boot: int, seed: int) -> dict:
    """<field>_<split>_ci_lower / _ci_upper: the prompt-level percentile bootstrap interval of the mean (seeded);
    <field>_<split>_ci: its half-width (for error bars; a percentile interval need not be symmetric)."""
    out = {}
    for split in sorted({r["split"] for r in samples}):
        rows = [r for r in samples if r["split"] == split]
        fields = {f: [r.get(f) for r in rows] for f in SAMPLE_FIELDS}
        fields["empty"] = [float(r["length"] == 0) for r in rows if r.get("length") is not None]
        for field, values in fields.items():
            values = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
            if values:
                _, lower, upper = stats.bootstrap_mean(values, n_boot, seed)
                out[f"{field}_{split}_ci"] = (upper - lower) / 2
                out[f"{field}_{split}_ci_lower"], out[f"{field}_{split}_ci_upper"] = lower, upper
    return out


def ppo_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The PPO rows with family (method without its sweep tag) and stratum (the sweep tag) added."""
    ppo = frame[frame.kind.isin(["ppo", "dpo"])].copy()  # DPO runs sit beside the PPO methods
    if "replicate" not in ppo.columns:
        ppo["replicate"] = "1"
    split = [stats.split_sweep(m) for m in ppo.method]
    ppo["family"], ppo["stratum"] = [f for f, _ in split], [t for _, t in split]
    return ppo


def metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in (*RUN_KEYS, "family", "stratum")
            and not c.endswith(("_ci", "_ci_lower", "_ci_upper")) and pd.api.types.is_numeric_dtype(frame[c])]


def unit_values(group: pd.DataFrame, column: str) -> pd.Series:
    """The independent units of a method: its runs, or the per-replicate means over seeds with replicates."""
    if group.replicate.nunique() > 1:
        return group.groupby("replicate")[column].mean()
    return group.set_index("seed")[column]


def aggregate(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean and 95% t-interval per PPO method over seeds (over replicate means with several replicates)."""
    ppo = ppo_runs(frame)
    out = []
    for method, group in ppo.groupby("method", sort=False):
        row = {"method": method, "seeds": group.seed.nunique(), "replicates": group.replicate.nunique()}
        for column in metric_columns(ppo):
            interval = stats.mean_interval(unit_values(group, column))
            row[column], row[f"{column}_ci"] = interval.estimate, interval.half_width
        out.append(row)
    return pd.DataFrame(out)


def method_partners(methods: list[str], reference_method: str, pairs: dict | None = None) -> dict[str, str]:
    """Method -> the method it is compared with: `pairs[method]`, else `stats.partner`."""
    return {method: (pairs or {}).get(method) or stats.partner(method, reference_method, methods)
            for method in methods if method != reference_method}


def compare_methods(frame: pd.DataFrame, reference_method: str, metrics: list[str], pairs: dict | None = None,
                    contrasts: list[tuple] = ()) -> pd.DataFrame:
    """Every method minus its partner (`pairs[method]`, else `stats.partner`) on every metric, and each
    contrast (a - b) - (c - d), with unadjusted p-values: descriptive, the tests are salsa.preregistration's.

    One replicate: paired by seed where both methods ran the same seeds, Welch otherwise. Several replicates:
    the replicate is the unit (`stats.replicate_difference`), with the variance split into its two levels.
    """
    ppo = ppo_runs(frame)
    methods = list(dict.fromkeys(ppo.method))
    if methods and reference_method not in methods:
        raise artifacts.StageError(f"--reference-method {reference_method!r}: not one of the PPO methods {methods}")
    unknown = sorted({m for pair in [*(pairs or {}).items(), *contrasts] for m in pair} - set(methods))
    if unknown:
        raise artifacts.StageError(f"--pairs/--contrasts name methods that did not run: {unknown} (methods: {methods})")
    rows = []
    for method, other in method_partners(methods, reference_method, pairs).items():
        for metric in [m for m in metrics if m in ppo.columns]:
            levels = stats.replicate_difference(ppo, metric, method, other)
            if ppo.replicate.nunique() > 1:
                row = {**levels, "test": f"replicates (n={levels['replicates']})"}
            else:
                a = unit_values(ppo[ppo.method == method], metric)
                b = unit_values(ppo[ppo.method == other], metric)
                result = stats.compare(a, b)
                row = {**levels, "diff": result.estimate, "diff_ci": result.half_width, "df": result.df,
                       "p": result.p_value, "test": f"{result.test} (n={result.n})"}
            rows.append(row)
    for a, b, c, d in contrasts:
        rows += [stats.contrast(ppo, metric, a, b, c, d) for metric in metrics if metric in ppo.columns]
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows)


def shown_metrics(frame: pd.DataFrame) -> list[str]:
    return [c for c in HEADLINE if c in frame.columns] + benchmark_headline(frame.columns)


def render_markdown(frame: pd.DataFrame, agg: pd.DataFrame, comparisons: pd.DataFrame, matched: pd.DataFrame,
                    config: TablesConfig, singles: pd.DataFrame | None = None,
                    rewards: pd.DataFrame | None = None, starts: pd.DataFrame | None = None,
                    seed_pairs: pd.DataFrame | None = None, endpoints: pd.DataFrame | None = None,
                    reward_pairs: pd.DataFrame | None = None, ensembles: pd.DataFrame | None = None) -> str:
    metrics = shown_metrics(frame)
    baseline = config.baseline or config.models[0]
    parts = ["# Summary", "",
             "gold = the task's gold reward (higher is better, 1 = perfect); proxy = normalised reward-model score; "
             "kl_ref / kl_sft = sequence KL to the model's own reference / to the first SFT; "
             f"rm_winrate = reward-model win rate against `{baseline}` on the same prompts; "
             "_id = in-distribution prompts, _ood = longer lists than any seen in training. "
             "All intervals are 95%.", "",
             *(preregistration.render(endpoints) if endpoints is not None and len(endpoints) else []),
             "## Every model", "", markdown_table(frame, ["model", *metrics, *[c for c in ("judge_failures",) if c in frame.columns]]), ""]
    single = frame[~frame.kind.isin(["ppo", "dpo"])].copy()
    with_ci = [m for m in metrics if f"{m}_ci" in single.columns and single[m].notna().any()]
    if len(single) and with_ci:
        for m in with_ci:
            single[f"{m} (95% CI)"] = [bracket(v, lo, hi) for v, lo, hi in
                                       zip(single[m], single.get(f"{m}_ci_lower", single[m] * math.nan),
                                           single.get(f"{m}_ci_upper", single[m] * math.nan))]
        parts += ["## Single models (prompt-level percentile bootstrap interval [lower, upper])", "",
                  f"Each model is one run: the interval is over its evaluation prompts ({config.n_boot} resamples, "
                  f"seed {config.seed}) and says nothing about retraining it.", "",
                  markdown_table(single, ["model", *[f"{m} (95% CI)" for m in with_ci]]), ""]
    parts += same_prompts.render(singles, "### Single models against each other (same prompts, paired bootstrap)",
                                 "* = the prompt-level interval excludes 0: a difference in these two trained "
                                 "models, not evidence about retraining them.", fmt)
    parts += same_prompts.render(starts, "### Each trained run against the model it started from (same prompts)",
                                 "Did training move gold beyond evaluation noise? One run each: * = the "
                                 "prompt-level interval excludes 0, which says nothing about another seed.", fmt)
    parts += same_prompts.render(seed_pairs, "### Each run against its partner method's run of the same seed "
                                 "(same prompts)",
                                 "Two trained runs on the same prompts: * = the prompt-level interval excludes 0, a "
                                 "difference between these two runs; only seeds and replicates (the method "
                                 "comparisons) speak for the methods.", fmt)
    if len(agg):
        for m in metrics:
            if m in agg.columns:
                agg[f"{m} (95% CI)"] = [pm(v, h) for v, h in zip(agg[m], agg[f"{m}_ci"])]
        unit = "over replicate means" if agg.replicates.max() > 1 else "over seeds"
        parts += [f"## PPO methods over seeds (mean ± t-interval {unit})", "",
                  markdown_table(agg, ["method", "seeds", "replicates",
                                       *[f"{m} (95% CI)" for m in metrics if m in agg.columns]]), ""]
    if len(comparisons):
        parts += render_comparisons(comparisons, config.reference_method, metrics)
        primary = preregistration.Endpoint.parse(config.primary, "--primary")
        parts += render_power(comparisons, primary.method, primary.vs)
    if len(matched):
        parts += render_matched(matched)
    if rewards is not None:
        parts += render_reward_models(rewards, fmt)
    if reward_pairs is not None:
        parts += render_pair_tests(reward_pairs, fmt)
    if ensembles is not None:
        parts += render_ensemble_tests(ensembles, fmt)
    return "\n".join(parts)


def matched_kl_frame(frame: pd.DataFrame, reference_method: str) -> pd.DataFrame:
    """Every family against the reference family at matched KL, on both KL axes (salsa.matched_kl)."""
    ppo = ppo_runs(frame)
    if "gold_id" not in ppo.columns:
        return pd.DataFrame()
    reference = stats.split_sweep(reference_method)[0]
    families = [f for f in dict.fromkeys(ppo.family) if f != reference]
    parts = [matched_kl.matched_kl(ppo, family, reference, kl=axis) for axis in matched_kl.AXES
             if axis in ppo.columns for family in families]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def fitted_curves(frame: pd.DataFrame) -> dict:
    """The matched-KL fit of each family with more than one β, over its own KL range, for frontier.png."""
    ppo = ppo_runs(frame)
    if "kl_sft_id" not in ppo.columns or "gold_id" not in ppo.columns:
        return {}
    curves = {}
    for family, runs in ppo.dropna(subset=["kl_sft_id", "gold_id"]).groupby("family", sort=False):
        if runs.stratum.nunique() < 2:
            continue  # one β: a point, not a curve
        grid = np.linspace(max(runs.kl_sft_id.min(), 0.0), runs.kl_sft_id.max(), 50)
        degree = matched_kl.fit_degree(runs.stratum.nunique())
        curves[family] = (grid, np.polyval(matched_kl.fit_curve(runs.kl_sft_id, runs.gold_id, degree), np.sqrt(grid)))
    return curves


def method_starts(results: Path, frame: pd.DataFrame) -> dict[str, str]:
    """PPO/DPO method -> the model id (without its replicate) its runs started from, per their metadata."""
    method_of = dict(zip(frame.model, frame.method))
    return {method_of[run]: split_replicate(start)[1] for run, start in same_prompts.start_pairs(results, frame)}


def endpoints(config: TablesConfig, frame: pd.DataFrame) -> pd.DataFrame:
    primary = preregistration.Endpoint.parse(config.primary, "--primary")
    secondary = [preregistration.Endpoint.parse(s, "--secondary") for s in config.secondary]
    needs_starts = any(e.at == "gain_over_start" for e in (primary, *secondary))
    starts = method_starts(Path(config.results), frame) if needs_starts else {}
    return preregistration.endpoints_frame(primary, secondary, frame, ppo_runs(frame), starts, config.alpha)


def main(argv: list[str] | None = None) -> None:
    config = parse(TablesConfig, argv)
    frame = collect_rows(config)
    agg = aggregate(frame)
    pairs = dict(pair.split(":", 1) for pair in config.pairs)
    contrasts = [tuple(c.split(":")) for c in config.contrasts]
    if any(len(c) != 4 for c in contrasts):
        raise artifacts.StageError(f"--contrasts {config.contrasts}: each is a:b:c:d")
    comparisons = compare_methods(frame, config.reference_method, shown_metrics(frame), pairs, contrasts)
    matched = matched_kl_frame(frame, config.reference_method)
    tested = endpoints(config, frame)
    singles = same_prompts.single_model_differences(Path(config.results), frame, config.n_boot, config.seed)
    starts = same_prompts.run_start_differences(Path(config.results), frame, config.n_boot, config.seed)
    partners = method_partners(list(dict.fromkeys(ppo_runs(frame).method)), config.reference_method, pairs)
    seed_pairs = same_prompts.run_partner_differences(Path(config.results), frame, partners, config.n_boot,
                                                      config.seed)
    rewards = reward_models_frame(Path(config.results), config.reward_models, frame)
    reward_pairs = pair_tests(Path(config.results), config.reward_models)
    ensembles = ensemble_tests(Path(config.results), config.reward_models)
    with artifacts.atomic_dir(config.out) as tmp:
        frame.to_csv(tmp / "summary.csv", index=False)
        agg.to_csv(tmp / "methods.csv", index=False)
        comparisons.to_csv(tmp / "comparisons.csv", index=False)
        matched.to_csv(tmp / "matched_kl.csv", index=False)
        tested.to_csv(tmp / "endpoints.csv", index=False)
        singles.to_csv(tmp / "single_models.csv", index=False)
        rewards.to_csv(tmp / "reward_models.csv", index=False)
        reward_pairs.to_csv(tmp / "reward_model_pairs.csv", index=False)
        ensembles.to_csv(tmp / "reward_ensembles.csv", index=False)
        starts.to_csv(tmp / "runs_vs_start.csv", index=False)
        seed_pairs.to_csv(tmp / "runs_vs_partner.csv", index=False)
        (tmp / "summary.md").write_text(render_markdown(frame, agg, comparisons, matched, config, singles, rewards,
                                                        starts, seed_pairs, tested, reward_pairs, ensembles))
        plot_curves(Path(config.results), frame, tmp / "ppo_curves.png")
        plot_frontier(frame, tmp / "frontier.png", fitted_curves(frame))
        artifacts.write_metadata(tmp, "tables", config, config.seed)
    print((Path(config.out) / "summary.md").read_text())


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
