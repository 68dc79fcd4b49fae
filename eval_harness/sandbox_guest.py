"""The code that runs *inside* the sandbox (standard library only): `python -I -S -B guest.py MODE ...`.

`launch` is the sandbox's first process (pid 2, under bwrap's reaper). It sets the rlimits, then:

- plain: drops to the program's uid and execs a fresh interpreter on the program;
- check: reads the benchmark's trusted test code from a pipe, forks the *candidate* (dropped to uid A
  and exec'd as `serve` on the program), drops itself to uid B, makes itself non-dumpable (no ptrace,
  no memory reads by the candidate), and runs the test code with every candidate function replaced by
  a proxy. A proxy sends the call's arguments to the candidate over a pipe and gets back only plain
  builtin values (None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset),
  which it rebuilds from data, so every comparison in the tests is the builtin one and the candidate
  never sees the tests or the expected values. The verdict goes to a pipe only this process holds.

`serve` is the candidate process: it runs program.py as `__main__`, then answers calls. Nothing it
prints, returns or does can mark a sample as passed except returning the values the tests expect.
"""

import builtins
import importlib
import io
import json
import os
import pickle
import resource
import struct
import sys
import traceback
import types

MAX_REPLY_BYTES = 16 * 2**20  # one answer of the candidate; larger is a failure, not a memory blow-up
VERDICT_KEEP_CHARS = 4000
# Exceptions the candidate may raise through a proxy as themselves; StopIteration & co. are not among
# them (raised inside map() or a generator they would end a loop early and skip checks).
_NOT_RAISED_AS_IS = (StopIteration, StopAsyncIteration, GeneratorExit)


class CandidateError(Exception):
    """The candidate did not answer a call with a plain value (it raised, exited or sent garbage)."""


class CandidateExited(CandidateError):
    """The candidate process ended before the tests finished."""


# --------------------------------------------------------------------------- launch


def _set_limits(limits: dict) -> None:
    cpu = limits["cpu"]
    for res, value in ((resource.RLIMIT_CPU, (cpu, cpu + 1)), (resource.RLIMIT_AS, (limits["mem"],) * 2),
                       (resource.RLIMIT_NPROC, (limits["nproc"],) * 2),
                       (resource.RLIMIT_FSIZE, (limits["fsize"],) * 2),
                       (resource.RLIMIT_NOFILE, (limits["nofile"],) * 2), (resource.RLIMIT_CORE, (0, 0)),
                       (resource.RLIMIT_MSGQUEUE, (0, 0))):
        resource.setrlimit(res, value)


def _drop_to(uid: int) -> None:
    """Root path: become `uid` for good (no groups, real = effective = saved). -1: keep the caller's uid."""
    if uid < 0:
        return
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise SystemExit("sandbox launcher: uid drop failed")


def _make_undumpable() -> None:
    """PR_SET_DUMPABLE 0: a process of the same uid can no longer ptrace or read this one's memory."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE
        raise SystemExit(f"sandbox launcher: prctl(PR_SET_DUMPABLE) failed (errno {ctypes.get_errno()})")


def _exec_python(script_args: list[str]) -> None:
    os.execv(sys.executable, [sys.executable, "-I", "-S", "-B", *script_args])


def launch(config: dict) -> None:
    _set_limits(config["limits"])
    if config["mode"] == "plain":
        _drop_to(config["uids"][0])
        _exec_python([config["program"]])
    with os.fdopen(config["spec_fd"], "rb") as handle:
        spec = json.loads(handle.read())
    verdict_fd = config["verdict_fd"]
    req_r, req_w = os.pipe()
    resp_r, resp_w = os.pipe()
    go_r, go_w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            for fd in (verdict_fd, req_w, resp_r, go_w):
                os.close(fd)
            os.set_inheritable(req_r, True)
            os.set_inheritable(resp_w, True)
            _drop_to(config["uids"][0])
            if os.read(go_r, 1) == b"g":  # the checker is another uid and undumpable before the program runs
                _exec_python([sys.argv[0], "serve", str(req_r), str(resp_w), config["program"]])
        finally:
            os._exit(127)
    for fd in (req_r, resp_w, go_r):
        os.close(fd)
    _drop_to(config["uids"][1])
    _make_undumpable()
    os.write(go_w, b"g")
    os.close(go_w)
    verdict = run_checks(spec, Channel(req_w, resp_r, child))
    data = json.dumps(verdict).encode()
    with os.fdopen(verdict_fd, "wb") as handle:
        handle.write(data)
    os._exit(0)  # the candidate dies with the pid namespace when this process (its init's child) exits


def run_checks(spec: dict, channel: "Channel") -> dict:
    """Run the benchmark's trusted code with proxies for the candidate's functions; the verdict."""
    if sys.flags.optimize:
        return {"passed": False, "reason": "checker", "error": "the checker runs with -O; asserts would vanish"}
    main = types.ModuleType("__main__")
    sys.modules["__main__"] = main  # objects the tests build (pickled into calls) resolve as __main__.X
    try:
        for module in spec["modules"]:
            main.__dict__[module] = importlib.import_module(module)
        exec(compile(spec["setup"], "<benchmark setup>", "exec", dont_inherit=True, optimize=0), main.__dict__)  # noqa: S102
        channel.wait_ready()
        for name in spec["proxies"]:
            main.__dict__[name] = channel.proxy(name)
        exec(compile(spec["test"], "<benchmark tests>", "exec", dont_inherit=True, optimize=0), main.__dict__)  # noqa: S102
    except CandidateExited as error:
        return {"passed": False, "reason": "exited", "exit": channel.exit_status(),
                "error": str(error)[-VERDICT_KEEP_CHARS:]}
    except BaseException as error:  # noqa: BLE001 - anything but finishing the tests is a failure
        reason = "wrong answer" if isinstance(error, AssertionError) else "error"
        return {"passed": False, "reason": reason, "error": traceback.format_exc()[-VERDICT_KEEP_CHARS:]}
    return {"passed": True}


class Channel:
    """The checker's end of the candidate's pipes: length-prefixed frames, pickled calls, JSON answers."""

    def __init__(self, write_fd: int, read_fd: int, child: int) -> None:
        self.write_fd, self.read_fd, self.child = write_fd, read_fd, child
        self.status: int | None = None

    def wait_ready(self) -> None:
        if _receive(self.read_fd, MAX_REPLY_BYTES) != b"ready":
            raise CandidateExited("the program ended (or failed) before the tests started")

    def exit_status(self) -> int | None:
        """The candidate's exit status once it has ended (negative: killed by that signal)."""
        if self.status is None:
            try:
                _, status = os.waitpid(self.child, 0)
                self.status = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                pass
        return self.status

    def proxy(self, name: str):
        def call(*args, **kwargs):
            return self.call(name, args, kwargs)

        call.__name__ = call.__qualname__ = name
        return call

    def call(self, name: str, args: tuple, kwargs: dict):
        try:
            _send(self.write_fd, _dumps_with_handles((name, args, kwargs)))
        except BrokenPipeError:
            raise CandidateExited(f"the program ended before the call {name}(...)") from None
        data = _receive(self.read_fd, MAX_REPLY_BYTES)
        if data is None:
            raise CandidateExited(f"the program ended during the call {name}(...)")
        try:
            reply = json.loads(data)
            if not isinstance(reply, dict) or len(reply) != 1:
                raise ValueError("not a one-key object")
            (kind, body), = reply.items()
            if kind == "ok":
                return decode(body)
        except (ValueError, TypeError, RecursionError) as error:
            raise CandidateError(f"{name}(...) sent an answer that is not a plain value ({error})") from None
        if kind == "raise" and isinstance(body, list) and len(body) == 2 and all(isinstance(b, str) for b in body):
            kind_name, message = body
            cls = getattr(builtins, kind_name, None)
            if (isinstance(cls, type) and issubclass(cls, Exception) and not issubclass(cls, _NOT_RAISED_AS_IS)):
                raise cls(message)
            raise CandidateError(f"{name}(...) raised {kind_name}: {message}")
        if kind == "handle" and isinstance(body, list) and len(body) == 2 and type(body[0]) is int \
                and type(body[1]) is str:
            return Handle(body[0], body[1])
        raise CandidateError(f"{name}(...) sent an unknown answer")


class Handle:
    """A non-plain object the candidate returned (an instance of its own class, say), kept in its process.

    The checker can only pass it back to the candidate's functions; it equals nothing but itself and
    has no truth value, length or items, so no test can pass by comparing or testing it.
    """

    __slots__ = ("index", "type_name")

    def __init__(self, index: int, type_name: str) -> None:
        self.index, self.type_name = index, type_name

    def __bool__(self) -> bool:
        raise CandidateError(f"a {self.type_name} returned by the program has no truth value here; only None, "
                             f"bool, int, float, complex, str, bytes, list, tuple, dict, set and frozenset "
                             f"values are compared")

    def __repr__(self) -> str:
        return f"<{self.type_name} object of the program>"


class _HandlePickler(pickle.Pickler):
    def persistent_id(self, obj):
        return obj.index if type(obj) is Handle else None


def _dumps_with_handles(value) -> bytes:
    buffer = io.BytesIO()
    _HandlePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def decode(value):
    """Rebuild a plain value from its JSON form (`encode`); anything else is a ValueError."""
    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [decode(v) for v in value]
    if kind is dict and len(value) == 1:
        (tag, body), = value.items()
        if tag in ("t", "s", "fs", "d") and type(body) is list:
            if tag == "t":
                return tuple(decode(v) for v in body)
            if tag == "s":
                return {decode(v) for v in body}
            if tag == "fs":
                return frozenset(decode(v) for v in body)
            if all(type(pair) is list and len(pair) == 2 for pair in body):
                return {decode(k): decode(v) for k, v in body}
        if tag == "b" and type(body) is str:
            return bytes.fromhex(body)
        if tag == "c" and type(body) is list and len(body) == 2 and all(type(b) is float for b in body):
            return complex(body[0], body[1])
    raise ValueError(f"unexpected {kind.__name__} in the answer")


# --------------------------------------------------------------------------- serve (the candidate)


def encode(value):
    """A value as JSON data by exact type; other types (subclasses too) raise TypeError."""
    import collections

    kind = type(value)
    if value is None or kind in (bool, int, float, str):
        return value
    if kind is list:
        return [encode(v) for v in value]
    if kind is tuple:
        return {"t": [encode(v) for v in value]}
    if kind in (dict, collections.OrderedDict, collections.defaultdict, collections.Counter):
        return {"d": [[encode(k), encode(v)] for k, v in dict.items(value)]}
    if kind is set:
        return {"s": [encode(v) for v in value]}
    if kind is frozenset:
        return {"fs": [encode(v) for v in value]}
    if kind is bytes:
        return {"b": value.hex()}
    if kind is complex:
        return {"c": [value.real, value.imag]}
    raise TypeError(f"{kind.__module__}.{kind.__qualname__}")


def serve(read_fd: int, write_fd: int, program: str) -> None:
    main = types.ModuleType("__main__")
    main.__file__ = program
    sys.modules["__main__"] = main
    with open(program, encoding="utf-8") as handle:
        source = handle.read()
    exec(compile(source, program, "exec"), main.__dict__)  # noqa: S102 - the candidate, in its own process
    _send(write_fd, b"ready")
    kept: list = []  # objects handed to the checker as handles, by index

    class Unpickler(pickle.Unpickler):
        def persistent_load(self, index):
            return kept[index]

    while True:
        data = _receive(read_fd, None)
        if data is None:
            return
        name, args, kwargs = Unpickler(io.BytesIO(data)).load()
        try:
            function = main.__dict__[name]
        except KeyError:
            reply = {"raise": ["NameError", f"name {name!r} is not defined"]}
        else:
            try:
                result = function(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 - reported to the checker, which decides
                reply = {"raise": [type(error).__name__, _safe_str(error)]}
            else:
                try:
                    reply = {"ok": encode(result)}
                except TypeError as error:
                    kept.append(result)
                    reply = {"handle": [len(kept) - 1, str(error)]}
                except RecursionError:
                    reply = {"raise": ["RecursionError", "the answer is nested too deeply"]}
        _send(write_fd, json.dumps(reply).encode())


def _safe_str(error: BaseException) -> str:
    try:
        return str(error)[:1000]
    except Exception:  # noqa: BLE001 - a hostile __str__
        return "<unprintable>"


# --------------------------------------------------------------------------- frames


def _send(fd: int, data: bytes) -> None:
    view = memoryview(struct.pack(">Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _receive(fd: int, limit: int | None) -> bytes | None:
    """One frame, or None at end of file; a frame longer than `limit` raises CandidateError."""
    header = _read_exactly(fd, 8)
    if header is None:
        return None
    (size,) = struct.unpack(">Q", header)
    if limit is not None and size > limit:
        raise CandidateError(f"an answer of {size} bytes exceeds the {limit}-byte limit")
    return _read_exactly(fd, size)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


if __name__ == "__main__":
    sys.set_int_max_str_digits(0)
    if sys.argv[1] == "launch":
        launch(json.loads(sys.argv[2]))
    else:
        serve(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
