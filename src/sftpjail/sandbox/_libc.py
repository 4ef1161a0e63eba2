"""The few C library entry points the sandbox needs, typed once.

Python's standard library has no `prctl` and no raw `syscall`, so both come
from the C library through ctypes.  The library is opened with
`CDLL(None)`, which returns the already loaded C library of this process
and never searches the file system (`ctypes.util.find_library` would run
`/sbin/ldconfig`, which fails once the sandbox is closed).
"""

from __future__ import annotations

import ctypes
import os

PR_GET_DUMPABLE = 3
PR_SET_DUMPABLE = 4
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
SECCOMP_MODE_FILTER = 2

_libc = ctypes.CDLL(None, use_errno=True)

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_prctl = _libc.prctl
_prctl.restype = ctypes.c_int
_prctl.argtypes = (
    ctypes.c_int,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
    ctypes.c_ulong,
)


class SystemCallError(OSError):
    """A raw system call failed; `errno` says why."""


def syscall(number: int, *arguments: int | ctypes.c_void_p) -> int:
    """Call system call `number` and return its result, or raise its errno.

    Integer arguments are passed as C `long`, which is how the kernel reads
    every system call argument on the 64-bit platforms we run on.
    """

    converted = [
        argument if isinstance(argument, ctypes.c_void_p) else ctypes.c_long(argument)
        for argument in arguments
    ]
    result = int(_syscall(ctypes.c_long(number), *converted))
    if result == -1:
        raise _last_error()
    return result


def prctl(option: int, argument: int = 0) -> int:
    """Call `prctl(option, argument, 0, 0, 0)`; raise its errno on failure."""

    result = int(_prctl(option, argument, 0, 0, 0))
    if result == -1:
        raise _last_error()
    return result


def _last_error() -> SystemCallError:
    number = ctypes.get_errno()
    return SystemCallError(number, os.strerror(number))
