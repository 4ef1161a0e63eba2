"""The supervisor's front door: listening sockets, and who may come in.

Every connection is judged before the SSH handshake, in the supervisor's
loop: by the defence first (a banned address; too many connections from
one address that have not logged in yet), then by the limits on open
connections overall and per address.  A refusal costs the server one
accept and one close.  A banned client is closed without a word, so it
learns nothing; any other refused client gets one line of text, the only
way to tell it why before SSH begins.
"""

from __future__ import annotations

import errno
import logging
import socket

from sftpjail.audit import audit
from sftpjail.config import Limits, ListenAddress
from sftpjail.defense import BANNED, Defense
from sftpjail.metrics import Metrics
from sftpjail.sessions import Sessions

logger = logging.getLogger("sftpjail.supervisor")

_LISTEN_BACKLOG = 128
_DRAIN_BYTES = 4096
_OVER_LIMIT_LINE = b"sftpjail: too many connections, try again later\r\n"
TOO_MANY_CONNECTIONS = "too many connections"
# The server could not open a session (out of descriptors or memory).
OUT_OF_RESOURCES = "out of resources"


def bind_listener(address: ListenAddress) -> socket.socket:
    """A non-blocking TCP socket listening on `address`.

    An IPv6 address listens on IPv6 only, so that "[::]" beside "0.0.0.0"
    works.  Raises OSError naming the address.
    """

    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)

    try:
        listener.bind((address.host, address.port))
    except OSError as error:
        listener.close()
        hint = (
            " (is another server running?)" if error.errno == errno.EADDRINUSE else ""
        )
        raise OSError(
            error.errno, f"cannot listen on {address}: {error.strerror}{hint}"
        ) from None

    listener.listen(_LISTEN_BACKLOG)
    listener.setblocking(False)
    return listener


def admission_refusal(
    host: str, sessions: Sessions, defense: Defense, limits: Limits
) -> str | None:
    """Why a new connection from `host` must be refused, or None."""

    from_source = sessions.from_source(host)
    unauthenticated = sum(1 for session in from_source if session.user is None)
    reason = defense.refusal(host, unauthenticated)
    if reason is None and (
        len(sessions) >= limits.max_sessions
        or len(from_source) >= limits.max_sessions_per_source
    ):
        reason = TOO_MANY_CONNECTIONS
    return reason


def refuse_connection(
    connection: socket.socket, host: str, port: int, reason: str, metrics: Metrics
) -> None:
    """Audit, count and log a refused connection, then close it."""

    audit("connection.refused", peer=host, port=port, reason=reason)
    metrics.connection_refused(reason)
    if reason == BANNED:
        # Not a word before the handshake: a banned client learns nothing.
        logger.debug("Refused a connection from %s: %s.", host, reason)
        connection.close()
        return

    logger.warning("Refused a connection from %s: %s.", host, reason)
    _tell_and_close(connection)


def _tell_and_close(connection: socket.socket) -> None:
    """Tell an over-limit client why, in the only way possible before SSH."""

    try:
        connection.setblocking(False)
        # Closing with the client's version line still unread would answer
        # with a reset, and the client would report that instead of the
        # line; what arrived so far is read and dropped first.
        _drain(connection)
        connection.send(_OVER_LIMIT_LINE)
        connection.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    connection.close()


def _drain(connection: socket.socket) -> None:
    try:
        connection.recv(_DRAIN_BYTES)
    except BlockingIOError:
        pass
