"""The run folder's layout in one place: <run>/run.json, <run>/<label>/model.json, <run>/<label>/<benchmark>/."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eval_harness.results import read_json
from eval_harness.summary import SUMMARY_NAME

RUN_RECORD = "run.json"  # the config, versions and command that made the run
MODEL_RECORD = "model.json"  # what was evaluated under a label (adapter hash, budget, probe)
TRAINING_RECORD = "training.json"  # how the harness fine-tuned a label (GLUE): loss curve, timings


@dataclass(frozen=True)
class RunFolder:
    """Paths inside one run folder (nothing is created until a writer asks)."""

    root: Path

    @property
    def run_record(self) -> Path:
        return self.root / RUN_RECORD

    def label_dir(self, label: str) -> Path:
        return self.root / label

    def model_record(self, label: str) -> Path:
        return self.label_dir(label) / MODEL_RECORD

    def training_record(self, label: str) -> Path:
        return self.label_dir(label) / TRAINING_RECORD

    def benchmark_dir(self, label: str, benchmark: str) -> Path:
        return self.label_dir(label) / benchmark

    def summary_path(self, label: str, benchmark: str) -> Path:
        return self.benchmark_dir(label, benchmark) / SUMMARY_NAME

    def is_finished(self, label: str, benchmark: str) -> bool:
        """A (label, benchmark) is finished once its summary.json exists (it is written last, atomically)."""
        return self.summary_path(label, benchmark).is_file()

    def read_summary(self, label: str, benchmark: str) -> dict[str, Any]:
        return read_json(self.summary_path(label, benchmark))
