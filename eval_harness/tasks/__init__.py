"""Every benchmark the harness runs, by its `benchmarks:` key (the interface: `eval_harness.tasks.base`)."""

from __future__ import annotations

from eval_harness.tasks.base import Benchmark
from eval_harness.tasks.code import HUMANEVAL, MBPP
from eval_harness.tasks.glue import GLUE
from eval_harness.tasks.gsm8k_math import GSM8K, MATH
from eval_harness.tasks.mt_bench import MT_BENCH
from eval_harness.tasks.nll import NLL

BENCHMARKS: dict[str, Benchmark] = {task.key: task for task in (GSM8K, MATH, HUMANEVAL, MBPP, MT_BENCH, NLL, GLUE)}
