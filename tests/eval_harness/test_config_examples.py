"""The eval YAMLs in example_configs/eval/ pass `eval-harness check` on local stand-ins, and the tiny one runs.

A paper config names folders a user makes (the base model, the adapters the Axolotl recipes write, the GLUE
TSVs, the MATH/MBPP files). Each test copies one config into tmp_path at the same depth, builds a stand-in
for every folder and file it names there, and runs `eval-harness check`. A stand-in adapter is made from the
Axolotl recipe whose output_dir the entry names, so a config that points at a folder no recipe writes, or
labels an adapter with another method than its recipe trains, fails.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from eval_harness.cli import main
from eval_harness.eval_yaml import load_config
from eval_harness.results import read_json
from eval_harness.tasks.glue.benchmark import GLUE_TASKS
from tests.eval_harness.conftest import FIXTURES, REPO

EXAMPLES = REPO / "example_configs" / "eval"
RECIPES = REPO / "example_configs" / "axolotl"
PAPER_CONFIGS = sorted(EXAMPLES.glob("paper_*.yaml"))
GLUE_CONFIGS = sorted(EXAMPLES.glob("glue_*.yaml"))
PAPER_DATA_FIXTURES = {"math": FIXTURES / "math" / "test.jsonl", "mbpp": FIXTURES / "mbpp" / "mbpp_sample.jsonl"}
BENCHMARKS_OF = {"math": {"gsm8k", "math"}, "code": {"humaneval", "mbpp"}, "mt_bench": {"mt_bench"}}


def _copy_example(name: str, root: Path) -> Path:
    """The example at the same depth under `root`, so its relative paths land inside `root`."""
    target = root / "example_configs" / "eval" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(EXAMPLES / name, target)
    return target


def _recipe_for(adapter: str) -> dict:
    """The shipped Axolotl recipe whose output_dir is this adapter folder (`../../outputs/<name>`)."""
    name = Path(adapter).name
    path = RECIPES / f"{name}.yaml"
    assert path.is_file(), f"adapter {adapter!r}: no example_configs/axolotl/{name}.yaml writes it"
    recipe = yaml.safe_load(path.read_text())
    assert recipe["output_dir"] == f"./outputs/{name}", f"{path.name}: output_dir is not ./outputs/{name}"
    return recipe


def _method_of(recipe: dict) -> str:
    if recipe["adapter"] == "lora":
        return "PiSSA" if str(recipe.get("peft_init_lora_weights", "")).startswith("pissa") else "LoRA"
    return {"nlora": "NLoRA", "slora": "SLoRA", "inttune": "IntTune"}[recipe["adapter"]]


def _stand_in_adapter(folder: Path, recipe: dict) -> None:
    """What the recipe saves: NLoRA/SLoRA/IntTune as peft_type NLORA, PiSSA converted to plain LoRA."""
    folder.mkdir(parents=True)
    method = _method_of(recipe)
    config: dict = {"peft_type": "LORA", "init_lora_weights": True, "r": recipe["lora_r"]}
    if method in ("NLoRA", "SLoRA", "IntTune"):
        config = {"peft_type": "NLORA", "r": recipe["lora_r"], "init_method": "slora" if method == "SLoRA" else "nlora",
                  "train_only_intermediate": method == "IntTune"}
    if method == "PiSSA":  # the plugin's conversion record (nlora_plugin.convert.CONVERSION_RECORD)
        (folder / "lora_conversion.json").write_text(json.dumps({"converted_from": recipe["peft_init_lora_weights"]}))
    (folder / "adapter_config.json").write_text(json.dumps(config))
    (folder / "adapter_model.safetensors").write_bytes(b"")


@pytest.mark.parametrize("path", PAPER_CONFIGS, ids=lambda p: p.name)
def test_paper_config_checks_on_stand_ins(tmp_path, monkeypatch, capsys, path):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-only")
    copy = _copy_example(path.name, tmp_path)
    raw = yaml.safe_load(copy.read_text())
    here = copy.parent
    (here / raw["base_model"]).mkdir(parents=True)
    (here / raw["base_model"] / "config.json").write_text("{}")
    for entry in raw["models"]:
        recipe = _recipe_for(entry["adapter"])
        assert entry["method"].startswith(_method_of(recipe)), f"{entry['label']}: method {entry['method']!r}"
        assert Path(raw["base_model"]).name == recipe["base_model"].split("/")[-1], entry["label"]
        _stand_in_adapter(here / entry["adapter"], recipe)
    for key, section in raw["benchmarks"].items():
        if "data" in section:  # user-given data files: a fixture in the same format stands in
            (here / section["data"]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(PAPER_DATA_FIXTURES[key], here / section["data"])
    assert main(["check", str(copy)]) == 0
    assert f"{len(raw['models'])} model entries" in capsys.readouterr().out
    config = load_config(copy)
    kind = next(kind for kind in BENCHMARKS_OF if f"_{kind}" in path.stem)
    assert set(config.benchmarks) == BENCHMARKS_OF[kind]
    assert config.dtype == "float16"  # the authors score in fp16 (vLLM)
    if kind == "math":
        assert config.benchmarks["math"].max_new_tokens == 2048  # S evaluate/MATH/MATH_evaluate.py
        assert {settings.prompt for settings in config.benchmarks.values()} == {"metamath"}


def _stand_in_glue(data_dir: Path, name: str) -> None:
    """A header-only TSV (CoLA: one placeholder row) for every file the task reads."""
    task = GLUE_TASKS[name]
    folder = data_dir / task.folder
    folder.mkdir(parents=True, exist_ok=True)
    columns = [column for column in (task.text_a, task.text_b, task.label) if column is not None]
    line = "\t".join(map(str, columns)) if task.header else "\t".join(["x"] * (max(columns) + 1))
    for file_name in (task.train_file, *task.eval_files.values()):
        (folder / file_name).write_text(line + "\n")


@pytest.mark.parametrize("path", GLUE_CONFIGS, ids=lambda p: p.name)
def test_glue_config_checks_on_stand_ins(tmp_path, capsys, path):
    copy = _copy_example(path.name, tmp_path)
    section = yaml.safe_load(copy.read_text())["benchmarks"]["glue"]
    here = copy.parent
    (here / section["model"]).mkdir(parents=True)
    (here / section["model"] / "config.json").write_text("{}")
    for name in section["tasks"]:
        _stand_in_glue(here / section["data_dir"], name)
    assert main(["check", str(copy)]) == 0
    assert "benchmarks glue" in capsys.readouterr().out
    settings = load_config(copy).benchmarks["glue"]
    encoder = Path(section["model"]).name
    targets = ["query_proj", "key_proj", "value_proj"] if "deberta" in encoder else ["query", "value"]
    assert all(list(spec.target_modules) == targets and spec.r == 8 for spec in settings.methods)


def test_glue_configs_cover_both_encoders_and_all_tasks():
    seen: dict[str, set[str]] = {}
    for path in GLUE_CONFIGS:
        section = yaml.safe_load(path.read_text())["benchmarks"]["glue"]
        encoder = Path(section["model"]).name
        if encoder == "roberta-large-mnli-encoder":  # App. E: RoBERTa's MRPC/RTE/STS-B start from MNLI
            assert section["tasks"][0] in ("mrpc", "rte", "stsb"), path.name
            encoder = "roberta-large"
        seen.setdefault(encoder, set()).update(section["tasks"])
    assert set(seen) == {"deberta-v3-base", "roberta-large"}
    assert all(tasks == set(GLUE_TASKS) for tasks in seen.values()), seen


def test_tiny_config_runs(tmp_path, tiny_root):
    path = _copy_example("tiny.yaml", tmp_path)
    tiny = tmp_path / "runs" / "tiny"
    (tiny / "outputs").mkdir(parents=True)
    (tiny / "tiny-llama").symlink_to(tiny_root / "base")
    (tiny / "outputs" / "tiny-nlora").symlink_to(tiny_root / "nlora")
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
