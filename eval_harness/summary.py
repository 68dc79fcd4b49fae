"""summary.json: one (label, benchmark) result, the only file the report reads numbers from.

Every benchmark writes it through `Summary.write`, so the fields and their meaning are defined here once
(docs/eval_harness_contract.md). `schema_version` 1 added `title` and `base_model`; files without a
version (written before it existed) still load, their title taken from the names they were shown under.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from eval_harness.errors import ConfigError
from eval_harness.results import atomic_write_json, read_json

SCHEMA_VERSION = 1
SUMMARY_NAME = "summary.json"
MetricKind = Literal["mean", "corpus"]  # mean: per-item scores in items.jsonl (bootstrap CI); corpus: one number
REQUIRED_FIELDS = ("label", "method", "benchmark", "metrics", "primary_metric", "metric_kind")
# Titles of summaries written before `title` existed (schema version 0); new benchmarks write their own.
VERSION0_TITLES = {
    "gsm8k": "GSM8K", "math": "MATH", "humaneval": "HumanEval", "mbpp": "MBPP", "mt_bench": "MT-Bench",
    "glue_mnli": "MNLI", "glue_mnli_mm": "MNLI-mm", "glue_sst2": "SST-2", "glue_mrpc": "MRPC", "glue_cola": "CoLA",
    "glue_qnli": "QNLI", "glue_qqp": "QQP", "glue_rte": "RTE", "glue_stsb": "STS-B",
}


class SummaryError(ConfigError):
    """A summary.json the harness cannot read: the message names the file and the field."""


@dataclass(frozen=True)
class Summary:
    """One label's result on one benchmark."""

    label: str  # the run folder's label (one seed of a method)
    method: str  # what the report groups by
    seed: int | None
    benchmark: str  # the folder name under <label>/ (gsm8k, glue_mnli_mm, mt_bench_vs_<label>, ...)
    title: str  # the benchmark as the report names it (GSM8K, MNLI-mm, ...)
    metrics: dict[str, float]
    primary_metric: str
    metric_kind: MetricKind
    n_items: int | None = None
    trainable_params: int | None = None
    base_model: str | None = None  # the model evaluated (GLUE: the encoder fine-tuned); None: not recorded
    item_score_keys: dict[str, str] = field(default_factory=dict)  # secondary mean metric -> key in items' scores
    lower_is_better: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # the benchmark's own details (settings, versions)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if self.metric_kind not in get_args(MetricKind):
            raise SummaryError(f"metric_kind is {self.metric_kind!r}; use one of {', '.join(get_args(MetricKind))}")

    def as_json(self) -> dict[str, Any]:
        """The summary.json document (and what `run` returns)."""
        data = dataclasses.asdict(self)
        if not self.item_score_keys:
            del data["item_score_keys"]
        if not self.lower_is_better:
            del data["lower_is_better"]
        return data

    def write(self, out_dir: Path) -> dict[str, Any]:
        """Write <out_dir>/summary.json atomically; returns the document."""
        document = self.as_json()
        atomic_write_json(Path(out_dir) / SUMMARY_NAME, document)
        return document

    @classmethod
    def for_model(cls, model: Any, **fields: Any) -> Summary:
        """A summary of one model entry: label, method, seed, trainable_params and base_model from its
        `ModelHandle`, the rest (benchmark, title, metrics, ...) from `fields`."""
        return cls(label=model.label, method=model.method, seed=model.seed, trainable_params=model.trainable_params,
                   base_model=str(model.base_model), **fields)

    @classmethod
    def from_json(cls, data: Any, *, source: Path | str) -> Summary:
        """A summary read back, any schema version; unknown top-level fields go to `extra`."""
        if not isinstance(data, Mapping):
            raise SummaryError(f"{source}: expected a JSON object, got {type(data).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            raise SummaryError(f"{source} lacks the field(s) {missing}; see docs/eval_harness_contract.md")
        version = data.get("schema_version", 0)
        if not isinstance(version, int) or version > SCHEMA_VERSION:
            raise SummaryError(f"{source}: schema_version {version!r} is newer than this harness reads "
                               f"({SCHEMA_VERSION}); upgrade nlora")
        known = {f.name for f in dataclasses.fields(cls)}
        fields = {name: value for name, value in data.items() if name in known}
        fields["extra"] = {**(data.get("extra") or {}), **{k: v for k, v in data.items() if k not in known}}
        fields.setdefault("title", VERSION0_TITLES.get(str(data["benchmark"]), str(data["benchmark"])))
        fields["item_score_keys"] = dict(fields.get("item_score_keys") or {})
        fields["schema_version"] = version
        try:
            return cls(**fields)
        except SummaryError as error:
            raise SummaryError(f"{source}: {error}") from error

    @classmethod
    def read(cls, path: Path) -> Summary:
        """Load one summary.json."""
        return cls.from_json(read_json(path), source=path)
