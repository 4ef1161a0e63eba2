"""The two stages of a worker's sandbox, in the order they must happen.

Stage 1 (`enter_worker_sandbox`), right after fork, before the first byte
from the client: no_new_privs, no core dumps, no ptrace by same-uid
processes, resource limits, Landlock layer 1 (libraries read-only, the
whole data directory read-write, no TCP, scoped to itself) and the seccomp
filter.  Stage 2 (`narrow_to_home`), once the user has logged in: Landlock
layer 2, where the user's home is the only writable (or readable) tree.

Each stage refuses to run with more than one thread (see
`require_single_thread`).  When the kernel lacks a layer, the stage either
raises `SandboxError` (`require_kernel_jail = true`) or logs a warning for
every worker and goes on without it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sftpjail.errors import SandboxError
from sftpjail.sandbox import _landlock, _seccomp
from sftpjail.sandbox._landlock import READ_ONLY, READ_WRITE, PathRule
from sftpjail.sandbox._policy import WorkerPolicy
from sftpjail.sandbox._preload import preload_modules
from sftpjail.sandbox._process import (
    apply_resource_limits,
    forbid_core_dumps_and_tracing,
    has_no_new_privs,
    require_single_thread,
    set_no_new_privs,
)
from sftpjail.sandbox._report import EnforcedLayers

logger = logging.getLogger("sftpjail.sandbox")


def enter_worker_sandbox(policy: WorkerPolicy) -> EnforcedLayers:
    """Stage 1 of the worker's sandbox; returns what was enforced.

    Call it in the freshly forked worker after `drop_privileges` and before
    reading from the client.  Lazily imported modules are imported first
    (`preload_modules`).  Afterwards the worker cannot execute programs,
    start processes, open sockets other than Unix ones, connect, bind or
    accept, and reads only libraries and the data directory.
    """

    return enter_with_support(policy, _landlock.probe(), _seccomp.probe())


def enter_with_support(
    policy: WorkerPolicy, landlock: _landlock.Support, seccomp: _seccomp.Support
) -> EnforcedLayers:
    """Stage 1 with the kernel's support given, so tests can lower it."""

    require_single_thread("enter_worker_sandbox")
    preload_modules()
    for warning in check_kernel_support(
        landlock, seccomp, required=policy.require_kernel_jail
    ):
        logger.warning("%s", warning)

    rights = _landlock.rights_for_abi(landlock.abi)
    if landlock.abi:
        for line in rights.missing_lines():
            logger.warning("%s", line)
    # Built before Landlock closes the file system (libseccomp is already
    # loaded; building needs memory only).
    worker_filter = _seccomp.build_filter() if seccomp.available else None

    set_no_new_privs()
    forbid_core_dumps_and_tracing()
    apply_resource_limits(policy)
    if landlock.abi:
        _landlock.enforce(rights, _layer_one_rules(policy))
    if worker_filter is not None:
        _load_filter(worker_filter)

    return EnforcedLayers.from_rights(
        rights, seccomp=worker_filter is not None, no_new_privs=has_no_new_privs()
    )


def check_kernel_support(
    landlock: _landlock.Support, seccomp: _seccomp.Support, *, required: bool
) -> tuple[str, ...]:
    """Raise if a required layer is missing; else the warnings to log.

    Pure, so the decision is tested for kernels we do not run on.
    """

    problems = []
    if landlock.abi < 1:
        problems.append(landlock.problem or "Landlock is not available")
    if not seccomp.available:
        problems.append(seccomp.problem or "seccomp is not available")

    if problems and required:
        raise SandboxError(
            "; ".join(problems) + "; or set require_kernel_jail = false to "
            "run workers without it (not recommended)"
        )
    return tuple(
        f"SANDBOX INCOMPLETE: {problem}; workers run without this layer "
        "because require_kernel_jail = false"
        for problem in problems
    )


def _layer_one_rules(policy: WorkerPolicy) -> list[PathRule]:
    return [
        *_library_rules(policy),
        PathRule(policy.data_dir, READ_WRITE),
    ]


def _library_rules(policy: WorkerPolicy) -> list[PathRule]:
    # Optional: a library tree the service user cannot reach (pyenv under
    # /root, say) gives nothing to allow; the modules are preloaded.
    return [PathRule(path, READ_ONLY, optional=True) for path in policy.read_only_paths]


def _load_filter(worker_filter: _seccomp.Filter) -> None:
    try:
        worker_filter.load()
    except OSError as error:
        raise SandboxError(
            f"cannot load the seccomp filter: {error.strerror}; run "
            "`sftpjail check` to see what this kernel supports"
        ) from None


def narrow_to_home(home: Path, *, read_only: bool, policy: WorkerPolicy) -> None:
    """Stage 2: from now on only `home` (and the libraries) is reachable.

    Call it synchronously once the user has logged in, with no other thread
    running.  `home` must lie inside the policy's data directory; with
    `read_only` the home can be read and listed but not changed.
    """

    require_single_thread("narrow_to_home")
    landlock = _landlock.probe()
    if not landlock.abi:
        if policy.require_kernel_jail:
            raise SandboxError(
                f"cannot confine the session to {home}: {landlock.problem}"
            )
        logger.warning(
            "SANDBOX INCOMPLETE: the session is not confined to %s: %s",
            home,
            landlock.problem,
        )
        return

    _require_inside_data_dir(home, policy.data_dir)
    set_no_new_privs()
    access = READ_ONLY if read_only else READ_WRITE
    rules = [*_library_rules(policy), PathRule(home, access)]
    _landlock.enforce(_landlock.rights_for_abi(landlock.abi), rules)


def _require_inside_data_dir(home: Path, data_dir: Path) -> None:
    resolved_home, resolved_data = home.resolve(), data_dir.resolve()
    if resolved_home == resolved_data or not resolved_home.is_relative_to(
        resolved_data
    ):
        raise SandboxError(
            f"home {home} is not a directory inside data_dir {data_dir}; "
            "homes must live below data_dir"
        )
    if not resolved_home.is_dir():
        raise SandboxError(f"home {home} is not a directory; create it first")
