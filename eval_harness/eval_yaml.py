"""An eval YAML read from disk and validated against every benchmark in `eval_harness.tasks.BENCHMARKS`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from eval_harness import config
from eval_harness.errors import ConfigError
from eval_harness.strict_yaml import load_yaml_file
from eval_harness.tasks import BENCHMARKS


def load_config(path: Path | str) -> config.EvalConfig:
    """Read and validate an eval YAML (relative paths are read from the YAML's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    data = load_yaml_file(path)  # duplicate keys and binary files are ConfigErrors too
    return parse_config(data, base_dir=path.resolve().parent)


def parse_config(data: Any, *, base_dir: Path) -> config.EvalConfig:
    """Validate a parsed YAML document against the registered benchmarks."""
    return config.parse_config(data, base_dir=base_dir, benchmarks=BENCHMARKS)
