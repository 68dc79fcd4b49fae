"""Report figures (matplotlib, Agg): per-benchmark bars with 95 % CIs, loss curves, efficiency bars."""

from __future__ import annotations

import io
import os
import re
import textwrap
from pathlib import Path
from typing import Any

BASELINE_COLOR = "#7f7f7f"
TICK_LABEL_WIDTH = 14  # characters per line of a bar's label, so long method names do not overlap


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    """Write the PNG atomically (temp file in the same folder, then replace)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        handle.write(buffer.getvalue())
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _colors(results: dict[str, Any]) -> dict[str, str]:
    """One colour per method (the same on every base model) in every figure; the baseline is grey."""
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22",
               "#17becf"]
    others = list(dict.fromkeys(row["method"] for row in results["rows"] if not row["is_baseline"]))
    return {row["key"]: BASELINE_COLOR if row["is_baseline"] else palette[others.index(row["method"]) % len(palette)]
            for row in results["rows"]}


def _names(results: dict[str, Any], keys: list[str]) -> dict[str, str]:
    """Row keys as plot labels: just the method when the plotted rows share one base model."""
    one_model = len({results["table"][key]["model"] for key in keys}) <= 1
    return {key: results["table"][key]["method"] if one_model else key for key in keys}


def safe_name(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", key)


def benchmark_bars(results: dict[str, Any], bench: dict[str, Any], path: Path) -> Path:
    """Primary metric per method with its 95 % CI as error bars; the baseline bar is grey."""
    plt = _pyplot()
    scale = 100.0 if bench["percent"] else 1.0
    methods = [m for m in results["methods"] if bench["key"] in results["table"][m]["benchmarks"]]
    cells = [results["table"][m]["benchmarks"][bench["key"]] for m in methods]
    colors = _colors(results)
    values = [cell["estimate"] * scale for cell in cells]
    lower = [(cell["estimate"] - cell["ci_low"]) * scale if cell["ci_low"] is not None else 0 for cell in cells]
    upper = [(cell["ci_high"] - cell["estimate"]) * scale if cell["ci_high"] is not None else 0 for cell in cells]
    fig, ax = plt.subplots(figsize=(max(5.4, 0.9 * len(methods) + 1.5), 3.6))
    bars = ax.bar(range(len(methods)), values, yerr=[lower, upper], capsize=5, width=0.6,
                  color=[colors[m] for m in methods],
                  error_kw={"elinewidth": 1.2, "ecolor": "black"})
    for bar, value, up in zip(bars, values, upper):
        ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, value + up), ha="center", va="bottom",
                    fontsize=9, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(methods)))
    baselines = {row["key"] for row in results["rows"] if row["is_baseline"]}
    names = _names(results, methods)
    labels = [textwrap.fill(names[m], TICK_LABEL_WIDTH) + ("\n(baseline)" if m in baselines else "") for m in methods]
    ax.set_xticklabels(labels, fontsize=9)
    unit = " (%)" if bench["percent"] else ""
    ax.set_ylabel(f"{bench['primary_metric']}{unit}")
    ax.set_title(f"{bench['name']}: {bench['primary_metric']} with 95 % bootstrap CI")
    low_end = min(v - lo for v, lo in zip(values, lower)) if values else 0
    top = max((v + up for v, up in zip(values, upper)), default=1)
    ax.set_ylim(min(0, low_end * 1.1), top * 1.15 if top > 0 else 1)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)
    return path


def loss_curves(results: dict[str, Any], path: Path) -> Path | None:
    """All methods' training loss on one plot: mean over seeds, ±1 std band."""
    curves = results["loss_curves"]
    if not curves:
        return None
    plt = _pyplot()
    colors = _colors(results)
    names = _names(results, list(curves))
    fig, ax = plt.subplots(figsize=(7, 4))
    for method, curve in curves.items():
        mean, std = curve["mean"], curve["std"]
        ax.plot(curve["steps"], mean, label=f"{names[method]} (n={curve['n_seeds']})", color=colors[method], lw=1.6)
        if curve["n_seeds"] > 1:
            ax.fill_between(curve["steps"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=colors[method], alpha=0.18, lw=0)
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss")
    ax.set_title("Training loss (mean over seeds, band = ±1 std)")
    ax.legend(frameon=False, fontsize=9)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    _save(fig, path)
    return path


def efficiency_bars(results: dict[str, Any], path: Path) -> Path | None:
    """Init time, step time and peak memory per method (mean over seeds, std as error bar)."""
    table = results["efficiency"]
    panels = [("init_time_s", "init time (s)", 1.0), ("step_time_s", "step time (ms)", 1e3),
              ("peak_memory_bytes", "peak memory (MiB)", 1 / 2**20)]
    panels = [p for p in panels if any(p[0] in row for row in table.values())]
    if not panels:
        return None
    plt = _pyplot()
    colors = _colors(results)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (name, title, scale) in zip(axes[0], panels):
        methods = [m for m in table if name in table[m]]
        values = [table[m][name]["mean"] * scale for m in methods]
        errors = [table[m][name]["std"] * scale for m in methods]
        ax.bar(range(len(methods)), values, yerr=errors, capsize=4,
               color=[colors[m] for m in methods])
        ax.set_xticks(range(len(methods)))
        names = _names(results, methods)
        ax.set_xticklabels([names[m] for m in methods], rotation=30, ha="right", fontsize=9)
        ax.set_title(title)
        ax.spines[["top", "right"]].set_visible(False)
    fig.suptitle("Efficiency per method (mean over seeds, error bar = std)")
    fig.tight_layout()
    _save(fig, path)
    return path
