"""`eval-harness report`: compare run directories in report.md, index.html (with plots) and results.json.

    build_report([Path("runs/nlu")], Path("reports/nlu"), baseline="LoRA")

Rows are methods (seeds of one method pooled), columns benchmarks, as in the paper's Tables 1-2;
95 % CIs by a two-level bootstrap over seeds and items; paired tests against the baseline method.
"""

from __future__ import annotations

import logging
from pathlib import Path

from eval_harness.results import atomic_write_json, atomic_write_text

from .compare import compare
from .load import ReportError, load_runs
from .stats import DEFAULT_RESAMPLES, DEFAULT_SEED

logger = logging.getLogger(__name__)

__all__ = ["ReportError", "build_report"]


def build_report(run_dirs: list[Path], output: Path, baseline: str | None = None, *,
                 n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED) -> Path:
    """Write output/report.md, output/index.html, its PNG plots and output/results.json; returns `output`.

    `baseline` names the method the others are tested against (None: no tests, no ratios).
    `n_resamples` bootstrap resamples with RNG `seed`, so the same runs give the same report.
    Raises ReportError (naming the path or value) for a folder that is not a run directory or an
    unknown baseline, before any statistics are computed.
    """
    from . import plots
    from .render import render_html, render_markdown

    output = Path(output)
    runs = load_runs([Path(run_dir) for run_dir in run_dirs])
    logger.info("report: %d methods, %d benchmarks from %d run dirs", len(runs.methods), len(runs.benchmarks),
                len(run_dirs))
    results = compare(runs, baseline, n_resamples=n_resamples, seed=seed)
    output.mkdir(parents=True, exist_ok=True)
    figures = {}
    for bench in results["benchmarks"]:
        name = f"bars_{plots.safe_name(bench['key'])}.png"
        plots.benchmark_bars(results, bench, output / name)
        figures[f"bars_{bench['key']}.png"] = name
    if plots.loss_curves(results, output / "loss_curves.png"):
        figures["loss_curves.png"] = "loss_curves.png"
    if plots.efficiency_bars(results, output / "efficiency.png"):
        figures["efficiency.png"] = "efficiency.png"
    results["figures"] = sorted(figures.values())
    _remove_stale_figures(output, set(figures.values()))
    atomic_write_json(output / "results.json", results)
    atomic_write_text(output / "report.md", render_markdown(results, figures))
    atomic_write_text(output / "index.html", render_html(results, figures))
    logger.info("report written to %s", output)
    return output


def _remove_stale_figures(output: Path, keep: set[str]) -> None:
    """Plots an earlier report wrote that this one did not (a benchmark no longer in the runs)."""
    for path in [*output.glob("bars_*.png"), output / "loss_curves.png", output / "efficiency.png"]:
        if path.is_file() and path.name not in keep:
            path.unlink()
