"""Live user changes: the watch, the reload triggers, and ended sessions."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import os
import select
import signal
from pathlib import Path

import asyncssh

from operationslab import (
    control,
    open_session,
    replace_users_text,
    run_cli,
    set_user_fields,
    wait_for_close,
    wait_until,
)
from serverlab import ServerLab
from sftpjail.reload import FileSignature, LiveSession, UsersWatch, sessions_to_end
from sftpjail.users import User

NOW = datetime.datetime(2027, 1, 31, 12, 0, tzinfo=datetime.UTC)


def _user(name: str, **fields: object) -> User:
    return User(name, None, (), name, **fields)  # type: ignore[arg-type]


# -- which sessions end ------------------------------------------------------


def test_sessions_to_end_names_each_reason() -> None:
    users = {
        "kept": _user("kept"),
        "off": _user("off", disabled=True),
        "old": _user("old", expires=datetime.date(2027, 1, 1)),
        "office": _user(
            "office", allowed_networks=(ipaddress.ip_network("192.0.2.0/24"),)
        ),
    }
    sessions = [
        LiveSession(1, "kept", "127.0.0.1"),
        LiveSession(2, "gone", "127.0.0.1"),
        LiveSession(3, "off", "127.0.0.1"),
        LiveSession(4, "old", "127.0.0.1"),
        LiveSession(5, "office", "127.0.0.1"),
        LiveSession(6, "office", "192.0.2.9"),
    ]

    ending = sessions_to_end(sessions, users, NOW)

    assert [(session.connection_id, reason) for session, reason in ending] == [
        (2, "user removed"),
        (3, "user disabled"),
        (4, "user expired"),
        (5, "source address not allowed"),
    ]


# -- noticing a change -------------------------------------------------------


def test_file_signature_changes_when_the_file_is_replaced(tmp_path: Path) -> None:
    users_file = tmp_path / "users.toml"

    assert FileSignature.of(users_file) is None
    users_file.write_text("[users.alice]\n")
    before = FileSignature.of(users_file)
    replacement = tmp_path / "new"
    replacement.write_text("[users.alice]\n")
    os.rename(replacement, users_file)

    assert before is not None
    assert FileSignature.of(users_file) not in (None, before)


def _events_within(watch: UsersWatch, timeout: float = 2.0) -> bool:
    ready, _, _ = select.select([watch.fileno()], [], [], timeout)
    return bool(ready) and watch.changed()


def test_watch_sees_a_rename_over_the_file_but_not_the_lock(tmp_path: Path) -> None:
    users_file = tmp_path / "users.toml"
    users_file.write_text("")
    watch = UsersWatch(users_file)
    try:
        (tmp_path / "users.toml.lock").write_text("")
        lock_only = _events_within(watch, 0.5)
        replacement = tmp_path / ".tmp-users"
        replacement.write_text("[users.bob]\n")
        renamed = _events_within(watch)
        os.rename(replacement, users_file)
        renamed = _events_within(watch) or renamed
    finally:
        watch.close()

    assert lock_only is False
    assert renamed is True


def test_watch_sees_a_kubernetes_style_link_swap(tmp_path: Path) -> None:
    (tmp_path / "..2027_01").mkdir()
    (tmp_path / "..2027_01" / "users.toml").write_text("")
    (tmp_path / "..data").symlink_to("..2027_01")
    (tmp_path / "users.toml").symlink_to("..data/users.toml")
    watch = UsersWatch(tmp_path / "users.toml")
    try:
        (tmp_path / "..2027_02").mkdir()
        (tmp_path / "..2027_02" / "users.toml").write_text("[users.bob]\n")
        (tmp_path / "..data_tmp").symlink_to("..2027_02")
        os.rename(tmp_path / "..data_tmp", tmp_path / "..data")
        swapped = _events_within(watch)
    finally:
        watch.close()

    assert swapped is True


# -- a running server ----------------------------------------------------------


def _login_works(lab: ServerLab, user: str) -> bool:
    result = lab.sftp(user, "pwd\n", key=lab.client_key(user))
    return result.returncode == 0


def test_user_added_with_the_cli_logs_in_at_once(lab: ServerLab) -> None:
    # No watch: only the CLI's request through the control socket can tell.
    lab.extra_config = "watch_users_file = false"
    lab.write_config()
    lab.add_user("alice")
    lab.start()
    bob = lab.client_key("bob")

    added = run_cli(
        "user", "add", "bob", "--key", bob.public_line, "--config", str(lab.config_file)
    )

    assert added.returncode == 0, added.stderr
    assert "note:" not in added.stderr
    lab.wait_for_log("Reading the users file again after a control request.", 5)
    lab.wait_for_log("Reloaded 2 users from", 5)
    assert _login_works(lab, "bob")


def test_user_added_by_renaming_a_new_file_logs_in_at_once(lab: ServerLab) -> None:
    lab.add_user("alice")
    lab.start()
    bob = lab.client_key("bob")
    (lab.data_dir / "bob").mkdir()
    os.chown(lab.data_dir / "bob", *_service_ids(lab))

    replace_users_text(
        lab,
        lab.users_file.read_text()
        + f'\n[users.bob]\nauthorized_keys = ["{bob.public_line}"]\n',
    )

    lab.wait_for_log("Reading the users file again after a change of the file.", 5)
    lab.wait_for_log("Reloaded 2 users from", 5)
    assert _login_works(lab, "bob")
    assert _login_works(lab, "alice")


def test_removed_user_is_disconnected_within_seconds(lab: ServerLab) -> None:
    alice = lab.add_user("alice")
    lab.add_user("bob")
    lab.start()
    session = open_session(lab, "alice", alice)
    try:
        removed = run_cli("user", "remove", "alice", "--config", str(lab.config_file))
        assert removed.returncode == 0, removed.stderr
        wait_for_close(lab, "alice", 6)
    finally:
        session.kill()
        assert session.stderr is not None
        stderr = session.stderr.read().decode(errors="replace")
        session.wait()

    # OpenSSH's client may exit on the channel's close before it prints the
    # disconnect reason; test_disabled_user_hears_why reads it reliably.
    assert "Connection closed" in stderr
    ended = lab.audit_events("session.ended")
    assert [(e["user"], e["reason"]) for e in ended] == [("alice", "user removed")]
    closed = [e for e in lab.audit_events("connection.closed") if e["user"] == "alice"]
    assert closed and closed[-1]["reason"] == "closed"
    assert not _login_works(lab, "alice")
    assert _login_works(lab, "bob")


def test_disabled_user_hears_why_and_stays_out(lab: ServerLab) -> None:
    alice = lab.add_user("alice")
    lab.start()

    async def session_until_ended() -> None:
        async with asyncssh.connect(
            "127.0.0.1",
            lab.port,
            username="alice",
            client_keys=[str(alice.private)],
            known_hosts=None,
        ) as connection:
            async with connection.start_sftp_client() as sftp:
                await sftp.listdir(".")
                set_user_fields(lab, "alice", disabled=True)
                await asyncio.wait_for(connection.wait_closed(), timeout=6)

    # asyncssh treats a disconnect "by application" as a normal close and
    # reports its reason only in its debug log.
    heard = _DisconnectReasons()
    asyncssh_logger = logging.getLogger("asyncssh")
    level = asyncssh_logger.level
    asyncssh_logger.addHandler(heard)
    asyncssh_logger.setLevel(logging.DEBUG)
    try:
        asyncio.run(session_until_ended())
    finally:
        asyncssh_logger.removeHandler(heard)
        asyncssh_logger.setLevel(level)

    assert heard.reasons == ["Session ended by the server: user disabled"]
    assert [e["reason"] for e in lab.audit_events("session.ended")] == ["user disabled"]
    assert not _login_works(lab, "alice")


def test_changed_key_applies_to_new_logins_only(lab: ServerLab, tmp_path: Path) -> None:
    alice = lab.add_user("alice")
    lab.start()
    session = open_session(lab, "alice", alice)
    other = lab.client_key("other")
    try:
        set_user_fields(lab, "alice", authorized_keys=[other.public_line])
        lab.wait_for_log("Reloaded 1 users from", 5)
        assert session.stdin is not None
        session.stdin.write(f"put {lab.config_file} still-here.toml\n".encode())
        session.stdin.flush()
        wait_until(
            lambda: (lab.data_dir / "alice" / "still-here.toml").exists(),
            10,
            "the upload through the old session",
        )
    finally:
        session.kill()
        session.wait()

    assert lab.audit_events("session.ended") == []
    assert lab.sftp("alice", "pwd\n", key=alice).returncode != 0
    assert lab.sftp("alice", "pwd\n", key=other).returncode == 0


def test_broken_users_file_is_refused_and_old_users_keep_working(
    lab: ServerLab,
) -> None:
    lab.add_user("alice")
    lab.start()
    good = lab.users_file.read_text()

    replace_users_text(lab, good + "\n[users.broken\n")

    line = lab.wait_for_log("Kept the previous users: the users file is invalid", 5)
    assert "is not valid TOML" in line
    assert _login_works(lab, "alice")
    assert lab.audit_events("session.ended") == []

    replace_users_text(lab, good.replace("[users.alice]", "[users.alice]\n"))
    lab.wait_for_log("Reloaded 1 users from", 5)


def test_sighup_reloads_the_users_file(lab: ServerLab) -> None:
    lab.extra_config = "watch_users_file = false"
    lab.write_config()
    lab.add_user("alice")
    lab.start()
    assert lab.process is not None

    lab.process.send_signal(signal.SIGHUP)

    lab.wait_for_log("Reading the users file again after SIGHUP.", 5)
    lab.wait_for_log("Reloaded 1 users from", 5)


class _DisconnectReasons(logging.Handler):
    """Collects the reasons of disconnect messages asyncssh receives."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.reasons: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Received disconnect: " in message:
            reason = message.split("Received disconnect: ", 1)[1]
            self.reasons.append(reason.rsplit(" (", 1)[0])


def _service_ids(lab: ServerLab) -> tuple[int, int]:
    home = lab.data_dir / "alice"
    status = home.stat()
    return status.st_uid, status.st_gid


def test_a_worker_that_ignores_the_end_is_killed(lab: ServerLab) -> None:
    alice = lab.add_user("alice")
    lab.start()
    session = open_session(lab, "alice", alice)
    (entry,) = control(lab, "status")["sessions"]
    try:
        # A stopped worker cannot act on the end message; only the
        # supervisor's SIGTERM and then SIGKILL (through its pidfd) can end it.
        os.kill(entry["pid"], signal.SIGSTOP)
        set_user_fields(lab, "alice", disabled=True)
        wait_for_close(lab, "alice", 10)
    finally:
        session.kill()
        session.wait()

    crashed = lab.audit_events("worker.crashed")
    assert [event["status"] for event in crashed] == ["SIGKILL"]
    assert [e["reason"] for e in lab.audit_events("session.ended")] == ["user disabled"]
