"""The judge interface shared by the benchmark protocols.

Two kinds of judge:

* ``TextJudge`` answers chat requests with text (an OpenAI-compatible API, or a local
  transformers model). The protocols build upstream's judge prompts and parse the reply.
  ``complete(messages)`` runs one request, ``complete_batch(requests)`` many; both go
  through the disk cache, so a rerun never asks twice.
* ``ScoreJudge`` scores a conversation with a number (the reward model, the embedded
  task's gold function). Pairwise verdicts and 1-10 ratings are documented mappings of
  those numbers (``verdict_from_difference``, the judges' ``rate``).
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import json
import math
import threading
from collections import Counter
from typing import Sequence

from salsa.judges.cache import JudgmentCache

Messages = list[dict]


class JudgeAPIError(RuntimeError):
    """A request that still failed after all retries (the message never holds credentials)."""


class JudgeFatalError(JudgeAPIError):
    """An error no retry or later request can fix (HTTP 401/403/404): the run stops."""


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    messages: tuple[tuple[str, str], ...]       # ((role, content), ...): hashable and order-preserving
    temperature: float = 0.0
    max_tokens: int = 2048

    @classmethod
    def of(cls, messages: Messages, temperature: float = 0.0, max_tokens: int = 2048) -> "ChatRequest":
        return cls(tuple((m["role"], m["content"]) for m in messages), float(temperature), int(max_tokens))

    def as_messages(self) -> Messages:
        return [{"role": role, "content": content} for role, content in self.messages]

    def cache_key(self, model: str) -> str:
        """sha256 of everything that decides the reply."""
        payload = {"model": model, "messages": self.as_messages(), "temperature": self.temperature,
                   "max_tokens": self.max_tokens}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Completion:
    text: str | None
    error: str | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


class JudgeStats:
    """Thread-safe tallies for the end-of-run summary."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def error(self, message: str) -> None:
        with self._lock:
            self.counts["api_errors"] += 1
            self.errors[message[:200]] += 1

    def summary(self) -> str:
        c = self.counts
        text = (f"{c['requests']} judge requests: {c['cache_hits']} from cache, {c['api_calls']} API calls, "
                f"{c['retries']} retries, {c['api_errors']} failed after retries, "
                f"{c['parse_failures']} replies without a parseable verdict")
        for message, n in self.errors.most_common(3):
            text += f"\n  api error x{n}: {message}"
        return text


class TextJudge(abc.ABC):
    """A judge that replies in text; subclasses implement ``_complete_uncached``."""

    name: str                      # recorded in judgments, and part of the cache key
    concurrency: int = 1

    def __init__(self, name: str, cache: JudgmentCache | None = None) -> None:
        self.name = name
        self.cache = cache
        self.stats = JudgeStats()

    def complete(self, messages: Messages, temperature: float = 0.0, max_tokens: int = 2048) -> str:
        result = self.complete_batch([ChatRequest.of(messages, temperature, max_tokens)], progress=False)[0]
        if not result.ok:
            raise JudgeAPIError(result.error or "no reply")
        return result.text  # type: ignore[return-value]

    def complete_batch(self, requests: Sequence[ChatRequest], progress: bool = True,
                       desc: str = "judging") -> list[Completion]:
        """One Completion per request, in order; cached replies are not requested again."""
        results: list[Completion | None] = [None] * len(requests)
        missing: list[int] = []
        self.stats.add("requests", len(requests))
        for i, request in enumerate(requests):
            hit = self.cache.get(request.cache_key(self.name)) if self.cache is not None else None
            if hit is not None:
                results[i] = Completion(hit["text"], cached=True)
                self.stats.add("cache_hits")
            else:
                missing.append(i)
        if missing:
            fresh = self._complete_uncached([requests[i] for i in missing], progress, desc)
            for i, completion in zip(missing, fresh):
                results[i] = completion
                if completion.ok and self.cache is not None:   # errors are not cached: a rerun retries them
                    self.cache.put(requests[i].cache_key(self.name), self.name, requests[i].as_messages(),
                                   requests[i].temperature, requests[i].max_tokens, completion.text)
        return results  # type: ignore[return-value]

    @abc.abstractmethod
    def _complete_uncached(self, requests: Sequence[ChatRequest], progress: bool, desc: str) -> list[Completion]:
        ...


class ScoreJudge(abc.ABC):
    """A judge that scores conversations; verdicts and ratings derive from the scores."""

    name: str
    tie_threshold: float
    strong_threshold: float

    def __init__(self) -> None:
        self.stats = JudgeStats()

    @abc.abstractmethod
    def score(self, conversations: Sequence[Messages], progress: bool = True) -> list[float]:
        """A number per conversation for its last assistant turn (higher is better)."""

    @abc.abstractmethod
    def rate(self, score: float) -> float:
        """The score on MT-Bench's 1-10 scale."""

    @property
    def rating_rule(self) -> str:
        return type(self).__name__

    def verdict(self, score_a: float, score_b: float) -> str:
        return verdict_from_difference(score_a - score_b, self.tie_threshold, self.strong_threshold)


def verdict_from_difference(diff: float, tie: float, strong: float) -> str:
    """Arena-Hard label from score(A) - score(B): |d| < tie -> A=B; |d| >= strong -> >>; else >."""
    if not math.isfinite(diff):
        raise ValueError(f"score difference is not finite: {diff}")
    if abs(diff) < tie:
        return "A=B"
    if diff > 0:
        return "A>>B" if diff >= strong else "A>B"
    return "B>>A" if -diff >= strong else "B>A"
