"""Judges for the benchmark protocols: one interface, four kinds.

  openai   any OpenAI-compatible chat endpoint (OpenAI, vLLM, `transformers serve`)
  local    a transformers causal LM, in-process
  reward   the workflow's reward model (pairwise by reward difference, 1-10 by a sigmoid)
  gold     the embedded task's gold function (pairwise by gold difference, 1 + 9*clip(gold))

Text judges (openai, local) cache every reply on disk (salsa.judges.cache).
"""

from __future__ import annotations

from pathlib import Path

from salsa.judges.base import (ChatRequest, Completion, JudgeAPIError, JudgeFatalError, JudgeStats, ScoreJudge,
                               TextJudge, verdict_from_difference)
from salsa.judges.cache import JudgmentCache
from salsa.judges.scorers import gold_to_rating, reward_to_rating

JUDGE_KINDS = ("gold", "reward", "openai", "local")

__all__ = ["ChatRequest", "Completion", "JudgeAPIError", "JudgeFatalError", "JudgeStats", "JudgmentCache",
           "ScoreJudge", "TextJudge", "JUDGE_KINDS", "build_judge", "gold_to_rating", "reward_to_rating",
           "verdict_from_difference"]


def build_judge(kind: str, *, model: str | None = None, base_url: str | None = None,
                api_key_env: str = "OPENAI_API_KEY", concurrency: int = 8, max_retries: int = 6,
                backoff_initial: float = 1.0, backoff_max: float = 60.0, request_timeout: float = 120.0,
                token_param: str = "auto", cache_dir: str | Path | None = None, batch_size: int = 8,
                max_new_tokens_cap: int | None = None, device: str = "auto", seed: int = 0,
                reward_tie_threshold: float = 0.1, reward_strong_threshold: float = 1.0,
                gold_tie_threshold: float = 0.05, gold_strong_threshold: float = 0.25,
                gold_extra_penalty: float = 1.0) -> TextJudge | ScoreJudge:
    """A judge of the given kind; raises StageError for a bad configuration."""
    from salsa.artifacts import StageError

    cache = JudgmentCache(cache_dir) if cache_dir else None
    if kind == "gold":
        from salsa.judges.scorers import GoldJudge
        return GoldJudge(gold_extra_penalty, gold_tie_threshold, gold_strong_threshold)
    if not model:
        raise StageError(f"--judge {kind} needs --judge-model")
    if kind == "openai":
        from salsa.judges.openai_judge import MissingAPIKey, OpenAIJudge
        try:
            return OpenAIJudge(model, base_url, api_key_env, concurrency, max_retries, backoff_initial,
                               backoff_max, request_timeout, token_param, cache)
        except MissingAPIKey as err:
            raise StageError(str(err)) from None
    if not Path(model).is_dir():
        raise StageError(f"{model}: model directory not found")
    if kind == "local":
        from salsa.judges.local import LocalJudge
        return LocalJudge(model, batch_size, max_new_tokens_cap, device, seed, cache)
    if kind == "reward":
        from salsa.judges.scorers import RewardJudge
        return RewardJudge(model, batch_size, device, reward_tie_threshold, reward_strong_threshold)
    raise StageError(f"unknown judge kind {kind!r}; known: {', '.join(JUDGE_KINDS)}")
