"""A small client for any OpenAI-compatible chat-completions endpoint (the MT-Bench judge)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_WAIT_S = 60.0


class JudgeError(RuntimeError):
    """The judge endpoint refused a request, or kept failing after every retry."""


@dataclass(frozen=True)
class JudgeSettings:
    """Where the judge is and how to talk to it (the `judge:` block of the mt_bench section)."""

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 2048
    timeout_s: float = 120.0
    max_retries: int = 4
    concurrency: int = 4
    backoff_s: float = 2.0  # first retry waits this long, each later one twice as long (at most MAX_WAIT_S)


class JudgeClient:
    """POST {base_url}/chat/completions with bounded retries and backoff on 429/5xx/connection errors."""

    def __init__(self, settings: JudgeSettings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
        self._client = httpx.Client(
            base_url=settings.base_url.rstrip("/"), headers=headers, timeout=settings.timeout_s, transport=transport
        )

    def complete(self, system: str, user: str) -> str:
        """The judge's reply to one system + user message."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": user})
        body = {
            "model": self.settings.model,
            "messages": messages,
            "temperature": self.settings.temperature,
            "max_tokens": self.settings.max_tokens,
        }
        url = f"{self.settings.base_url.rstrip('/')}/chat/completions"
        last_problem, wait_s = "", 0.0
        for attempt in range(self.settings.max_retries + 1):
            if attempt:
                time.sleep(wait_s)
            wait_s = min(self.settings.backoff_s * 2.0**attempt, MAX_WAIT_S)
            try:
                response = self._client.post("/chat/completions", json=body)
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
                logger.warning("judge %s: %s (attempt %d)", url, last_problem, attempt + 1)
                continue
            if response.status_code in RETRY_STATUS:
                wait_s = max(wait_s, _retry_after_s(response))
                last_problem = f"HTTP {response.status_code}: {response.text[:200]}"
                logger.warning("judge %s: %s (attempt %d)", url, last_problem, attempt + 1)
                continue
            if response.status_code >= 400:
                raise JudgeError(
                    f"judge endpoint {url} refused the request (HTTP {response.status_code}): {response.text[:300]}; "
                    "check benchmarks.mt_bench.judge.base_url, .model and the API key variable"
                )
            try:
                return response.json()["choices"][0]["message"]["content"] or ""
            except (ValueError, KeyError, IndexError, TypeError) as error:
                raise JudgeError(f"judge endpoint {url} answered without choices[0].message.content: "
                                 f"{response.text[:300]}") from error
        raise JudgeError(f"judge endpoint {url} failed {self.settings.max_retries + 1} times; last: {last_problem}")

    def close(self) -> None:
        self._client.close()


def _retry_after_s(response: httpx.Response) -> float:
    """The server's Retry-After in seconds (capped at MAX_WAIT_S); 0 when absent or an HTTP date."""
    try:
        return min(max(float(response.headers.get("Retry-After", 0)), 0.0), MAX_WAIT_S)
    except ValueError:
        return 0.0
