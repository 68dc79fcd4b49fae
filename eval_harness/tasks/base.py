"""What the runner needs from a benchmark: check its YAML section, run it, and write summaries.

A benchmark is one object (a `Benchmark` subclass instance) listed in `eval_harness.tasks.BENCHMARKS`.
The runner calls `run` for every model entry, then `run_cross_model` once: work that is not one model's
(MT-Bench's pairwise judging of two labels' answers, GLUE's fine-tunes of its own methods).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eval_harness.run_folder import RunFolder

if TYPE_CHECKING:
    from eval_harness.models import ModelHandle


class Benchmark:
    """Subclass, set `key` and `title`, implement `parse_section` and `run` (or `run_cross_model`)."""

    key: str  # the `benchmarks:` key in the YAML and the result folder's name
    title: str  # how reports name it
    per_model: bool = True  # False: it trains and scores its own models (needs no base model or entries)

    def parse_section(self, section: Any, *, where: str, base_dir: Path) -> Any:
        """Check the YAML section before any model loads; return the settings `run` gets."""
        raise NotImplementedError

    def check_models(self, settings: Any, *, labels: Sequence[str], where: str) -> None:
        """Checks that need the model labels (e.g. a baseline label that must exist); none by default."""

    def run(self, settings: Any, *, model: ModelHandle, out_dir: Path) -> dict[str, Any]:
        """Evaluate one model into `out_dir`; write and return its summary.json document."""
        raise NotImplementedError(f"{self.key} does not evaluate model entries")

    def run_cross_model(self, settings: Any, *, labels: Sequence[str], run: RunFolder) -> list[dict[str, Any]]:
        """Work after every model entry ran (skipping what is finished); returns its summaries. None by default."""
        return []
