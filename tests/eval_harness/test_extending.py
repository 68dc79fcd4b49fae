"""docs/extending.md's benchmark walkthrough, run as written: its module is found, run, resumed and reported."""

from __future__ import annotations

import json
import re
from pathlib import Path

from eval_harness import tasks
from eval_harness.eval_yaml import load_config
from eval_harness.report import build_report
from eval_harness.results import read_json
from eval_harness.runner import run_config

from .conftest import tiny_config, write_yaml

DOC = Path(__file__).resolve().parents[2] / "docs" / "extending.md"


def walkthrough_module() -> str:
    """The benchmark module the walkthrough shows, verbatim."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.DOTALL)
    return next(block for block in blocks if block.startswith('"""Exact answer'))


def test_the_walkthrough_benchmark_is_one_module(eval_dir, tmp_path, monkeypatch):
    package = tmp_path / "extra_tasks"
    package.mkdir()
    (package / "exact_answer.py").write_text(walkthrough_module(), encoding="utf-8")
    monkeypatch.setattr(tasks, "__path__", [*tasks.__path__, str(package)])
    found = tasks.discover()
    assert set(found) == {*tasks.BENCHMARKS, "exact_answer"}
    monkeypatch.setitem(tasks.BENCHMARKS, "exact_answer", found["exact_answer"])

    rows = [{"prompt": "2 + 2 =", "answer": "4"}, {"prompt": "Capital of France:", "answer": "Paris"},
            {"prompt": "Red, green and", "answer": "blue"}]
    (eval_dir / "qa.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    config = load_config(write_yaml(eval_dir, tiny_config(benchmarks={"exact_answer": {"data": "qa.jsonl"}})))
    run = tmp_path / "run"
    first = run_config(config, run, command=["test"])
    assert [(s["label"], s["benchmark"], s["n_items"]) for s in first] == [("base", "exact_answer", 3),
                                                                          ("lora", "exact_answer", 3)]
    assert all(0.0 <= s["metrics"]["exact_match"] <= 1.0 for s in first)
    assert run_config(config, run, command=["test"]) == first  # finished: read back, not rerun
    results = read_json(build_report([run], tmp_path / "report", n_resamples=100) / "results.json")
    assert [(b["key"], b["name"]) for b in results["benchmarks"]] == [("exact_answer", "Exact answer")]
