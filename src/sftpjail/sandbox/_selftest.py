"""Prove the sandbox works here: apply it in a child and try to break out.

Version numbers say what the kernel claims; this trial shows what it does.
A forked child does what a worker does (switch user, stage 1, stage 2) and
then tries a few things a worker must not do and a few it must still do.
Each probe names the layer it relies on and is skipped when that layer is
not enforced, so the result speaks only about layers in force.
"""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftpjail.config import Config
from sftpjail.errors import SandboxError
from sftpjail.sandbox._enforce import enter_worker_sandbox, narrow_to_home
from sftpjail.sandbox._policy import WorkerPolicy, worker_policy
from sftpjail.sandbox._preload import preload_modules
from sftpjail.sandbox._process import drop_privileges
from sftpjail.sandbox._trial import run_in_child

REFUSED = "refused"
ALLOWED = "allowed"
_DENIAL_ERRNOS = (errno.EACCES, errno.EPERM, errno.EAFNOSUPPORT)


@dataclass(frozen=True)
class ProbeResult:
    """One attempt in the trial and how it went."""

    action: str
    expected: str
    outcome: str

    @property
    def passed(self) -> bool:
        """Whether the outcome is the expected one (skips pass)."""

        return self.outcome.startswith((self.expected, "skipped"))


@dataclass(frozen=True)
class TrialReport:
    """What the trial child enforced and what its probes found."""

    layers: str
    probes: tuple[ProbeResult, ...]

    @property
    def passed(self) -> bool:
        """Whether every probe behaved as a sandboxed worker must."""

        return all(probe.passed for probe in self.probes)


def self_test(
    config: Config, *, run_as: tuple[int, int] | None, timeout: float = 30.0
) -> TrialReport:
    """Apply the real worker's sandbox in a child and probe it.

    `run_as` is the (uid, gid) to switch to first, as a worker started by
    root does.  Creates and removes one empty directory in data_dir to
    stand in for a home.
    """

    policy = worker_policy(config)
    preload_modules()
    if not config.data_dir.is_dir():
        raise SandboxError(
            f"data_dir {config.data_dir} does not exist; create it, owned by "
            "the service user"
        )

    scratch = tempfile.mkdtemp(prefix=".sftpjail-check-", dir=config.data_dir)
    scratch_home = Path(scratch)
    try:
        if run_as is not None:
            os.chown(scratch_home, *run_as)
        answer = run_in_child(
            lambda: _trial(config, policy, scratch_home, run_as), timeout=timeout
        )
    finally:
        shutil.rmtree(scratch_home, ignore_errors=True)

    probes = tuple(ProbeResult(*probe) for probe in answer["probes"])
    return TrialReport(layers=answer["layers"], probes=probes)


@dataclass(frozen=True)
class _Probe:
    action: str
    layer: str
    expected: str
    attempt: Callable[[], object]


def _trial(
    config: Config,
    policy: WorkerPolicy,
    home: Path,
    run_as: tuple[int, int] | None,
) -> dict[str, Any]:
    if run_as is not None:
        drop_privileges(*run_as)
    layers = enter_worker_sandbox(policy)
    enforced = {"landlock": layers.landlock_abi > 0, "seccomp": layers.seccomp}

    results = [_run(probe, enforced) for probe in _before_login(config)]
    narrow_to_home(home, read_only=True, policy=policy)
    results += [_run(probe, enforced) for probe in _after_login(config, home)]
    return {"layers": layers.describe(), "probes": results}


def _before_login(config: Config) -> list[_Probe]:
    probes = [
        _Probe(
            "list data_dir", "landlock", ALLOWED, lambda: os.listdir(config.data_dir)
        ),
        _Probe("read /etc/passwd", "landlock", REFUSED, lambda: _read("/etc/passwd")),
    ]
    if config.users_file.exists():
        read_users = _Probe(
            "read the users file", "landlock", REFUSED, lambda: _read(config.users_file)
        )
        probes.append(read_users)
    if config.state_dir.exists():
        list_state = _Probe(
            "list state_dir", "landlock", REFUSED, lambda: os.listdir(config.state_dir)
        )
        probes.append(list_state)
    return [
        *probes,
        _Probe("open an IPv4 socket", "seccomp", REFUSED, socket.socket),
        _Probe("open an IPv6 socket", "seccomp", REFUSED, _inet6_socket),
        _Probe("open a Unix socket pair", "seccomp", ALLOWED, socket.socketpair),
        _Probe("start a thread", "seccomp", ALLOWED, _run_thread),
    ]


def _after_login(config: Config, home: Path) -> list[_Probe]:
    return [
        _Probe("list the home", "landlock", ALLOWED, lambda: os.listdir(home)),
        _Probe(
            "list data_dir after login",
            "landlock",
            REFUSED,
            lambda: os.listdir(config.data_dir),
        ),
        _Probe("write to a read-only home", "landlock", REFUSED, lambda: _create(home)),
        # Last: if exec worked, this process would be gone without an answer.
        _Probe("run /bin/sh", "seccomp", REFUSED, _run_shell),
    ]


def _run(probe: _Probe, enforced: dict[str, bool]) -> tuple[str, str, str]:
    if enforced[probe.layer]:
        outcome = _attempt(probe.attempt)
    else:
        outcome = f"skipped: no {probe.layer}"
    return (probe.action, probe.expected, outcome)


def _attempt(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as error:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        if error.errno in _DENIAL_ERRNOS:
            return f"{REFUSED} ({name})"
        return f"failed ({name})"
    return ALLOWED


def _read(path: Path | str) -> bytes:
    with open(path, "rb") as stream:
        return stream.read(1)


def _create(directory: Path) -> None:
    path = directory / "probe"
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    os.unlink(path)


def _inet6_socket() -> socket.socket:
    return socket.socket(socket.AF_INET6)


def _run_shell() -> None:
    os.execv("/bin/sh", ["sh", "-c", ":"])  # noqa: S606 - must be refused


def _run_thread() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()
