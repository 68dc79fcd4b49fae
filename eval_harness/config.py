"""The eval YAML: one base model, any number of adapters, the benchmarks and their settings.

Everything is checked here, before any model loads: unknown fields, missing folders and files,
adapter folders without adapter_config.json, unknown benchmarks. Each benchmark section is handed
to its benchmark's `parse_section` (the registry is passed in: `eval_harness.eval_yaml` reads a file
against `eval_harness.tasks.BENCHMARKS`), which checks its own fields with `eval_harness.fields`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval_harness.adapters import check_adapter_folder, check_servable_by_vllm
from eval_harness.errors import ConfigError
from eval_harness.fields import (
    check_fields,
    dataclass_defaults,
    get_bool,
    get_choice,
    get_device,
    get_float,
    get_int,
    get_path,
    parse_intended_differences,
)

if TYPE_CHECKING:
    from eval_harness.tasks.base import Benchmark

DTYPES = ("auto", "float32", "float16", "bfloat16")
LABEL_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class VLLMSettings:
    """`generation.vllm:` the engine's settings (only with `backend: vllm`); None: vLLM's own default."""

    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    max_model_len: int | None = None  # None: the model's context length
    enforce_eager: bool | None = None  # None: True on the CPU (no CUDA graphs there), False on a GPU


@dataclass(frozen=True)
class GenerationDefaults:
    """The YAML's `generation:` block: what a task uses unless its own section says otherwise.

    `backend` is the engine every generating benchmark uses (GSM8K/MATH, HumanEval/MBPP, MT-Bench
    answers, nll's sample generations): `hf` (transformers `generate`, the default) or `vllm` (one vLLM
    engine per base model, each adapter served as plain LoRA). Scoring by likelihood (nll) is always HF.
    """

    batch_size: int = 8
    max_new_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    backend: str = "hf"
    vllm: VLLMSettings | None = None  # set (defaults filled) when backend is vllm


@dataclass(frozen=True)
class ModelEntry:
    """One row of `models:`: an adapter (or none) on the shared base model."""

    label: str
    method: str
    adapter: Path | None = None
    seed: int | None = None
    expect_identity: bool = False  # True: the adapter is meant to leave the outputs unchanged (checked)
    intended_differences: tuple[str, ...] = ()  # budget fields the report may see differ from the baseline


@dataclass(frozen=True)
class EvalConfig:
    """A validated eval YAML."""

    base_model: Path | None  # None: only benchmarks that fine-tune their own models (GLUE)
    models: tuple[ModelEntry, ...]
    benchmarks: dict[str, Any]  # benchmark key -> the settings its parse_section returned
    generation: GenerationDefaults = GenerationDefaults()
    dtype: str = "auto"
    device: str = "auto"
    report_baseline: str | None = None
    notes: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for run.json (paths resolved, settings expanded)."""
        return _jsonable(
            {
                "base_model": self.base_model,
                "dtype": self.dtype,
                "device": self.device,
                "models": [dataclasses.asdict(entry) for entry in self.models],
                "generation": dataclasses.asdict(self.generation),
                "benchmarks": {
                    key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
                    for key, value in self.benchmarks.items()
                },
                "report": {"baseline": self.report_baseline},
                "notes": self.notes,
            }
        )


SECRET_FIELDS = ("api_key",)  # read from the environment; never written to run.json


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {
            str(key): ("<redacted>" if value is not None else None) if key in SECRET_FIELDS else _jsonable(value)
            for key, value in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [_jsonable(value) for value in obj]
    if isinstance(obj, Path):
        return str(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    return obj


# --------------------------------------------------------------------------- the whole file

TOP_FIELDS = ("base_model", "dtype", "device", "models", "generation", "benchmarks", "report", "notes")
MODEL_FIELDS = ("label", "method", "adapter", "seed", "expect_identity", "intended_differences")
GENERATION_FIELDS = ("batch_size", "max_new_tokens", "temperature", "top_p", "seed", "backend", "vllm")
GENERATION_BACKENDS = ("hf", "vllm")
VLLM_FIELDS = ("tensor_parallel_size", "gpu_memory_utilization", "max_model_len", "enforce_eager")


def parse_config(data: Any, *, base_dir: Path, benchmarks: Mapping[str, Benchmark]) -> EvalConfig:
    """Validate a parsed YAML document; every benchmark section goes to its benchmark's `parse_section`."""
    top = check_fields(data, where="", allowed=TOP_FIELDS, required=("benchmarks",))
    # Benchmarks that fine-tune their own models (GLUE) need no base model and no model entries.
    keys = top["benchmarks"] if isinstance(top["benchmarks"], Mapping) else {}
    needs_models = any(benchmarks[key].per_model for key in keys if key in benchmarks)
    base_model = None
    if needs_models or top.get("base_model") is not None:
        base_model = get_path(top, "base_model", where="", base_dir=base_dir, kind="dir")
        if not (base_model / "config.json").is_file():
            raise ConfigError(
                f"base_model: {base_model} has no config.json; point it at a local Hugging Face model folder "
                "(hub names are not downloaded)"
            )
    models: tuple[ModelEntry, ...] = ()
    if needs_models or top.get("models") is not None:
        models = _parse_models(top.get("models"), base_dir=base_dir)
    generation = _parse_generation(top.get("generation"))
    device = get_device(top, where="")
    if generation.backend == "vllm":
        _check_vllm_backend(models, device=device)
    settings = _parse_benchmarks(top["benchmarks"], base_dir=base_dir, registry=benchmarks)
    for key, value in settings.items():
        benchmarks[key].check_models(value, labels=[entry.label for entry in models], where=f"benchmarks.{key}")
    report = check_fields(top.get("report"), where="report", allowed=("baseline",))
    baseline = report.get("baseline")
    notes = top.get("notes")
    if notes is not None and not isinstance(notes, str):
        raise ConfigError(f"notes: expected free text (a string), got {notes!r}")
    methods = {entry.method for entry in models}
    trains_own = any(not benchmarks[key].per_model for key in settings)
    if baseline is not None and baseline not in methods and not trains_own:
        raise ConfigError(
            f"report.baseline: {baseline!r} is not the method of any model entry; use one of {sorted(methods)}"
        )
    return EvalConfig(
        base_model=base_model,
        models=models,
        benchmarks=settings,
        generation=generation,
        dtype=get_choice(top, "dtype", where="", choices=DTYPES, default="auto"),
        device=device,
        report_baseline=baseline,
        notes=notes,
    )


def _check_vllm_backend(models: tuple[ModelEntry, ...], *, device: str) -> None:
    """`backend: vllm` needs vLLM installed, a device vLLM chooses itself, and adapters it can serve exactly."""
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "generation.backend: 'vllm', but vLLM is not installed in this environment; on a CPU run `make vllm` "
            "and use .venv-vllm/bin/eval-harness, on NVIDIA GPUs `pip install -e '.[eval,vllm]'` in its own venv "
            "(docs/eval_harness.md, 'vLLM backend'); or set `backend: hf`"
        )
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device: {device!r} with generation.backend 'vllm', which places the model itself; "
                          "use auto (choose GPUs with CUDA_VISIBLE_DEVICES) or cpu")
    for index, entry in enumerate(models):
        if entry.adapter is not None:
            config = json.loads((entry.adapter / "adapter_config.json").read_text(encoding="utf-8"))
            check_servable_by_vllm(config, where=f"models[{index}].adapter")


def _parse_generation(section: Any) -> GenerationDefaults:
    where = "generation"
    fields = check_fields(section, where=where, allowed=GENERATION_FIELDS)
    default = dataclass_defaults(GenerationDefaults)
    backend = get_choice(fields, "backend", where=where, choices=GENERATION_BACKENDS, default=default["backend"])
    return GenerationDefaults(
        batch_size=get_int(fields, "batch_size", where=where, default=default["batch_size"], minimum=1),
        max_new_tokens=get_int(fields, "max_new_tokens", where=where, default=default["max_new_tokens"], minimum=1),
        temperature=get_float(fields, "temperature", where=where, default=default["temperature"], low=0.0,
                              high=10.0),
        top_p=get_float(fields, "top_p", where=where, default=default["top_p"], low=0.0, high=1.0),
        seed=get_int(fields, "seed", where=where, default=default["seed"]),
        backend=backend,
        vllm=_parse_vllm(fields.get("vllm"), backend=backend),
    )


def _parse_vllm(section: Any, *, backend: str) -> VLLMSettings | None:
    where = "generation.vllm"
    if backend != "vllm":
        if section is not None:
            raise ConfigError(f"{where}: set with backend {backend!r}, where it would be ignored; add "
                              "`backend: vllm` to `generation:`, or remove the block")
        return None
    fields = check_fields(section, where=where, allowed=VLLM_FIELDS)
    default = dataclass_defaults(VLLMSettings)
    return VLLMSettings(
        tensor_parallel_size=get_int(fields, "tensor_parallel_size", where=where,
                                     default=default["tensor_parallel_size"], minimum=1),
        gpu_memory_utilization=get_float(fields, "gpu_memory_utilization", where=where,
                                         default=default["gpu_memory_utilization"], low=0.05, high=1.0),
        max_model_len=get_int(fields, "max_model_len", where=where, default=default["max_model_len"], minimum=16),
        enforce_eager=get_bool(fields, "enforce_eager", where=where, default=default["enforce_eager"]),
    )


def _parse_models(section: Any, *, base_dir: Path) -> tuple[ModelEntry, ...]:
    if not isinstance(section, list) or not section:
        raise ConfigError(
            f"models: expected a non-empty list of {{label, adapter, method, seed}} entries, got {section!r}"
        )
    entries: list[ModelEntry] = []
    for index, item in enumerate(section):
        where = f"models[{index}]"
        fields = check_fields(item, where=where, allowed=MODEL_FIELDS, required=("label",))
        label = fields["label"]
        if not isinstance(label, str) or not LABEL_PATTERN.match(label):
            raise ConfigError(
                f"{where}.label: {label!r} cannot name a folder; use letters, digits, '.', '_' and '-'"
            )
        if label in {entry.label for entry in entries}:
            raise ConfigError(f"{where}.label: {label!r} is used twice; every model entry needs its own label")
        adapter = get_path(fields, "adapter", where=where, base_dir=base_dir, kind="dir", required=False)
        if adapter is not None:
            check_adapter_folder(adapter, where=f"{where}.adapter")
        method = fields.get("method") or infer_method(adapter)
        if not isinstance(method, str):
            raise ConfigError(f"{where}.method: expected a string such as NLoRA, LoRA, PiSSA, got {method!r}")
        seed = get_int(fields, "seed", where=where, default=None)
        expect_identity = get_bool(fields, "expect_identity", where=where, default=False)
        if expect_identity and adapter is None:
            raise ConfigError(f"{where}.expect_identity: only an entry with an `adapter` can expect identity; "
                              "drop the field for the base model")
        entries.append(ModelEntry(label=label, method=method, adapter=adapter, seed=seed,
                                  expect_identity=expect_identity,
                                  intended_differences=parse_intended_differences(
                                      fields.get("intended_differences"), where=f"{where}.intended_differences")))
    return tuple(entries)


def infer_method(adapter: Path | None) -> str:
    """The method name the report groups by, read from adapter_config.json when the YAML gives none."""
    if adapter is None:
        return "base"
    from nlora_plugin.convert import CONVERSION_RECORD
    from nlora_plugin.methods import method_label

    config = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8"))
    conversion = adapter / CONVERSION_RECORD  # a PiSSA/OLoRA adapter saved as plain LoRA on the original base
    converted_from = json.loads(conversion.read_text(encoding="utf-8")).get("converted_from") \
        if conversion.is_file() else None
    return method_label(config, converted_from)


def _parse_benchmarks(section: Any, *, base_dir: Path, registry: Mapping[str, Benchmark]) -> dict[str, Any]:
    if not isinstance(section, Mapping) or not section:
        raise ConfigError(
            f"benchmarks: expected a mapping such as {{gsm8k: {{}}, math: {{data: ...}}}}, got {section!r}"
        )
    parsed: dict[str, Any] = {}
    for key, value in section.items():
        if key not in registry:
            raise ConfigError(
                f"benchmarks.{key}: unknown benchmark; available here: {', '.join(sorted(registry))}"
            )
        parsed[key] = registry[key].parse_section(value or {}, where=f"benchmarks.{key}", base_dir=base_dir)
    return parsed
