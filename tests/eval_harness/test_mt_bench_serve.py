"""MT-Bench against a real OpenAI-compatible server on 127.0.0.1: `transformers serve` with a tiny model."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from eval_harness.eval_yaml import load_config
from eval_harness.offline import offline_env
from eval_harness.runner import run_config
from eval_harness.tasks import mt_bench
from eval_harness.tiny_decoder import build_tiny_decoder

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served_tiny_model(tmp_path_factory):
    model_dir = build_tiny_decoder(tmp_path_factory.mktemp("serve") / "tiny-llama")
    port = free_port()
    command = [str(Path(sys.executable).parent / "transformers"), "serve", "--host", "127.0.0.1", "--port",
               str(port), "--device", "cpu", "--dtype", "float32", str(model_dir)]
    log = (model_dir.parent / "serve.log").open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=offline_env())
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if server.poll() is not None:
                pytest.fail(f"transformers serve exited: {(model_dir.parent / 'serve.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        else:
            pytest.fail("transformers serve did not answer /health within 180 s")
        yield model_dir, f"http://127.0.0.1:{port}/v1"
    finally:
        server.kill()
        server.wait(timeout=30)
        log.close()


def test_mt_bench_judged_by_a_served_model_end_to_end(served_tiny_model, tmp_path):
    model_dir, base_url = served_tiny_model
    config_path = tmp_path / "eval.yaml"
    config_path.write_text(yaml.safe_dump({
        "base_model": str(model_dir), "dtype": "float32", "device": "cpu",
        "models": [{"label": "tiny", "method": "base"}],
        "generation": {"batch_size": 2, "max_new_tokens": 8, "temperature": 0.0, "seed": 0},
        "benchmarks": {"mt_bench": {"limit": 2, "max_new_tokens": 8, "judge": {
            "base_url": base_url, "model": str(model_dir), "api_key_env": None, "max_tokens": 16,
            "max_retries": 1, "concurrency": 2}}},
    }))
    run_dir = tmp_path / "run"
    run_config(load_config(config_path), run_dir, command=["test"])
    out = run_dir / "tiny" / "mt_bench"
    judgments = [json.loads(line) for line in (out / "judgments.jsonl").read_text().splitlines()]
    assert sorted(j["id"] for j in judgments) == sorted(f"{q}-t{t}" for q in (81, 82) for t in (1, 2))
    assert all(isinstance(j["judgment"], str) and j["judgment"] for j in judgments)  # real completions came back
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_items"] + summary["extra"]["unparsed_judgments"] == 4
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and all(len(a["turns"]) == 2 for a in answers)

    # a killed run resumes: without summary.json the benchmark reruns, yet nothing is generated or judged again
    logs = {name: (out / name).read_bytes() for name in ("answers.jsonl", "judgments.jsonl")}
    (out / "summary.json").unlink()
    run_config(load_config(config_path), run_dir, command=["test"])
    assert {name: (out / name).read_bytes() for name in logs} == logs
    assert json.loads((out / "summary.json").read_text())["n_items"] == summary["n_items"]

    # pairwise over the same endpoint: 2 questions x 2 turns x 2 orders, every verdict kept with its raw text
    (run_dir / "other" / "mt_bench").mkdir(parents=True)
    (run_dir / "other" / "mt_bench" / "answers.jsonl").write_text("".join(
        json.dumps({"id": a["id"], "category": a["category"], "turns": ["I do not know.", "Still no idea."]}) + "\n"
        for a in answers))
    settings = load_config(config_path).benchmarks["mt_bench"]
    pair = mt_bench.run_pairwise(settings, label_a="tiny", label_b="other", run_dir=run_dir)
    pair_out = run_dir / "tiny" / "mt_bench_vs_other"
    pair_judgments = [json.loads(line) for line in (pair_out / "judgments.jsonl").read_text().splitlines()]
    assert len(pair_judgments) == 8 and all(j["judgment"] for j in pair_judgments)
    assert pair["n_items"] == 4 and 0.0 <= pair["metrics"]["win_rate_adjusted"] <= 1.0
