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
    return JudgeClient(JudgeSettings(base_url=base_url, model="judge-model", timeout_s=5.0, backoff_s=0.01,
                                     **fields))


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
