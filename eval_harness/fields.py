"""Field checkers for the eval YAML: each names the field, the bad value and the fix.

The bottom of the harness's imports (cli → runner → tasks → models → config → fields): the top-level
config and every benchmark's section check their fields with these, so each rule is written once.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from eval_harness.errors import ConfigError

DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# budget fields the report compares across methods (see report.budget.parity_flags)
BUDGET_FIELDS = ("samples", "rank", "learning_rate", "lr_schedule")


def check_fields(section: Any, *, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
    """`section` must be a mapping with only `allowed` keys and every `required` key."""
    if section is None:
        section = {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where or 'the file'} must be a mapping of fields, got {section!r}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(
            f"{join(where, unknown[0])}: unknown field (value {section[unknown[0]]!r}); "
            f"allowed fields here: {', '.join(allowed)}"
        )
    for name in required:
        if section.get(name) is None:
            raise ConfigError(f"{join(where, name)}: required field is missing")
    return dict(section)


def get_int(section: Mapping, name: str, *, where: str, default: int | None, minimum: int = 0) -> int | None:
    """An integer field >= `minimum` (bools refused), or `default` when absent."""
    value = section.get(name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{join(where, name)}: expected an integer >= {minimum}, got {value!r}")
    return value


def get_float(section: Mapping, name: str, *, where: str, default: float, low: float,
              high: float = float("inf")) -> float:
    """A number in [low, high] (bools refused), or `default` when absent."""
    value = section.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        bounds = f"in [{low}, {high}]" if high != float("inf") else f">= {low}"
        raise ConfigError(f"{join(where, name)}: expected a number {bounds}, got {value!r}")
    return float(value)


def get_bool(section: Mapping, name: str, *, where: str, default: bool | None) -> bool | None:
    """true or false, or `default` when absent."""
    value = section.get(name, default)
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"{join(where, name)}: expected true or false, got {value!r}")
    return value


def get_choice(section: Mapping, name: str, *, where: str, choices: tuple[str, ...], default: str) -> str:
    """One of `choices`, or `default` when absent."""
    value = section.get(name, default)
    if value not in choices:
        raise ConfigError(f"{join(where, name)}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def get_device(section: Mapping, name: str = "device", *, where: str, default: str = "auto") -> str:
    """auto, cpu, mps, cuda or cuda:N: the same rule wherever a device is chosen."""
    value = section.get(name, default)
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
        raise ConfigError(f"{join(where, name)}: expected auto, cpu, mps, cuda or cuda:N, got {value!r}")
    return value


def resolve_path(value: Any, *, where: str, base_dir: Path) -> Path:
    """A path string read relative to the YAML's folder (not checked for existence)."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path string, got {value!r}")
    return (base_dir / Path(value).expanduser()).resolve()


def get_path(
    section: Mapping, name: str, *, where: str, base_dir: Path, kind: str = "file", required: bool = True
) -> Path | None:
    """A path (relative to the YAML's folder) that must exist as a `kind` ("file" or "dir")."""
    value = section.get(name)
    if value is None:
        if required:
            raise ConfigError(f"{join(where, name)}: required field is missing (a path to a {kind})")
        return None
    path = resolve_path(value, where=join(where, name), base_dir=base_dir)
    exists = path.is_file() if kind == "file" else path.is_dir()
    if not exists:
        raise ConfigError(
            f"{join(where, name)}: {kind} {value!r} does not exist (resolved to {path}); "
            f"relative paths are read from the YAML's folder {base_dir}"
        )
    return path


def parse_intended_differences(value: Any, *, where: str) -> tuple[str, ...]:
    """`intended_differences`: budget fields an entry is meant to differ in (e.g. IntTune's own lr)."""
    if value is None:
        return ()
    if not isinstance(value, list) or any(item not in BUDGET_FIELDS for item in value):
        raise ConfigError(f"{where}: expected a list drawn from {', '.join(BUDGET_FIELDS)}, got {value!r}")
    return tuple(value)


def join(where: str, name: str) -> str:
    """`where.name`, or `name` at the top of the file."""
    return f"{where}.{name}" if where else name


def dataclass_defaults(cls: type) -> dict[str, Any]:
    """Each field's default in a settings dataclass: the one place a YAML field's default is written."""
    defaults = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults
