"""Result files: append-only item logs (resumable runs) and atomic writes (no half files)."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

SLUG = re.compile(r"[^A-Za-z0-9._-]+")


SEED_SUFFIX = "-seed"  # a fine-tuned method's run folder is <label folder>-seed<k>


def label_folder(label: str) -> str:
    """A method label as the name of its run folders (`NLoRA (pivoted)` -> `nlora-pivoted`)."""
    return SLUG.sub("-", label.lower()).strip("-")


def seed_run_folder(label: str, seed: int) -> str:
    """The run folder of one seed of a fine-tuned method (`NLoRA (pivoted)`, 1 -> `nlora-pivoted-seed1`)."""
    return f"{label_folder(label)}{SEED_SUFFIX}{seed}"


def _default_file_mode() -> int:
    """0666 less the process umask: what a plain open() would have given the file."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: Path | str, text: str) -> None:
    """Write `text` to `path` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _default_file_mode())  # mkstemp makes 0600 files; reports are meant to be shared
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path | str, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: Path | str) -> Any:
    """Read a JSON file."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


class ItemLog:
    """One JSON record per finished item, appended as it finishes, so a killed run resumes.

    A torn last line (the process died mid-write) is ignored when reading.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        """All complete records, in the order they were written."""
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def done_ids(self) -> set[str]:
        """Ids of the items already finished."""
        return {str(record["id"]) for record in self.records()}

    def append(self, record: dict[str, Any]) -> None:
        """Append one finished item; the record must carry an "id"."""
        if "id" not in record:
            raise ValueError(f"ItemLog record needs an 'id' field, got keys {sorted(record)}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._drop_torn_tail()
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def _drop_torn_tail(self) -> None:
        """Make the file end at a record boundary before appending: a last line left without its newline
        is kept (newline added) if it is a complete record, as `records` already counted it; cut if torn."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        try:
            complete = isinstance(json.loads(data[keep:]), dict)
        except (ValueError, UnicodeDecodeError):
            complete = False
        with self.path.open("r+b") as handle:
            if complete:
                handle.seek(0, os.SEEK_END)
                handle.write(b"\n")
            else:
                handle.truncate(keep)
            handle.flush()
            os.fsync(handle.fileno())
