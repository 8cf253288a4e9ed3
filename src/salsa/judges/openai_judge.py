"""Judge through any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, `transformers serve`).

Requests run in a bounded thread pool. Timeouts, connection errors, 408/409/429 and 5xx
are retried with exponential backoff (honouring Retry-After up to the cap); other errors
fail the request at once, and 401/403/404 (bad key, no access, unknown model or URL) stop
the whole run: every other request would fail the same way. The API key is read from the
environment variable named in the config; it is never logged, cached or written, and error
texts (which some servers echo the key into) are redacted before they are kept.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import threading
import time
from typing import Sequence

from salsa.judges.base import ChatRequest, Completion, JudgeFatalError, TextJudge
from salsa.judges.cache import JudgmentCache

RETRYABLE_STATUS = {408, 409, 429}
FATAL_STATUS = {401, 403, 404}
# Things that look like credentials in an error text, whatever key the server saw.
_SECRET_PATTERNS = (re.compile(r"\b(sk|rk|pk)-[A-Za-z0-9_\-*]{6,}"), re.compile(r"(?i)(bearer\s+)\S+"))
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
        self._key = key
        self._fatal = threading.Event()   # set on 401/403/404: the remaining requests are not sent
        self._openai = openai
        self.model = model
        self.concurrency = max(1, int(concurrency))
        self.max_retries = max(0, int(max_retries))
        self.backoff_initial = float(backoff_initial)
        self.backoff_max = float(backoff_max)
        if token_param == "auto":
            token_param = "max_completion_tokens" if model.startswith(_COMPLETION_TOKEN_MODELS) else "max_tokens"
        self.token_param = token_param

    def redact(self, text: str) -> str:
        """The text with the API key (and anything shaped like a key or bearer token) masked."""
        if self._key and self._key != "EMPTY" and len(self._key) >= 4:
            text = text.replace(self._key, "[REDACTED]")
        text = _SECRET_PATTERNS[0].sub("[REDACTED]", text)
        return _SECRET_PATTERNS[1].sub(r"\1[REDACTED]", text)

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
            if self._fatal.is_set():
                return Completion(None, error="not sent: an earlier request failed for good")
            try:
                return Completion(self._request_once(request))
            except openai.APIStatusError as err:
                status = err.status_code
                message = self.redact(f"HTTP {status} from {self.model}: {_first_line(err)}")
                if status in FATAL_STATUS:
                    self._fatal.set()
                    self.stats.error(message)
                    raise JudgeFatalError(message) from None
                retryable = status in RETRYABLE_STATUS or status >= 500
                retry_after = _retry_after_seconds(err)
            except openai.APITimeoutError:
                message, retryable = f"timeout after {self._client.timeout}s", True
            except openai.APIConnectionError as err:
                message, retryable = self.redact(f"connection error: {_first_line(err)}"), True
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
            try:
                for future in tqdm(concurrent.futures.as_completed(futures), total=len(futures), desc=desc,
                                   disable=not progress, mininterval=1.0):
                    results[futures[future]] = future.result()
            except JudgeFatalError:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
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
