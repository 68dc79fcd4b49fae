"""One writer per run folder: `eval-harness run` holds an exclusive lock on RUN_DIR/.eval-harness.lock.

The lock is an `flock` on an open file, so the kernel releases it when the holder exits for any reason
(a SIGKILL or a crash included): a stale lock file from a killed run never blocks the next run. The
file keeps the holder's pid, host and start time only to name it in the refusal.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import functools
import json
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from eval_harness.errors import ConfigError

LOCK_NAME = ".eval-harness.lock"
F = TypeVar("F", bound=Callable[..., Any])


@contextmanager
def run_lock(output: Path | str) -> Iterator[None]:
    """Hold the run folder's lock for the block; ConfigError at once if another process holds it."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    path = output / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"--output {output}: another eval-harness run is writing to this folder "
                              f"({_holder(fd)}); wait for it to finish (rerun the same command afterwards to "
                              f"resume) or choose another --output") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}).encode())
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (removing it would race with a waiting run)


def _holder(fd: int) -> str:
    """'pid N on HOST since T' from the lock file, as far as it can be read."""
    try:
        info = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return f"pid {info['pid']} on {info['host']} since {info['started']}"
    except (ValueError, KeyError, TypeError, OSError):
        return "its process is still alive"


def holds_run_lock(function: F) -> F:
    """Decorate `function(config, output, ...)` so that it runs holding `output`'s run lock."""

    @functools.wraps(function)
    def wrapper(config: Any, output: Path | str, *args: Any, **kwargs: Any) -> Any:
        with run_lock(output):
            return function(config, output, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
