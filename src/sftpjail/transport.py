"""Cheaper SSH transport for the workers: asyncssh tunings, installed once.

Theory of operation.  Most of the CPU a worker spends on a bulk transfer
goes below the SFTP layer, into asyncssh's SSH transport: framing,
encrypting and writing packets.  The tunings here remove work there that
buys sftpjail nothing; none of them changes a byte the client can decrypt
or the order of anything it receives.

asyncssh builds its connection objects itself, so there is no subclass to
hand it: each tuning wraps or replaces one private piece of asyncssh's
code, in the zygote, before the first worker is forked (every worker then
inherits it).  Private pieces change without notice, so each tuning names
what it needs and was written against one minor version (`WRITTEN_FOR`,
the cap in pyproject.toml).  When the version differs or a piece is
missing, the tuning is left out with a warning and asyncssh's own code
runs: slower, still correct.
"""

from __future__ import annotations

import importlib
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncssh
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE

logger = logging.getLogger("sftpjail.transport")

# The asyncssh minor version these tunings were written and tested for.
WRITTEN_FOR = (2, 24)

# An SSH string of length zero: the payload of asyncssh's padding packets.
_EMPTY_STRING = bytes(4)


@dataclass(frozen=True)
class Tuning:
    """One change to asyncssh: what it needs there, and how to make it."""

    name: str
    # "module:Class.attribute" paths that must exist before installing.
    needs: tuple[str, ...]
    install: Callable[[], None]

    def unavailable(self, version: str) -> str | None:
        """Why this tuning cannot be installed on `version`, or None."""

        found = re.match(r"(\d+)\.(\d+)", version)
        if found is None or (int(found[1]), int(found[2])) != WRITTEN_FOR:
            written_for = ".".join(map(str, WRITTEN_FOR))
            return f"asyncssh {version} is not {written_for}.x"
        for path in self.needs:
            if not _exists(path):
                return f"asyncssh has no {path}"
        return None


def _exists(path: str) -> bool:
    module_name, _, attributes = path.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError:
        return False
    for name in attributes.split("."):
        if not hasattr(target, name):
            return False
        target = getattr(target, name)
    return True


def _replace(owner: type, name: str, replacement: object) -> None:
    setattr(owner, name, replacement)
    logger.debug("Replaced %s.%s.", owner.__name__, name)


# -- no empty SSH_MSG_IGNORE before every packet ----------------------------


def _drop_empty_ignore() -> None:
    """Stop the empty SSH_MSG_IGNORE asyncssh sends before every packet.

    Once encryption is on, asyncssh 2.24's `SSHConnection.send_packet`
    sends an empty ignore packet ahead of every packet past the key
    exchange: twice the packets, encryptions and system calls on both
    sides.  Ignore packets were the defence against the chained-IV attack
    on CBC modes (RFC 4251, section 9.3.1); sftpjail offers no CBC mode,
    only AEAD and CTR ones, where they protect nothing.  Ignore packets
    with a payload, which asyncssh never sends itself, still go out.
    """

    send_packet = SSHConnection.send_packet

    def send_packet_without_empty_ignore(
        connection: SSHConnection, pkttype: int, *args: bytes, **options: Any
    ) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,):
            return
        send_packet(connection, pkttype, *args, **options)

    _replace(SSHConnection, "send_packet", send_packet_without_empty_ignore)


TUNINGS = (
    Tuning(
        "no empty ignore packets",
        needs=("asyncssh.connection:SSHConnection.send_packet",),
        install=_drop_empty_ignore,
    ),
)

_installed: list[str] = []


def install_tunings(version: str = asyncssh.__version__) -> list[str]:
    """Install each tuning `version` of asyncssh allows, once per process.

    Returns the names of the tunings in place.  Call it before forking the
    workers: a check may import a module, which a sandboxed worker cannot.
    """

    for tuning in TUNINGS:
        if tuning.name in _installed:
            continue
        reason = tuning.unavailable(version)
        if reason is not None:
            logger.warning(
                "Left out the %s tuning: %s; asyncssh's own code runs instead.",
                tuning.name,
                reason,
            )
            continue
        tuning.install()
        _installed.append(tuning.name)
    return list(_installed)
