"""The supervisor's own sandbox, entered once it has bound every socket.

Theory of operation
-------------------
The supervisor holds the users' password hashes, so it is worth confining
too, but it does far more than a worker: it creates homes, re-reads the
users, re-starts the zygote, and (for replicas) talks to PostgreSQL.  Its
sandbox is therefore a separate, wider policy, entered after the
listeners, the control socket and the metrics endpoint are bound and the
zygote runs, when everything left to do is known:

* Landlock, file system: the Python and system libraries read-only *and*
  executable (a zygote that dies is started again with `execve`), the
  configuration file and the users file's directory read-only (reloads),
  `state_dir` read-only, the directory of the control socket
  read-and-remove (the socket is unlinked at shutdown), `data_dir`
  read-write (homes and quota walks), a private scratch directory the
  zygote uses as TMPDIR, and the few files of /etc that name resolution,
  TLS and the service user's lookup read.
* Landlock, network (ABI 4): no TCP bind at all, TCP connect only to the
  database's port.  Landlock knows ports, not addresses; the host firewall
  or NetworkPolicy narrows the address (`sftpjail firewall --allow`).
* Landlock scopes: abstract Unix sockets only.  Signals are not scoped:
  the first zygote and its workers started before this sandbox, outside
  its domain, and the supervisor must still be able to end them.
* seccomp: a deny-list like the worker's, minus what the supervisor
  needs (processes, chown, execve): no ptrace or other processes' memory,
  no io_uring, namespaces or mounts, no kernel administration, no new
  listening sockets, and sockets of the Unix and IP families only.

Everything the supervisor starts later (a new zygote, its workers)
inherits both layers; workers still stack their own, narrower ones.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import socket
from dataclasses import dataclass
from pathlib import Path

from sftpjail.config import Config
from sftpjail.errors import SandboxError
from sftpjail.sandbox import _landlock, _seccomp
from sftpjail.sandbox._enforce import check_kernel_support
from sftpjail.sandbox._landlock import (
    EXECUTE,
    READ_FILE,
    READ_ONLY,
    READ_WRITE,
    REMOVE_FILE,
    SCOPE_ABSTRACT_UNIX_SOCKET,
    WRITE_FILE,
    PathRule,
    PortRule,
)
from sftpjail.sandbox._policy import default_read_only_paths
from sftpjail.sandbox._process import require_single_thread, set_no_new_privs
from sftpjail.sandbox._report import EnforcedLayers
from sftpjail.sandbox._seccomp import DENIED, Denial

logger = logging.getLogger("sftpjail.sandbox")

# Files of /etc a supervisor reads after startup: name resolution (the
# database's host name), TLS settings, and the service user's entry (a new
# zygote looks it up).  Optional: a missing one simply is not allowed.
_SYSTEM_FILES = (
    "/etc/hosts",
    "/etc/resolv.conf",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/ssl",
    "/usr/share/zoneinfo",
    "/etc/ld.so.cache",
)
# A new zygote's imports find libseccomp (pyseccomp) and others with
# ctypes.util.find_library, which runs `ldconfig -p` with its standard
# input and errors on /dev/null.
_PROGRAMS = ("/sbin/ldconfig", "/usr/sbin/ldconfig")
_NULL_DEVICE = "/dev/null"

# The worker's denials the supervisor can live with, by reason.  It runs
# programs and starts processes (the zygote), so those two stay allowed;
# it chowns new homes, so the file operations stay allowed too.
_KEPT_DENIALS = (
    "inspect or steer another process",
    "io_uring runs file and socket operations this filter cannot see",
    "namespaces, mounts and root changes",
    "kernel interfaces with a history of privilege escalation",
    "administer the machine",
)
SUPERVISOR_DENIED = (
    *(denial for denial in DENIED if denial.reason in _KEPT_DENIALS),
    Denial(
        "every listening socket is bound before the sandbox",
        ("bind", "listen"),
    ),
)
_ALLOWED_FAMILIES = (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)


@dataclass(frozen=True)
class SupervisorPolicy:
    """What the sandboxed supervisor may still reach."""

    path_rules: tuple[PathRule, ...]
    database_ports: tuple[int, ...]
    require_kernel_jail: bool


def supervisor_policy(
    config: Config,
    control_socket: Path,
    database_ports: tuple[int, ...] = (),
    scratch: Path | None = None,
) -> SupervisorPolicy:
    """The supervisor's policy for `config`; the one place it is computed.

    `scratch` is a private temporary directory, writable: a zygote started
    again needs one while it imports.
    """

    rules = [
        *(PathRule(path, READ_ONLY | EXECUTE) for path in default_read_only_paths()),
        *(PathRule(Path(path), READ_ONLY, optional=True) for path in _SYSTEM_FILES),
        *(
            PathRule(Path(path), READ_ONLY | EXECUTE, optional=True)
            for path in _PROGRAMS
        ),
        PathRule(Path(_NULL_DEVICE), READ_FILE | WRITE_FILE, optional=True),
        PathRule(config.state_dir, READ_ONLY),
        PathRule(control_socket.parent, READ_ONLY | REMOVE_FILE),
        PathRule(config.data_dir, READ_WRITE),
    ]
    if config.source is not None:
        rules.append(PathRule(config.source, READ_ONLY))
    if config.database.url is None:
        rules.append(PathRule(config.users_file.parent, READ_ONLY))
    if scratch is not None:
        rules.append(PathRule(scratch, READ_WRITE))
    if config.audit_log is not None:
        rules.append(PathRule(config.audit_log, WRITE_FILE, optional=True))
    return SupervisorPolicy(tuple(rules), database_ports, config.require_kernel_jail)


def enter_supervisor_sandbox(policy: SupervisorPolicy) -> EnforcedLayers:
    """Confine the running supervisor for good; returns what was enforced."""

    require_single_thread("enter_supervisor_sandbox")
    landlock, seccomp = _landlock.probe(), _seccomp.probe()
    for warning in check_kernel_support(
        landlock, seccomp, required=policy.require_kernel_jail
    ):
        logger.warning("%s", warning.replace("workers run", "the supervisor runs"))

    rights = _supervisor_rights(landlock.abi)
    if landlock.abi and not rights.net and policy.database_ports:
        logger.warning(
            "Landlock on this kernel (ABI %d) cannot limit TCP connect to the "
            "database port; only the firewall does (Linux 6.7 brings ABI 4)",
            landlock.abi,
        )
    supervisor_filter = _build_filter() if seccomp.available else None

    set_no_new_privs()
    if landlock.abi:
        ports = [PortRule(port) for port in policy.database_ports]
        _landlock.enforce(rights, policy.path_rules, ports)
    if supervisor_filter is not None:
        _load(supervisor_filter)
    return EnforcedLayers(
        landlock_abi=rights.abi if rights.fs else 0,
        landlock_fs=bool(rights.fs),
        landlock_net=bool(rights.net),
        landlock_scopes=_landlock.names(rights.scopes, _landlock.SCOPE_NAMES),
        seccomp=supervisor_filter is not None,
        no_new_privs=True,
        rlimits=False,
    )


def _supervisor_rights(abi: int) -> _landlock.Rights:
    rights = _landlock.rights_for_abi(abi)
    return dataclasses.replace(
        rights, scopes=rights.scopes & SCOPE_ABSTRACT_UNIX_SOCKET
    )


def _build_filter() -> _seccomp.Filter:
    supervisor_filter = _seccomp.Filter(SUPERVISOR_DENIED, worker_arguments=False)
    # socket(family, ...): any family but Unix, IPv4 and IPv6 fails.
    highest = max(_ALLOWED_FAMILIES)
    for family in range(highest):
        if family not in _ALLOWED_FAMILIES:
            supervisor_filter.deny_if(errno.EAFNOSUPPORT, "socket", 0, "EQ", family)
    supervisor_filter.deny_if(errno.EAFNOSUPPORT, "socket", 0, "GT", highest)
    supervisor_filter.deny_new_namespaces()
    return supervisor_filter


def _load(supervisor_filter: _seccomp.Filter) -> None:
    try:
        supervisor_filter.load()
    except OSError as error:
        raise SandboxError(
            f"cannot load the supervisor's seccomp filter: {error.strerror}"
        ) from None
