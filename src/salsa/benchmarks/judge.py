"""Stage `benchmark_judge`: judge a model's benchmark answers; write judgments and flat scores.

  python -m salsa.benchmarks.judge --answers FILE --benchmark arena_hard_v0.1 --judge openai \
      --judge-model gpt-4.1-2025-04-14 --data-dir PATH --out DIR

Writes DIR/judgments.jsonl (upstream judgment fields), DIR/scores.json (a flat dict of
numbers, e.g. mtbench_score or arena_winrate, plus judge_failures) and DIR/salsa_meta.json.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

from salsa import artifacts
from salsa.args import arg, parse
from salsa.artifacts import StageError
from salsa.benchmarks import ARENA_V2, BENCHMARKS, EMBEDDED, EMBEDDED_ARENA, SINGLE_GRADING
from salsa.benchmarks.answer_formats import read_answers
from salsa.benchmarks.data import load_benchmark
from salsa.benchmarks.files import write_jsonl
from salsa.benchmarks.judge_protocols import judge_arena, judge_mt_bench
from salsa.benchmarks.mt_bench_scoring import format_mt_bench_table, mt_bench_metrics, mt_bench_table
from salsa.benchmarks.scores_json import arena_metrics, failure_metrics, score_judge_metrics
from salsa.judges import JUDGE_KINDS, JudgeFatalError, ScoreJudge, build_judge

TEXT_JUDGES = ("openai", "local")


@dataclasses.dataclass
class JudgeStageConfig:
    """Judge benchmark answers (MT-Bench single grading or Arena-Hard pairwise) and score them."""

    answers: str = arg(help="the model's answers (output of salsa.benchmarks.answer)")
    benchmark: str = arg(help="which benchmark", choices=list(BENCHMARKS))
    judge: str = arg(help="judge kind", choices=list(JUDGE_KINDS))
    out: str = arg(help="output directory (judgments.jsonl, scores.json, salsa_meta.json)")
    baseline_answers: str | None = arg(None, help="pairwise baseline answers (default: the benchmark's own "
                                                  "baseline under data-dir/model_answer; embedded_arena: "
                                                  "required, the first SFT's answers)")
    data_dir: str | None = arg(None, help="benchmark directory (see salsa.benchmarks.answer --data-dir)")
    hub_dataset: str | None = arg(None, help="Hugging Face dataset id to read the benchmark from instead "
                                              "(e.g. lmarena-ai/arena-hard-auto)")
    hub_revision: str | None = arg(None, help="revision of --hub-dataset")
    hub_subdir: str | None = arg(None, help="folder of --hub-dataset holding question.jsonl etc. "
                                             "(e.g. data/arena-hard-v0.1)")
    categories: list[str] = arg([], help="Arena-Hard v2.0 categories (default: hard_prompt)")
    seed: int = arg(0, help="seed of the bootstraps and of a sampling local judge")
    max_questions: int | None = arg(None, help="judge only the first N questions")
    judge_model: str | None = arg(None, help="openai: API model name (e.g. gpt-4.1-2025-04-14); local/reward: "
                                              "model dir")
    base_url: str | None = arg(None, help="openai: endpoint, e.g. http://127.0.0.1:8000/v1 (vLLM, transformers "
                                          "serve); default: the OpenAI API")
    api_key_env: str = arg("OPENAI_API_KEY", help="openai: NAME of the environment variable holding the key")
    concurrency: int = arg(8, help="openai: requests in flight at once")
    max_retries: int = arg(6, help="openai: retries of a timeout / 429 / 5xx before giving up")
    backoff_initial: float = arg(1.0, help="openai: first retry delay in seconds (doubles each retry)")
    backoff_max: float = arg(60.0, help="openai: longest retry delay in seconds")
    request_timeout: float = arg(120.0, help="openai: seconds before a request times out")
    token_param: str = arg("auto", help="openai: max_tokens or max_completion_tokens (auto: by model name)",
                           choices=["auto", "max_tokens", "max_completion_tokens"])
    cache_dir: str | None = arg(None, help="text judges: reply cache (default: judge_cache/ beside --out)")
    judge_max_tokens: int | None = arg(None, help="judge reply token limit (upstream: 2048 MT-Bench, 4096 "
                                                  "Arena v0.1, 16000 v2.0)")
    judge_temperature: float | None = arg(None, help="judge temperature (upstream: 0)")
    batch_size: int = arg(8, help="local/reward judges: batch size")
    device: str = arg("auto", help="local/reward judges: torch device")
    reward_tie_threshold: float = arg(0.1, help="reward judge: |z(A)-z(B)| below this is A=B")
    reward_strong_threshold: float = arg(1.0, help="reward judge: |z(A)-z(B)| at least this is A>>B")
    gold_tie_threshold: float = arg(0.05, help="gold judge: |gold(A)-gold(B)| below this is A=B")
    gold_strong_threshold: float = arg(0.25, help="gold judge: |gold(A)-gold(B)| at least this is A>>B")
    max_failure_fraction: float = arg(0.2, help="fail the stage when more than this fraction of judge verdicts "
                                                "are API errors or unparseable (1 = never fail)")
    n_boot: int = arg(100, help="Arena-Hard bootstrap rounds (upstream: 100)")
    reward_n_boot: int = arg(1000, help="bootstrap rounds of the reward/gold win rate")
    strong_weight: int = arg(3, help="Arena-Hard: how many battles a strong verdict (A>>B) counts as")
    judge_config: str | None = arg(None, help="Arena-Hard judge settings yaml (v0.1 judge_config.yaml layout); "
                                              "default: from data-dir")
    judge_prompts: str | None = arg(None, help="MT-Bench judge_prompts.jsonl; default: from data-dir")
    creative_system_prompt_file: str | None = arg(None, help="v2.0: judge system prompt for creative_writing")
    threads: int | None = arg(None, help="torch CPU threads")
    progress: bool = arg(True, help="show progress bars")

    def validate(self) -> None:
        if self.concurrency < 1 or self.batch_size < 1:
            raise ValueError("--concurrency and --batch-size must be >= 1")
        if self.max_retries < 0 or self.n_boot < 0 or self.reward_n_boot < 0:
            raise ValueError("--max-retries, --n-boot and --reward-n-boot must be >= 0")
        if not 0 <= self.reward_tie_threshold <= self.reward_strong_threshold:
            raise ValueError("need 0 <= reward tie threshold <= reward strong threshold")
        if not 0 <= self.gold_tie_threshold <= self.gold_strong_threshold:
            raise ValueError("need 0 <= gold tie threshold <= gold strong threshold")
        if not 0 <= self.max_failure_fraction <= 1:
            raise ValueError("--max-failure-fraction must be in [0, 1]")


def _check_combination(config: JudgeStageConfig) -> None:
    if config.judge == "gold" and config.benchmark not in EMBEDDED:
        raise StageError(f"the gold judge only knows the embedded task, not {config.benchmark}")
    if config.benchmark in EMBEDDED and config.judge in TEXT_JUDGES:
        needed = "--judge-prompts" if config.benchmark in SINGLE_GRADING else "--judge-config"
        if not (config.judge_prompts if config.benchmark in SINGLE_GRADING else config.judge_config):
            raise StageError(f"{config.benchmark} with a text judge needs {needed} (its prompts are not data there)")


def build(config: JudgeStageConfig, task: dict | None):
    cache_dir = config.cache_dir or str(Path(config.out).resolve().parent / "judge_cache")
    return build_judge(
        config.judge, model=config.judge_model, base_url=config.base_url, api_key_env=config.api_key_env,
        concurrency=config.concurrency, max_retries=config.max_retries, backoff_initial=config.backoff_initial,
        backoff_max=config.backoff_max, request_timeout=config.request_timeout, token_param=config.token_param,
        cache_dir=cache_dir if config.judge in TEXT_JUDGES else None, batch_size=config.batch_size,
        max_new_tokens_cap=config.judge_max_tokens, device=config.device, seed=config.seed,
        reward_tie_threshold=config.reward_tie_threshold, reward_strong_threshold=config.reward_strong_threshold,
        gold_tie_threshold=config.gold_tie_threshold, gold_strong_threshold=config.gold_strong_threshold,
        gold_extra_penalty=float((task or {}).get("extra_penalty", 1.0)))


def _answers_and_baselines(config: JudgeStageConfig, data):
    answers = read_answers(config.answers)
    asked = {q.question_id for q in data.questions}
    if not asked & set(answers):
        raise StageError(f"{config.answers}: no answers to {config.benchmark} questions")
    if config.benchmark in SINGLE_GRADING:
        return answers, {}
    if config.baseline_answers:
        baselines = read_answers(config.baseline_answers)
    elif config.benchmark == EMBEDDED_ARENA:
        raise StageError("embedded_arena needs --baseline-answers (the first SFT model's answers)")
    else:
        baselines = data.baseline_answers
    if not asked & set(baselines):
        raise StageError(f"no baseline answers to {config.benchmark} questions "
                         f"({config.baseline_answers or 'data-dir model_answer/'})")
    model_names = {a.model_id for a in answers.values()}
    if any(b.model_id in model_names for b in baselines.values()):   # keep the two players apart
        baselines = {k: dataclasses.replace(b, model_id=f"{b.model_id}(baseline)") for k, b in baselines.items()}
    return answers, baselines


def check_failures(result, judge, max_fraction: float) -> None:
    """Refuse a run whose verdicts are mostly failures: its scores would rest on a biased remainder."""
    if not result.n_judged:
        raise StageError("nothing to judge: no question has both a model answer and a baseline answer")
    if result.failure_fraction > max_fraction:
        common = judge.stats.errors.most_common(1)
        first = f"; most common error: {common[0][0]}" if common else ""
        raise StageError(f"judge {judge.name}: {result.failures} of {result.n_judged} verdicts failed "
                         f"({result.parse_failures} unparseable, {result.api_errors} API errors), more than "
                         f"--max-failure-fraction {max_fraction:g}{first}")


def main(argv: list[str] | None = None) -> None:
    config = parse(JudgeStageConfig, argv)
    _check_combination(config)
    artifacts.set_threads(config.threads)
    artifacts.seed_everything(config.seed)
    data = load_benchmark(config.benchmark, config.data_dir, hub_dataset=config.hub_dataset,
                          hub_revision=config.hub_revision, hub_subdir=config.hub_subdir,
                          categories=tuple(config.categories), judge_config=config.judge_config,
                          judge_prompts=config.judge_prompts,
                          creative_prompt_file=config.creative_system_prompt_file,
                          need_judge_settings=config.judge in TEXT_JUDGES)
    if config.max_questions:
        data.questions = data.questions[:config.max_questions]
    answers, baselines = _answers_and_baselines(config, data)
    judge = build(config, data.task)
    model = getattr(judge, "model", None)
    if config.threads is None and hasattr(model, "parameters"):   # a local / reward model in-process
        from salsa.benchmarks.answer import default_threads
        artifacts.set_threads(default_threads(model))
    started = time.time()
    try:
        if config.benchmark in SINGLE_GRADING:
            result = judge_mt_bench(data, answers, judge, config.judge_max_tokens, config.judge_temperature or 0.0,
                                    config.progress)
        else:
            result = judge_arena(data, answers, baselines, judge, config.judge_max_tokens,
                                 config.judge_temperature, config.progress, legacy=config.benchmark != ARENA_V2)
    except JudgeFatalError as err:
        raise StageError(f"judge {judge.name}: {err} (not retried: check the API key, access and model name)") \
            from None
    check_failures(result, judge, config.max_failure_fraction)
    if config.benchmark in SINGLE_GRADING:
        scores = mt_bench_metrics(result.records)
        table = format_mt_bench_table(mt_bench_table(result.records))
    else:
        scores, table = arena_metrics(result.records, config.benchmark, config.n_boot, config.seed,
                                      config.strong_weight)
        if isinstance(judge, ScoreJudge):
            scores.update(score_judge_metrics(result.records, config.judge, config.reward_n_boot, config.seed))
    scores.update(failure_metrics(result))
    bad = [k for k, v in scores.items() if not isinstance(v, (int, float))]
    assert not bad, f"non-numeric scores: {bad}"
    with artifacts.atomic_dir(config.out) as tmp:
        write_jsonl(tmp / "judgments.jsonl", result.records)
        # NaN (e.g. no valid rating at all) is left out: JSON has no NaN, and a missing column reads as one.
        artifacts.write_json(tmp / "scores.json", {k: v for k, v in scores.items()
                                                    if not (isinstance(v, float) and math.isnan(v))})
        artifacts.write_metadata(tmp, "benchmark_judge", config, config.seed, extra={
            "judge_name": judge.name, "judge_stats": dict(judge.stats.counts),
            "n_judgments": len(result.records), "seconds": round(time.time() - started, 2)})
    print(table)
    print(f"judge {judge.name}: {judge.stats.summary()}")
    if result.failures:
        print(f"warning: {result.parse_failures} parse failure(s), {result.api_errors} API error(s); "
              f"failed judgments are excluded from the scores (see judgments.jsonl)")
    print(f"benchmark_judge: {len(result.records)} judgments -> {config.out}")


if __name__ == "__main__":
    raise SystemExit(artifacts.run_main(main))
