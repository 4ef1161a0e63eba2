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

import asyncio
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
    """One change to asyncssh: what it relies on there, and how to make it."""

    name: str
    # "module:Class.attribute" paths that must exist, each with the names
    # its code must still use for the tuning's reasoning to hold.
    needs: dict[str, tuple[str, ...]]
    install: Callable[[], None]

    def unavailable(self, version: str) -> str | None:
        """Why this tuning cannot be installed on `version`, or None."""

        found = re.match(r"(\d+)\.(\d+)", version)
        if found is None or (int(found[1]), int(found[2])) != WRITTEN_FOR:
            written_for = ".".join(map(str, WRITTEN_FOR))
            return f"asyncssh {version} is not {written_for}.x"
        for path, names in self.needs.items():
            target = _find(path)
            if target is None:
                return f"asyncssh has no {path}"
            missing = sorted(set(names) - _names_used_by(target))
            if missing:
                return f"{path} no longer uses {', '.join(missing)}"
        return None


def _find(path: str) -> object | None:
    module_name, _, attributes = path.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError:
        return None
    for name in attributes.split("."):
        target = getattr(target, name, None)
        if target is None:
            return None
    return target


def _names_used_by(target: object) -> set[str]:
    """The global and attribute names a function's code refers to."""

    code = getattr(target, "__code__", None)
    return set(code.co_names) if code is not None else set()


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


# -- one socket write per turn of the event loop ----------------------------


class Outbox:
    """Packets sent during one turn of the event loop, written as one.

    asyncssh 2.24's `SSHConnection._send` calls `transport.write()` for
    each packet, and on a socket whose buffer is empty each call is one
    send() system call: a download of 32 KiB packets, or a batch of small
    SFTP replies, pays a system call per packet.  Packets go into the
    outbox instead, and a callback scheduled with the first of them hands
    them all to the transport, in order, in one write.

    The order against everything else on the connection stays the same:
    asyncssh closes a connection with `loop.call_soon(transport.abort)`,
    which is scheduled after the flush of any packet sent before it (such
    as a disconnect message) and so runs after it, and asyncssh sends
    nothing once it has let go of the transport.  Flow control is the
    transport's, as before: it buffers what the socket does not take and
    tells the protocol to pause, which asyncssh ignores either way (the
    SSH channel windows bound what is in flight).
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self.transport = transport
        self._loop = loop
        self._packets: list[bytes] = []

    def add(self, packet: bytes) -> None:
        """Queue a packet; it is written at the end of this loop turn."""

        if not self._packets:
            self._loop.call_soon(self.flush)
        self._packets.append(packet)

    def flush(self) -> None:
        """Write the queued packets to the transport in one call."""

        data = b"".join(self._packets)
        self._packets.clear()
        try:
            self.transport.write(data)
        except ConnectionError:
            # As asyncssh does: the lost connection is reported by
            # connection_lost, not by a failed write.
            pass


def _coalesce_writes() -> None:
    """Route every packet asyncssh sends through its connection's Outbox."""

    def send_through_outbox(connection: SSHConnection, data: bytes) -> None:
        transport = connection._transport
        if not transport:
            return
        outbox: Outbox | None = getattr(connection, _OUTBOX, None)
        if outbox is None or outbox.transport is not transport:
            outbox = Outbox(transport, connection._loop)
            setattr(connection, _OUTBOX, outbox)
        outbox.add(data)

    _replace(SSHConnection, "_send", send_through_outbox)


# The attribute of an asyncssh connection that holds its Outbox.
_OUTBOX = "_sftpjail_outbox"


TUNINGS = (
    Tuning(
        "no empty ignore packets",
        needs={"asyncssh.connection:SSHConnection.send_packet": ("MSG_IGNORE",)},
        install=_drop_empty_ignore,
    ),
    Tuning(
        "one write per loop turn",
        # What Outbox relies on: _send writes to the connection's transport,
        # and _force_close lets go of it with loop.call_soon(abort).
        needs={
            "asyncssh.connection:SSHConnection._send": ("_transport", "write"),
            "asyncssh.connection:SSHConnection._force_close": (
                "_loop",
                "call_soon",
                "_transport",
                "abort",
            ),
        },
        install=_coalesce_writes,
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
