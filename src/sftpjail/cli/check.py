"""`sftpjail check`: which sandbox layers this machine enforces, proven.

Prints what the kernel offers, who workers run as, then applies the real
worker sandbox in a child process and shows what it refused.  Exits 1 when
something the configuration requires is missing or a probe misbehaved.
"""

from __future__ import annotations

import os
import pwd
import sys
from pathlib import Path

import click

from sftpjail.cli.options import config_option, load
from sftpjail.config import Config
from sftpjail.errors import EXIT_FAILURE, SandboxError
from sftpjail.sandbox import KernelReport, probe_kernel
from sftpjail.sandbox._selftest import self_test

_LABEL_WIDTH = 14


@click.command()
@config_option
def check(config_path: Path | None) -> None:
    """Show and test the kernel sandbox workers would get here.

    Exits 1 if the configuration requires a layer this machine lacks, if
    workers could not switch to the service user, or if the trial sandbox
    let through something it must refuse.
    """

    config = load(config_path)
    report = probe_kernel()
    problems = _print_kernel(report, config.require_kernel_jail)

    run_as, user_problem = _service_identity(config)
    if user_problem:
        problems.append(user_problem)

    problems.extend(_print_trial(config, run_as))

    if problems:
        _line("result", f"{len(problems)} problem(s):")
        for problem in problems:
            _line("", f"- {problem}")
        sys.exit(EXIT_FAILURE)
    _line("result", "ok: every layer the configuration requires is enforced")


def _line(label: str, text: str) -> None:
    click.echo(f"{label:<{_LABEL_WIDTH}}{text}")


def _print_kernel(report: KernelReport, required: bool) -> list[str]:
    problems = []
    _line("kernel", report.kernel_release)

    if report.landlock_abi:
        covered = [f"fs ({len(report.landlock_fs_rights)} rights)"]
        if report.landlock_net_rights:
            covered.append(", ".join(report.landlock_net_rights))
        if report.landlock_scopes:
            covered.append("scopes: " + " ".join(report.landlock_scopes))
        _line("landlock", f"ABI {report.landlock_abi}: {'; '.join(covered)}")
        for missing in report.landlock_missing:
            _line("", missing)
    else:
        _line("landlock", f"unavailable: {report.landlock_problem}")
        if required:
            problems.append(f"Landlock is required: {report.landlock_problem}")

    if report.seccomp:
        _line("seccomp", "available")
    else:
        _line("seccomp", f"unavailable: {report.seccomp_problem}")
        if required:
            problems.append(f"seccomp is required: {report.seccomp_problem}")
    return problems


def _service_identity(config: Config) -> tuple[tuple[int, int] | None, str]:
    """The (uid, gid) workers switch to, and a problem if they cannot."""

    if os.geteuid() != 0:
        _line("workers", f"keep uid {os.geteuid()} (not started as root)")
        return None, ""

    name = config.service_user
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        _line("workers", f"would stay root: service user {name!r} does not exist")
        return None, (
            f"service user {name!r} does not exist; create it with `useradd "
            f"--system --no-create-home --shell /usr/sbin/nologin {name}` or "
            "set service_user"
        )
    if entry.pw_uid == 0:
        return None, f"service user {name!r} is root; pick an unprivileged user"
    _line("workers", f"run as {name} (uid {entry.pw_uid}, gid {entry.pw_gid})")
    return (entry.pw_uid, entry.pw_gid), ""


def _print_trial(config: Config, run_as: tuple[int, int] | None) -> list[str]:
    try:
        trial = self_test(config, run_as=run_as)
    except SandboxError as error:
        _line("trial", f"FAILED: {error}")
        return [f"the trial sandbox failed: {error}"]

    _line("trial", trial.layers)
    problems = []
    for probe in trial.probes:
        mark = "ok" if probe.passed else "BAD"
        _line("", f"{mark:<4}{probe.action}: {probe.outcome}")
        if not probe.passed:
            problems.append(
                f"{probe.action}: expected {probe.expected}, got {probe.outcome}"
            )
    return problems
