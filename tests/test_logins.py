"""The login decision without a server: reasons, delays and replies.

Key lines here are compared as the supervisor compares them (type and key
data), so their key data need not decode to a real key.

The supervisor's side against real workers and impostors is tested in
test_supervisor_trust.py and test_server.py; these tests pin down the
pure parts that decide what the audit log and the client see.
"""

from __future__ import annotations

import ipaddress

import pytest

from sftpjail import ipc
from sftpjail.config import Limits
from sftpjail.logins import failure_delay, refusal_reason, refusal_reply
from sftpjail.passwords import hash_password
from sftpjail.users import User

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGFsaWNlJ3Mga2V5"
OTHER_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIG1hbGxvcnk"
PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="module")
def alice() -> User:
    return User("alice", hash_password(PASSWORD), (KEY + " laptop",), "alice")


def _ask(method: str, credential: str, user: str = "alice") -> ipc.AuthRequest:
    return ipc.AuthRequest(user, method, credential)


def test_the_right_password_or_key_is_no_refusal(alice: User) -> None:
    assert refusal_reason(alice, _ask("password", PASSWORD), "127.0.0.1") is None
    assert refusal_reason(alice, _ask("publickey", KEY), "127.0.0.1") is None


def test_a_key_is_the_same_whatever_its_comment(alice: User) -> None:
    offered = KEY + " another comment"

    assert refusal_reason(alice, _ask("publickey", offered), "127.0.0.1") is None


@pytest.mark.parametrize(
    ("method", "credential", "reason"),
    [
        ("password", "a guess", "wrong password"),
        ("publickey", OTHER_KEY, "unknown key"),
        ("publickey", "not a key line", "unknown key"),
    ],
)
def test_a_wrong_credential_says_which(
    alice: User, method: str, credential: str, reason: str
) -> None:
    assert refusal_reason(alice, _ask(method, credential), "127.0.0.1") == reason


def test_an_unknown_user_is_named_as_such() -> None:
    request = _ask("password", PASSWORD, user="mallory")

    assert refusal_reason(None, request, "127.0.0.1") == "unknown user"


def test_a_good_credential_still_meets_the_account_rules() -> None:
    office = ipaddress.ip_network("10.20.0.0/16")
    user = User("bob", None, (KEY,), "bob", allowed_networks=(office,))

    inside = refusal_reason(user, _ask("publickey", KEY, "bob"), "10.20.1.2")
    outside = refusal_reason(user, _ask("publickey", KEY, "bob"), "127.0.0.1")

    assert inside is None
    assert outside is not None


def test_a_wrong_credential_is_judged_before_the_account_rules() -> None:
    disabled = User("carol", None, (KEY,), "carol", disabled=True)

    wrong = refusal_reason(disabled, _ask("publickey", OTHER_KEY, "carol"), "::1")
    right = refusal_reason(disabled, _ask("publickey", KEY, "carol"), "::1")

    assert wrong == "unknown key"
    assert right == "user disabled"


def test_password_failures_wait_longer_each_time_up_to_a_cap() -> None:
    limits = Limits(auth_failure_delay=0.5)

    delays = [failure_delay("password", failures, limits) for failures in range(1, 8)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]


def test_a_refused_key_is_answered_at_once() -> None:
    limits = Limits(auth_failure_delay=0.5)

    assert failure_delay("publickey", 5, limits) == 0.0


def test_every_refusal_looks_the_same_but_for_disconnect() -> None:
    assert refusal_reply(disconnect=False) == {
        "type": "auth_reply",
        "ok": False,
        "home": None,
        "read_only": False,
        "disconnect": False,
    }
    assert refusal_reply(disconnect=True)["disconnect"] is True
