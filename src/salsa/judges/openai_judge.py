"""Judge through any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, `transformers serve`).

Requests run in a bounded thread pool. Timeouts, connection errors, 408/409/429 and 5xx
are retried with exponential backoff (honouring Retry-After up to the cap); other errors
fail at once. The API key is read from the environment variable named in the config and
is never logged, cached or written.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from typing import Sequence

from salsa.judges.base import ChatRequest, Completion, TextJudge
from salsa.judges.cache import JudgmentCache

RETRYABLE_STATUS = {408, 409, 429}
# Reasoning models reject `max_tokens` and want `max_completion_tokens`.
_COMPLETION_TOKEN_MODELS = ("o1", "o3", "o4", "gpt-5")


class MissingAPIKey(RuntimeError):
    pass


class OpenAIJudge(TextJudge):
    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, max_retries: int = 6, backoff_initial: float = 1.0,
                 backoff_max: float = 60.0, request_timeout: float = 120.0,
                 token_param: str = "auto", cache: JudgmentCache | None = None) -> None:
        import openai

        super().__init__(model, cache)
        key = os.environ.get(api_key_env)
        if not key:
            if not base_url:
                raise MissingAPIKey(f"set the API key in ${api_key_env} (or point --base-url at a local server)")
            key = "EMPTY"   # local servers (vLLM, transformers serve) accept any key
        # Retries are ours (counted, with our backoff), so the client's own are off.
        self._client = openai.OpenAI(api_key=key, base_url=base_url or None, max_retries=0,
                                     timeout=request_timeout)
        self._openai = openai
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        if token_param == "auto":
            token_param = "max_completion_tokens" if model.startswith(_COMPLETION_TOKEN_MODELS) else "max_tokens"
        self.token_param = token_param

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        delay = self.backoff_initial * (2 ** attempt)
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, self.backoff_max)

    def _request_once(self, request: ChatRequest) -> str:
        self.stats.add("api_calls")
        response = self._client.chat.completions.create(
            model=self.model, messages=request.as_messages(), temperature=request.temperature,
            **{self.token_param: request.max_tokens})
        if not response.choices:
            return ""
        return response.choices[0].message.content or ""

    def request(self, request: ChatRequest) -> Completion:
        """One request with retries; never raises for API trouble (it becomes Completion.error)."""
        openai = self._openai
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                return Completion(self._request_once(request))
            except openai.APIStatusError as err:
                status = err.status_code
                message = f"HTTP {status} from {self.model}: {_first_line(err)}"
                retryable = status in RETRYABLE_STATUS or status >= 500
                retry_after = _retry_after_seconds(err)
            except openai.APITimeoutError:
                message, retryable = f"timeout after {self._client.timeout}s", True
            except openai.APIConnectionError as err:
                message, retryable = f"connection error: {_first_line(err)}", True
            if not retryable or attempt == self.max_retries:
                self.stats.error(message)
                return Completion(None, error=message)
            self.stats.add("retries")
            time.sleep(self.backoff(attempt, retry_after))
        raise AssertionError("unreachable")

    def _complete_uncached(self, requests: Sequence[ChatRequest], progress: bool, desc: str) -> list[Completion]:
        from tqdm import tqdm

        results: list[Completion | None] = [None] * len(requests)
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = {pool.submit(self.request, r): i for i, r in enumerate(requests)}
            for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc=desc,
                               disable=not progress, mininterval=1.0):
                results[futures[future]] = future.result()
        return results  # type: ignore[return-value]


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _retry_after_seconds(err) -> float | None:
    try:
        value = err.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, TypeError, ValueError):
        return None
