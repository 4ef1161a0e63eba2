"""Landlock, called directly through ctypes.

Theory of operation
-------------------
Landlock lets an unprivileged process give up access to the file system,
to TCP ports and to things outside its own sandbox (abstract Unix sockets,
signals).  A process builds a *ruleset* that names the rights it *handles*
(everything it wants denied unless a rule allows it), adds one rule per
path hierarchy it keeps, and enforces the ruleset on itself.  The result is
a *domain*.  Enforcing a second ruleset stacks a second layer: an access
must then pass both layers, so a layer can only narrow, never widen.  The
worker uses exactly that: layer 1 right after fork (the whole data
directory), layer 2 after login (only the user's home).

Each kernel speaks one Landlock ABI version, and every version adds rights.
Like the kernel's `samples/landlock/sandboxer.c`, we ask the kernel for its
version first, start from every right this module knows and take away, one
feature at a time, what the running kernel lacks (`rights_for_abi`, a pure
function, so it is tested with any version number).  Every feature taken
away is reported with the kernel release that brings it.

Why ctypes and not a binding: no maintained Python binding covers ABI 4 to
7 (TCP rules, scopes, audit flags); the three system calls and two structs
are small and stable, so we call them ourselves.

Two properties the callers must know:

* A domain applies to the calling *thread* and the threads and processes it
  creates afterwards.  Threads that already run keep their old domain
  (Linux up to 6.18 has no way to enforce on sibling threads), so both
  layers are enforced while the process is single-threaded.
* Landlock checks opens, creations, renames, links, truncations and
  executions.  It does not check `stat`, `chmod`, `chown`, `utime`,
  extended attributes or `connect` on path-named Unix sockets; seccomp and
  the service user's file permissions cover those.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sftpjail.errors import SandboxError
from sftpjail.sandbox._libc import SystemCallError, syscall

logger = logging.getLogger("sftpjail.sandbox")

# The Landlock system calls have the same numbers on every architecture
# Linux supports except alpha, which we do not run on.
_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446

_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2  # ABI 4

# File system rights.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5

# Network rights (ABI 4) and scopes (ABI 6).
BIND_TCP = 1 << 0
CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1

ALL_FS = (1 << 16) - 1
ALL_NET = BIND_TCP | CONNECT_TCP
ALL_SCOPES = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
NEWEST_KNOWN_ABI = 7

# The only rights Landlock accepts on a rule for a file that is not a
# directory; the others describe directory content.
FILE_ONLY = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

# Read-only trees: open and list.  No EXECUTE: Landlock checks it only for
# execve(), not for mapping shared libraries, and workers never execute.
READ_ONLY = READ_FILE | READ_DIR

# What an SFTP user does in their home.  No device, pipe or socket nodes,
# no execution, no device ioctls.
READ_WRITE = (
    READ_ONLY
    | WRITE_FILE
    | TRUNCATE
    | MAKE_REG
    | MAKE_DIR
    | MAKE_SYM
    | REMOVE_FILE
    | REMOVE_DIR
    | REFER
)

FS_RIGHT_NAMES: dict[int, str] = {
    EXECUTE: "execute",
    WRITE_FILE: "write_file",
    READ_FILE: "read_file",
    READ_DIR: "read_dir",
    REMOVE_DIR: "remove_dir",
    REMOVE_FILE: "remove_file",
    MAKE_CHAR: "make_char",
    MAKE_DIR: "make_dir",
    MAKE_REG: "make_reg",
    MAKE_SOCK: "make_sock",
    MAKE_FIFO: "make_fifo",
    MAKE_BLOCK: "make_block",
    MAKE_SYM: "make_sym",
    REFER: "refer",
    TRUNCATE: "truncate",
    IOCTL_DEV: "ioctl_dev",
}
NET_RIGHT_NAMES: dict[int, str] = {BIND_TCP: "tcp bind", CONNECT_TCP: "tcp connect"}
SCOPE_NAMES: dict[int, str] = {
    SCOPE_ABSTRACT_UNIX_SOCKET: "abstract-unix",
    SCOPE_SIGNAL: "signal",
}


@dataclass(frozen=True)
class Feature:
    """Something one Landlock ABI version added, and what lacking it means."""

    abi: int
    kernel: str
    name: str
    consequence: str
    fs: int = 0
    net: int = 0
    scopes: int = 0

    def missing_line(self, running_abi: int) -> str:
        """One log line for a kernel whose ABI is below this feature's."""

        return (
            f"Landlock {self.name} needs ABI {self.abi} (Linux {self.kernel}); "
            f"this kernel has ABI {running_abi}, so {self.consequence}"
        )


# Oldest first.  ABI 1 (Linux 5.13) brought Landlock itself.
FEATURES = (
    Feature(
        abi=2,
        kernel="5.19",
        name="refer",
        consequence="renaming or linking across directories fails with EXDEV",
        fs=REFER,
    ),
    Feature(
        abi=3,
        kernel="6.2",
        name="truncate",
        consequence="truncation is not restricted",
        fs=TRUNCATE,
    ),
    Feature(
        abi=4,
        kernel="6.7",
        name="TCP bind/connect",
        consequence="only seccomp keeps the worker off TCP",
        net=ALL_NET,
    ),
    Feature(
        abi=5,
        kernel="6.10",
        name="device ioctl",
        consequence="ioctl on devices is not restricted",
        fs=IOCTL_DEV,
    ),
    Feature(
        abi=6,
        kernel="6.12",
        name="scopes",
        consequence="signals and abstract Unix sockets reach outside the sandbox",
        scopes=ALL_SCOPES,
    ),
    Feature(
        abi=7,
        kernel="6.15",
        name="audit logging",
        consequence="denials are not written to the audit log",
    ),
)


@dataclass(frozen=True)
class Support:
    """Whether this kernel has Landlock, and which ABI version."""

    abi: int
    problem: str = ""


@dataclass(frozen=True)
class Rights:
    """What a ruleset handles on a kernel of one ABI version."""

    abi: int
    fs: int
    net: int
    scopes: int
    missing: tuple[Feature, ...]

    def missing_lines(self) -> tuple[str, ...]:
        """One line per feature this kernel lacks, oldest feature first."""

        return tuple(feature.missing_line(self.abi) for feature in self.missing)


@dataclass(frozen=True)
class PathRule:
    """Allow `access` on the tree (or file) at `path`.

    An optional rule whose path cannot be opened is skipped: it would allow
    nothing the process could reach anyway.
    """

    path: Path
    access: int
    optional: bool = False


@dataclass(frozen=True)
class PortRule:
    """Allow `access` (BIND_TCP, CONNECT_TCP) on TCP port `port` (ABI 4)."""

    port: int
    access: int = CONNECT_TCP


def probe() -> Support:
    """Ask the running kernel for its Landlock ABI version (0: none)."""

    try:
        abi = syscall(_SYS_CREATE_RULESET, 0, 0, _CREATE_RULESET_VERSION)
    except SystemCallError as error:
        return Support(0, _unavailable_reason(error.errno or 0))
    return Support(abi)


def _unavailable_reason(number: int) -> str:
    if number == errno.EOPNOTSUPP:
        return (
            "Landlock is built into this kernel but not enabled; boot with "
            "lsm=...,landlock (append landlock to the current list)"
        )
    if number == errno.ENOSYS:
        return (
            "this kernel has no Landlock (CONFIG_SECURITY_LANDLOCK); run "
            "Linux 5.13 or newer built with it"
        )
    return f"the Landlock version probe failed: {os.strerror(number)}"


def rights_for_abi(abi: int) -> Rights:
    """Every right this module knows, minus what ABI `abi` lacks.

    Pure: no system call, so any version number can be examined.
    """

    if abi < 1:
        return Rights(abi, 0, 0, 0, missing=FEATURES)

    fs, net, scopes = ALL_FS, ALL_NET, ALL_SCOPES
    missing = []
    for feature in FEATURES:
        if abi < feature.abi:
            fs &= ~feature.fs
            net &= ~feature.net
            scopes &= ~feature.scopes
            missing.append(feature)
    return Rights(abi, fs, net, scopes, tuple(missing))


def names(mask: int, table: dict[int, str]) -> tuple[str, ...]:
    """The names of the bits set in `mask`, in bit order."""

    return tuple(name for bit, name in table.items() if mask & bit)


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _NetPortAttr(ctypes.Structure):
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("port", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is packed: 12 bytes, no padding
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


def enforce(
    rights: Rights, rules: Iterable[PathRule], ports: Iterable[PortRule] = ()
) -> None:
    """Stack one Landlock layer on this thread: `rules` allowed, rest denied.

    The caller must already have set no_new_privs.  TCP bind and connect
    (when the ABI has them) are handled, so both are denied except on the
    `ports` given; on a kernel without them the port rules have no object.
    """

    ruleset = _create_ruleset(rights)
    try:
        for rule in rules:
            _add_path_rule(ruleset, rule, rights.fs)
        if rights.net:
            for port in ports:
                _add_port_rule(ruleset, port, rights.net)
        _restrict_self(ruleset)
    finally:
        os.close(ruleset)


def _create_ruleset(rights: Rights) -> int:
    # The struct is always passed whole; the kernel accepts the larger size
    # from an older ABI as long as the fields it does not know are zero,
    # which rights_for_abi guarantees.
    attributes = _RulesetAttr(rights.fs, rights.net, rights.scopes)
    try:
        return syscall(
            _SYS_CREATE_RULESET,
            ctypes.c_void_p(ctypes.addressof(attributes)),
            ctypes.sizeof(attributes),
            0,
        )
    except SystemCallError as error:
        raise SandboxError(
            f"cannot create a Landlock ruleset for ABI {rights.abi}: "
            f"{error.strerror}; run `sftpjail check` to see what this kernel "
            "supports"
        ) from None


def _add_path_rule(ruleset: int, rule: PathRule, handled: int) -> None:
    try:
        parent = os.open(rule.path, os.O_PATH | os.O_CLOEXEC)
    except OSError as error:
        if rule.optional:
            logger.debug("Landlock: skipped %s: %s", rule.path, error.strerror)
            return
        raise SandboxError(
            f"cannot open {rule.path} for a Landlock rule: {error.strerror}; "
            "check that it exists and that the service user can reach it"
        ) from None

    try:
        access = rule.access & handled
        if not stat.S_ISDIR(os.fstat(parent).st_mode):
            access &= FILE_ONLY
        attributes = _PathBeneathAttr(access, parent)
        syscall(
            _SYS_ADD_RULE,
            ruleset,
            _RULE_PATH_BENEATH,
            ctypes.c_void_p(ctypes.addressof(attributes)),
            0,
        )
    except SystemCallError as error:
        raise SandboxError(
            f"cannot add the Landlock rule for {rule.path}: {error.strerror}"
        ) from None
    finally:
        os.close(parent)


def _add_port_rule(ruleset: int, rule: PortRule, handled: int) -> None:
    attributes = _NetPortAttr(rule.access & handled, rule.port)
    try:
        syscall(
            _SYS_ADD_RULE,
            ruleset,
            _RULE_NET_PORT,
            ctypes.c_void_p(ctypes.addressof(attributes)),
            0,
        )
    except SystemCallError as error:
        raise SandboxError(
            f"cannot add the Landlock rule for TCP port {rule.port}: {error.strerror}"
        ) from None


def _restrict_self(ruleset: int) -> None:
    try:
        syscall(_SYS_RESTRICT_SELF, ruleset, 0)
    except SystemCallError as error:
        hint = ""
        if error.errno == errno.EPERM:
            hint = "; no_new_privs must be set first"
        raise SandboxError(
            f"cannot enforce the Landlock ruleset: {error.strerror}{hint}"
        ) from None
