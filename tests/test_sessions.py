"""The supervisor's session table: counters, replies, forgetting, ending.

Real socket pairs, a real selector and a real `sleep` process stand in for
a worker; nothing here needs a server.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sftpjail import ipc
from sftpjail.audit import configure_audit
from sftpjail.sessions import Session, Sessions
from sftpjail.timers import Timers


@pytest.fixture
def audit_file(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "audit.jsonl"
    configure_audit(path)
    try:
        yield path
    finally:
        configure_audit(None)


def audit_events(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class Table:
    """A session table and what it told its owner about forgotten sessions."""

    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self.forgotten: list[tuple[int, str, bool]] = []
        self.sessions = Sessions(self.selector, self.timers, self._on_forget)

    def _on_forget(self, session: Session, reason: str) -> None:
        still_listed = session.connection_id in self.sessions
        self.forgotten.append((session.connection_id, reason, still_listed))


@pytest.fixture
def table() -> Iterator[Table]:
    made = Table()
    try:
        yield made
    finally:
        for session in list(made.sessions.values()):
            made.sessions.forget(session, "test over")
        made.selector.close()


def transfer(bytes_in: int, bytes_out: int, **operations: int) -> ipc.TransferNotice:
    return ipc.TransferNotice(bytes_in, bytes_out, operations)


def test_only_the_growth_of_reported_counters_counts(table: Table) -> None:
    session, theirs = table.sessions.open("127.0.0.1", 50000, lambda _s: None)
    theirs.close()

    first = session.take_transfer(transfer(100, 10, read=2))
    second = session.take_transfer(transfer(150, 5, read=2, write=1))

    assert first == (100, 10, {"read": 2})
    assert second == (50, 0, {"write": 1})
    assert (session.bytes_in, session.bytes_out) == (150, 10)
    assert session.operations == {"read": 2, "write": 1}


def test_too_many_kinds_of_operations_break_the_protocol(table: Table) -> None:
    session, theirs = table.sessions.open("127.0.0.1", 50000, lambda _s: None)
    theirs.close()
    many = {f"op{number}": 1 for number in range(129)}

    with pytest.raises(ipc.ProtocolError, match="too many kinds"):
        session.take_transfer(ipc.TransferNotice(0, 0, many))


def test_forgetting_settles_first_audits_once_and_closes_the_link(
    table: Table, audit_file: Path
) -> None:
    session, theirs = table.sessions.open("127.0.0.1", 50001, lambda _s: None)

    table.sessions.forget(session, "closed")
    table.sessions.forget(session, "closed again")

    closed = [e for e in audit_events(audit_file) if e["event"] == "connection.closed"]
    assert table.forgotten == [(session.connection_id, "closed", False)]
    assert [event["reason"] for event in closed] == ["closed"]
    assert session.connection_id not in table.sessions
    assert session.link.fileno() == -1
    theirs.close()


def test_a_reply_reaches_the_worker_and_clears_the_pending_flag(table: Table) -> None:
    session, theirs = table.sessions.open("127.0.0.1", 50002, lambda _s: None)
    session.pending_reply = True

    table.sessions.answer_login(session, {"type": "auth_reply", "ok": False})

    assert ipc.decode(theirs.recv(ipc.MAX_MESSAGE_BYTES))["type"] == "auth_reply"
    assert session.pending_reply is False
    theirs.close()


def test_a_reply_to_a_gone_worker_forgets_the_session(table: Table) -> None:
    session, theirs = table.sessions.open("127.0.0.1", 50003, lambda _s: None)
    theirs.close()

    table.sessions.answer_login(session, {"type": "auth_reply", "ok": False})

    assert table.forgotten == [(session.connection_id, "closed", False)]


def test_killing_signals_the_worker_through_its_pidfd(table: Table) -> None:
    session, theirs = table.sessions.open("127.0.0.1", 50004, lambda _s: None)
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        session.pidfd = os.pidfd_open(stand_in.pid)

        table.sessions.kill(session, "banned")

        assert stand_in.wait(10) == -signal.SIGKILL
        assert table.forgotten == [(session.connection_id, "banned", False)]
    finally:
        if stand_in.poll() is None:
            stand_in.kill()
        stand_in.wait(10)
        theirs.close()


def test_ending_gently_tells_the_worker_why(table: Table, audit_file: Path) -> None:
    session, theirs = table.sessions.open("127.0.0.1", 50005, lambda _s: None)
    session.user = "alice"

    table.sessions.end_refused({})

    message = ipc.decode(theirs.recv(ipc.MAX_MESSAGE_BYTES))
    ended = [e for e in audit_events(audit_file) if e["event"] == "session.ended"]
    assert message == {"type": "end", "reason": "user removed"}
    assert session.ending == "user removed"
    assert [event["user"] for event in ended] == ["alice"]
    theirs.close()


def test_sessions_are_found_by_address_and_counted_once_logged_in(
    table: Table,
) -> None:
    first, first_end = table.sessions.open("127.0.0.1", 50006, lambda _s: None)
    second, second_end = table.sessions.open("127.0.0.2", 50007, lambda _s: None)
    second.user = "bob"

    assert table.sessions.from_source("127.0.0.1") == [first]
    assert table.sessions.logged_in() == 1
    assert len(table.sessions) == 2
    assert table.sessions[second.connection_id] is second
    first_end.close()
    second_end.close()


class Clock:
    """time.monotonic for the session table and its timers, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    made = Clock()
    monkeypatch.setattr("time.monotonic", made)
    return made


def _logged_in(table: Table, port: int, user: str = "alice") -> Session:
    session, theirs = table.sessions.open("127.0.0.1", port, lambda _s: None)
    theirs.close()
    session.user = user
    session.last_active = time.monotonic()
    return session


def test_activity_pushes_the_idle_timeout_back(table: Table, clock: Clock) -> None:
    session = _logged_in(table, 50010)
    table.sessions.enforce_idle_timeout(session, 10)

    clock.now += 6
    session.take_transfer(ipc.TransferNotice(0, 0, {}, client_packets=3))
    clock.now += 5  # 11 s after login, 5 s after the last packet
    table.timers.run_due()
    ending_while_active = session.ending
    clock.now += 5  # 10 s after the last packet
    table.timers.run_due()

    assert ending_while_active is None
    assert session.ending == "idle for 10 seconds"


def test_counters_that_did_not_grow_are_no_activity(table: Table, clock: Clock) -> None:
    session = _logged_in(table, 50011)
    session.take_transfer(ipc.TransferNotice(5, 0, {}, client_packets=2))
    since = session.last_active

    clock.now += 30
    session.take_transfer(ipc.TransferNotice(5, 0, {}, client_packets=2))

    assert session.last_active == since


def test_end_idle_ends_only_logged_in_sessions_idle_that_long(
    table: Table, clock: Clock
) -> None:
    idle = _logged_in(table, 50012)
    clock.now += 10
    busy = _logged_in(table, 50013, "bob")
    not_logged_in, theirs = table.sessions.open("127.0.0.1", 50014, lambda _s: None)
    theirs.close()
    clock.now += 4

    ended = table.sessions.end_idle(5, "server shutting down")

    assert ended == 1
    assert idle.ending == "server shutting down"
    assert (busy.ending, not_logged_in.ending) == (None, None)
