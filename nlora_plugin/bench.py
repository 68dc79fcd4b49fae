"""Initialisation-time benchmark: NLoRA / SLoRA against PEFT's LoRA and PiSSA on the same weights.

Shared by ``nlora init-bench`` and ``benchmarks/init_time.py``. Every method is timed as users call it,
``get_peft_model(model, config)``, on one stack of ``nn.Linear`` layers (LLaMA-2-7B shapes by default),
interleaving methods round by round so that load on a shared machine hits all of them alike. Methods that
do a full SVD (PEFT ``pissa``) are timed on one layer of each shape and extrapolated to the stack unless
``full_svd=True``; the table says which numbers are extrapolated.
"""

from __future__ import annotations

import gc
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from peft import PeftConfig, get_peft_model
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
from torch import nn

from .methods import METHODS as TABLE

logger = logging.getLogger(__name__)

WEIGHT_STD = 0.02  # LLaMA's initializer_range: the scale of the synthetic weights

# (name, out_features, in_features) of the seven projections of one LLaMA-2-7B block.
LLAMA2_7B_BLOCK: tuple[tuple[str, int, int], ...] = (
    ("q_proj", 4096, 4096),
    ("k_proj", 4096, 4096),
    ("v_proj", 4096, 4096),
    ("o_proj", 4096, 4096),
    ("gate_proj", 11008, 4096),
    ("up_proj", 11008, 4096),
    ("down_proj", 4096, 11008),
)


@dataclass(frozen=True)
class InitMethod:
    """One initialisation to time: how to build its PEFT config and what it costs."""

    name: str
    description: str
    make_config: Callable[[int, list[str]], PeftConfig]
    leaves_base_changed: bool = (
        False  # unload keeps PiSSA's W - BA in the base weights: refill them afterwards
    )
    full_svd: bool = False  # one full SVD per layer: extrapolated from one layer per shape by default


def _method(name: str, **options: Any) -> Callable[[int, list[str]], PeftConfig]:
    """A config factory for method `name` of the method table, with extra NLoraConfig options."""
    return lambda r, targets: TABLE[name].peft_config(r=r, lora_alpha=r, target_modules=targets, **options)


def _nlora(**options: Any) -> Callable[[int, list[str]], PeftConfig]:
    return _method("nlora", **options)


def _lora(init: bool | str) -> Callable[[int, list[str]], PeftConfig]:
    return _method("lora", init_lora_weights=init)


METHODS: dict[str, InitMethod] = {
    method.name: method
    for method in (
        InitMethod("nlora", "NLoRA default (first r, N = A_W; authors' code)", _nlora()),
        InitMethod("nlora_pinv", "NLoRA, N = pinv(A_W)", _nlora(nystrom_core="pinv")),
        InitMethod("nlora_residual", "NLoRA default, residual W - BNA", _nlora(residual=True)),
        InitMethod("nlora_pivoted", "NLoRA, pivoted (DEIM) indices", _nlora(nystrom_index="pivoted")),
        InitMethod("nlora_optimal", "NLoRA, optimal core C+ W R+", _nlora(nystrom_core="optimal")),
        InitMethod(
            "nlora_pivoted_optimal",
            "NLoRA, pivoted indices + optimal core",
            _nlora(nystrom_index="pivoted", nystrom_core="optimal"),
        ),
        InitMethod("slora", "SLoRA (A Kaiming, B 0, N Kaiming)", _method("slora")),
        InitMethod("lora", "PEFT LoRA default (baseline)", _lora(True)),
        InitMethod(
            "pissa_niter_4",
            "PEFT PiSSA, randomized SVD, 4 iters",
            _lora("pissa_niter_4"),
            leaves_base_changed=True,
        ),
        InitMethod("pissa", "PEFT PiSSA, full SVD", _lora("pissa"), leaves_base_changed=True, full_svd=True),
    )
}
BASELINE = "lora"
# Everything but the combination of two options already timed alone (keeps the default run near 3 minutes).
DEFAULT_METHODS = tuple(name for name in METHODS if name != "nlora_pivoted_optimal")


class InvalidBenchmarkArgument(ValueError):
    """A benchmark argument that cannot work (raised before any weight is built)."""


def parse_shape(text: str) -> tuple[int, int]:
    """'11008x4096' -> (11008, 4096): out_features x in_features of one nn.Linear."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
        raise InvalidBenchmarkArgument(
            f"shape {text!r} is invalid: write OUTxIN with two positive integers, e.g. 11008x4096"
        )
    return int(parts[0]), int(parts[1])


def block_from_shapes(shapes: Sequence[tuple[int, int]]) -> tuple[tuple[str, int, int], ...]:
    """Name user-given shapes layer0, layer1, ... (one block)."""
    return tuple(
        (f"layer{index}", out_features, in_features)
        for index, (out_features, in_features) in enumerate(shapes)
    )


class LinearStack(nn.Module):
    """`blocks` copies of a block of bias-free nn.Linear layers: the target layers of a transformer."""

    def __init__(self, block: Sequence[tuple[str, int, int]], blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {name: nn.utils.skip_init(nn.Linear, fan_in, out, bias=False) for name, out, fan_in in block}
            )
            for _ in range(blocks)
        )
        self.target_names = sorted({name for name, _, _ in block})

    def linears(self) -> list[tuple[str, nn.Linear]]:
        return [(name, module) for name, module in self.named_modules() if isinstance(module, nn.Linear)]

    @torch.no_grad()
    def fill(self, seed: int) -> None:
        """Gaussian weights (std 0.02, as LLaMA's init), the same for a given seed whatever was there."""
        generator = torch.Generator().manual_seed(seed)
        for _, linear in self.linears():
            linear.weight.data = torch.empty_like(linear.weight).normal_(0.0, WEIGHT_STD, generator=generator)


class _Wrapper(nn.Module):
    """A fresh top-level module around shared layers: PEFT writes `peft_config` onto the model it wraps."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = layers


LayerTimes = list[tuple[tuple[int, int], float]]


@contextmanager
def timing_each_layer(tuner_cls: type, record: LayerTimes) -> Iterator[None]:
    """Record (weight shape, seconds) of every layer the tuner wraps: one ``_create_and_replace`` call each."""
    original = tuner_cls._create_and_replace

    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        result = original(self, *args, **kwargs)
        target = args[2] if len(args) > 2 else kwargs["target"]
        record.append((tuple(target.weight.shape), time.perf_counter() - start))
        return result

    tuner_cls._create_and_replace = timed
    try:
        yield
    finally:
        tuner_cls._create_and_replace = original


def time_get_peft_model(layers: nn.Module, config: PeftConfig, record: LayerTimes) -> float:
    """Seconds of one ``get_peft_model`` call on `layers` (per-layer times appended to `record`).

    The layers are unwrapped again afterwards (a residual adapter gives its product back on unload).
    """
    wrapper = _Wrapper(layers)
    gc.collect()
    with timing_each_layer(PEFT_TYPE_TO_TUNER_MAPPING[config.peft_type], record):
        start = time.perf_counter()
        peft_model = get_peft_model(wrapper, config)
        elapsed = time.perf_counter() - start
    peft_model.base_model.unload()
    return elapsed


@dataclass
class MethodTiming:
    """Measured seconds of one method: whole-stack runs and every layer of every run."""

    method: InitMethod
    stack_runs: list[float] = field(default_factory=list)
    layer_times: LayerTimes = field(default_factory=list)
    extrapolated: bool = False  # stack time = per-layer medians x layer counts

    def layer_seconds(self, shape: tuple[int, int]) -> float:
        return statistics.median(seconds for layer_shape, seconds in self.layer_times if layer_shape == shape)

    def stack_seconds(self, layer_counts: dict[tuple[int, int], int]) -> float:
        if self.extrapolated:
            return sum(self.layer_seconds(shape) * count for shape, count in layer_counts.items())
        return statistics.median(self.stack_runs)

    def seconds_spent(self) -> float:
        return sum(self.stack_runs) + (
            sum(seconds for _, seconds in self.layer_times) if self.extrapolated else 0.0
        )


@dataclass
class InitBenchResult:
    """All timings of one run plus what was run: enough to print the table and the goal checks."""

    timings: dict[str, MethodTiming]
    layer_counts: dict[tuple[int, int], int]
    blocks: int
    r: int
    threads: int

    def ratio(self, numerator: str, denominator: str) -> float | None:
        if numerator not in self.timings or denominator not in self.timings:
            return None
        num = self.timings[numerator].stack_seconds(self.layer_counts)
        den = self.timings[denominator].stack_seconds(self.layer_counts)
        return num / den if den > 0 else None


def _one_layer_per_shape(stack: LinearStack) -> nn.ModuleDict:
    """A model of one layer of each shape (sharing the stack's layers): what extrapolated methods time."""
    first: dict[tuple[int, int], tuple[str, nn.Linear]] = {}
    for name, linear in stack.linears():
        first.setdefault(tuple(linear.weight.shape), (name.rsplit(".", 1)[-1], linear))
    return nn.ModuleDict(dict(first.values()))


def run_init_benchmark(
    block: Sequence[tuple[str, int, int]] = LLAMA2_7B_BLOCK,
    blocks: int = 4,
    r: int = 128,
    methods: Sequence[str] = DEFAULT_METHODS,
    repeats: int = 3,
    budget_s: float = 5.0,
    full_svd: bool = False,
    seed: int = 0,
    progress: Callable[[str], None] = logger.info,
) -> InitBenchResult:
    """Time each method's ``get_peft_model`` on every layer of a `blocks`-block stack (float32, CPU).

    Methods are interleaved: each round runs every method once. A method gets at most `repeats` runs and
    stops repeating once its runs have taken `budget_s` seconds; the table reports medians. Full-SVD
    methods run once on a model of one layer per shape and are extrapolated, unless `full_svd`.
    """
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise InvalidBenchmarkArgument(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if blocks < 1 or r < 1 or repeats < 1:
        raise InvalidBenchmarkArgument(
            f"blocks={blocks}, r={r}, repeats={repeats}: each must be a positive integer"
        )
    smallest = min(min(out, fan_in) for _, out, fan_in in block)
    if r > smallest:
        raise InvalidBenchmarkArgument(
            f"--r {r} is larger than the smallest layer dimension {smallest}; use r <= {smallest}"
        )
    progress(f"building {blocks} block(s) x {len(block)} layers (float32)")
    stack = LinearStack(block, blocks)
    stack.fill(seed)
    layer_counts = dict(Counter(tuple(linear.weight.shape) for _, linear in stack.linears()))
    timings = {
        name: MethodTiming(METHODS[name], extrapolated=METHODS[name].full_svd and not full_svd)
        for name in methods
    }
    for round_index in range(repeats):
        for timing in timings.values():
            if round_index > 0 and (timing.seconds_spent() >= budget_s or timing.method.full_svd):
                continue
            progress(f"round {round_index + 1}/{repeats}: {timing.method.name}")
            config = timing.method.make_config(r, stack.target_names)
            # Synthetic weights make every residual "larger than W": silence that per-layer warning here.
            with _quiet_logger("nlora_plugin.layer"):
                if timing.extrapolated:
                    time_get_peft_model(_one_layer_per_shape(stack), config, timing.layer_times)
                else:
                    timing.stack_runs.append(time_get_peft_model(stack, config, timing.layer_times))
            if timing.method.leaves_base_changed:
                stack.fill(seed)
    return InitBenchResult(timings, layer_counts, blocks, r, torch.get_num_threads())


@contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    target = logging.getLogger(name)
    level = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(level)


def _shape_label(shape: tuple[int, int]) -> str:
    return f"{shape[0]}x{shape[1]}"


def format_init_table(result: InitBenchResult) -> str:
    """Markdown table: stack seconds, ratio to LoRA, PiSSA's time over this one, per-layer ms by shape."""
    shapes = list(result.layer_counts)
    header = ["method", "stack s", "x LoRA", "pissa / this"] + [f"ms/layer {_shape_label(s)}" for s in shapes]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, timing in result.timings.items():
        stack_s = timing.stack_seconds(result.layer_counts)
        vs_lora = result.ratio(name, BASELINE)
        pissa_speedup = result.ratio("pissa", name)
        cells = [
            f"{name}{' *' if timing.extrapolated else ''}",
            f"{stack_s:.3f}",
            "-" if vs_lora is None else f"{vs_lora:.2f}",
            "-" if pissa_speedup is None else f"{pissa_speedup:.0f}",
        ] + [f"{1000 * timing.layer_seconds(shape):.1f}" for shape in shapes]
        lines.append("| " + " | ".join(cells) + " |")
    counts = ", ".join(f"{count} x {_shape_label(shape)}" for shape, count in result.layer_counts.items())
    layers = sum(result.layer_counts.values())
    notes = [
        f"\nstack: {result.blocks} block(s), {layers} layers ({counts}), r = {result.r}, float32, CPU, "
        + f"torch threads = {result.threads}; medians of the runs."
    ]
    if any(t.extrapolated for t in result.timings.values()):
        notes.append(
            "* extrapolated: one layer of each shape timed once, multiplied by the layer counts (--full-svd to time "
            "the whole stack)."
        )
    return "\n".join(lines + notes)


def goal_report(result: InitBenchResult) -> list[str]:
    """The project's goals: NLoRA default <= 1.1x LoRA's init time and >= 50x faster than PiSSA."""
    lines = []
    vs_lora = result.ratio("nlora", BASELINE)
    if vs_lora is not None:
        lines.append(f"goal NLoRA/LoRA <= 1.10: {vs_lora:.2f} -> {'met' if vs_lora <= 1.1 else 'MISSED'}")
    speedup = result.ratio("pissa", "nlora")
    if speedup is not None:
        lines.append(f"goal PiSSA/NLoRA >= 50: {speedup:.0f} -> {'met' if speedup >= 50 else 'MISSED'}")
    return lines


def plot_init_times(result: InitBenchResult, path: str) -> None:
    """Bar chart (log scale) of each method's stack init time, LoRA's drawn in black. Needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.timings)
    seconds = [result.timings[name].stack_seconds(result.layer_counts) for name in names]
    labels = [f"{name} *" if result.timings[name].extrapolated else name for name in names]
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    axis.barh(labels, seconds, color=["black" if name == BASELINE else "tab:blue" for name in names])
    axis.set(xscale="log", xlabel="seconds to initialise the stack (log)")
    axis.set_title(
        f"init time, {result.blocks} block(s) x {len(result.layer_counts)} shapes, r = {result.r}, "
        f"{result.threads} threads (* extrapolated)",
        fontsize=9,
    )
    axis.invert_yaxis()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
