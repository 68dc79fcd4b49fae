"""A small client for any OpenAI-compatible chat-completions endpoint (the MT-Bench judge).

`timeout_s` is a total deadline per request (connect, send, headers and body together), not httpx's
per-read timeout: every socket read and write of the request is bounded by the time left, so a server
that trickles bytes cannot hold a request open. A reply larger than MAX_RESPONSE_BYTES, or one whose
content is not a string, is an error naming the endpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

import httpcore
import httpx

logger = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
MAX_WAIT_S = 60.0
MAX_RESPONSE_BYTES = 4 * 2**20  # a judgement is a few KB; anything this large is not a chat completion
_deadline = threading.local()  # .at: time.monotonic() by which the current thread's request must end


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
            base_url=settings.base_url.rstrip("/"), headers=headers, timeout=settings.timeout_s,
            transport=transport or DeadlineTransport(),
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
                response, data = self._post(body)
            except httpx.TransportError as error:
                last_problem = f"{type(error).__name__}: {error}"
                logger.warning("judge %s: %s (attempt %d)", url, last_problem, attempt + 1)
                continue
            if response.status_code in RETRY_STATUS:
                wait_s = max(wait_s, _retry_after_s(response))
                last_problem = f"HTTP {response.status_code}: {_text(data)[:200]}"
                logger.warning("judge %s: %s (attempt %d)", url, last_problem, attempt + 1)
                continue
            if response.status_code >= 400:
                raise JudgeError(
                    f"judge endpoint {url} refused the request (HTTP {response.status_code}): {_text(data)[:300]}; "
                    "check benchmarks.mt_bench.judge.base_url, .model and the API key variable"
                )
            try:
                content = json.loads(data)["choices"][0]["message"]["content"]
            except (ValueError, KeyError, IndexError, TypeError) as error:
                raise JudgeError(f"judge endpoint {url} answered without choices[0].message.content: "
                                 f"{_text(data)[:300]}") from error
            if content is not None and not isinstance(content, str):
                raise JudgeError(f"judge endpoint {url} answered with a {type(content).__name__} as "
                                 f"choices[0].message.content, not text: {_text(data)[:300]}")
            return content or ""
        raise JudgeError(f"judge endpoint {url} failed {self.settings.max_retries + 1} times; last: {last_problem}")

    def _post(self, body: dict) -> tuple[httpx.Response, bytes]:
        """POST one request under the total deadline; the response and its body (at most MAX_RESPONSE_BYTES)."""
        _deadline.at = time.monotonic() + self.settings.timeout_s
        try:
            with self._client.stream("POST", "/chat/completions", json=body) as response:
                chunks, size = [], 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_RESPONSE_BYTES:
                        raise JudgeError(f"judge endpoint {self.settings.base_url} sent a reply larger than "
                                         f"{MAX_RESPONSE_BYTES} bytes; it is not an OpenAI-compatible chat completion "
                                         "(check benchmarks.mt_bench.judge.base_url)")
                    chunks.append(chunk)
                return response, b"".join(chunks)
        finally:
            _deadline.at = None

    def close(self) -> None:
        self._client.close()


def _text(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _bounded(timeout: float | None, error: type[Exception]) -> float | None:
    """`timeout` cut to the time the current request has left; `error` once its deadline passed."""
    deadline = getattr(_deadline, "at", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise error("the request's total deadline (judge.timeout_s) passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket stream whose every read and write is bounded by the current request's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(ssl_context, server_hostname,
                                                      _bounded(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str):
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options=None) -> httpcore.NetworkStream:
        return _DeadlineStream(super().connect_tcp(host, port, _bounded(timeout, httpcore.ConnectTimeout),
                                                   local_address, socket_options))


class DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport (its error mapping included) on a connection pool with deadline-bound sockets."""

    def __init__(self) -> None:
        super().__init__()
        self._pool = httpcore.ConnectionPool(ssl_context=httpx.create_ssl_context(), network_backend=_DeadlineBackend())


def _retry_after_s(response: httpx.Response) -> float:
    """The server's Retry-After in seconds (capped at MAX_WAIT_S); 0 when absent or an HTTP date."""
    try:
        return min(max(float(response.headers.get("Retry-After", 0)), 0.0), MAX_WAIT_S)
    except ValueError:
        return 0.0
