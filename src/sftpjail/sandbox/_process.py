"""Process-wide settings of the sandbox: identity, limits, debuggability."""

from __future__ import annotations

import logging
import os
import resource
import signal
import threading

from sftpjail.errors import SandboxError
from sftpjail.sandbox._libc import (
    PR_GET_NO_NEW_PRIVS,
    PR_SET_DUMPABLE,
    PR_SET_NO_NEW_PRIVS,
    SystemCallError,
    prctl,
)
from sftpjail.sandbox._policy import WorkerPolicy

logger = logging.getLogger("sftpjail.sandbox")


def drop_privileges(uid: int, gid: int) -> None:
    """Become `uid`/`gid` for good: no supplementary groups, no way back.

    Call it as root, in the worker, before `enter_worker_sandbox`.  Look
    the user up before forking: after the sandbox, /etc/passwd is out of
    reach.  Raises `SandboxError` if any step fails or if root can be
    regained afterwards.
    """

    if uid == 0 or gid == 0:
        raise SandboxError(
            "refusing to run workers as uid or gid 0; set service_user to an "
            "unprivileged system user"
        )

    try:
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    except OSError as error:
        raise SandboxError(
            f"cannot switch the worker to uid {uid} gid {gid}: "
            f"{error.strerror}; start sftpjail as root so it can switch"
        ) from None

    _verify_unprivileged(uid, gid)


def _verify_unprivileged(uid: int, gid: int) -> None:
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid):
        raise SandboxError(f"the worker did not fully switch to uid {uid} gid {gid}")
    if os.getgroups():
        raise SandboxError("the worker kept supplementary groups after switching")

    for regain in (os.setuid, os.setgid):
        try:
            regain(0)
        except PermissionError:
            continue
        raise SandboxError(
            f"after switching to uid {uid} the worker could become root again "
            f"with {regain.__name__}; check the kernel's securebits and "
            "capability settings"
        )


def set_no_new_privs() -> None:
    """Forbid gaining privileges through exec; needed by Landlock."""

    try:
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    except SystemCallError as error:
        raise SandboxError(f"cannot set no_new_privs: {error.strerror}") from None
    if not has_no_new_privs():
        raise SandboxError("no_new_privs did not stick; the kernel refused it")


def has_no_new_privs() -> bool:
    """Whether no_new_privs is set on this thread."""

    return prctl(PR_GET_NO_NEW_PRIVS) == 1


def forbid_core_dumps_and_tracing() -> None:
    """No core file (it would hold keys), no ptrace by same-uid processes."""

    prctl(PR_SET_DUMPABLE, 0)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def apply_resource_limits(policy: WorkerPolicy) -> None:
    """Set the policy's limits as hard limits: the worker cannot raise them."""

    _lower_limit(resource.RLIMIT_NOFILE, policy.max_open_files)
    if policy.max_file_size is not None:
        # Past the limit, write() then fails with EFBIG instead of the
        # default SIGXFSZ ending the whole session.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        _lower_limit(resource.RLIMIT_FSIZE, policy.max_file_size)
    if policy.max_address_space is not None:
        _lower_limit(resource.RLIMIT_AS, policy.max_address_space)


def _lower_limit(limit: int, value: int) -> None:
    _soft, hard = resource.getrlimit(limit)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(limit, (value, value))


def require_single_thread(step: str) -> None:
    """Refuse to go on while other threads run.

    Landlock applies to the calling thread only: a thread that already runs
    keeps the wider sandbox, and code running in this process can always
    hand work to it.  asyncssh starts one executor thread per connection
    (`run_server` builds its options there), so a worker must shut its
    default executor down before narrowing and install a new one after.
    """

    current = threading.current_thread()
    others = [thread.name for thread in threading.enumerate() if thread is not current]
    if others:
        raise SandboxError(
            f"{step} must run while the worker has a single thread, but "
            f"{len(others)} more run ({', '.join(sorted(others))}); they "
            "would keep the wider sandbox.  Shut the event loop's default "
            "executor down first (executor.shutdown(wait=True)) and set a "
            "new one afterwards"
        )
