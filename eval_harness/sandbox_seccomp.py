"""A seccomp filter for the sandbox: deny the system calls whose resources escape its per-process bounds.

- `shmget` (SysV shared memory) and `memfd_create`/`memfd_secret` (anonymous files): their memory is
  charged neither to `RLIMIT_AS` (until mapped) nor to the /tmp tmpfs, so they would let one program
  hold memory outside `docs/sandbox.md`'s bound;
- `add_key`, `request_key`, `keyctl`: kernel keyring entries belong to the uid, not to the sandbox,
  and would outlive the program.

Denied calls fail with EPERM; every other call is allowed. Calls of another ABI (i386, x32) than the
machine's own fail with ENOSYS, so the numbers below cannot be bypassed through a second syscall table.
The filter is raw classic BPF (`struct sock_filter` records) as bwrap's `--add-seccomp-fd` reads it.
"""

from __future__ import annotations

import errno
import platform
import struct

# AUDIT_ARCH_* and syscall numbers (linux/audit.h, arch/*/entry/syscalls).
_ARCHES = {
    "x86_64": (0xC000003E, {"shmget": 29, "add_key": 248, "request_key": 249, "keyctl": 250,
                            "memfd_create": 319, "memfd_secret": 447}),
    "aarch64": (0xC00000B7, {"shmget": 194, "add_key": 217, "request_key": 218, "keyctl": 219,
                             "memfd_create": 279, "memfd_secret": 447}),
}
X32_SYSCALL_BIT = 0x40000000
DENIED = ("shmget", "memfd_create", "memfd_secret", "add_key", "request_key", "keyctl")

_LD_W_ABS, _JEQ_K, _JGE_K, _RET_K = 0x20, 0x15, 0x35, 0x06
_RET_ALLOW = 0x7FFF0000
_RET_ERRNO = 0x00050000
_NR_OFFSET, _ARCH_OFFSET = 0, 4


def supported() -> bool:
    """Whether this machine's architecture has a filter here."""
    return platform.machine() in _ARCHES


def filter_program(machine: str | None = None) -> bytes:
    """The BPF program (8-byte records) for `machine` (default: this one); KeyError if unsupported."""
    arch, numbers = _ARCHES[machine or platform.machine()]
    denied = [numbers[name] for name in DENIED]
    # Layout: 0 ld arch; 1 jeq arch; 2 ret ENOSYS; 3 ld nr; [4 jge x32]; checks...; ret allow; ret deny.
    checks = [(_JGE_K, X32_SYSCALL_BIT)] if arch == 0xC000003E else []
    checks += [(_JEQ_K, nr) for nr in denied]
    program = [(_LD_W_ABS, 0, 0, _ARCH_OFFSET), (_JEQ_K, 1, 0, arch), (_RET_K, 0, 0, _RET_ERRNO | errno.ENOSYS),
               (_LD_W_ABS, 0, 0, _NR_OFFSET)]
    for index, (code, value) in enumerate(checks):
        to_deny = len(checks) - index  # skip the remaining checks and the allow
        program.append((code, to_deny, 0, value))
    program += [(_RET_K, 0, 0, _RET_ALLOW), (_RET_K, 0, 0, _RET_ERRNO | errno.EPERM)]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)
