"""What the kernel offers and what a worker actually enforced, in words."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sftpjail.sandbox import _landlock, _seccomp


@dataclass(frozen=True)
class KernelReport:
    """The sandbox features of the running kernel."""

    kernel_release: str
    landlock_abi: int
    landlock_problem: str
    landlock_fs_rights: tuple[str, ...]
    landlock_net_rights: tuple[str, ...]
    landlock_scopes: tuple[str, ...]
    landlock_missing: tuple[str, ...]
    seccomp: bool
    seccomp_problem: str


def probe_kernel() -> KernelReport:
    """Ask the kernel what it supports; installs nothing."""

    landlock = _landlock.probe()
    rights = _landlock.rights_for_abi(landlock.abi)
    seccomp = _seccomp.probe()
    return KernelReport(
        kernel_release=os.uname().release,
        landlock_abi=landlock.abi,
        landlock_problem=landlock.problem,
        landlock_fs_rights=_landlock.names(rights.fs, _landlock.FS_RIGHT_NAMES),
        landlock_net_rights=_landlock.names(rights.net, _landlock.NET_RIGHT_NAMES),
        landlock_scopes=_landlock.names(rights.scopes, _landlock.SCOPE_NAMES),
        landlock_missing=rights.missing_lines() if landlock.abi else (),
        seccomp=seccomp.available,
        seccomp_problem=seccomp.problem,
    )


@dataclass(frozen=True)
class EnforcedLayers:
    """The layers `enter_worker_sandbox` put in place for this worker."""

    landlock_abi: int
    landlock_fs: bool
    landlock_net: bool
    landlock_scopes: tuple[str, ...]
    seccomp: bool
    no_new_privs: bool
    rlimits: bool

    @classmethod
    def from_rights(
        cls, rights: _landlock.Rights, *, seccomp: bool, no_new_privs: bool
    ) -> EnforcedLayers:
        """The layers for a worker that enforced `rights` (ABI 0: none)."""

        return cls(
            landlock_abi=rights.abi if rights.fs else 0,
            landlock_fs=bool(rights.fs),
            landlock_net=bool(rights.net),
            landlock_scopes=_landlock.names(rights.scopes, _landlock.SCOPE_NAMES),
            seccomp=seccomp,
            no_new_privs=no_new_privs,
            rlimits=True,
        )

    def describe(self) -> str:
        """One log line, e.g. `landlock abi 7 (fs, ...), seccomp, ...`."""

        parts = [self._describe_landlock()]
        parts.append("seccomp" if self.seccomp else "NO seccomp")
        if self.no_new_privs:
            parts.append("no_new_privs")
        if self.rlimits:
            parts.append("rlimits")
        return ", ".join(parts)

    def _describe_landlock(self) -> str:
        if not self.landlock_abi:
            return "NO landlock"
        covered = ["fs"]
        if self.landlock_net:
            covered.append("tcp bind/connect")
        if self.landlock_scopes:
            covered.append("scopes: " + " ".join(self.landlock_scopes))
        return f"landlock abi {self.landlock_abi} ({', '.join(covered)})"
