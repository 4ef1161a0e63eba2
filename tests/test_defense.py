"""The brute-force defence: scoring and bans alone, then in a real server."""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import time
from pathlib import Path

import pytest

from operationslab import password_login
from serverlab import ServerLab
from sftpjail import defense
from sftpjail.config import DefenseSettings
from sftpjail.defense import BAN_LINE, Ban, Defense, MemoryBanStore

OPERATIONS_DOC = Path(__file__).resolve().parents[1] / "docs" / "operations.md"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _store(**settings: object) -> tuple[MemoryBanStore, Clock]:
    clock = Clock()
    values: dict[str, object] = {"max_failures": 3, "window": 60.0, "ban_time": 10.0}
    values.update(settings)
    return MemoryBanStore(DefenseSettings(**values), clock), clock  # type: ignore[arg-type]


def _fail(
    store: MemoryBanStore, source: str, times: int, user: str = "alice"
) -> list[Ban | None]:
    return [store.record_failure(source, user) for _ in range(times)]


# -- scoring -------------------------------------------------------------


def test_threshold_bans_and_the_ban_runs_out() -> None:
    store, clock = _store()

    results = _fail(store, "192.0.2.1", 3)

    assert results[:2] == [None, None]
    ban = results[2]
    assert ban is not None and ban.seconds == 10 and ban.failures == 3
    assert store.is_banned("192.0.2.1") == ban
    assert store.is_banned("192.0.2.2") is None
    clock.now += 9.9
    assert store.is_banned("192.0.2.1") is not None
    clock.now += 0.2
    assert store.is_banned("192.0.2.1") is None
    assert store.bans() == []


def test_failures_outside_the_window_do_not_count() -> None:
    store, clock = _store()

    _fail(store, "192.0.2.1", 2)
    clock.now += 61
    results = _fail(store, "192.0.2.1", 2)

    assert results == [None, None]
    assert store.is_banned("192.0.2.1") is None


def test_each_ban_doubles_up_to_the_maximum() -> None:
    store, clock = _store(max_ban_time=35.0)
    lengths = []

    for _ in range(4):
        ban = _fail(store, "192.0.2.1", 3)[-1]
        assert ban is not None
        lengths.append(ban.seconds)
        clock.now += ban.seconds + 1

    assert lengths == [10, 20, 35, 35]


def test_a_quiet_address_starts_afresh() -> None:
    store, clock = _store(max_ban_time=100.0)

    first = _fail(store, "192.0.2.1", 3)[-1]
    assert first is not None
    clock.now += first.seconds + 101
    again = _fail(store, "192.0.2.1", 3)[-1]

    assert again is not None and again.seconds == 10


def test_failures_while_banned_do_not_extend_the_ban() -> None:
    store, _clock = _store()

    ban = _fail(store, "192.0.2.1", 3)[-1]
    later = _fail(store, "192.0.2.1", 5)

    assert later == [None] * 5
    assert store.is_banned("192.0.2.1") == ban


def test_a_user_under_distributed_attack_bans_at_the_first_failure() -> None:
    store, _clock = _store(max_failures_per_user=4)

    for number in range(3):
        assert store.record_failure(f"198.51.100.{number}", "alice") is None
    ban = store.record_failure("198.51.100.3", "alice")
    other_user = store.record_failure("198.51.100.4", "bob")

    assert ban is not None and ban.source == "198.51.100.3"
    assert other_user is None


def test_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(defense, "MAX_TRACKED", 10)
    store, _clock = _store()

    for number in range(50):
        store.record_failure(f"203.0.113.{number}", f"user{number}")

    assert len(store._sources) == 10
    assert len(store._users) == 10
    assert "203.0.113.49" in store._sources


# -- the supervisor's front ------------------------------------------------


def _defense(**settings: object) -> Defense:
    values: dict[str, object] = {"max_failures": 2}
    values.update(settings)
    chosen = DefenseSettings(**values)  # type: ignore[arg-type]
    return Defense(chosen, MemoryBanStore(chosen))


def test_allowlisted_addresses_are_never_banned_or_capped() -> None:
    front = _defense(
        allowlist=(ipaddress.ip_network("192.0.2.0/24"),),
        max_unauthenticated_per_source=1,
    )

    for _ in range(5):
        assert front.record_failure("192.0.2.9", "alice") is None

    assert front.refusal("192.0.2.9", unauthenticated=10) is None
    assert front.refusal("198.51.100.1", unauthenticated=1) == (
        defense.TOO_MANY_UNAUTHENTICATED
    )


def test_banned_address_is_refused_and_the_ban_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    front = _defense()

    with caplog.at_level("WARNING", logger="sftpjail.defense"):
        front.record_failure("198.51.100.1", "alice")
        ban = front.record_failure("198.51.100.1", "alice")

    assert ban is not None
    assert front.refusal("198.51.100.1", unauthenticated=0) == defense.BANNED
    assert front.bans_total == 1
    assert caplog.messages == [
        "Banned 198.51.100.1 for 300 seconds after 2 failed logins."
    ]


def test_a_disabled_defence_does_nothing() -> None:
    front = _defense(enabled=False, max_unauthenticated_per_source=1)

    for _ in range(5):
        assert front.record_failure("198.51.100.1", "alice") is None
    assert front.refusal("198.51.100.1", unauthenticated=50) is None


# -- the fail2ban filter ---------------------------------------------------


def documented_failregex() -> re.Pattern[str]:
    """The failregex of docs/operations.md as a Python regex.

    fail2ban replaces `<HOST>` with its own host pattern; here it becomes a
    named group that accepts IPv4 and IPv6 addresses.
    """

    text = OPERATIONS_DOC.read_text()
    line = next(line for line in text.splitlines() if line.startswith("failregex = "))
    pattern = line.removeprefix("failregex = ").strip()
    return re.compile(pattern.replace("<HOST>", r"(?P<host>[0-9A-Fa-f.:]+)"))


@pytest.mark.parametrize("address", ["203.0.113.7", "2001:db8::7"])
def test_the_documented_failregex_matches_the_ban_line(address: str) -> None:
    line = "2026-01-31 12:00:00,123 sftpjail[812] WARNING " + BAN_LINE % (
        address,
        300,
        5,
    )

    found = documented_failregex().search(line)

    assert found is not None and found.group("host") == address
    assert documented_failregex().search(line.replace("Banned", "Unbanned")) is None


# -- a real server ---------------------------------------------------------


def _configure(lab: ServerLab, defense_lines: str) -> None:
    lab.extra_config = f"[defense]\n{defense_lines}\n"
    lab.write_config(limits="auth_failure_delay = 0.05")


def _first_bytes(lab: ServerLab, source: str) -> bytes:
    """What the server sends first to a plain TCP client from `source`."""

    with socket.create_connection(
        ("127.0.0.1", lab.port), timeout=10, source_address=(source, 0)
    ) as client:
        try:
            return client.recv(64)
        except ConnectionResetError:
            return b""


def test_guessing_address_is_banned_then_let_back_in(lab: ServerLab) -> None:
    _configure(lab, "max_failures = 3\nban_time = 3\nmax_ban_time = 10")
    lab.add_user("alice", password="right")
    lab.start()

    guesses = [asyncio.run(password_login(lab, "wrong", "127.0.0.2")) for _ in range(3)]
    refused_first = _first_bytes(lab, "127.0.0.2")
    other_address = asyncio.run(password_login(lab, "right", "127.0.0.1"))
    while_banned = asyncio.run(password_login(lab, "right", "127.0.0.2"))

    assert guesses[:2] == ["denied", "denied"]
    assert refused_first == b""
    assert _first_bytes(lab, "127.0.0.1").startswith(b"SSH-2.0-")
    assert other_address == "ok"
    assert while_banned != "ok"

    line = lab.wait_for_log("Banned 127.0.0.2 for 3 seconds after 3 failed logins.", 5)
    found = documented_failregex().search(line)
    assert found is not None and found.group("host") == "127.0.0.2"
    banned = lab.audit_events("defense.banned")
    assert [(event["peer"], event["seconds"]) for event in banned] == [("127.0.0.2", 3)]
    refusals = lab.audit_events("connection.refused")
    assert {event["reason"] for event in refusals} == {"banned"}
    assert all(event["peer"] == "127.0.0.2" for event in refusals)

    deadline = time.monotonic() + 10
    after_ban = "not tried"
    while time.monotonic() < deadline:
        after_ban = asyncio.run(password_login(lab, "right", "127.0.0.2"))
        if after_ban == "ok":
            break
        time.sleep(0.5)
    assert after_ban == "ok"


def test_allowlisted_address_is_never_banned(lab: ServerLab) -> None:
    _configure(lab, 'max_failures = 2\nallowlist = ["127.0.0.3/32"]')
    lab.add_user("alice", password="right")
    lab.start()

    guesses = [asyncio.run(password_login(lab, "wrong", "127.0.0.3")) for _ in range(4)]

    assert guesses == ["denied"] * 4
    assert _first_bytes(lab, "127.0.0.3").startswith(b"SSH-2.0-")
    assert asyncio.run(password_login(lab, "right", "127.0.0.3")) == "ok"
    assert lab.audit_events("defense.banned") == []
    assert len(lab.audit_events("auth.failure")) == 4


def test_unauthenticated_connections_per_source_are_capped(lab: ServerLab) -> None:
    _configure(lab, "max_unauthenticated_per_source = 2")
    lab.add_user("alice", password="right")
    lab.start()
    waiting = [
        socket.create_connection(
            ("127.0.0.1", lab.port), timeout=10, source_address=("127.0.0.4", 0)
        )
        for _ in range(2)
    ]
    try:
        for client in waiting:
            assert client.recv(8).startswith(b"SSH-")

        third = _first_bytes(lab, "127.0.0.4")
        elsewhere = _first_bytes(lab, "127.0.0.5")
    finally:
        for client in waiting:
            client.close()

    assert b"too many connections" in third
    assert elsewhere.startswith(b"SSH-2.0-")
    refusals = lab.audit_events("connection.refused")
    assert [event["reason"] for event in refusals] == [
        "too many unauthenticated connections"
    ]
