"""The pre-registered endpoints: one primary test, a short secondary family with Holm, nothing else tested.

An endpoint is `metric:method:vs[:at]` (config `tables.primary` / `tables.secondary`, rules/tables.smk):
  gold_id:salsa:ppo                  method - vs, replicates as the unit (paired seeds with one replicate)
  gold_id:salsa:ppo:matched_kl_sft   the families' difference at matched KL to the first SFT (salsa.matched_kl)
  gold_id:salsa:ppo:matched_kl_ref   ... at matched KL to each run's own reference
  gold_id:salsa:ppo:gain_over_start  (method - its start) - (vs - its start): the gain beyond the head start
The primary is two-sided at `alpha`, unadjusted. The secondary family is Holm-adjusted over itself only:
every other number in the tables is descriptive and carries no test mark.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pandas as pd

from salsa import artifacts, stats
from salsa.matched_kl import matched_kl

KINDS = {"": "difference", "matched_kl_sft": "at matched KL to the first SFT",
         "matched_kl_ref": "at matched KL to the own reference", "gain_over_start": "gain over its start"}
MATCHED_AXIS = {"matched_kl_sft": "kl_sft_id", "matched_kl_ref": "kl_ref_id"}


@dataclasses.dataclass(frozen=True)
class Endpoint:
    metric: str
    method: str
    vs: str
    at: str = ""

    @classmethod
    def parse(cls, spec: str, flag: str) -> "Endpoint":
        parts = spec.split(":")
        if len(parts) not in (3, 4) or parts[3:] and parts[3] not in KINDS:
            raise artifacts.StageError(f"{flag} {spec!r}: expected metric:method:vs[:at] with at one of "
                                       f"{[k for k in KINDS if k]}")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.method} − {self.vs}, {self.metric}" + (f", {KINDS[self.at]}" if self.at else "")


def per_unit_difference(ppo: pd.DataFrame, metric: str, method: str, vs: str,
                        shift: dict[str, float] | None = None) -> stats.Interval:
    """method - vs on `metric`, per replicate (seed means) with several replicates, else paired by seed.
    shift[replicate]: subtracted from each replicate's difference (the starts' difference, for the gain)."""
    rows = []
    for replicate, group in ppo.groupby("replicate", sort=True):
        a = group[group.method == method].set_index("seed")[metric].dropna()
        b = group[group.method == vs].set_index("seed")[metric].dropna()
        offset = (shift or {}).get(replicate, 0.0)
        if ppo.replicate.nunique() > 1:
            if len(a) and len(b):
                rows.append(a.mean() - b.mean() - offset)
        else:
            rows += [a[s] - b[s] - offset for s in sorted(set(a.index) & set(b.index))]
    return stats.mean_interval(rows)


def start_gold(frame: pd.DataFrame, start: str, metric: str) -> dict[str, float]:
    """Gold of the model a method started from, per replicate (model ids rep<r>/<start> or <start>)."""
    rows = frame[frame.model.map(lambda m: m == start or m.partition("/")[2] == start and m.startswith("rep"))]
    return {str(r): float(v) for r, v in zip(rows.replicate, rows[metric])}


def evaluate(endpoint: Endpoint, frame: pd.DataFrame, ppo: pd.DataFrame, starts: dict[str, str]) -> dict:
    """One endpoint's estimate, half-width, df, p and how it was tested."""
    methods = set(ppo.method)
    families = set(ppo.family)
    if endpoint.at in MATCHED_AXIS:
        family, vs = stats.split_sweep(endpoint.method)[0], stats.split_sweep(endpoint.vs)[0]
        if {family, vs} - families:
            raise artifacts.StageError(f"endpoint {endpoint}: no PPO family {sorted({family, vs} - families)}")
        result = matched_kl(ppo, family, vs, endpoint.metric, MATCHED_AXIS[endpoint.at])
        if result.note.iloc[0]:
            return {"estimate": math.nan, "half_width": math.nan, "df": math.nan, "p": math.nan,
                    "test": f"not tested: {result.note.iloc[0]}"}
        row = result.iloc[len(result) // 2]  # one level for a point; the middle of the shared range for curves
        return {"estimate": row["diff"], "half_width": row.diff_ci, "df": row.df, "p": row.p,
                "test": f"matched at KL {row.kl:.3g}, {row.unit}"}
    missing = sorted({endpoint.method, endpoint.vs} - methods)
    if missing:
        raise artifacts.StageError(f"endpoint {endpoint}: methods {missing} did not run (methods: {sorted(methods)})")
    shift = None
    if endpoint.at == "gain_over_start":
        unknown = [m for m in (endpoint.method, endpoint.vs) if m not in starts]
        if unknown:
            raise artifacts.StageError(f"endpoint {endpoint}: no evaluated start model for {unknown}")
        own, other = (start_gold(frame, starts[m], endpoint.metric) for m in (endpoint.method, endpoint.vs))
        shift = {r: own[r] - other[r] for r in own if r in other}
    result = per_unit_difference(ppo, endpoint.metric, endpoint.method, endpoint.vs, shift)
    unit = "replicates" if ppo.replicate.nunique() > 1 else "paired seeds"
    return {"estimate": result.estimate, "half_width": result.half_width, "df": result.df, "p": result.p_value,
            "test": f"t over {unit} (n={result.n})"}


def endpoints_frame(primary: Endpoint, secondary: list[Endpoint], frame: pd.DataFrame, ppo: pd.DataFrame,
                    starts: dict[str, str], alpha: float) -> pd.DataFrame:
    """The primary row (unadjusted) and the secondary rows with Holm over the secondary family only."""
    rows = [{"role": "primary", "endpoint": str(primary), **evaluate(primary, frame, ppo, starts)}]
    rows += [{"role": "secondary", "endpoint": str(e), **evaluate(e, frame, ppo, starts)} for e in secondary]
    out = pd.DataFrame(rows)
    out["p_holm"] = np.nan
    family = out.role == "secondary"
    if family.any():
        out.loc[family, "p_holm"] = stats.holm(out.loc[family, "p"].to_numpy(float))
    decisive = out.p.where(~family, out.p_holm)
    out["separated"] = decisive < alpha
    out["alpha"] = alpha
    return out


def verdict(row: pd.Series) -> str:
    interval = f"{row.estimate:+.4f} ± {row.half_width:.4f}"
    if math.isnan(row.p):
        return f"{interval}: {row.test}; no verdict"
    if row.separated:
        side = "higher" if row.estimate > 0 else "lower"
        return f"{interval} (p = {row.p:.3g} < α {row.alpha:g}): the first method is {side}"
    return f"{interval} (p = {row.p:.3g}): not separated from 0 at α {row.alpha:g}"


def render(table: pd.DataFrame) -> list[str]:
    primary = table[table.role == "primary"].iloc[0]
    lines = ["## Pre-registered result", "",
             f"**Primary** (declared in the config before the run; two-sided, α {primary.alpha:g}, unadjusted): "
             f"{primary.endpoint} — {verdict(primary)} [{primary.test}].", ""]
    secondary = table[table.role == "secondary"]
    if len(secondary):
        lines += [f"**Secondary** (Holm over these {secondary.p.notna().sum()} tests only; * = Holm p < "
                  f"α {primary.alpha:g}):", "", "| endpoint | estimate ± 95% | p | p (Holm) | test |",
                  "|---|---|---|---|---|"]
        for _, row in secondary.iterrows():
            star = " *" if row.separated else ""
            lines.append(f"| {row.endpoint} | {row.estimate:+.4f} ± {row.half_width:.4f}{star} | {row.p:.3g} | "
                         f"{row.p_holm:.3g} | {row.test} |")
        lines.append("")
    lines += ["Everything below is descriptive: intervals without test marks, to read as estimates.", ""]
    return lines
