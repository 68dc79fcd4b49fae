"""GLUE: fine-tunes its own methods × seeds on each task (`benchmark`), with its trainer (`finetune`) and
method table (`methods`). The fine-tune stack (torch, transformers, PEFT) is imported only for a config
that has a `glue:` section."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eval_harness.run_folder import RunFolder
from eval_harness.tasks.base import Benchmark


class GlueBenchmark(Benchmark):
    """The eight GLUE tasks (and GLUE-style custom ones); it needs no base model or model entries."""

    key = "glue"
    title = "GLUE"
    per_model = False

    def parse_section(self, section: Any, *, where: str, base_dir: Path) -> Any:
        from eval_harness.tasks.glue.benchmark import parse_section

        return parse_section(section, where=where, base_dir=base_dir)

    def run_cross_model(self, settings: Any, *, labels: Sequence[str], run: RunFolder) -> list[dict[str, Any]]:
        from eval_harness.tasks.glue.benchmark import run_all

        return run_all(settings, run_dir=run.root)


GLUE = GlueBenchmark()
