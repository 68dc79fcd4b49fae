"""Resuming: a run killed mid-benchmark continues where it stopped, recomputing and losing nothing."""

from __future__ import annotations

import pytest
from lm_eval.models.huggingface import HFLM

from eval_harness.errors import ConfigError
from eval_harness.eval_yaml import load_config
from eval_harness.results import ItemLog, read_json
from eval_harness.runner import format_table, run_config
from eval_harness.tasks.base import Benchmark
from tests.eval_harness.conftest import tiny_config, write_yaml


class Crash(RuntimeError):
    pass


@pytest.fixture
def generate_calls(monkeypatch):
    """Counts the prompts HFLM sends to model.generate; `crash_after` batches, it raises (a killed run)."""
    state = {"prompts": 0, "batches": 0, "crash_after": None}
    original = HFLM._model_generate

    def counting(self, context, *args, **kwargs):
        if state["crash_after"] is not None and state["batches"] >= state["crash_after"]:
            raise Crash("killed")
        state["batches"] += 1
        state["prompts"] += context.shape[0]
        return original(self, context, *args, **kwargs)

    monkeypatch.setattr(HFLM, "_model_generate", counting)
    return state


def _forbid_model_loading(monkeypatch):
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


def test_killed_run_resumes_without_recomputing(eval_dir, generate_calls, monkeypatch):
    config = load_config(write_yaml(eval_dir, tiny_config(
        models=[{"label": "lora", "adapter": "lora"}],
        generation={"batch_size": 2, "max_new_tokens": 6},
        benchmarks={"gsm8k": {"data": "gsm8k.jsonl", "limit": 7}},
    )))
    out = eval_dir / "run"
    generate_calls["crash_after"] = 2  # 2 batches of 2 finish, then the process "dies"
    with pytest.raises(Crash):
        run_config(config, out, command=["test"])
    assert generate_calls["prompts"] == 4
    assert not (out / "lora" / "gsm8k" / "summary.json").exists()

    generate_calls.update(prompts=0, batches=0, crash_after=None)
    run_config(config, out, command=["test"])
    assert generate_calls["prompts"] == 3  # only the 3 unfinished items were generated
    items = ItemLog(out / "lora" / "gsm8k" / "items.jsonl").records()
    assert sorted(item["id"] for item in items) == [str(i) for i in range(7)]

    # A crash after the generations but while items.jsonl was written: the cache fills in the rest.
    path = out / "lora" / "gsm8k" / "items.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:2]) + lines[2][:15])  # two records and a torn third
    (out / "lora" / "gsm8k" / "summary.json").unlink()
    generate_calls.update(prompts=0, batches=0)
    summaries = run_config(config, out, command=["test"])
    assert generate_calls["prompts"] == 0
    rebuilt = ItemLog(path).records()
    assert [item["id"] for item in rebuilt] == [item["id"] for item in items[:2]] + [
        item["id"] for item in items[2:]
    ]
    assert {item["id"]: item["response"] for item in rebuilt} == {item["id"]: item["response"] for item in items}
    assert summaries[0]["n_items"] == 7

    # Everything finished: a rerun loads no model at all.
    _forbid_model_loading(monkeypatch)
    again = run_config(config, out, command=["test"])
    assert again == [read_json(out / "lora" / "gsm8k" / "summary.json")]


def test_resume_with_a_different_config_is_refused(eval_dir):
    out = eval_dir / "run"
    (out / "lora").mkdir(parents=True)
    config = load_config(write_yaml(eval_dir, tiny_config(models=[{"label": "lora", "adapter": "lora"}])))
    from eval_harness.runner import start_run_dir

    start_run_dir(config, out, command=["first"])
    start_run_dir(config, out, command=["second"])  # same config: resumes
    assert read_json(out / "run.json")["command"] == ["first"]
    changed = load_config(write_yaml(eval_dir, tiny_config(
        models=[{"label": "lora", "adapter": "nlora"}], generation={"batch_size": 4, "max_new_tokens": 7}
    )))
    with pytest.raises(ConfigError, match="fields that differ: generation, models"):
        start_run_dir(changed, out, command=["third"])


def test_format_table():
    summaries = [
        {"label": "lora", "benchmark": "gsm8k", "primary_metric": "exact_match", "metrics": {"exact_match": 0.5}},
        {"label": "nlora", "benchmark": "math", "primary_metric": "exact_match", "metrics": {"exact_match": 0.25}},
    ]
    assert format_table(summaries).splitlines() == [
        "label  gsm8k   math  ",
        "lora   0.5000  -     ",
        "nlora  -       0.2500",
    ]


def test_mt_bench_pairwise_runs_every_other_label_once(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from eval_harness.results import atomic_write_json
    from eval_harness.run_folder import RunFolder
    from eval_harness.tasks import BENCHMARKS, mt_bench

    calls = []

    def run_pairwise(settings, *, label_a, label_b, run_dir):
        calls.append((label_a, label_b))
        summary = {"label": label_a, "benchmark": f"mt_bench_vs_{label_b}"}
        atomic_write_json(run_dir / label_a / f"mt_bench_vs_{label_b}" / "summary.json", summary)
        return summary

    monkeypatch.setattr(mt_bench, "run_pairwise", run_pairwise)
    settings = SimpleNamespace(mode="both", baseline_label="lora")
    labels = ["lora", "nlora", "pissa"]
    first = BENCHMARKS["mt_bench"].run_cross_model(settings, labels=labels, run=RunFolder(tmp_path))
    assert calls == [("nlora", "lora"), ("pissa", "lora")]
    assert BENCHMARKS["mt_bench"].run_cross_model(settings, labels=labels, run=RunFolder(tmp_path)) == first
    assert len(calls) == 2  # finished comparisons are not judged again


class FakeTrainer(Benchmark):
    """A benchmark that trains its own models (like GLUE)."""

    key, title, per_model = "own", "Own", False

    def __init__(self, run_all):
        self.run_all = run_all

    def parse_section(self, section, *, where, base_dir):
        return dict(section)

    def run_cross_model(self, settings, *, labels, run):
        return self.run_all(settings, run_dir=run.root)


def test_run_all_benchmarks_run_once_per_run(tmp_path, monkeypatch):
    from eval_harness.tasks import BENCHMARKS

    calls = []

    def run_all(settings, *, run_dir):
        calls.append((settings, run_dir))
        return [{"label": "nlora-s0", "benchmark": "glue_sst2", "primary_metric": "accuracy",
                 "metrics": {"accuracy": 0.9}}]

    monkeypatch.setitem(BENCHMARKS, "own", FakeTrainer(run_all))
    config = load_config(write_yaml(tmp_path, {"benchmarks": {"own": {"steps": 3}}}))
    summaries = run_config(config, tmp_path / "run", command=["test"])
    assert calls == [({"steps": 3}, tmp_path / "run")]
    assert summaries[0]["metrics"] == {"accuracy": 0.9}
    assert read_json(tmp_path / "run" / "run.json")["config"]["base_model"] is None
