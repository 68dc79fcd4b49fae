"""Reading the JSON-lines data files benchmarks take (questions, problems, judge prompts), checked line by line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from eval_harness.errors import ConfigError


def read_jsonl(path: Path, *, where: str, errors: str = "strict",
               allow_empty: bool = False) -> list[tuple[int, dict[str, Any]]]:
    """The JSON objects of a jsonl(.gz) file with their line numbers; an empty file is an error unless allowed.

    `errors="surrogateescape"` keeps a line with invalid UTF-8 (its bad bytes become lone surrogates)."""
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8", errors=errors) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except UnicodeDecodeError:
                raise ConfigError(f"{where}: {path} line {number} is not UTF-8 text") from None
            except json.JSONDecodeError as error:
                raise ConfigError(f"{where}: {path} line {number} is not JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise ConfigError(f"{where}: {path} line {number} is not a JSON object")
            rows.append((number, row))
    if not rows and not allow_empty:
        raise ConfigError(f"{where}: {path} holds no records")
    return rows


def read_records(path: Path, *, where: str, allow_empty: bool = False) -> list[dict[str, Any]]:
    """The JSON objects of a jsonl file, in order."""
    return [row for _, row in read_jsonl(path, where=where, allow_empty=allow_empty)]
