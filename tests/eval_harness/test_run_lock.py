"""One writer per run folder: a second `eval-harness run` is refused at start; a killed run's lock is not stale."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from eval_harness import runner
from eval_harness.errors import ConfigError
from eval_harness.run_lock import LOCK_NAME, holds_run_lock, run_lock

REPO = Path(__file__).resolve().parents[2]


def _holder(output: Path) -> subprocess.Popen:
    """Another process that takes the lock, says so, and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(REPO)!r})
        from eval_harness.run_lock import run_lock
        with run_lock({str(output)!r}):
            print("locked", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "locked\n"
    return proc


def test_a_second_run_is_refused_and_a_killed_runs_lock_is_not_stale(tmp_path: Path) -> None:
    proc = _holder(tmp_path)
    try:
        with pytest.raises(ConfigError, match=rf"another eval-harness run is writing.*pid {proc.pid}"), \
                run_lock(tmp_path):
            pass
        proc.send_signal(signal.SIGKILL)  # a killed run: its lock file stays behind
        proc.wait()
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()
    start = time.monotonic()
    with run_lock(tmp_path):
        pass
    assert time.monotonic() - start < 5


def test_the_runner_holds_the_lock_for_the_whole_run(tmp_path: Path) -> None:
    assert getattr(runner.run_config, "__wrapped__", None) is not None, "run_config must take the run lock"
    seen = []

    @holds_run_lock
    def fake_run(config, output, *, command):
        with pytest.raises(ConfigError, match="another eval-harness run"), run_lock(output):
            pass
        seen.append(command)
        return []

    assert fake_run(None, tmp_path / "run", command=["x"]) == [] and seen == [["x"]]
    with run_lock(tmp_path / "run"):  # released after the run
        pass
