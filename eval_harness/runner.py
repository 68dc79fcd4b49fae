"""Runs every model entry on every benchmark of a validated config; a rerun resumes a killed run.

A (label, benchmark) whose summary.json exists is done and skipped without loading the model; an
unfinished one is handed to its task, which skips the items it already finished. A model is loaded
only when one of its benchmarks still has work, and dropped before the next entry loads.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

from eval_harness.adapters import provenance
from eval_harness.config import EvalConfig, ModelEntry
from eval_harness.errors import ConfigError
from eval_harness.models import ModelHandle
from eval_harness.results import atomic_write_json, read_json
from eval_harness.run_folder import RunFolder
from eval_harness.run_lock import holds_run_lock
from eval_harness.tasks import BENCHMARKS
from eval_harness.versions import package_versions
from eval_harness.vllm_backend import VLLMEngine, serve_adapter

logger = logging.getLogger(__name__)


def start_run_dir(config: EvalConfig, output: Path, *, command: list[str]) -> None:
    """Write RUN_DIR/run.json, or check that an existing one was made by the same config (resume)."""
    run_json = RunFolder(output).run_record
    current = config.as_dict()
    if run_json.is_file():
        previous = read_json(run_json).get("config", {})
        if isinstance(previous.get("generation"), dict):  # written before `backend` existed: it was HF
            previous["generation"] = {"backend": "hf", "vllm": None, **previous["generation"]}
        changed = sorted(key for key in set(previous) | set(current) if previous.get(key) != current.get(key))
        if changed:
            raise ConfigError(
                f"{output} holds a run made with a different config (fields that differ: {', '.join(changed)}); "
                "rerun with the same YAML to resume it, or choose a new --output"
            )
        logger.info("resuming the run in %s", output)
        return
    output.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        run_json,
        {
            "config": current,
            "versions": package_versions(),
            "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": command,
        },
    )


@holds_run_lock  # a second run into the same folder is refused at start (eval_harness/run_lock.py)
def run_config(config: EvalConfig, output: Path, *, command: list[str]) -> list[dict[str, Any]]:
    """Evaluate everything the config asks for into `output`; returns every summary (old and new)."""
    run = RunFolder(Path(output))
    start_run_dir(config, run.root, command=command)
    per_model = [(key, settings) for key, settings in config.benchmarks.items() if BENCHMARKS[key].per_model]
    handles = [ModelHandle.from_entry(entry, config) for entry in config.models]
    engine = prepare_vllm(config, handles, run, per_model) if config.generation.backend == "vllm" else None
    summaries: list[dict[str, Any]] = []
    try:
        for index, (entry, handle) in enumerate(zip(config.models, handles), start=1):
            logger.info("model %d/%d: %s (%s)", index, len(config.models), entry.label, entry.method)
            if engine is None:
                prepare_model(entry, handle, config, run, per_model)
            for key, settings in per_model:
                if run.is_finished(entry.label, key):
                    logger.info("%s/%s: finished in an earlier run, skipped", entry.label, key)
                    summaries.append(run.read_summary(entry.label, key))
                    continue
                out_dir = run.benchmark_dir(entry.label, key)
                out_dir.mkdir(parents=True, exist_ok=True)
                started = time.perf_counter()
                summary = BENCHMARKS[key].run(settings, model=handle, out_dir=out_dir)
                logger.info(
                    "%s/%s: %s = %s (%.1f s)",
                    entry.label,
                    key,
                    summary["primary_metric"],
                    summary["metrics"].get(summary["primary_metric"]),
                    time.perf_counter() - started,
                )
                summaries.append(summary)
            handle.release()
    finally:
        if engine is not None:
            engine.close()
    labels = [entry.label for entry in config.models]
    for key, settings in config.benchmarks.items():  # work that is not one model's (pairwise judging, GLUE)
        started = time.perf_counter()
        cross_model = BENCHMARKS[key].run_cross_model(settings, labels=labels, run=run)
        if cross_model:
            logger.info("%s: %d results across models (%.1f s)", key, len(cross_model), time.perf_counter() - started)
        summaries.extend(cross_model)
    return summaries


def prepare_model(entry: ModelEntry, handle: ModelHandle, config: EvalConfig, run: RunFolder,
                  per_model: list[tuple[str, Any]]) -> bool:
    """Record the entry (model.json); if a benchmark still has work, load, check and probe it. True then."""
    record = record_model(entry, config, run)
    if all(run.is_finished(entry.label, key) for key, _ in per_model):
        return False
    handle.model  # noqa: B018  (load, check and probe the adapter before any benchmark work)
    if handle.probe is not None:
        atomic_write_json(run.model_record(entry.label), {**record, "probe": handle.probe})
    return True


def prepare_vllm(config: EvalConfig, handles: list[ModelHandle], run: RunFolder,
                 per_model: list[tuple[str, Any]]) -> VLLMEngine:
    """Backend vllm: check and probe every entry with HF first (each released before the next loads, and
    all before the engine takes the GPU), write each NLoRA adapter's exact plain-LoRA export, and give
    every handle the one engine of the base model."""
    served = []
    for entry, handle in zip(config.models, handles):
        if prepare_model(entry, handle, config, run, per_model) and handle.adapter is not None:
            handle.served_adapter = serve_adapter(handle.model, handle.adapter, run.label_dir(entry.label))
            served.append(handle.served_adapter)
        handle.release()
    engine = VLLMEngine(config.base_model, dtype=config.dtype, settings=config.generation.vllm,
                        adapters=served, seed=config.generation.seed)
    for handle in handles:
        handle.engine = engine
    return engine


def record_model(entry: ModelEntry, config: EvalConfig, run: RunFolder) -> dict[str, Any]:
    """Write <run>/<label>/model.json (adapter hash, config, training budget); refuse a changed adapter on resume."""
    path = run.model_record(entry.label)
    record = {
        "label": entry.label,
        "method": entry.method,
        "seed": entry.seed,
        "expect_identity": entry.expect_identity,
        "intended_differences": list(entry.intended_differences),
        "provenance": provenance(entry.adapter, config.base_model),
    }
    if path.is_file():
        previous = read_json(path)
        for field in ("adapter_sha256", "base_config_sha256"):
            if previous.get("provenance", {}).get(field) != record["provenance"].get(field):
                raise ConfigError(
                    f"models[{entry.label}]: {field} differs from the one recorded when this run started "
                    f"({path}): the files changed, so resuming would mix two models' results; choose a new --output"
                )
        if "probe" in previous:
            record["probe"] = previous["probe"]
    atomic_write_json(path, record)
    return record


def format_table(summaries: list[dict[str, Any]]) -> str:
    """A plain-text table: one row per label, one column per benchmark (primary metric)."""
    labels = list(dict.fromkeys(summary["label"] for summary in summaries))
    benchmarks = list(dict.fromkeys(summary["benchmark"] for summary in summaries))
    value = {
        (summary["label"], summary["benchmark"]): summary["metrics"].get(summary["primary_metric"])
        for summary in summaries
    }
    rows = [["label", *benchmarks]]
    for label in labels:
        cells = [value.get((label, benchmark)) for benchmark in benchmarks]
        rows.append([label, *("-" if cell is None else f"{cell:.4f}" for cell in cells)])
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in rows)
