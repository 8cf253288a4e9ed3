"""judge_preflight: check every API judge with one tiny request, and print the bill.

  python -m salsa.judges.preflight --plan '[{"benchmark": "mt_bench", "judge_model": "gpt-4.1-2025-04-14",
      "models": 9, "cost": {"input_per_million": 2.0, "output_per_million": 8.0}}]' --out ok.json

The workflow runs it before Snakemake starts the first GPU or API job of a run (the Snakefile's onstart,
rules/jobs.smk), and as the judge_preflight job, where the judges run (a local rule unless
resources.bench_judge.local is false), which records the bill. Each problem is one line: a missing key,
an unreachable endpoint, a rejected key, an unknown model, a model OpenAI has shut down. The estimate is
calls per benchmark (questions x turns or games, x judged models) times tokens per call (our estimates
below, or the config's `cost` block) times the config's price.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from salsa.artifacts import StageError, atomic_text_file, run_main
from salsa.config_check import retired_judge_message

PROBE = [{"role": "user", "content": "Reply with the single word OK."}]
PROBE_ATTEMPTS, PROBE_BACKOFF_S = 3, 1.0   # a server error or a dropped connection is tried again, twice
# Judge calls per judged model (upstream protocols, docs/judging.md): MT-Bench 80 questions x 2 turns;
# Arena-Hard 500 questions x 2 games (v0.1 adds a follow-up for each reply without a verdict).
QUESTIONS = {"mt_bench": 80, "arena_hard_v0.1": 500, "arena_hard_v2.0": 500}
CALLS_PER_QUESTION = {"mt_bench": 2, "arena_hard_v0.1": 2, "arena_hard_v2.0": 2}
# Tokens per call, ours (estimates, not measured): the judge prompt, the question, the answers shown
# (MT-Bench one answer, turn 2 both turns; Arena-Hard two answers of up to the answer cap) and the reply
# (MT-Bench a short explanation and [[rating]]; Arena-Hard the judge's own answer and its comparison).
TOKENS_PER_CALL = {"mt_bench": (1200, 300), "arena_hard_v0.1": (3500, 1000), "arena_hard_v2.0": (3500, 1000)}


@dataclass
class Bill:
    benchmark: str
    judge: str
    models: int
    calls: int
    input_tokens: int
    output_tokens: int
    cost: float | None


def bill(entry: dict) -> Bill:
    benchmark = entry["benchmark"]
    questions = QUESTIONS.get(benchmark, 0)
    if entry.get("max_questions"):
        questions = min(questions, int(entry["max_questions"]))
    calls = questions * CALLS_PER_QUESTION.get(benchmark, 1) * int(entry.get("models", 0))
    cost = entry.get("cost") or {}
    default_in, default_out = TOKENS_PER_CALL.get(benchmark, (2000, 500))
    tokens_in = calls * int(cost.get("input_tokens_per_call", default_in))
    tokens_out = calls * int(cost.get("output_tokens_per_call", default_out))
    price = None
    if "input_per_million" in cost and "output_per_million" in cost:
        price = (tokens_in * cost["input_per_million"] + tokens_out * cost["output_per_million"]) / 1e6
    return Bill(benchmark, entry.get("judge_model", "?"), int(entry.get("models", 0)), calls, tokens_in,
                tokens_out, price)


def probe(entry: dict, timeout: float) -> str | None:
    """One tiny request to the entry's judge; None when it answered, else the problem in one line."""
    from salsa.judges.base import ChatRequest
    from salsa.judges.openai_judge import MissingAPIKey, OpenAIJudge, _first_line

    where = f"benchmarks.{entry['benchmark']}.judging"
    model, base_url = entry.get("judge_model"), entry.get("base_url")
    key_env = entry.get("api_key_env", "OPENAI_API_KEY")
    if not model:
        return f"{where}.judge_model: not set (the API model name)"
    if not base_url:
        retired = retired_judge_message(f"{where}.judge_model", model)
        if retired:
            return retired
    endpoint = base_url or "https://api.openai.com/v1"
    try:
        judge = OpenAIJudge(model, base_url, key_env, max_retries=0, request_timeout=timeout)
    except MissingAPIKey:
        return f"{where}: ${key_env} is not set; the judge {model} at {endpoint} needs its API key"
    openai = judge._openai
    for attempt in range(PROBE_ATTEMPTS):
        try:
            judge._request_once(ChatRequest.of(PROBE, temperature=0.0, max_tokens=1))
            return None
        except openai.APIStatusError as err:
            status, detail = err.status_code, judge.redact(_first_line(err))
            if status == 401:
                return f"{where}: {endpoint} rejected the key in ${key_env} (HTTP 401: {detail})"
            if status == 403:
                return f"{where}: the key in ${key_env} has no access to {model} at {endpoint} (HTTP 403: {detail})"
            if status == 404:
                return f"{where}.judge_model: {endpoint} does not know the model {model} (HTTP 404: {detail})"
            if status == 429 and "insufficient_quota" in str(err):
                return f"{where}: the account of ${key_env} has no quota left at {endpoint} (HTTP 429: {detail})"
            if status == 429:
                return None   # rate-limited: key, endpoint and model exist
            if status < 500 and status not in (408, 409):
                return f"{where}: {endpoint} refused a one-token request to {model} (HTTP {status}: {detail})"
            problem = f"{where}: {endpoint} answers HTTP {status} ({detail})"
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            problem = f"{where}.base_url: {endpoint} is unreachable ({judge.redact(_first_line(err))})"
        if attempt + 1 < PROBE_ATTEMPTS:   # no wait after the last try
            time.sleep(PROBE_BACKOFF_S * (attempt + 1))
    return f"{problem}, {PROBE_ATTEMPTS} tries"


def report(bills: list[Bill]) -> str:
    header = f"{'benchmark':<16} {'judge':<22} {'models':>6} {'calls':>7} {'Mtok in':>8} {'Mtok out':>8} {'cost':>9}"
    lines = ["judge bill (calls exact for the configured models; tokens per call estimated):", header]
    for b in bills:
        cost = f"${b.cost:,.2f}" if b.cost is not None else "no price"
        lines.append(f"{b.benchmark:<16} {b.judge:<22} {b.models:>6} {b.calls:>7} {b.input_tokens / 1e6:>8.2f} "
                     f"{b.output_tokens / 1e6:>8.2f} {cost:>9}")
    priced = [b.cost for b in bills if b.cost is not None]
    total = f"${sum(priced):,.2f}" if priced else "no price set (benchmarks.<name>.cost)"
    lines.append(f"total: {sum(b.calls for b in bills)} calls, {total}"
                 + (" (some benchmarks have no price)" if priced and len(priced) < len(bills) else ""))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m salsa.judges.preflight", description=__doc__.split("\n")[0])
    parser.add_argument("--plan", required=True, help="JSON list: benchmark, judge_model, base_url, api_key_env, "
                                                      "models, max_questions, cost")
    parser.add_argument("--out", help="marker file written when every judge answered (the bill); none: check only")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per probe request")
    parser.add_argument("--checked-on", choices=("snakemake-host", "cluster"), default="snakemake-host",
                        help="where this check runs, recorded in --out (rules/jobs.smk: a run that judges on the "
                             "cluster starts its GPU jobs only after a check made there)")
    args = parser.parse_args(argv)
    try:
        plan = json.loads(args.plan)
    except json.JSONDecodeError as err:
        raise StageError(f"--plan: invalid JSON ({err.msg})") from None
    problems, probed = [], {}
    for entry in plan:
        key = (entry.get("judge_model"), entry.get("base_url"), entry.get("api_key_env", "OPENAI_API_KEY"))
        if key not in probed:   # one request per distinct judge
            probed[key] = probe(entry, args.timeout)
        if probed[key]:   # named by the first benchmark that uses this judge
            problems.append(probed[key])
    if problems:
        raise StageError("\nerror: ".join(dict.fromkeys(problems)))
    bills = [bill(entry) for entry in plan]
    print(f"judge preflight: {len(probed)} API judge(s) answered a one-token request")
    print(report(bills))
    if not args.out:
        return
    with atomic_text_file(args.out) as handle:
        # the plan checked: a run that judges on the cluster starts its GPU jobs only after this plan answered
        judges = [{"benchmark": b.benchmark, "judge": b.judge, "models": b.models, "calls": b.calls,
                   "input_tokens": b.input_tokens, "output_tokens": b.output_tokens,
                   "cost_usd": None if b.cost is None else math.floor(b.cost * 100 + 0.5) / 100} for b in bills]
        json.dump({"plan": plan, "checked_on": args.checked_on, "judges": judges}, handle, indent=1)


if __name__ == "__main__":
    raise SystemExit(run_main(main))
