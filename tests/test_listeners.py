"""The front door: binding, and which connections are refused and how.

Real sockets on 127.0.0.1 and a real session table; the server's own
tests (test_server.py, test_defense.py) drive the same code end to end.
"""

from __future__ import annotations

import selectors
import socket
from collections.abc import Iterator

import pytest

from sftpjail.config import DefenseSettings, Limits, ListenAddress
from sftpjail.defense import BANNED, TOO_MANY_UNAUTHENTICATED, defense_from_settings
from sftpjail.listeners import (
    TOO_MANY_CONNECTIONS,
    admission_refusal,
    bind_listener,
    refuse_connection,
)
from sftpjail.metrics import Metrics
from sftpjail.sessions import Sessions
from sftpjail.timers import Timers

HOST = "127.0.0.1"


@pytest.fixture
def sessions() -> Iterator[Sessions]:
    selector = selectors.DefaultSelector()
    table = Sessions(selector, Timers(), lambda _session, _reason: None)
    try:
        yield table
    finally:
        for session in list(table.values()):
            table.forget(session, "test over")
        selector.close()


def _open(sessions: Sessions, host: str, user: str | None = None) -> None:
    session, theirs = sessions.open(host, 40000, lambda _session: None)
    session.user = user
    theirs.close()


def test_a_listener_accepts_without_blocking() -> None:
    listener = bind_listener(ListenAddress(HOST, 0))
    try:
        port = listener.getsockname()[1]
        with socket.create_connection((HOST, port), timeout=5):
            connection, _address = listener.accept()
            connection.close()
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


def test_a_port_in_use_is_named_with_a_hint() -> None:
    first = bind_listener(ListenAddress(HOST, 0))
    port = first.getsockname()[1]
    try:
        with pytest.raises(OSError, match=f"cannot listen on {HOST}:{port}: .*"):
            bind_listener(ListenAddress(HOST, port))
        with pytest.raises(OSError, match="is another server running"):
            bind_listener(ListenAddress(HOST, port))
    finally:
        first.close()


def test_the_session_limits_refuse_what_the_defence_lets_in(
    sessions: Sessions,
) -> None:
    defense = defense_from_settings(DefenseSettings(enabled=False))
    limits = Limits(max_sessions=3, max_sessions_per_source=2)
    _open(sessions, HOST, user="alice")
    _open(sessions, HOST, user="alice")

    assert admission_refusal(HOST, sessions, defense, limits) == TOO_MANY_CONNECTIONS
    assert admission_refusal("127.0.0.2", sessions, defense, limits) is None

    _open(sessions, "127.0.0.3", user="bob")
    assert admission_refusal("127.0.0.2", sessions, defense, limits) == (
        TOO_MANY_CONNECTIONS
    )


def test_the_defence_speaks_first(sessions: Sessions) -> None:
    settings = DefenseSettings(max_failures=1, max_unauthenticated_per_source=1)
    defense = defense_from_settings(settings)
    limits = Limits()
    _open(sessions, HOST)

    assert admission_refusal(HOST, sessions, defense, limits) == (
        TOO_MANY_UNAUTHENTICATED
    )
    defense.record_failure("127.0.0.2", "alice")
    assert admission_refusal("127.0.0.2", sessions, defense, limits) == BANNED


@pytest.mark.parametrize(
    ("reason", "told"),
    [
        (TOO_MANY_CONNECTIONS, b"sftpjail: too many connections, try again later\r\n"),
        (BANNED, b""),
    ],
)
def test_only_a_banned_client_learns_nothing(reason: str, told: bytes) -> None:
    listener = bind_listener(ListenAddress(HOST, 0))
    client = socket.create_connection((HOST, listener.getsockname()[1]), timeout=5)
    try:
        connection, (host, port) = listener.accept()

        refuse_connection(connection, host, port, reason, Metrics())

        assert client.recv(1024) == told
        assert connection.fileno() == -1
    finally:
        client.close()
        listener.close()
