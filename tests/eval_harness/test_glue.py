"""GLUE: TSV readers on tiny GLUE-layout fixtures, config errors, and a short fine-tune on a tiny BERT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from eval_harness import tasks
from eval_harness.errors import ConfigError
from eval_harness.eval_yaml import parse_config
from eval_harness.results import read_json
from eval_harness.tasks.glue import benchmark as glue

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "glue"
DEMO = Path(glue.__file__).resolve().parents[2] / "data" / "demo_pairs"
assert tasks  # the package exists


def task_data(name: str) -> glue.TaskData:
    task = glue.GLUE_TASKS[name]
    return glue.TaskData(task, FIXTURES / task.folder)


def test_readers_on_glue_layout_files() -> None:
    cola = glue.read_examples(FIXTURES / "CoLA" / "dev.tsv", glue.GLUE_TASKS["cola"])
    assert [(e.text_a, e.text_b, e.label) for e in cola] == [
        ("He runs fast.", None, 1), ("Fast runs he the.", None, 0), ("We sing.", None, 1)]
    stsb = glue.read_examples(FIXTURES / "STS-B" / "dev.tsv", glue.GLUE_TASKS["stsb"])
    assert [(e.text_a, e.text_b, e.label) for e in stsb][1] == ("A girl sings.", "A car drives.", 0.25)
    mnli = glue.read_examples(FIXTURES / "MNLI" / "dev_matched.tsv", glue.GLUE_TASKS["mnli"])
    assert [e.label for e in mnli] == [0, 2]  # the '-' row and the truncated row are skipped
    mrpc = glue.read_examples(FIXTURES / "MRPC" / "train.tsv", glue.GLUE_TASKS["mrpc"], limit=1)
    assert [(e.text_a, e.text_b, e.label) for e in mrpc] == [("He said yes.", "He agreed.", 1)]
    demo = glue.read_examples(DEMO / "dev.tsv", glue.GLUE_TASKS["qnli"])
    assert {e.label for e in demo} == {0, 1} and all(e.text_b for e in demo)


def section(**overrides) -> dict:
    data = {"model": "minilm", "data_dir": str(FIXTURES), "tasks": ["sst2", "stsb"],
            "methods": [{"name": "lora"}, {"name": "nlora", "nystrom_index": "pivoted"}],
            "seeds": [0], "train": {"steps": 2, "batch_size": 2}}
    data.update(overrides)
    return data


def test_parse_section_reads_tasks_methods_and_train() -> None:
    settings = glue.parse_section(section(), where="benchmarks.glue", base_dir=FIXTURES)
    assert settings.model.name == "model" and (settings.model / "config.json").is_file()
    assert [data.task.name for data in settings.tasks] == ["sst2", "stsb"]
    assert [spec.label for spec in settings.methods] == ["LoRA", "NLoRA"]
    assert settings.train.steps == 2 and settings.train.epochs is None
    mnli = glue.parse_section(section(tasks=["mnli"]), where="g", base_dir=FIXTURES).tasks[0].task
    assert set(mnli.eval_files) == {"glue_mnli", "glue_mnli_mm"}


def test_demo_config_is_valid_without_base_model() -> None:
    import yaml

    path = Path(glue.__file__).resolve().parents[3] / "example_configs" / "eval" / "demo_nlu.yaml"
    config = parse_config(yaml.safe_load(path.read_text()), base_dir=path.parent)
    settings = config.benchmarks["glue"]
    assert config.base_model is None and config.report_baseline == "LoRA"
    assert [spec.name for spec in settings.methods] == ["lora", "pissa", "slora", "nlora", "nlora", "inttune"]
    assert len({spec.r for spec in settings.methods}) == 1 and settings.seeds == (0, 1, 2)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tasks": ["sst3"]}, r"benchmarks.glue.tasks\[0\]: 'sst3'"),
        ({"tasks": ["qnli"]}, r"benchmarks.glue.tasks\[0\]: .*QNLI.*does not exist"),
        ({"data_dir": "nowhere"}, "benchmarks.glue.data_dir"),
        ({"model": "no/such/folder"}, "benchmarks.glue.model"),
        ({"methods": [{"name": "lora", "nystrom_core": "optimal"}]}, r"benchmarks.glue.methods\[0\].nystrom_core"),
        ({"methods": []}, "benchmarks.glue.methods"),
        ({"seeds": [0, 0]}, "benchmarks.glue.seeds"),
        ({"train": {"steps": 2, "epochs": 1}}, "benchmarks.glue.train: give either"),
        ({"train": {"batch_size": 0}}, "benchmarks.glue.train.batch_size"),
        ({"train": {"lr": 1}}, "benchmarks.glue.train.lr"),
        ({"tasks": [{"name": "mine", "dir": ".", "format": "csv"}]}, r"benchmarks.glue.tasks\[0\].format"),
        ({"colour": "red"}, "benchmarks.glue.colour"),
    ],
)
def test_config_errors_name_the_field(overrides: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        glue.parse_section(section(**overrides), where="benchmarks.glue", base_dir=FIXTURES)


def test_a_file_without_the_task_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("text\tgold\nfine\t1\n")
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nfine\t1\n")
    with pytest.raises(ConfigError, match=r"tasks\[0\]: .*lacks the column"):
        glue.parse_section(section(data_dir=str(tmp_path), tasks=["sst2"]), where="benchmarks.glue", base_dir=tmp_path)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer BERT (hidden 32) with random weights and the MiniLM tokenizer, saved without a head."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(glue.minilm_dir())
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64, initializer_range=0.3,
                         hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_finetune_writes_results_and_resumes(tiny_bert: Path, tmp_path: Path, monkeypatch) -> None:
    settings = glue.parse_section(
        section(model=str(tiny_bert),
                methods=[{"name": "lora", "learning_rate": 3e-2}, {"name": "nlora", "learning_rate": 3e-2}],
                train={"steps": 20, "batch_size": 8, "max_length": 16, "warmup_ratio": 0.1}),
        where="benchmarks.glue", base_dir=FIXTURES)
    summaries = glue.run_all(settings, run_dir=tmp_path)
    assert len(summaries) == 2 * 2  # tasks x methods

    sst2 = read_json(tmp_path / "lora-seed0" / "glue_sst2" / "summary.json")
    assert sst2["method"] == "LoRA" and sst2["seed"] == 0 and sst2["metric_kind"] == "corpus"
    assert sst2["primary_metric"] == "accuracy" and sst2["n_items"] == 4 and sst2["trainable_params"] > 0
    items = [json.loads(line) for line in (tmp_path / "lora-seed0" / "glue_sst2" / "items.jsonl").open()]
    assert [item["label"] for item in items] == [1, 0, 1, 0]
    assert sst2["metrics"]["accuracy"] == sum(i["prediction"] == i["label"] for i in items) / 4
    stsb = read_json(tmp_path / "nlora-seed0" / "glue_stsb" / "summary.json")
    assert set(stsb["metrics"]) == {"pearson", "spearman", "pearson_spearman_mean"}
    assert all(isinstance(item["prediction"], float)
               for item in map(json.loads, (tmp_path / "nlora-seed0" / "glue_stsb" / "items.jsonl").open()))

    training = read_json(tmp_path / "lora-seed0" / "training.json")
    assert set(training["tasks"]) == {"sst2", "stsb"} and training["task"] == "sst2"
    curve = training["tasks"]["sst2"]["loss_curve"]
    assert curve[0][0] == 1 and curve[-1][0] == 20
    first, last = (sum(loss for _, loss in points) / 5 for points in (curve[:5], curve[-5:]))
    assert last < 0.5 * first  # the separable toy SST-2 is learned
    assert training["init_time_s"] > 0 and training["step_time_s"] > 0 and training["peak_memory_bytes"] > 0

    # Resume: finished (label, task) pairs are skipped; a removed summary is redone alone.
    (tmp_path / "nlora-seed0" / "glue_stsb" / "summary.json").unlink()
    calls = []
    real = glue.finetune

    def counting(**kwargs):
        calls.append((kwargs["spec"].label, kwargs["seed"], kwargs["num_labels"]))
        return real(**kwargs)

    monkeypatch.setattr(glue, "finetune", counting)
    again = glue.run_all(settings, run_dir=tmp_path)
    assert calls == [("NLoRA", 0, 1)]
    assert len(again) == 4 and sorted(s["label"] for s in again) == sorted(s["label"] for s in summaries)


def test_custom_qnli_task_reads_the_demo_files(tmp_path: Path) -> None:
    shutil.copytree(DEMO, tmp_path / "pairs")
    settings = glue.parse_section(
        section(tasks=[{"name": "demo", "dir": "pairs", "format": "qnli", "eval_split": "test"}]),
        where="benchmarks.glue", base_dir=tmp_path)
    task = settings.tasks[0].task
    assert task.eval_files == {"glue_demo": "test.tsv"} and task.label_names == ("entailment", "not_entailment")


def test_saved_activation_bytes_depend_only_on_the_batch_length_and_grow_with_it(tiny_bert: Path) -> None:
    """The premise of finetune counting saved tensors only on a batch longer than any counted before."""
    from transformers import AutoModelForSequenceClassification

    from eval_harness.tasks.glue.finetune import SavedTensorCounter

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
    counter = SavedTensorCounter(model)
    per_length = {}
    for length in (5, 9, 16, 9, 5):
        with counter.hooks():
            loss = model(input_ids=torch.randint(100, 200, (4, length)), labels=torch.zeros(4, dtype=torch.long)).loss
        loss.backward()
        per_length.setdefault(length, []).append(counter.bytes)
    assert all(len(set(sizes)) == 1 for sizes in per_length.values())  # same length, same bytes
    assert per_length[5][0] < per_length[9][0] < per_length[16][0]  # and they grow with the length
