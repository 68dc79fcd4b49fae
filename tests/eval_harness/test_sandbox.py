"""The sandbox as a security boundary: each hostile program below must be stopped by a named mechanism.

The table in docs/sandbox.md lists, for each test, what the program tries and what stops it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from eval_harness import sandbox, sandbox_seccomp
from eval_harness.sandbox import ExecResult, Limits, SandboxUnavailable, run_python

REPO = Path(__file__).resolve().parents[2]


def _run(source: str, **limits) -> ExecResult:
    return run_python(textwrap.dedent(source), Limits(**limits))


def _pids_of_uid(uid: int) -> list[int]:
    """Host processes whose real uid is `uid` (the root path gives each sandbox a fresh uid)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        if int(uid_line.split()[1]) == uid:
            found.append(int(entry.name))
    return found


def _pids_with_marker(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def test_plain_program_runs_in_fresh_tmp_cwd_with_scrubbed_env() -> None:
    result = _run("""
        import os, sys
        open("scratch.txt", "w").write("written in cwd")
        print(os.getcwd(), sorted(os.listdir(".")), sorted(os.environ), sys.flags.isolated)
    """)
    assert result.exited_cleanly, result
    cwd, rest = result.stdout.split(" ", 1)
    assert cwd == "/tmp"
    assert "['program.py', 'scratch.txt']" in rest
    assert "['HOME', 'LANG', 'PATH', 'PWD']" in rest
    assert rest.strip().endswith("1")
    # A second program gets a new /tmp: nothing left from the first one.
    again = _run("import os; print(sorted(os.listdir('.')))")
    assert again.stdout.strip() == "['program.py']"


def test_infinite_loop_is_killed_at_the_wall_timeout() -> None:
    start = time.monotonic()
    result = _run("while True:\n    pass\n", wall_s=1.0)
    elapsed = time.monotonic() - start
    assert result.timed_out and result.returncode is None
    assert 1.0 <= elapsed < 6.0


def test_cpu_limit_kills_a_busy_loop_before_a_long_wall_limit() -> None:
    result = _run("""
        import signal
        signal.signal(signal.SIGXCPU, signal.SIG_IGN)   # ignoring the soft limit does not help
        while True:
            pass
    """, wall_s=120.0, cpu_s=1)
    assert not result.timed_out  # stopped by the CPU limit, long before the wall limit
    assert result.returncode == 128 + signal.SIGKILL  # the hard limit's SIGKILL, as bwrap reports it


def test_children_that_escape_the_process_group_die_with_the_sandbox() -> None:
    marker = f"escape-marker-{os.getpid()}-{time.monotonic_ns()}"
    result = _run(f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()                       # leave the process group the harness kills
            if os.fork() == 0:
                os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(60)", "{marker}"])
            os._exit(0)
        print("parent exits", flush=True)
    """)
    assert result.exited_cleanly, result
    assert _pids_with_marker(marker) == []
    timed = _run(f"""
        import os, sys
        if os.fork() == 0:
            os.setsid()
            os.execv(sys.executable, [sys.executable, "-c", "while True: pass", "{marker}"])
        os.setsid()
        while True:
            pass
    """, wall_s=1.0)
    assert timed.timed_out
    assert _pids_with_marker(marker) == []


@pytest.mark.parametrize("nested_userns", [False, True])
def test_fork_bomb_is_capped_by_the_process_limit_and_cleaned_up(nested_userns: bool) -> None:
    counted = _run(f"""
        import ctypes, os, time
        if {nested_userns}:   # become "root" of a new user namespace first: the count must still bind
            ctypes.CDLL(None).unshare(0x10000000)
        made = 0
        try:
            for _ in range(500):
                if os.fork() == 0:
                    time.sleep(30)
                    os._exit(0)
                made += 1
        except OSError as error:
            print("fork refused after", made, error.errno)
    """, max_processes=8)
    assert counted.exited_cleanly, counted
    words = counted.stdout.split()
    assert words[:3] == ["fork", "refused", "after"], counted.stdout
    assert int(words[3]) <= 8 and words[4] == "11"  # EAGAIN

    if nested_userns:
        return
    bomb = _run("""
        import os
        print(os.getuid(), flush=True)
        while True:
            try:
                os.fork()
            except OSError:
                pass
    """, wall_s=2.0, max_processes=16)
    assert bomb.timed_out
    if os.geteuid() == 0:
        uid = int(bomb.stdout.split()[0])
        assert uid != 0
        assert _pids_of_uid(uid) == []


def test_memory_bomb_hits_the_address_space_limit() -> None:
    fits = _run("x = bytearray(100 * 2**20); print(len(x))", memory_mb=256)
    assert fits.exited_cleanly and fits.stdout.strip() == str(100 * 2**20)
    bomb = _run("""
        hoard = []
        while True:
            hoard.append(bytearray(32 * 2**20))
    """, memory_mb=256, wall_s=20.0)
    assert not bomb.timed_out
    assert bomb.returncode != 0
    assert "MemoryError" in bomb.stderr


def test_writes_outside_the_temp_dir_do_not_reach_the_host(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    absent = tmp_path / "created-by-sandbox.txt"
    targets = [str(victim), str(absent), "/usr/sandbox-was-here", "/sandbox-was-here", "/dev/sandbox-was-here",
               f"{REPO}/sandbox-was-here", os.path.expanduser("~/sandbox-was-here"), "../sandbox-was-here"]
    result = _run(f"""
        import os
        for path in {targets!r}:
            try:
                os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
                with open(path, "w") as handle:
                    handle.write("pwned")
                print("WROTE", path)
            except OSError as error:
                print("refused", path, error.errno)
        open("in-cwd.txt", "w").write("fine")
        print("cwd write ok")
    """)
    assert result.exited_cleanly, result
    assert victim.read_text() == "original"
    assert not absent.exists()
    assert not (REPO / "sandbox-was-here").exists()
    assert not Path("/usr/sandbox-was-here").exists() and not Path("/sandbox-was-here").exists()
    # Only paths that land inside the sandbox's own fresh /tmp may succeed ("../x" from /tmp is "/x": refused).
    wrote = [line.split(" ", 1)[1] for line in result.stdout.splitlines() if line.startswith("WROTE")]
    assert all(path.startswith("/tmp/") for path in wrote), wrote
    assert "cwd write ok" in result.stdout


def test_disk_filling_is_bounded_by_tmpfs_size_and_file_size_limit() -> None:
    result = _run("""
        import os
        try:
            with open("big.bin", "wb") as handle:
                for _ in range(64):
                    handle.write(b"x" * 2**20)
        except OSError as error:
            print("single file stopped", error.errno, os.path.getsize("big.bin") // 2**20)
        os.remove("big.bin")
        total = 0
        try:
            for i in range(1000):
                with open(f"part{i}.bin", "wb") as handle:
                    handle.write(b"x" * 2**20)
                total += 1
        except OSError as error:
            print("many files stopped", error.errno, total)
    """, file_size_mb=4, tmp_size_mb=16)
    assert result.exited_cleanly, result
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["single", "file", "stopped"] and lines[0].split()[3] == "27"  # EFBIG
    assert int(lines[0].split()[4]) <= 4
    assert lines[1].split()[:3] == ["many", "files", "stopped"] and lines[1].split()[3] == "28"  # ENOSPC
    assert int(lines[1].split()[4]) <= 16


def test_network_is_unreachable_and_host_listeners_see_nothing() -> None:
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.bind(("127.0.0.1", 0))
    tcp.listen(8)
    tcp.setblocking(False)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract_name = f"\0nlora-sandbox-test-{os.getpid()}"
    abstract.bind(abstract_name)
    abstract.listen(8)
    abstract.setblocking(False)
    try:
        result = _run(f"""
            import socket
            def attempt(label, fn):
                try:
                    fn()
                    print(label, "CONNECTED")
                except OSError as error:
                    print(label, "refused", type(error).__name__, error.errno)
            attempt("tcp-host-loopback", lambda: socket.create_connection(("127.0.0.1", {tcp.getsockname()[1]}), 2))
            attempt("tcp-internet", lambda: socket.create_connection(("1.1.1.1", 53), 2))
            attempt("dns", lambda: socket.getaddrinfo("pypi.org", 443))
            attempt("udp-host", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(
                b"x", ("127.0.0.1", {udp.getsockname()[1]})))
            def unix():
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect({abstract_name!r})
            attempt("abstract-unix", unix)
        """)
        assert result.exited_cleanly, result
        lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
        assert set(lines) == {"tcp-host-loopback", "tcp-internet", "dns", "udp-host", "abstract-unix"}
        for label in ("tcp-host-loopback", "tcp-internet", "dns", "abstract-unix"):
            assert lines[label].startswith("refused"), (label, lines[label])
        assert lines["tcp-internet"].endswith(" 101")  # ENETUNREACH: no route out of the namespace
        # UDP sendto "succeeds" locally, but only into the sandbox's own loopback: nothing arrives here.
        time.sleep(0.2)
        for listener in (tcp, abstract):
            with pytest.raises(BlockingIOError):
                listener.accept()
        with pytest.raises(BlockingIOError):
            udp.recvfrom(16)
    finally:
        tcp.close()
        udp.close()
        abstract.close()


def test_secrets_in_harness_environment_and_files_are_not_visible(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    secret = f"s3cret-{time.monotonic_ns()}"
    monkeypatch.setenv("NLORA_SANDBOX_TEST_SECRET", secret)
    secret_file = tmp_path / "credentials.txt"
    secret_file.write_text(secret)
    secret_file.chmod(0o644)
    result = _run(f"""
        import os
        print(dict(os.environ))
        for path in ({str(secret_file)!r}, "/etc/passwd", {str(REPO / "pyproject.toml")!r}):
            try:
                print(open(path).read())
            except OSError as error:
                print("unreadable", path, error.errno)
        for path in ("/proc/self/environ", "/proc/1/environ", "/proc/{os.getpid()}/environ",
                     "/proc/{os.getppid()}/environ"):
            try:
                print(open(path, "rb").read())
            except OSError as error:
                print("refused", path, error.errno)
    """)
    assert result.exited_cleanly, result
    assert secret not in result.stdout and secret not in result.stderr
    assert "NLORA_SANDBOX_TEST_SECRET" not in result.stdout
    assert result.stdout.count("refused /proc/") == 4  # no /proc inside at all
    assert result.stdout.count("unreadable /") == 3  # no /etc, /tmp of the host or project files either


def test_program_cannot_kill_the_harness_or_its_neighbours() -> None:
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    harness = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        from eval_harness.sandbox import run_python
        me, group = os.getpid(), os.getpgid(0)
        program = f'''
        import os, signal
        for label, call in (("getppid", lambda: os.kill(os.getppid(), signal.SIGKILL)),
                            ("harness", lambda: os.kill({{me}}, signal.SIGKILL)),
                            ("neighbour", lambda: os.kill({victim.pid}, signal.SIGKILL)),
                            ("harness-group", lambda: os.killpg({{group}}, signal.SIGKILL)),
                            ("setuid-root", lambda: os.setuid(0))):
            try:
                call()
                print(label, "done", flush=True)
            except OSError as error:
                print(label, "refused", error.errno, flush=True)
        os.kill(-1, signal.SIGKILL)   # everything it may signal: only its own processes
        '''
        result = run_python(program)
        print("HARNESS ALIVE", result.returncode)
        print(result.stdout)
    """)
    try:
        done = subprocess.run([sys.executable, "-c", harness], capture_output=True, text=True, timeout=120,
                              check=False)
        assert done.returncode == 0, done.stderr
        assert "HARNESS ALIVE" in done.stdout
        assert victim.poll() is None, "the neighbour process was killed from inside the sandbox"
        lines = dict(line.split(" ", 1) for line in done.stdout.splitlines()[1:] if line.strip())
        assert lines["setuid-root"].startswith("refused"), done.stdout
        # getppid() is the sandbox's own pid 1, which ignores signals from inside its namespace.
        for label in ("harness", "neighbour", "harness-group"):
            assert lines[label].startswith("refused"), (label, lines[label])
    finally:
        victim.kill()
        victim.wait()


def test_missing_bwrap_fails_with_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox.bwrap_path.cache_clear()
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    try:
        with pytest.raises(SandboxUnavailable, match="apt-get install -y bubblewrap"):
            run_python("print(1)")
    finally:
        sandbox.bwrap_path.cache_clear()


def test_a_sandbox_that_cannot_start_python_fails_loudly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Otherwise every sample would just "fail" and a benchmark would silently score 0."""
    sandbox.bwrap_path.cache_clear()
    monkeypatch.setattr(sandbox, "interpreter", lambda: "/nonexistent/python3")
    try:
        with pytest.raises(SandboxUnavailable, match="could not run a probe program"):
            run_python("print(1)")
    finally:
        sandbox.bwrap_path.cache_clear()


def test_bad_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="Limits.wall_s"):
        Limits(wall_s=0)


@pytest.mark.skipif(os.geteuid() != 0 or not Path("/usr/bin/python3").exists() or not shutil.which("setpriv"),
                    reason="needs root, /usr/bin/python3 and setpriv (as non-root the other tests cover this path)")
def test_unprivileged_caller_path_holds_too() -> None:
    """As a non-root user bwrap adds a user namespace; limits must bind the same way.

    The victim file is world-writable, so only the sandbox (not file permissions) can protect it. The
    unprivileged caller imports a world-readable copy of the package: the checkout may live where other
    users cannot read (a clone in a 0700 home directory or a `mktemp -d` folder).
    """
    shared = Path(tempfile.mkdtemp(prefix="nlora-sandbox-", dir="/tmp"))
    shared.chmod(0o777)
    package = shared / "pkg"
    shutil.copytree(REPO / "eval_harness", package / "eval_harness",
                    ignore=shutil.ignore_patterns("__pycache__", "data"))
    for path in [package, *package.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    victim = shared / "victim.txt"
    victim.write_text("original")
    victim.chmod(0o666)
    harness = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(package)!r})
        from eval_harness.sandbox import Limits, run_python
        program = '''
        import os, socket
        made = 0
        try:
            for _ in range(100):
                if os.fork() == 0:
                    import time; time.sleep(30); os._exit(0)
                made += 1
        except OSError:
            print("forks", made)
        try:
            open({str(victim)!r}, "w").write("pwned")
        except OSError as error:
            print("write refused", error.errno)
        try:
            socket.create_connection(("1.1.1.1", 53), 2)
        except OSError as error:
            print("net refused", error.errno)
        '''
        result = run_python(program, Limits(max_processes=8))
        print(result.returncode, result.stdout, result.stderr)
    """)
    try:
        done = subprocess.run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
                               "/usr/bin/python3", "-c", harness], capture_output=True, text=True, timeout=120,
                              check=False, env={"PATH": "/usr/bin:/bin"}, cwd="/")
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("0 "), done.stdout
        forks = int(done.stdout.split("forks ")[1].split()[0])
        assert forks <= 8
        assert "write refused" in done.stdout and "net refused 101" in done.stdout, done.stdout
        assert victim.read_text() == "original"
    finally:
        shutil.rmtree(shared)


def test_sigkill_of_harness_takes_the_sandbox_down() -> None:
    """If the harness itself dies mid-run, bwrap (--die-with-parent) and everything inside die too."""
    marker = f"orphan-marker-{time.monotonic_ns()}"
    harness = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from eval_harness.sandbox import Limits, run_python
        run_python("import os, sys, time\\nprint('started', flush=True)\\n"
                   "os.execv(sys.executable, [sys.executable, '-c', 'while True: pass', '{marker}'])",
                   Limits(wall_s=60))
    """)
    proc = subprocess.Popen([sys.executable, "-c", harness])
    try:
        deadline = time.monotonic() + 30
        while not _pids_with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pids_with_marker(marker), "the sandboxed program never started"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 10
        while _pids_with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _pids_with_marker(marker) == []
    finally:
        proc.kill()
        proc.wait()


def test_output_flood_is_capped_and_keeps_its_last_line() -> None:
    long = _run("import sys\nsys.stdout.write('x' * 10_000_000)\nprint()\nprint('LAST LINE')\n")
    assert long.exited_cleanly, long.stderr
    assert len(long.stdout) < 70_000 and "bytes cut" in long.stdout
    assert long.stdout.splitlines()[-1] == "LAST LINE"
    flood = _run("while True:\n    print('y' * 4096)\n", file_size_mb=2, wall_s=20.0)
    assert not flood.timed_out and flood.returncode != 0
    assert "File too large" in flood.stderr


@pytest.mark.skipif(not sandbox_seccomp.supported(), reason="no seccomp filter for this architecture")
def test_memory_and_keyrings_outside_the_rlimits_are_denied() -> None:
    """SysV shared memory, memfds and kernel keyring entries escape RLIMIT_AS, the tmpfs size and the
    program's lifetime (keyrings belong to the uid): the seccomp filter makes each call fail with EPERM."""
    result = _run("""
        import ctypes, errno, os
        libc = ctypes.CDLL(None, use_errno=True)
        def errno_of(value):
            return "ok" if value >= 0 else errno.errorcode[ctypes.get_errno()]
        print("shmget", errno_of(libc.shmget(0, 768 << 20, 0o1000 | 0o600)))  # IPC_PRIVATE, IPC_CREAT
        try:
            os.memfd_create("hold")
            print("memfd ok")
        except OSError as error:
            print("memfd", errno.errorcode[error.errno])
        add_key = 248 if os.uname().machine == "x86_64" else 217
        print("add_key", errno_of(libc.syscall(add_key, b"user", b"sandbox-key", b"x", 1, -3)))  # user keyring
    """)
    assert result.exited_cleanly, result
    assert result.stdout.split() == ["shmget", "EPERM", "memfd", "EPERM", "add_key", "EPERM"], result.stdout
    assert "seccomp denies" in sandbox.memory_bound()
