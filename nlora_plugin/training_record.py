"""training_settings.json: the training budget of an adapter, written beside it when training ends.

eval-harness reads it to show each method's budget next to its scores and to flag comparisons of
methods trained on different budgets (steps × effective batch, rank, learning-rate schedule).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TRAINING_SETTINGS = "training_settings.json"
SCHEMA_VERSION = 1


def budget_record(args: Any, state: Any, adapter: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """The budget of a finished HF Trainer run: `args` (TrainingArguments), `state` (TrainerState).

    effective batch = micro batch × gradient accumulation × world size; samples = steps × effective batch.
    `loss_curve` is [step, training loss] for every logged step (the report plots it).
    """
    micro = int(args.per_device_train_batch_size)
    accumulation = int(args.gradient_accumulation_steps)
    world = int(getattr(args, "world_size", 1) or 1)
    steps = int(getattr(state, "global_step", 0) or 0)
    effective = micro * accumulation * world
    return {
        "schema_version": SCHEMA_VERSION,
        "learning_rate": float(args.learning_rate),
        "lr_scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_ratio": float(getattr(args, "warmup_ratio", 0.0) or 0.0),
        "warmup_steps": int(getattr(args, "warmup_steps", 0) or 0),
        "weight_decay": float(args.weight_decay),
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "micro_batch_size": micro,
        "gradient_accumulation_steps": accumulation,
        "world_size": world,
        "effective_batch_size": effective,
        "steps": steps,
        "epochs": float(getattr(state, "epoch", 0.0) or 0.0),
        "samples": steps * effective,
        "seed": int(args.seed),
        "loss_curve": loss_curve(getattr(state, "log_history", None) or []),
        **dict(adapter),
        **dict(extra),
    }


def loss_curve(log_history: list[Mapping[str, Any]]) -> list[list[float]]:
    """[step, loss] from the Trainer's log history (its per-step training-loss entries only)."""
    return [[float(entry["step"]), float(entry["loss"])] for entry in log_history
            if "loss" in entry and "step" in entry]


def write_training_settings(folder: Path, record: Mapping[str, Any]) -> Path:
    """Atomically write folder/training_settings.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / TRAINING_SETTINGS
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{TRAINING_SETTINGS}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(dict(record), handle, indent=2, default=str)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_training_settings(folder: Path) -> dict[str, Any] | None:
    """The record beside an adapter, or None when the adapter was trained without the plugin."""
    path = Path(folder) / TRAINING_SETTINGS
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    return data if isinstance(data, dict) else None
