"""seccomp: the system calls a worker never makes fail with an errno.

Theory of operation
-------------------
A seccomp filter is a small program the kernel runs on every system call
of the process and of everything it starts later; it cannot be removed.
We build it with libseccomp (through pyseccomp, a ctypes binding) from the
tables below.  Everything not listed is allowed: an allow-list for CPython,
OpenSSL and asyncio would break on the next library update, and Landlock
already confines the file system.  The filter covers what Landlock does
not: creating sockets other than `AF_UNIX`, reaching anything over the
network, running programs, starting processes, touching other processes,
io_uring (which would carry file and network operations past this very
filter), namespaces, mounts, and the kernel's administrative interfaces.

A denied call returns an errno (`EPERM`, or `EAFNOSUPPORT` for a socket
family) and never kills the process, so a worker that hits the filter by
mistake fails one request and logs it, instead of vanishing.

`clone3` passes its flags in memory a filter cannot read, so it returns
`ENOSYS`; the C library then falls back to `clone`, whose flags we can
check: threads are allowed, new processes and namespaces are not.
System calls of another ABI (32-bit `int 0x80` on x86-64) fail with
`ENOSYS` as a whole.

pyseccomp locates libseccomp with `ctypes.util.find_library`, which may run
`/sbin/ldconfig`.  That happens when this module is imported, long before
any sandbox, so loading the filter later needs no file at all.
"""

from __future__ import annotations

import errno
import importlib
import logging
import socket
from dataclasses import dataclass
from typing import Any

from sftpjail.sandbox._libc import (
    PR_SET_SECCOMP,
    SECCOMP_MODE_FILTER,
    SystemCallError,
    prctl,
)

logger = logging.getLogger("sftpjail.sandbox")


def _load_binding() -> tuple[Any, str]:
    try:
        return importlib.import_module("pyseccomp"), ""
    except (ImportError, RuntimeError) as error:
        return None, (
            f"the seccomp binding cannot be loaded ({error}); install the "
            "libseccomp2 package and the pyseccomp Python package"
        )


_BINDING, _BINDING_PROBLEM = _load_binding()

_CLONE_THREAD = 0x00010000
_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
_TIOCSTI = 0x5412  # push bytes into a terminal's input: typed "as" its owner
_TIOCLINUX = 0x541C  # the console's selection buffer can be replayed likewise
_PERSONALITY_QUERY = 0xFFFFFFFF
_LOW_32_BITS = 0xFFFFFFFF


@dataclass(frozen=True)
class Denial:
    """System calls refused outright, and why the worker never needs them."""

    reason: str
    syscalls: tuple[str, ...]


DENIED = (
    Denial("run another program", ("execve", "execveat")),
    Denial("start a process; threads use clone", ("fork", "vfork")),
    Denial(
        "inspect or steer another process",
        (
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "pidfd_getfd",
            "process_madvise",
            "kcmp",
        ),
    ),
    Denial(
        "io_uring runs file and socket operations this filter cannot see",
        ("io_uring_setup", "io_uring_enter", "io_uring_register"),
    ),
    Denial(
        "namespaces, mounts and root changes",
        (
            "unshare",
            "setns",
            "mount",
            "umount2",
            "pivot_root",
            "chroot",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "open_tree",
            "move_mount",
            "mount_setattr",
        ),
    ),
    Denial(
        "the network: a worker serves only the sockets it inherited, and "
        "connect would reach path-named Unix sockets Landlock does not check",
        ("connect", "bind", "listen", "accept", "accept4"),
    ),
    Denial(
        "kernel interfaces with a history of privilege escalation",
        (
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "keyctl",
            "add_key",
            "request_key",
            "modify_ldt",
            "uselib",
            "lookup_dcookie",
            "iopl",
            "ioperm",
        ),
    ),
    Denial(
        "administer the machine",
        (
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "swapon",
            "swapoff",
            "reboot",
            "acct",
            "quotactl",
            "syslog",
            "vhangup",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "sethostname",
            "setdomainname",
            "fanotify_init",
        ),
    ),
    Denial(
        "file operations Landlock does not check and SFTP does not need",
        (
            "chown",
            "fchown",
            "lchown",
            "fchownat",
            "setxattr",
            "lsetxattr",
            "fsetxattr",
            "removexattr",
            "lremovexattr",
            "fremovexattr",
            "mknod",
            "mknodat",
            "name_to_handle_at",
            "open_by_handle_at",
        ),
    ),
    Denial("resource limits are set once, before the filter", ("setrlimit",)),
)


@dataclass(frozen=True)
class Support:
    """Whether seccomp filters can be loaded here."""

    available: bool
    problem: str = ""


def probe() -> Support:
    """Check the binding and the kernel's filter mode, without a filter.

    `prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, NULL)` fails with EFAULT
    (the NULL program) on a kernel that has filter mode and with EINVAL on
    one that does not; either way nothing is installed.
    """

    if _BINDING is None:
        return Support(False, _BINDING_PROBLEM)
    try:
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER)
    except SystemCallError as error:
        if error.errno == errno.EFAULT:
            return Support(True)
        return Support(
            False,
            "this kernel has no seccomp filter mode (CONFIG_SECCOMP_FILTER); "
            "run a kernel built with it",
        )
    return Support(False, "the seccomp probe unexpectedly installed a filter")


class Filter:
    """The worker's filter, built in memory; `load` enforces it.

    Another process (the supervisor) builds its own from another table of
    `denials` and adds its own argument rules through `deny_if`.
    """

    def __init__(
        self, denials: tuple[Denial, ...] = DENIED, *, worker_arguments: bool = True
    ) -> None:
        if _BINDING is None:
            raise RuntimeError(_BINDING_PROBLEM)
        self._seccomp = _BINDING
        self._filter = _BINDING.SyscallFilter(_BINDING.ALLOW)
        self.unknown: list[str] = []

        self._filter.set_attr(_BINDING.Attr.ACT_BADARCH, self._errno(errno.ENOSYS))
        for denial in denials:
            for name in denial.syscalls:
                self._add(self._errno(errno.EPERM), name)
        if worker_arguments:
            self._add_argument_rules()

    def deny_if(
        self, number: int, name: str, argument: int, comparison: str, *values: int
    ) -> None:
        """Fail `name` with errno `number` when `argument` `comparison` `values`.

        `comparison` names a libseccomp operator: "EQ", "GT", "MASKED_EQ"
        (whose values are the mask and the value), ...
        """

        operator = getattr(self._seccomp, comparison)
        check = self._seccomp.Arg(argument, operator, *values)
        self._add(self._errno(number), name, check)

    def deny_new_namespaces(self) -> None:
        """Fail clone with a namespace flag, and clone3 (flags out of sight)."""

        for flag in _NAMESPACE_FLAGS:
            self.deny_if(errno.EPERM, "clone", 0, "MASKED_EQ", flag, flag)
        self._add(self._errno(errno.ENOSYS), "clone3")

    def load(self) -> None:
        """Enforce the filter on this process for good (sets no_new_privs)."""

        self._filter.load()

    def _add_argument_rules(self) -> None:
        seccomp, eperm = self._seccomp, self._errno(errno.EPERM)
        arg = seccomp.Arg

        not_unix = arg(0, seccomp.NE, socket.AF_UNIX)
        for name in ("socket", "socketpair"):
            self._add(self._errno(errno.EAFNOSUPPORT), name, not_unix)

        self._add(eperm, "clone", arg(0, seccomp.MASKED_EQ, _CLONE_THREAD, 0))
        self.deny_new_namespaces()

        # The kernel reads an ioctl request as 32 bits: compare only those,
        # or a request with junk in the upper half would slip through.
        for request in (_TIOCSTI, _TIOCLINUX):
            self._add(eperm, "ioctl", arg(1, seccomp.MASKED_EQ, _LOW_32_BITS, request))

        self._add(eperm, "sendto", arg(4, seccomp.NE, 0))  # a destination address
        self._add(eperm, "prlimit64", arg(2, seccomp.NE, 0))  # a new limit
        self._add(eperm, "personality", arg(0, seccomp.NE, _PERSONALITY_QUERY))

    def _add(self, action: int, name: str, *arguments: Any) -> None:
        number = self._seccomp.resolve_syscall(self._seccomp.Arch.NATIVE, name)
        if number < 0:
            # Not a system call on this architecture, or newer than the
            # libseccomp installed: nothing to filter.
            self.unknown.append(name)
            return
        self._filter.add_rule(action, number, *arguments)

    def _errno(self, number: int) -> int:
        return int(self._seccomp.ERRNO(number))


def build_filter() -> Filter:
    """Build the worker's filter (no system call yet); log unknown names."""

    worker_filter = Filter()
    if worker_filter.unknown:
        logger.debug(
            "seccomp: not on this architecture or unknown to libseccomp: %s",
            ", ".join(worker_filter.unknown),
        )
    return worker_filter
