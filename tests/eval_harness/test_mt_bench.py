"""MT-Bench: prompts, rating parsing, resumable answers/judging against judges on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from eval_harness.errors import ConfigError
from eval_harness.jsonl import read_records
from eval_harness.tasks import mt_bench

DATA = mt_bench.DATA


@dataclass
class FakeJudge:
    """An OpenAI-compatible endpoint on 127.0.0.1 that answers with scripted judgments."""

    reply: str = "Good. Rating: [[7]]"
    requests: list[dict] = field(default_factory=list)
    server: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def fake_judge() -> Iterator[FakeJudge]:
    judge = FakeJudge()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            judge.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
            content = judge.reply(body) if callable(judge.reply) else judge.reply
            payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    judge.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=judge.server.serve_forever, daemon=True)
    thread.start()
    yield judge
    judge.server.shutdown()
    judge.server.server_close()


@dataclass
class ScriptedGenerator:
    prefix: str = "answer"
    calls: list[list[str]] = field(default_factory=list)

    def generate(self, prompts, *, max_new_tokens, temperature=0.0, top_p=1.0, num_samples=1, stop=(), seed=0,
                 desc="generate"):
        self.calls.append(list(prompts))
        return [[f"{self.prefix} #{len(self.calls)}-{i}"] for i in range(len(prompts))]


@dataclass
class FakeModel:
    label: str = "m"
    method: str = "NLoRA"
    seed: int | None = 0
    trainable_params: int | None = 123
    base_model: str = "models/tiny"
    tokenizer: object = None
    generator: ScriptedGenerator = field(default_factory=ScriptedGenerator)

    @property
    def generation(self):
        from eval_harness.config import GenerationDefaults

        return GenerationDefaults(max_new_tokens=16)


def settings(base_url: str, **fields) -> mt_bench.MTBenchSettings:
    section = {"judge": {"base_url": base_url, "model": "judge", "api_key_env": None, "max_retries": 0},
               **fields}
    return mt_bench.parse_section(section, where="benchmarks.mt_bench", base_dir=Path("."))


def test_packaged_data_is_the_80_questions_and_8_prompts():
    questions = read_records(DATA / "question.jsonl", where="questions")
    assert len(questions) == 80 and all(len(q["turns"]) == 2 for q in questions)
    assert len(read_records(DATA / "judge_prompts.jsonl", where="judge_prompts")) == 8
    assert (DATA / "LICENSE").is_file()


@pytest.mark.parametrize("text,rating", [("ok [[8]]", 8.0), ("[[9.5]] then [[2]]", 9.5), ("[6]", 6.0),
                                         ("no rating", None), ("[[0]]", None), ("[[11]]", None)])
def test_parse_rating(text, rating):
    assert mt_bench.parse_rating(text) == rating


@pytest.mark.parametrize("ab,ba,score", [("A", "B", 1.0), ("B", "A", 0.0), ("A", "A", 0.5), ("tie", "tie", 0.5),
                                         (None, "B", 0.5)])
def test_pair_score_needs_both_orders_to_agree(ab, ba, score):
    assert mt_bench.pair_score(ab, ba) == score


def test_math_questions_are_graded_with_the_reference_and_turn_two_sees_turn_one():
    s = settings("http://127.0.0.1:1/v1")
    questions = mt_bench.load_questions(s)
    prompts, references = mt_bench.load_judge_prompts(s), mt_bench.load_references(s, questions)
    math = next(q for q in questions if q["category"] == "math")
    name, _, user = mt_bench.single_request(prompts, math, ["FIRST", "SECOND"], 2, references)
    assert name == "single-math-v1-multi-turn"
    assert "FIRST" in user and "SECOND" in user and references[math["question_id"]][1] in user
    writing = next(q for q in questions if q["category"] == "writing")
    assert mt_bench.single_request(prompts, writing, ["a", "b"], 1, references)[0] == "single-v1"


def test_missing_reference_answers_are_reported(tmp_path, caplog):
    empty = tmp_path / "refs.jsonl"
    empty.write_text("")
    s = settings("http://127.0.0.1:1/v1", reference_answers=str(empty), categories=["math"], limit=2)
    questions = mt_bench.load_questions(s)
    assert mt_bench.load_references(s, questions) == {}
    assert str([q["question_id"] for q in questions]) in caplog.text and "single-v1" in caplog.text


def test_plain_chat_prompt_carries_the_first_turn():
    prompt = mt_bench.chat_prompt(object(), [("Q1", "A1"), ("Q2", None)])
    assert prompt.index("Q1") < prompt.index("A1") < prompt.index("Q2") and prompt.endswith("### Assistant:\n")


@pytest.mark.parametrize(
    "section,field_name",
    [
        ({}, "judge"),
        ({"judge": {"base_url": "127.0.0.1:8000", "model": "j", "api_key_env": None}}, "judge.base_url"),
        ({"judge": {"base_url": "http://x/v1", "model": "j", "api_key_env": "NLORA_TEST_UNSET_KEY"}},
         "judge.api_key_env"),
        ({"judge": {"base_url": "http://x/v1", "model": "j", "api_key_env": None}, "mode": "both"}, "baseline_label"),
        ({"judge": {"base_url": "http://x/v1", "model": "j", "api_key_env": None}, "categories": ["poetry"]},
         "categories"),
        ({"judge": {"base_url": "http://x/v1", "model": "j", "api_key_env": None, "temprature": 0}}, "judge.temprature"),
    ],
)
def test_bad_sections_name_the_field(section, field_name, monkeypatch):
    monkeypatch.delenv("NLORA_TEST_UNSET_KEY", raising=False)
    with pytest.raises(ConfigError, match=rf"benchmarks\.mt_bench\.{field_name}"):
        mt_bench.parse_section(section, where="benchmarks.mt_bench", base_dir=Path("."))


def test_api_key_is_sent_as_bearer(fake_judge, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY_FOR_TEST", "sk-test")
    s = mt_bench.parse_section({"judge": {"base_url": fake_judge.base_url, "model": "j",
                                          "api_key_env": "JUDGE_KEY_FOR_TEST"}, "limit": 1},
                               where="benchmarks.mt_bench", base_dir=Path("."))
    mt_bench.run(s, model=FakeModel(), out_dir=tmp_path)
    assert fake_judge.requests and all(r["auth"] == "Bearer sk-test" for r in fake_judge.requests)
    assert all(r["path"] == "/v1/chat/completions" for r in fake_judge.requests)


def test_run_scores_resumes_and_never_asks_twice(fake_judge, tmp_path):
    s = settings(fake_judge.base_url, limit=3)
    model = FakeModel()
    summary = mt_bench.run(s, model=model, out_dir=tmp_path)
    assert summary["metrics"]["score"] == 7.0 and summary["n_items"] == 6
    assert len(fake_judge.requests) == 6 and len(model.generator.calls) >= 2
    assert all("answer #" in r["body"]["messages"][1]["content"] for r in fake_judge.requests)  # graded answers
    again = FakeModel()
    assert mt_bench.run(s, model=again, out_dir=tmp_path)["metrics"]["score"] == 7.0
    assert len(fake_judge.requests) == 6 and again.generator.calls == []  # nothing regenerated or re-judged


def test_unparsable_judgments_are_kept_but_not_scored(fake_judge, tmp_path):
    fake_judge.reply = lambda body: "[[3]]" if "[The Start of Assistant's Answer]" in body["messages"][1][
        "content"] and "multi" not in body["messages"][0]["content"] else "I refuse"
    s = settings(fake_judge.base_url, limit=2, categories=["writing"])
    summary = mt_bench.run(s, model=FakeModel(), out_dir=tmp_path)
    judgments = [json.loads(line) for line in (tmp_path / "judgments.jsonl").read_text().splitlines()]
    assert len(judgments) == 4
    assert summary["n_items"] + summary["extra"]["unparsed_judgments"] == 4
    assert all(isinstance(json.loads(line)["score"], float) for line in (tmp_path / "items.jsonl").read_text().splitlines())


def test_pairwise_judges_both_orders(fake_judge, tmp_path):
    s = settings(fake_judge.base_url, limit=2, mode="both", baseline_label="base")
    mt_bench.run(s, model=FakeModel(label="base", method="base", generator=ScriptedGenerator("BASE")),
                 out_dir=tmp_path / "base" / "mt_bench")
    mt_bench.run(s, model=FakeModel(label="tuned", generator=ScriptedGenerator("TUNED")),
                 out_dir=tmp_path / "tuned" / "mt_bench")
    fake_judge.requests.clear()
    fake_judge.reply = lambda body: "[[A]]"  # always the first position: position bias, so every pair ties
    summary = mt_bench.run_pairwise(s, label_a="tuned", label_b="base", run_dir=tmp_path)
    assert summary["benchmark"] == "mt_bench_vs_base" and summary["method"] == "NLoRA"
    assert len(fake_judge.requests) == 2 * 2 * 2  # questions × turns × orders
    assert summary["metrics"]["tie_rate"] == 1.0
    def prefer_tuned(body: dict) -> str:
        content = body["messages"][1]["content"]
        return "[[A]]" if content.index("TUNED") < content.index("BASE") else "[[B]]"

    fake_judge.reply = prefer_tuned
    fake_judge.requests.clear()
    (tmp_path / "tuned" / "mt_bench_vs_base" / "judgments.jsonl").unlink()
    assert mt_bench.run_pairwise(s, label_a="tuned", label_b="base", run_dir=tmp_path)["metrics"]["win_rate"] == 1.0


def test_judging_stops_at_a_refusal_and_keeps_every_answer_received(tmp_path):
    """Request 1 of 40 is refused (not retryable): at most the requests already in flight are sent, each
    answer that arrives is logged, and the error names the request; a rerun asks only for the rest."""
    import time

    from eval_harness.judge import JudgeError
    from eval_harness.results import ItemLog

    s = settings("http://127.0.0.1:1/v1")
    s = mt_bench.MTBenchSettings(**{**s.__dict__, "judge": mt_bench.JudgeSettings(
        **{**s.judge.__dict__, "concurrency": 2})})
    sent: list[str] = []

    def make(key: str):
        def ask(client):
            sent.append(key)
            if key == "q00":
                raise JudgeError("HTTP 400: bad request")
            time.sleep(0.05)
            return {"rating": 5.0}
        return ask

    requests = {f"q{i:02d}": make(f"q{i:02d}") for i in range(40)}
    log = ItemLog(tmp_path / "judgments.jsonl")
    with pytest.raises(JudgeError, match="stopped at request q00: HTTP 400"):
        mt_bench.judge_all(s, requests, log, desc="t")
    assert len(sent) <= 3, sent
    assert log.done_ids() == set(sent) - {"q00"}
    answered_before = len(log.done_ids())
    sent.clear()
    requests["q00"] = lambda client: {"rating": 1.0}  # the endpoint is fixed; q00 is not counted in `sent`
    mt_bench.judge_all(s, requests, log, desc="t")
    assert len(log.done_ids()) == 40 and len(sent) == 40 - answered_before - 1
