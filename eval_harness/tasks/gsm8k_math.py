"""GSM8K and MATH through lm-eval's Python API (`lm_eval.simple_evaluate`), on local data files.

The prompts, answer filters and metrics are lm-eval's (task YAMLs in `eval_harness/task_yamls/`,
scoring by lm-eval's regex filters, exact_match and hendrycks_math `process_results`); nothing is
re-implemented here. Two readings of each benchmark, behind `prompt:`
- `metamath` (default): the zero-shot Alpaca prompt with which MetaMath, PiSSA and NLoRA evaluate
  models fine-tuned on MetaMathQA (the paper's setting, Section 4.2); the answer follows "The answer is:".
- `lm_eval`: lm-eval's own gsm8k (5-shot "Question:/Answer:", "#### N") and hendrycks_math tasks.

Resuming: lm-eval's `use_cache` sqlite file (RUN_DIR/<label>/<benchmark>/lm_eval_cache_rank0.db)
stores every generation as its batch finishes, so a restarted run only generates what is missing.
The per-item records of `log_samples` go to items.jsonl and lm-eval's result JSON is kept as
lm_eval_results.json next to summary.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from eval_harness.errors import ConfigError
from eval_harness.fields import check_fields, get_choice, get_int, get_path
from eval_harness.jsonl import read_jsonl
from eval_harness.results import ItemLog, atomic_write_json, atomic_write_text
from eval_harness.summary import Summary
from eval_harness.tasks.base import Benchmark

if TYPE_CHECKING:
    from eval_harness.models import ModelHandle

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
TASK_YAMLS = PACKAGE_DIR / "task_yamls"
PACKAGED_GSM8K_TEST = PACKAGE_DIR / "data" / "gsm8k" / "test.jsonl"
PROMPTS = ("metamath", "lm_eval")
CACHE_NAME = "lm_eval_cache"  # lm-eval appends "_rank0.db"
RESULTS_NAME = "lm_eval_results.json"


@dataclass(frozen=True)
class LmEvalSettings:
    """A validated `benchmarks.gsm8k` or `benchmarks.math` section."""

    benchmark: str
    data: Path
    prompt: str = "metamath"
    num_fewshot: int = 0
    fewshot_data: Path | None = None
    limit: int | None = None
    max_new_tokens: int | None = None  # None: the YAML's generation.max_new_tokens
    batch_size: int | None = None  # None: the YAML's generation.batch_size

    @property
    def template(self) -> Path:
        return TASK_YAMLS / f"{self.benchmark}_{self.prompt}.yaml"

    @property
    def task_name(self) -> str:
        return f"eval_harness_{self.benchmark}_{self.prompt}_run"


@dataclass(frozen=True)
class LmEvalBenchmark(Benchmark):
    """One benchmark run by lm-eval: its fields, its data format and the filter its score comes from."""

    key: str
    title: str
    required_keys: tuple[str, ...]  # every data line needs these
    answer_markers: tuple[str, ...]  # and one of these strings in its answer/solution field
    answer_field: str
    default_data: Path | None
    fields: tuple[str, ...]

    def parse_section(self, section: Mapping[str, Any], *, where: str, base_dir: Path) -> LmEvalSettings:
        """Check fields and data files (every line parsed) without loading a model."""
        fields = check_fields(section, where=where, allowed=self.fields)
        prompt = get_choice(fields, "prompt", where=where, choices=PROMPTS, default="metamath")
        if self.default_data is not None and fields.get("data") is None:
            data = self.default_data
        else:
            data = get_path(fields, "data", where=where, base_dir=base_dir)
        self.check_data(data, where=f"{where}.data")
        default_shots = 5 if (prompt == "lm_eval" and self.key == "gsm8k") else 0
        num_fewshot = get_int(fields, "num_fewshot", where=where, default=default_shots) or 0
        fewshot_data = get_path(fields, "fewshot_data", where=where, base_dir=base_dir, required=False)
        if num_fewshot and prompt == "metamath":
            raise ConfigError(
                f"{where}.num_fewshot: {num_fewshot} with prompt 'metamath', which is zero-shot as in MetaMath "
                "and the paper; set num_fewshot: 0, or prompt: lm_eval for lm-eval's few-shot gsm8k"
            )
        if num_fewshot and fewshot_data is None:
            raise ConfigError(
                f"{where}.fewshot_data: required for num_fewshot: {num_fewshot} (lm-eval draws the examples "
                "from GSM8K's train split); give the path to GSM8K's train.jsonl, or set num_fewshot: 0"
            )
        if fewshot_data is not None:
            self.check_data(fewshot_data, where=f"{where}.fewshot_data")
        return LmEvalSettings(
            benchmark=self.key,
            data=data,
            prompt=prompt,
            num_fewshot=num_fewshot,
            fewshot_data=fewshot_data if num_fewshot else None,
            limit=get_int(fields, "limit", where=where, default=None, minimum=1),
            max_new_tokens=get_int(fields, "max_new_tokens", where=where, default=None, minimum=1),
            batch_size=get_int(fields, "batch_size", where=where, default=None, minimum=1),
        )

    def check_data(self, path: Path, *, where: str) -> None:
        """Every line is a JSON object with the fields lm-eval's task reads."""
        for number, record in read_jsonl(path, where=where):
            missing = [key for key in self.required_keys if key not in record]
            if missing:
                raise ConfigError(
                    f"{where}: {path} line {number} lacks {missing}; {self.key} data is jsonl with the "
                    f"fields {list(self.required_keys)}"
                )
            if not any(marker in str(record[self.answer_field]) for marker in self.answer_markers):
                raise ConfigError(
                    f"{where}: {path} line {number}: its {self.answer_field!r} has no "
                    f"{' or '.join(self.answer_markers)}, from which the reference answer is read"
                )

    def run(self, settings: LmEvalSettings, *, model: ModelHandle, out_dir: Path) -> dict[str, Any]:
        """Evaluate one model with lm-eval; write items.jsonl, lm_eval_results.json and summary.json."""
        import lm_eval
        from lm_eval.tasks import TaskManager

        start = time.perf_counter()
        task_dir = out_dir / "lm_eval_task"
        write_task_yaml(settings, task_dir, max_new_tokens=settings.max_new_tokens or model.generation.max_new_tokens)
        lm = language_model(model, batch_size=settings.batch_size or model.generation.batch_size)
        results = lm_eval.simple_evaluate(
            model=lm,
            tasks=[settings.task_name],
            task_manager=TaskManager(include_path=str(task_dir), include_defaults=False),
            use_cache=str(out_dir / CACHE_NAME),
            limit=settings.limit,
            log_samples=True,
        )
        samples = results.pop("samples")[settings.task_name]
        atomic_write_json(out_dir / RESULTS_NAME, to_plain(results))
        log = ItemLog(out_dir / "items.jsonl")
        records = item_records(samples, primary_filter=self.primary_filter(settings))
        done = log.done_ids()
        for record in records:
            if record["id"] not in done:
                log.append(record)
        task_metrics = results["results"][settings.task_name]
        return Summary.for_model(
            model,
            benchmark=self.key,
            title=self.title,
            metrics=self.summary_metrics(settings, task_metrics),
            primary_metric="exact_match",
            metric_kind="mean",
            item_score_keys=self.item_score_keys(),
            n_items=len(records),
            extra={
                "prompt": settings.prompt,
                "num_fewshot": settings.num_fewshot,
                "data": str(settings.data),
                "lm_eval_task": settings.task_name,
                "lm_eval_results": RESULTS_NAME,
                "lm_eval_version": results.get("lm_eval_version"),
                "generation_backend": model.generation.backend,
                "eval_time_s": round(time.perf_counter() - start, 3),
            },
        ).write(out_dir)

    def primary_filter(self, settings: LmEvalSettings) -> str:
        """The lm-eval filter whose exact_match is the benchmark's score."""
        if self.key == "gsm8k":
            return "strict-match"
        return "answer-is" if settings.prompt == "metamath" else "none"

    def item_score_keys(self) -> dict[str, str]:
        """Secondary metrics -> their key in each item's "scores" (the report's CIs for them)."""
        return {"exact_match_flexible": "exact_match,flexible-extract"} if self.key == "gsm8k" else {}

    def summary_metrics(self, settings: LmEvalSettings, task_metrics: Mapping[str, Any]) -> dict[str, float]:
        metrics = {"exact_match": float(task_metrics[f"exact_match,{self.primary_filter(settings)}"])}
        if self.key == "gsm8k":
            metrics["exact_match_flexible"] = float(task_metrics["exact_match,flexible-extract"])
        return metrics


def language_model(model: ModelHandle, *, batch_size: int) -> Any:
    """lm-eval's HF model on the loaded model (backend hf), or lm-eval's requests on the run's vLLM engine."""
    if model.generation.backend == "vllm":
        from eval_harness.lm_eval_engine import EngineLM

        return EngineLM(model.generator, model.tokenizer, max_length=model.engine.max_model_len)
    from lm_eval.models.huggingface import HFLM

    return HFLM(pretrained=model.model, tokenizer=model.tokenizer, batch_size=batch_size)


def write_task_yaml(settings: LmEvalSettings, task_dir: Path, *, max_new_tokens: int) -> Path:
    """The run's lm-eval task: the packaged template with this run's data files and token budget."""
    from lm_eval.utils import load_yaml_config

    template = load_yaml_config(str(settings.template), mode="simple")
    data_files = {"test": str(settings.data)}
    if settings.fewshot_data is not None:
        data_files["train"] = str(settings.fewshot_data)
    task = {
        "include": str(settings.template),
        "task": settings.task_name,
        "dataset_kwargs": {"data_files": data_files},
        "num_fewshot": settings.num_fewshot,
        "generation_kwargs": {**template["generation_kwargs"], "max_gen_toks": max_new_tokens},
    }
    path = task_dir / f"{settings.task_name}.yaml"
    atomic_write_text(path, yaml.safe_dump(task, sort_keys=False))
    return path


def item_records(samples: list[dict[str, Any]], *, primary_filter: str) -> list[dict[str, Any]]:
    """One record per document from lm-eval's logged samples (one sample per document and filter)."""
    by_doc: dict[int, dict[str, Any]] = {}
    for sample in samples:
        record = by_doc.setdefault(
            sample["doc_id"],
            {
                "id": str(sample["doc_id"]),
                "score": None,
                "scores": {},
                "response": sample["resps"][0][0],
                "extracted": {},
                "target": sample["target"],
                "doc_hash": sample.get("doc_hash"),
            },
        )
        filter_name = sample["filter"]
        record["extracted"][filter_name] = sample["filtered_resps"][0]
        for metric in sample["metrics"]:
            value = float(sample[metric])
            record["scores"][f"{metric},{filter_name}"] = value
            if metric == "exact_match" and filter_name == primary_filter:
                record["score"] = value
    return [by_doc[doc_id] for doc_id in sorted(by_doc)]


def to_plain(obj: Any) -> Any:
    """lm-eval's result dict with numpy scalars turned into Python numbers (JSON-ready)."""
    if isinstance(obj, Mapping):
        return {str(key): to_plain(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(value) for value in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", None) == 0:
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


GSM8K = LmEvalBenchmark(
    key="gsm8k",
    title="GSM8K",
    required_keys=("question", "answer"),
    answer_markers=("####",),
    answer_field="answer",
    default_data=PACKAGED_GSM8K_TEST,
    fields=("data", "prompt", "num_fewshot", "fewshot_data", "limit", "max_new_tokens", "batch_size"),
)
MATH = LmEvalBenchmark(
    key="math",
    title="MATH",
    required_keys=("problem", "solution"),
    answer_markers=("\\boxed", "\\fbox"),
    answer_field="solution",
    default_data=None,
    fields=("data", "prompt", "limit", "max_new_tokens", "batch_size"),
)
