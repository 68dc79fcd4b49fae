"""The judge client against a scripted OpenAI-compatible server on 127.0.0.1: retries, errors, payload."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval_harness.judge import JudgeClient, JudgeError, JudgeSettings


class ScriptedServer:
    """Answers POSTs with the next (status, body, headers) of a script; records what it was sent."""

    def __init__(self, script: list[tuple[int, object, dict[str, str]]]) -> None:
        self.script = list(script)
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
                status, reply, headers = outer.script.pop(0)
                payload = (reply if isinstance(reply, str) else json.dumps(reply)).encode()
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def serve() -> Iterator:
    servers: list[ScriptedServer] = []

    def start(*script: tuple[int, object, dict[str, str]]) -> ScriptedServer:
        server = ScriptedServer(list(script))
        threading.Thread(target=server.server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.server.shutdown()
        server.server.server_close()


def ok(text: str) -> tuple[int, object, dict[str, str]]:
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}}]}, {}


def client(base_url: str, **fields) -> JudgeClient:
    return JudgeClient(JudgeSettings(**{"base_url": base_url, "model": "judge-model", "timeout_s": 5.0,
                                        "backoff_s": 0.01, **fields}))


def test_request_is_an_openai_chat_completion(serve):
    server = serve(ok("Rating: [[7]]"))
    judge = client(server.base_url, api_key="sk-test", temperature=0.0, max_tokens=99)
    assert judge.complete("You are a judge.", "Grade this.") == "Rating: [[7]]"
    judge.close()
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer sk-test"
    assert request["body"] == {"model": "judge-model", "temperature": 0.0, "max_tokens": 99, "messages": [
        {"role": "system", "content": "You are a judge."}, {"role": "user", "content": "Grade this."}]}


def test_no_key_sends_no_authorization_and_empty_system_is_left_out(serve):
    server = serve(ok("fine"))
    client(server.base_url).complete("", "Grade this.")
    assert server.requests[0]["auth"] is None
    assert server.requests[0]["body"]["messages"] == [{"role": "user", "content": "Grade this."}]


def test_rate_limits_and_server_errors_are_retried(serve):
    server = serve((429, {"error": "slow down"}, {"Retry-After": "0"}), (503, "busy", {}), ok("[[5]]"))
    assert client(server.base_url, max_retries=2).complete("s", "u") == "[[5]]"
    assert len(server.requests) == 3


def test_retries_are_bounded(serve):
    server = serve(*[(500, "boom", {})] * 3)
    with pytest.raises(JudgeError, match=r"failed 2 times; last: HTTP 500"):
        client(server.base_url, max_retries=1).complete("s", "u")
    assert len(server.requests) == 2  # the third scripted answer is never asked for


def test_client_errors_name_the_endpoint_and_are_not_retried(serve):
    server = serve((401, {"error": "bad key"}, {}), ok("never"))
    with pytest.raises(JudgeError, match=rf"{server.base_url}/chat/completions refused .*HTTP 401.*bad key"):
        client(server.base_url, max_retries=3).complete("s", "u")
    assert len(server.requests) == 1


def test_reply_without_choices_is_a_clear_error(serve):
    server = serve((200, {"object": "error"}, {}))
    with pytest.raises(JudgeError, match="without choices"):
        client(server.base_url).complete("s", "u")


def test_unreachable_endpoint_is_retried_then_named():
    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(JudgeError, match=rf"127\.0\.0\.1:{port}/v1/chat/completions failed 2 times; last: Connect"):
        client(f"http://127.0.0.1:{port}/v1", max_retries=1).complete("s", "u")


class TricklingServer:
    """Answers every connection one byte every `pause_s` (headers and body), for as long as it is listened to."""

    def __init__(self, pause_s: float, body_only: bool) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.base_url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        self.pause_s, self.body_only, self.stop = pause_s, body_only, threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import time

        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            body = json.dumps({"choices": [{"message": {"content": "x" * 200}}]}).encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
            try:
                conn.recv(65536)
                if self.body_only:
                    conn.sendall(head)
                for byte in (body if self.body_only else head + body):
                    if self.stop.is_set():
                        break
                    conn.sendall(bytes([byte]))
                    time.sleep(self.pause_s)
            except OSError:
                pass
            finally:
                conn.close()


@pytest.mark.parametrize("body_only", [True, False], ids=["body", "headers"])
def test_timeout_is_a_total_deadline_per_request_not_per_read(body_only):
    """A server trickling one byte every 0.1 s would take > 25 s per reply; timeout_s=1 must end it in ~1 s."""
    import time

    server = TricklingServer(0.1, body_only)
    try:
        start = time.monotonic()
        with pytest.raises(JudgeError, match="failed 2 times.*(?i:timeout)"):
            client(server.base_url, timeout_s=1.0, max_retries=1).complete("", "q")
        assert time.monotonic() - start < 10.0
    finally:
        server.stop.set()
        server.sock.close()


@pytest.mark.parametrize("content", [123, ["a"], {"text": "a"}])
def test_non_string_content_is_a_clear_error(serve, content):
    server = serve((200, {"choices": [{"message": {"content": content}}]}, {}))
    with pytest.raises(JudgeError, match=rf"answered with a {type(content).__name__} .*not text"):
        client(server.base_url).complete("", "q")


def test_a_huge_reply_is_refused(serve, monkeypatch):
    from eval_harness import judge

    monkeypatch.setattr(judge, "MAX_RESPONSE_BYTES", 1000)
    server = serve(ok("y" * 5000))
    with pytest.raises(JudgeError, match="larger than 1000 bytes"):
        client(server.base_url).complete("", "q")
    assert len(server.requests) == 1  # not retried
