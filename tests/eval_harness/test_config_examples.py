"""The eval YAMLs in example_configs/eval/ validate (paper configs on stub folders) and the tiny one runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from eval_harness.cli import main
from eval_harness.config import load_config
from eval_harness.results import read_json
from tests.eval_harness.conftest import FIXTURES, REPO

EXAMPLES = REPO / "example_configs" / "eval"
STUB_ADAPTER_CONFIGS = {
    "LoRA": {"peft_type": "LORA", "init_lora_weights": True},
    "PiSSA": {"peft_type": "LORA", "init_lora_weights": "pissa_niter_4"},
    "SLoRA": {"peft_type": "NLORA", "init_method": "slora"},
    "NLoRA": {"peft_type": "NLORA", "init_method": "nlora"},
    "IntTune": {"peft_type": "NLORA", "init_method": "nlora", "train_only_intermediate": True},
}


def _copy_example(name: str, root: Path) -> Path:
    """The example at the same depth under `root`, so its relative paths land inside `root`."""
    target = root / "example_configs" / "eval" / name
    target.parent.mkdir(parents=True)
    shutil.copy(EXAMPLES / name, target)
    return target


PAPER_DATA_FIXTURES = {"math": FIXTURES / "math" / "test.jsonl", "mbpp": FIXTURES / "mbpp" / "mbpp_sample.jsonl"}


@pytest.mark.parametrize(
    ("name", "benchmarks"),
    [
        ("paper_llama2_7b_math.yaml", {"gsm8k", "math"}),
        ("paper_llama2_7b_code.yaml", {"humaneval", "mbpp"}),
        ("paper_llama2_7b_mt_bench.yaml", {"mt_bench"}),
    ],
)
def test_paper_config_validates_on_stub_folders(tmp_path, monkeypatch, name, benchmarks):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-only")
    path = _copy_example(name, tmp_path)
    raw = yaml.safe_load(path.read_text())
    here = path.parent
    (here / raw["base_model"]).mkdir(parents=True)
    (here / raw["base_model"] / "config.json").write_text("{}")
    for entry in raw["models"]:
        adapter = here / entry["adapter"]
        adapter.mkdir(parents=True)
        (adapter / "adapter_config.json").write_text(json.dumps(STUB_ADAPTER_CONFIGS[entry["method"]]))
        (adapter / "adapter_model.safetensors").write_bytes(b"")
    for key, section in raw["benchmarks"].items():
        if "data" in section:  # user-given data files: a fixture in the same format stands in
            (here / section["data"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PAPER_DATA_FIXTURES[key], here / section["data"])
    config = load_config(path)
    assert [entry.method for entry in config.models] == ["LoRA", "PiSSA", "SLoRA", "NLoRA", "IntTune"]
    assert config.report_baseline == "LoRA" and config.dtype == "bfloat16"
    assert set(config.benchmarks) == benchmarks
    if "gsm8k" in benchmarks:
        assert {settings.prompt for settings in config.benchmarks.values()} == {"metamath"}


def test_tiny_config_runs(tmp_path, tiny_root):
    path = _copy_example("tiny.yaml", tmp_path)
    nlg = tmp_path / "runs" / "demo" / "nlg"
    nlg.mkdir(parents=True)
    (nlg / "tiny-llama").symlink_to(tiny_root / "base")
    (nlg / "adapter-nlora").symlink_to(tiny_root / "nlora")
    (tmp_path / "tests" / "fixtures").mkdir(parents=True)
    (tmp_path / "tests" / "fixtures" / "math").symlink_to(FIXTURES / "math")
    assert main(["run", str(path), "--output", str(tmp_path / "run")]) == 0
    for label, method in [("base", "base"), ("nlora", "NLoRA")]:
        assert read_json(tmp_path / "run" / label / "gsm8k" / "summary.json")["n_items"] == 5
        assert read_json(tmp_path / "run" / label / "math" / "summary.json")["method"] == method
        assert read_json(tmp_path / "run" / label / "humaneval" / "summary.json")["n_items"] == 3
    # The user's next step: the report, with the baseline taken from the run's report.baseline.
    assert main(["report", str(tmp_path / "run"), "--output", str(tmp_path / "report")]) == 0
    for name in ("report.md", "index.html", "results.json"):
        assert (tmp_path / "report" / name).stat().st_size > 0
    assert read_json(tmp_path / "report" / "results.json")["baseline"] == "base"


def test_demo_nlu_config_validates():
    config = load_config(EXAMPLES / "demo_nlu.yaml")
    assert config.base_model is None and config.models == () and set(config.benchmarks) == {"glue"}
