"""A bad eval YAML fails in load_config, naming the field, before anything loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eval_harness.config import infer_method
from eval_harness.errors import ConfigError
from eval_harness.eval_yaml import load_config
from eval_harness.tasks.base import Benchmark
from tests.eval_harness.conftest import tiny_config, write_yaml


def _load(eval_dir: Path, **overrides):
    return load_config(write_yaml(eval_dir, tiny_config(**overrides)))


def test_valid_config_resolves_paths_and_infers_methods(eval_dir):
    config = _load(
        eval_dir,
        models=[{"label": "base"}, {"label": "lora", "adapter": "lora", "seed": 3}, {"label": "n", "adapter": "nlora"}],
        benchmarks={"gsm8k": {}, "math": {"data": "math.jsonl", "prompt": "lm_eval"}},
        report={"baseline": "LoRA"},
    )
    assert config.base_model == (eval_dir / "base").resolve()
    assert [entry.method for entry in config.models] == ["base", "LoRA", "NLoRA"]
    assert config.models[1].seed == 3 and config.models[1].adapter == (eval_dir / "lora").resolve()
    gsm8k = config.benchmarks["gsm8k"]
    assert gsm8k.data.name == "test.jsonl" and gsm8k.data.parent.name == "gsm8k"  # the packaged split
    assert sum(1 for _ in gsm8k.data.open()) == 1319
    assert config.benchmarks["math"].prompt == "lm_eval"
    assert json.loads(json.dumps(config.as_dict()))["report"] == {"baseline": "LoRA"}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"modelz": []}, r"^modelz: unknown field"),
        ({"base_model": "missing"}, r"^base_model: dir 'missing' does not exist"),
        ({"dtype": "int8"}, r"^dtype: expected one of"),
        ({"device": "gpu"}, r"^device:"),
        ({"models": []}, r"^models: expected a non-empty list"),
        ({"models": [{"label": "a", "adaptor": "lora"}]}, r"^models\[0\]\.adaptor: unknown field"),
        ({"models": [{"adapter": "lora"}]}, r"^models\[0\]\.label: required"),
        ({"models": [{"label": "a/b"}]}, r"^models\[0\]\.label: 'a/b' cannot name a folder"),
        ({"models": [{"label": "a"}, {"label": "a", "adapter": "lora"}]}, r"^models\[1\]\.label: 'a' is used twice"),
        ({"models": [{"label": "a", "adapter": "nowhere"}]}, r"^models\[0\]\.adapter: dir 'nowhere' does not exist"),
        ({"generation": {"batch_size": 0}}, r"^generation\.batch_size: expected an integer >= 1"),
        ({"generation": {"top_p": 2}}, r"^generation\.top_p: expected a number in"),
        ({"generation": {"backend": "tgi"}}, r"^generation\.backend: expected one of hf, vllm, got 'tgi'"),
        ({"generation": {"vllm": {"tensor_parallel_size": 2}}}, r"^generation\.vllm: set with backend 'hf'"),
        ({"benchmarks": {"gsm9k": {}}}, r"^benchmarks\.gsm9k: unknown benchmark; available here: .*gsm8k"),
        ({"benchmarks": {}}, r"^benchmarks: expected a mapping"),
        ({"benchmarks": {"math": {}}}, r"^benchmarks\.math\.data: required field is missing"),
        ({"benchmarks": {"math": {"data": "nope.jsonl"}}}, r"^benchmarks\.math\.data: file 'nope.jsonl' does not exist"),
        ({"benchmarks": {"gsm8k": {"shots": 3}}}, r"^benchmarks\.gsm8k\.shots: unknown field"),
        ({"benchmarks": {"gsm8k": {"prompt": "cot"}}}, r"^benchmarks\.gsm8k\.prompt: expected one of metamath, lm_eval"),
        ({"benchmarks": {"gsm8k": {"num_fewshot": 5}}}, r"^benchmarks\.gsm8k\.num_fewshot: 5 with prompt 'metamath'"),
        ({"benchmarks": {"gsm8k": {"prompt": "lm_eval"}}}, r"^benchmarks\.gsm8k\.fewshot_data: required"),
        ({"benchmarks": {"gsm8k": {"limit": 0}}}, r"^benchmarks\.gsm8k\.limit: expected an integer >= 1"),
        ({"benchmarks": {"gsm8k": {"data": "math.jsonl"}}}, r"^benchmarks\.gsm8k\.data: .* line 1 lacks \['question'"),
        ({"report": {"baseline": "DoRA"}}, r"^report\.baseline: 'DoRA' is not the method of any model entry"),
    ],
)
def test_bad_field_is_named(eval_dir, overrides, field):
    with pytest.raises(ConfigError, match=field):
        _load(eval_dir, **overrides)


def test_adapter_folder_without_adapter_config_is_rejected(eval_dir):
    (eval_dir / "not_an_adapter").mkdir()
    (eval_dir / "not_an_adapter" / "adapter_model.safetensors").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"^models\[0\]\.adapter: .* has no adapter_config\.json"):
        _load(eval_dir, models=[{"label": "x", "adapter": "not_an_adapter"}])


def test_math_solution_without_boxed_answer_is_rejected(eval_dir):
    (eval_dir / "bad_math.jsonl").write_text(
        (eval_dir / "math.jsonl").read_text() + json.dumps({"problem": "1+1?", "solution": "It is 2."}) + "\n"
    )
    with pytest.raises(ConfigError, match=r"^benchmarks\.math\.data: .* line 7: its 'solution' has no \\boxed"):
        _load(eval_dir, benchmarks={"math": {"data": "bad_math.jsonl"}})


def test_lm_eval_fewshot_reads_the_given_train_file(eval_dir):
    config = _load(eval_dir, benchmarks={"gsm8k": {"prompt": "lm_eval", "fewshot_data": "gsm8k.jsonl"}})
    assert config.benchmarks["gsm8k"].num_fewshot == 5  # lm-eval's gsm8k default
    assert config.benchmarks["gsm8k"].fewshot_data == (eval_dir / "gsm8k.jsonl").resolve()


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")
    (tmp_path / "bad.yaml").write_text("models: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


@pytest.mark.parametrize(
    ("adapter_config", "method"),
    [
        ({"peft_type": "LORA", "init_lora_weights": True}, "LoRA"),
        ({"peft_type": "LORA", "init_lora_weights": "pissa_niter_4"}, "PiSSA"),
        ({"peft_type": "NLORA", "init_method": "nlora"}, "NLoRA"),
        ({"peft_type": "NLORA", "init_method": "slora"}, "SLoRA"),
        ({"peft_type": "NLORA", "init_method": "nlora", "train_only_intermediate": True}, "IntTune"),
    ],
)
def test_method_inferred_from_adapter_config(tmp_path, adapter_config, method):
    (tmp_path / "adapter_config.json").write_text(json.dumps(adapter_config))
    assert infer_method(tmp_path) == method


def test_explicit_method_wins(eval_dir):
    shutil.copytree(eval_dir / "lora", eval_dir / "exported")
    config = _load(eval_dir, models=[{"label": "x", "adapter": "exported", "method": "NLoRA"}])
    assert config.models[0].method == "NLoRA"


def test_secrets_never_reach_run_json(eval_dir):
    from dataclasses import dataclass, replace

    @dataclass(frozen=True)
    class JudgeLike:
        base_url: str = "http://127.0.0.1:8000/v1"
        api_key: str | None = "sk-secret-123"

    config = _load(eval_dir)
    config = replace(config, benchmarks={**config.benchmarks, "judge_like": {"judge": JudgeLike()}})
    text = json.dumps(config.as_dict())
    assert "sk-secret-123" not in text
    assert config.as_dict()["benchmarks"]["judge_like"]["judge"] == {
        "base_url": "http://127.0.0.1:8000/v1", "api_key": "<redacted>"}


def test_mt_bench_pairwise_baseline_must_be_a_label(eval_dir):
    judge = {"base_url": "http://127.0.0.1:9/v1", "model": "judge", "api_key_env": None}
    section = {"judge": judge, "mode": "both", "baseline_label": "lora", "limit": 2}
    config = _load(eval_dir, benchmarks={"mt_bench": section})
    assert config.benchmarks["mt_bench"].baseline_label == "lora"
    with pytest.raises(ConfigError, match=r"^benchmarks\.mt_bench\.baseline_label: 'LoRA' is not a model label"):
        _load(eval_dir, benchmarks={"mt_bench": {**section, "baseline_label": "LoRA"}})


class FakeGlue(Benchmark):
    key, title, per_model = "own", "Own", False

    def parse_section(self, section, *, where, base_dir):
        return dict(section)


def test_benchmarks_that_train_their_own_models_need_no_base_model(tmp_path, monkeypatch):
    from eval_harness.tasks import BENCHMARKS

    monkeypatch.setitem(BENCHMARKS, "own", FakeGlue())
    config = load_config(write_yaml(tmp_path, {"benchmarks": {"own": {"x": 1}}, "report": {"baseline": "LoRA"}}))
    assert config.base_model is None and config.models == () and config.benchmarks == {"own": {"x": 1}}
    with pytest.raises(ConfigError, match=r"^base_model: required field is missing"):
        load_config(write_yaml(tmp_path, {"benchmarks": {"own": {}, "gsm8k": {}}}))
