"""Per-user login restrictions against a real server and the real client.

Every refusal must look exactly like a wrong key to the client, while the
audit log tells the operator the real reason.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from operationslab import set_user_fields
from serverlab import ServerLab
from sftpjail import ipc
from sftpjail.logins import grant_reply
from sftpjail.users import READ_PERMISSIONS, User


def _denial(stderr: str) -> str:
    """The client's last complaint, without the host-specific tail."""

    return stderr.strip().splitlines()[-1].split(" (")[0]


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"disabled": True}, "user disabled"),
        ({"expires": datetime.date(2020, 1, 31)}, "user expired"),
        (
            {"expires": datetime.datetime(2020, 1, 31, 8, 0, tzinfo=datetime.UTC)},
            "user expired",
        ),
        ({"allowed_networks": ["10.0.0.0/8"]}, "source address not allowed"),
    ],
)
def test_refused_login_looks_like_a_wrong_key(
    lab: ServerLab, fields: dict[str, object], reason: str
) -> None:
    alice = lab.add_user("alice")
    stranger = lab.client_key("stranger")
    set_user_fields(lab, "alice", **fields)
    lab.start()

    refused = lab.sftp("alice", "pwd\n", key=alice)
    wrong_key = lab.sftp("alice", "pwd\n", key=stranger)

    assert refused.returncode != 0
    assert "Permission denied" in refused.stderr
    assert _denial(refused.stderr) == _denial(wrong_key.stderr)
    reasons = [event["reason"] for event in lab.audit_events("auth.failure")]
    assert reason in reasons
    assert "unknown key" in reasons
    assert lab.audit_events("auth.success") == []


def test_allowed_networks_that_include_the_client_let_it_in(lab: ServerLab) -> None:
    alice = lab.add_user("alice")
    set_user_fields(
        lab,
        "alice",
        allowed_networks=["10.0.0.0/8", "127.0.0.1/32"],
        expires=datetime.date(2999, 1, 1),
    )
    lab.start()

    result = lab.sftp("alice", "pwd\n", key=alice)

    assert result.returncode == 0, result.stderr
    assert [event["user"] for event in lab.audit_events("auth.success")] == ["alice"]


def test_refused_password_login_gives_the_reason_only_to_the_audit(
    lab: ServerLab,
) -> None:
    lab.add_user("alice", password="right horse")
    set_user_fields(lab, "alice", disabled=True)
    lab.start()

    right = lab.sftp("alice", "pwd\n", password="right horse")
    wrong = lab.sftp("alice", "pwd\n", password="wrong horse")

    assert right.returncode != 0 and wrong.returncode != 0
    assert _denial(right.stderr) == _denial(wrong.stderr)
    reasons = [event["reason"] for event in lab.audit_events("auth.failure")]
    assert set(reasons) == {"user disabled", "wrong password"}
    everything = lab.stdout_path.read_text() + "\n".join(lab.stderr_lines)  # type: ignore[union-attr]
    assert "right horse" not in everything


def test_the_grant_carries_permissions_and_quotas() -> None:
    user = User(
        "alice",
        None,
        (),
        "alice",
        permissions={"/": READ_PERMISSIONS, "/in": frozenset({"upload", "mkdir"})},
        quota_bytes=1000,
        quota_files=10,
    )

    reply = grant_reply(Path("/srv/data/alice"), user)

    assert json.loads(ipc.encode(reply)) == {
        "type": "auth_reply",
        "ok": True,
        "home": "/srv/data/alice",
        "read_only": False,
        "permissions": {"/": ["download", "list"], "/in": ["mkdir", "upload"]},
        "quota_bytes": 1000,
        "quota_files": 10,
        "disconnect": False,
    }


def test_the_grant_of_a_read_only_user_has_no_write_permission() -> None:
    user = User("viewer", None, (), "viewer", read_only=True)

    reply = grant_reply(Path("/srv/data/viewer"), user)

    assert reply["permissions"] == {"/": ["download", "list"]}
    assert reply["quota_bytes"] is None and reply["quota_files"] is None
