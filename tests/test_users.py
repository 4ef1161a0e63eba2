"""Tests for sftpjail.users: real files, real tomlkit, real key parsing."""

from __future__ import annotations

import datetime
import fcntl
import ipaddress
import logging
import os
import re
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import asyncssh
import pytest

import sftpjail
from sftpjail.errors import UnknownUserError, UserExistsError, UsersFileError
from sftpjail.passwords import hash_password
from sftpjail.users import (
    ALL_PERMISSIONS,
    READ_PERMISSIONS,
    User,
    UsersFile,
    login_refusal,
)

# Made once: hashing is deliberately slow.
PASSWORD_HASH = hash_password("hunter2")


def _public_key(comment: str = "") -> str:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment or None)
    return key.export_public_key("openssh").decode().strip()


def _fingerprint(line: str) -> str:
    return asyncssh.import_public_key(line).get_fingerprint("sha256")


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _user(name: str, **fields: object) -> User:
    values: dict[str, object] = {
        "password_hash": None,
        "authorized_keys": (),
        "home": name,
    }
    values.update(fields)
    return User(name=name, **values)  # type: ignore[arg-type]


def _networks(*texts: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(text) for text in texts)


@pytest.fixture
def users_path(tmp_path: Path) -> Path:
    return tmp_path / "users.toml"


# -- load --------------------------------------------------------------


def test_missing_file_holds_no_users(users_path: Path) -> None:
    assert UsersFile(users_path).load() == {}


def test_unreadable_file_is_an_error(users_path: Path) -> None:
    users_path.mkdir()

    with pytest.raises(UsersFileError, match="cannot read users file"):
        UsersFile(users_path).load()


def test_file_that_is_not_utf8_is_an_error(users_path: Path) -> None:
    users_path.write_bytes(b'[users.alice]\nhome = "\xff"\n')

    with pytest.raises(UsersFileError, match="not UTF-8"):
        UsersFile(users_path).load()


def test_load_reads_every_field(users_path: Path) -> None:
    key = _public_key("alice@laptop")
    _write(
        users_path,
        f"""\
        [users.alice]
        password_hash = "{PASSWORD_HASH}"
        authorized_keys = ["  {key}  "]
        home = "team/alice"
        read_only = true

        [users.bob]
        """,
    )

    users = UsersFile(users_path).load()

    assert users["alice"] == User(
        name="alice",
        password_hash=PASSWORD_HASH,
        authorized_keys=(key,),
        home="team/alice",
        read_only=True,
    )
    assert users["bob"] == _user("bob")


def test_repr_of_a_user_hides_the_hash() -> None:
    user = _user("alice", password_hash=PASSWORD_HASH)

    assert PASSWORD_HASH not in repr(user)


def test_same_table_twice_is_rejected(users_path: Path) -> None:
    _write(
        users_path,
        """\
        [users.alice]
        home = "a"
        [users.alice]
        home = "b"
        """,
    )

    with pytest.raises(UsersFileError, match=r"not valid TOML.*'alice'"):
        UsersFile(users_path).load()


def test_two_users_with_one_home_are_rejected(users_path: Path) -> None:
    _write(
        users_path,
        """\
        [users.alice]
        home = "shared"
        [users.bob]
        home = "shared"
        """,
    )

    with pytest.raises(
        UsersFileError, match='users "alice" and "bob" have the same home "shared"'
    ):
        UsersFile(users_path).load()


def test_a_home_that_is_another_users_default_is_rejected(users_path: Path) -> None:
    _write(users_path, '[users.alice]\n[users.bob]\nhome = "alice"\n')

    with pytest.raises(UsersFileError, match='"alice" and "bob" have the same'):
        UsersFile(users_path).load()


def test_bad_key_is_rejected_naming_user_and_entry(users_path: Path) -> None:
    good = _public_key()
    _write(
        users_path,
        f"""\
        [users.alice]
        authorized_keys = ["{good}", "ssh-ed25519 AAAAnotakey"]
        """,
    )

    with pytest.raises(
        UsersFileError,
        match='user "alice": authorized_keys entry 2 is not an OpenSSH public key',
    ):
        UsersFile(users_path).load()


def test_same_key_twice_is_rejected(users_path: Path) -> None:
    key = _public_key("one")
    again = key.rsplit(" ", 1)[0] + " another comment"
    _write(users_path, f'[users.alice]\nauthorized_keys = ["{key}", "{again}"]\n')

    with pytest.raises(UsersFileError, match="entry 2 repeats entry 1"):
        UsersFile(users_path).load()


@pytest.mark.parametrize(
    "bad_hash",
    [
        "$argon2i$v=19$m=65536,t=3,p=4$c29tZXNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaA",
        "$1$saltsalt$0123456789abcdefghijkl",
        "hunter2",
        "",
    ],
)
def test_bad_hash_is_rejected_without_showing_it(
    users_path: Path, bad_hash: str
) -> None:
    _write(users_path, f'[users.alice]\npassword_hash = "{bad_hash}"\n')

    with pytest.raises(UsersFileError) as caught:
        UsersFile(users_path).load()

    message = str(caught.value)
    assert 'user "alice": password_hash is neither an argon2id nor a bcrypt' in message
    assert not bad_hash or bad_hash not in message


@pytest.mark.parametrize(
    "name", ["Alice", "1alice", "a" * 33, "al ice", "", "-alice", "al/ice"]
)
def test_bad_user_names_are_rejected(users_path: Path, name: str) -> None:
    _write(users_path, f'[users."{name}"]\n')

    with pytest.raises(UsersFileError, match="is not a valid user name"):
        UsersFile(users_path).load()


@pytest.mark.parametrize("name", ["a", "_svc", "alice.smith", "bob-2", "x" * 32])
def test_good_user_names_are_accepted(users_path: Path, name: str) -> None:
    _write(users_path, f'[users."{name}"]\n')

    assert list(UsersFile(users_path).load()) == [name]


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('home = "/srv/alice"', "must be relative"),
        ('home = "../etc"', 'must not contain ".."'),
        ('home = "a/./b"', 'write it as "a/b"'),
        ("home = 5", "home must be a string"),
        ('read_only = "yes"', "read_only must be true or false"),
        ('authorized_keys = "ssh-ed25519 AAAA"', "must be a list"),
        ("password_hash = 1", "password_hash must be a string"),
    ],
)
def test_bad_fields_are_rejected(users_path: Path, line: str, problem: str) -> None:
    _write(users_path, f"[users.alice]\n{line}\n")

    with pytest.raises(UsersFileError, match='user "alice"') as caught:
        UsersFile(users_path).load()
    assert problem in str(caught.value)


def test_dotted_user_name_without_quotes_gets_a_hint(users_path: Path) -> None:
    _write(users_path, '[users.john.doe]\nhome = "john"\n')

    with pytest.raises(UsersFileError, match=r'quote it: \[users\."john\.doe"\]'):
        UsersFile(users_path).load()


def test_unknown_keys_are_kept_with_a_warning(
    users_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _write(users_path, "[users.alice]\nquota = 5\n")

    with caplog.at_level(logging.WARNING, logger="sftpjail.users"):
        users = UsersFile(users_path).load()

    assert users["alice"] == _user("alice")
    assert 'user "alice": unknown key "quota" is ignored' in caplog.text


# -- edits -------------------------------------------------------------

COMMENTED = """\
# Users of the test server.  This comment must survive every edit.
[users.alice]
home = "alice"      # where her files live
quota = "10G"       # a key from a newer version
read_only = false
"""


def test_edits_keep_comments_and_unknown_keys(users_path: Path) -> None:
    users_path.write_text(COMMENTED)
    users_file = UsersFile(users_path)
    bob_key = _public_key("bob@desk")
    alice_key = _public_key("alice@laptop")

    users_file.add(_user("bob", authorized_keys=(bob_key,), read_only=True))
    users_file.set_password("alice", PASSWORD_HASH)
    users_file.add_key("alice", alice_key)
    users_file.add_key("alice", _public_key("spare"))
    users_file.remove_key("alice", _fingerprint(alice_key))

    text = users_path.read_text()
    assert "# Users of the test server.  This comment must survive" in text
    assert "# where her files live" in text
    assert 'quota = "10G"       # a key from a newer version' in text
    users = users_file.load()
    assert users["bob"] == _user("bob", authorized_keys=(bob_key,), read_only=True)
    assert users["alice"].password_hash == PASSWORD_HASH
    assert len(users["alice"].authorized_keys) == 1


def test_a_new_file_is_created_private(users_path: Path) -> None:
    UsersFile(users_path).add(_user("alice"))

    assert stat.S_IMODE(users_path.stat().st_mode) == 0o600
    assert sorted(os.listdir(users_path.parent)) == ["users.toml", "users.toml.lock"]


def test_an_existing_file_keeps_its_mode(users_path: Path) -> None:
    users_path.write_text("")
    users_path.chmod(0o640)

    UsersFile(users_path).add(_user("alice"))

    assert stat.S_IMODE(users_path.stat().st_mode) == 0o640


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_an_existing_file_keeps_its_owner(users_path: Path) -> None:
    users_path.write_text("")
    os.chown(users_path, 65534, 65534)

    UsersFile(users_path).add(_user("alice"))

    assert (users_path.stat().st_uid, users_path.stat().st_gid) == (65534, 65534)


def test_adding_an_existing_user_changes_nothing(users_path: Path) -> None:
    users_path.write_text(COMMENTED)
    before = users_path.read_bytes()

    with pytest.raises(UserExistsError, match='user "alice" already exists'):
        UsersFile(users_path).add(_user("alice", home="elsewhere"))

    assert users_path.read_bytes() == before


def test_an_edit_that_would_break_the_file_is_not_written(users_path: Path) -> None:
    users_path.write_text(COMMENTED)
    before = users_path.read_bytes()

    with pytest.raises(UsersFileError, match="same home"):
        UsersFile(users_path).add(_user("bob", home="alice"))
    with pytest.raises(UsersFileError, match="neither an argon2id"):
        UsersFile(users_path).set_password("alice", "$1$not$supported")

    assert users_path.read_bytes() == before


def test_adding_a_user_with_a_bad_key_names_the_entry(users_path: Path) -> None:
    with pytest.raises(UsersFileError, match="authorized_keys entry 1 is not"):
        UsersFile(users_path).add(_user("alice", authorized_keys=("nonsense",)))

    assert not users_path.exists()


def test_added_keys_are_normalized(users_path: Path) -> None:
    key_type, key_data = _public_key().split()
    messy = f"  {key_type}   {key_data}\tme@there  "

    UsersFile(users_path).add(_user("alice", authorized_keys=(messy,)))

    expected = f"{key_type} {key_data} me@there"
    assert UsersFile(users_path).load()["alice"].authorized_keys == (expected,)


def test_remove_returns_the_user_and_forgets_them(users_path: Path) -> None:
    users_path.write_text(COMMENTED)
    users_file = UsersFile(users_path)

    removed = users_file.remove("alice")

    assert removed == _user("alice")
    assert users_file.load() == {}
    assert "This comment must survive" in users_path.read_text()


def test_edits_of_an_unknown_user_fail(users_path: Path) -> None:
    users_path.write_text(COMMENTED)
    users_file = UsersFile(users_path)

    with pytest.raises(UnknownUserError, match='no user "carol"'):
        users_file.remove("carol")
    with pytest.raises(UnknownUserError):
        users_file.set_password("carol", PASSWORD_HASH)
    with pytest.raises(UnknownUserError):
        users_file.add_key("carol", _public_key())
    with pytest.raises(UnknownUserError):
        users_file.get("carol")


def test_set_password_none_removes_the_hash(users_path: Path) -> None:
    users_file = UsersFile(users_path)
    users_file.add(_user("alice", password_hash=PASSWORD_HASH))

    users_file.set_password("alice", None)

    assert users_file.get("alice").password_hash is None
    assert "password_hash" not in users_path.read_text()


def test_the_same_key_cannot_be_added_twice(users_path: Path) -> None:
    key = _public_key("first")
    users_file = UsersFile(users_path)
    users_file.add(_user("alice", authorized_keys=(key,)))
    same_key_other_comment = key.rsplit(" ", 1)[0] + " second"

    with pytest.raises(
        UsersFileError, match=re.escape(f"already has key {_fingerprint(key)}")
    ):
        users_file.add_key("alice", same_key_other_comment)


def test_a_bad_key_cannot_be_added(users_path: Path) -> None:
    users_file = UsersFile(users_path)
    users_file.add(_user("alice"))

    with pytest.raises(UsersFileError, match='new key for user "alice" is not'):
        users_file.add_key("alice", "ssh-ed25519 AAAAC3Nz")


def test_remove_key_by_full_line_ignores_the_comment(users_path: Path) -> None:
    key = _public_key("laptop")
    keep = _public_key("desktop")
    users_file = UsersFile(users_path)
    users_file.add(_user("alice", authorized_keys=(key, keep)))

    removed = users_file.remove_key("alice", key.rsplit(" ", 1)[0])

    assert removed == key
    assert users_file.get("alice").authorized_keys == (keep,)


def test_remove_key_that_is_not_there_fails(users_path: Path) -> None:
    users_file = UsersFile(users_path)
    users_file.add(_user("alice", authorized_keys=(_public_key(),)))
    other = _public_key()

    with pytest.raises(
        UsersFileError, match=re.escape(f"no key matching {_fingerprint(other)}")
    ):
        users_file.remove_key("alice", other)
    with pytest.raises(UsersFileError, match=r"SHA256:\.\.\. fingerprint"):
        users_file.remove_key("alice", "not a key")


def test_a_symlinked_users_file_is_not_replaced(tmp_path: Path) -> None:
    target = tmp_path / "real.toml"
    target.write_text("")
    link = tmp_path / "users.toml"
    link.symlink_to(target)

    with pytest.raises(UsersFileError, match="is a symbolic link"):
        UsersFile(link).add(_user("alice"))

    assert link.is_symlink()


def test_a_missing_directory_is_named(tmp_path: Path) -> None:
    users_path = tmp_path / "no-such-dir" / "users.toml"

    with pytest.raises(UsersFileError, match="no-such-dir does not exist"):
        UsersFile(users_path).add(_user("alice"))


def test_an_edit_waits_for_the_lock_then_gives_up(users_path: Path) -> None:
    users_path.write_text(COMMENTED)
    before = users_path.read_bytes()

    with open(users_path.with_name("users.toml.lock"), "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)
        started = time.monotonic()
        with pytest.raises(UsersFileError, match="being edited by another process"):
            UsersFile(users_path, lock_timeout=0.3).add(_user("bob"))
        waited = time.monotonic() - started

    assert waited >= 0.3
    assert users_path.read_bytes() == before


# Each child waits for the go file so that all of them edit at once.
_ADD_USERS = """
import sys, time
from pathlib import Path
from sftpjail.users import User, UsersFile

path, prefix, go = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[4])
count = int(sys.argv[3])
deadline = time.monotonic() + 30
while not go.exists() and time.monotonic() < deadline:
    time.sleep(0.001)
users_file = UsersFile(path, lock_timeout=30)
for number in range(count):
    name = f"{prefix}{number}"
    users_file.add(User(name, None, (), name))
"""


def test_concurrent_edits_all_land(users_path: Path) -> None:
    users_path.write_text(COMMENTED)
    go = users_path.with_name("go")
    source_dir = str(Path(sftpjail.__file__).parents[1])
    environment = {**os.environ, "PYTHONPATH": source_dir}
    prefixes, per_process = ["p", "q", "r", "s"], 15

    children = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _ADD_USERS,
                str(users_path),
                prefix,
                str(per_process),
                str(go),
            ],
            env=environment,
        )
        for prefix in prefixes
    ]
    time.sleep(0.5)
    go.touch()
    codes = [child.wait(timeout=60) for child in children]

    assert codes == [0] * len(prefixes)
    names = set(UsersFile(users_path).load())
    expected = {f"{p}{n}" for p in prefixes for n in range(per_process)}
    assert names == expected | {"alice"}
    assert "This comment must survive" in users_path.read_text()


# -- login restrictions, permissions and quotas ---------------------------


def test_load_reads_the_restriction_fields(users_path: Path) -> None:
    _write(
        users_path,
        """\
        [users.alice]
        disabled = true
        expires = 2027-01-31
        allowed_networks = ["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]
        quota_bytes = 1073741824
        quota_files = 1000

        [users.alice.permissions]
        "/" = ["list", "download"]
        "/incoming" = ["list", "upload", "mkdir"]

        [users.bob]
        expires = 2027-01-31T18:30:00+02:00
        """,
    )

    users = UsersFile(users_path).load()

    alice = users["alice"]
    assert alice.disabled is True
    assert alice.expires == datetime.date(2027, 1, 31)
    assert [str(network) for network in alice.allowed_networks] == [
        "192.0.2.0/24",
        "2001:db8::/32",
        "198.51.100.7/32",
    ]
    assert alice.quota_bytes == 1073741824
    assert alice.quota_files == 1000
    assert dict(alice.permissions) == {
        "/": frozenset({"list", "download"}),
        "/incoming": frozenset({"list", "upload", "mkdir"}),
    }
    assert users["bob"].expires_at == datetime.datetime(
        2027, 1, 31, 16, 30, tzinfo=datetime.UTC
    )


def test_permissions_default_to_everything_or_to_reading(users_path: Path) -> None:
    _write(users_path, "[users.alice]\n[users.viewer]\nread_only = true\n")

    users = UsersFile(users_path).load()

    assert dict(users["alice"].permissions) == {"/": ALL_PERMISSIONS}
    assert dict(users["viewer"].permissions) == {"/": READ_PERMISSIONS}
    assert users["alice"].disabled is False
    assert users["alice"].expires is None
    assert users["alice"].allowed_networks == ()
    assert users["alice"].quota_bytes is None


def test_read_only_wins_over_write_permissions(users_path: Path) -> None:
    _write(
        users_path,
        """\
        [users.viewer]
        read_only = true
        [users.viewer.permissions]
        "/" = ["list", "download", "upload", "delete"]
        "/drop" = ["upload"]
        """,
    )

    viewer = UsersFile(users_path).load()["viewer"]

    assert dict(viewer.permissions) == {
        "/": frozenset({"list", "download"}),
        "/drop": frozenset(),
    }


@pytest.mark.parametrize(
    ("lines", "problem"),
    [
        ('disabled = "no"', "disabled must be true or false"),
        ('expires = "2027-01-31"', "expires must be a TOML date"),
        ("expires = 10:00:00", "expires must be a TOML date"),
        ('allowed_networks = "10.0.0.0/8"', "allowed_networks must be a list"),
        (
            'allowed_networks = ["10.0.0.1/8"]',
            "allowed_networks entry 1 '10.0.0.1/8' is not a network",
        ),
        ('allowed_networks = ["anywhere"]', "entry 1 'anywhere' is not a network"),
        ("allowed_networks = [10]", "allowed_networks entry 1 must be a string"),
        ("quota_bytes = 0", "quota_bytes must be a whole number greater than zero"),
        ("quota_files = -1", "quota_files must be a whole number greater than zero"),
        ("quota_bytes = 1.5", "quota_bytes must be a whole number"),
        ("quota_files = true", "quota_files must be a whole number"),
        ('permissions = ["list"]', "permissions must be a table of directories"),
        ('[users.alice.permissions]\n"/x" = ["list"]', 'must include "/"'),
        (
            '[users.alice.permissions]\n"/" = ["list", "execute"]',
            'unknown permission "execute"; known: list, download, upload',
        ),
        ('[users.alice.permissions]\n"/" = "list"', "must be a list of permission"),
        (
            '[users.alice.permissions]\n"/" = []\n"incoming" = []',
            'directory "incoming" must be absolute',
        ),
        (
            '[users.alice.permissions]\n"/" = []\n"/a/../b" = []',
            'directory "/a/../b" must not contain ".."',
        ),
        (
            '[users.alice.permissions]\n"/" = []\n"/in/" = []',
            'directory "/in/" is not in normal form; write it as "/in"',
        ),
        (
            '[users.alice.permissions]\n"/" = []\n"//in" = []',
            'write it as "/in"',
        ),
        (
            '[users.alice.permissions]\n"/" = []\n"/a\\u0000b" = []',
            "contains a NUL or control character",
        ),
    ],
)
def test_bad_restriction_fields_are_rejected(
    users_path: Path, lines: str, problem: str
) -> None:
    _write(users_path, f"[users.alice]\n{lines}\n")

    with pytest.raises(UsersFileError, match='user "alice"') as caught:
        UsersFile(users_path).load()
    assert problem in str(caught.value)


NOW = datetime.datetime(2027, 1, 31, 12, 0, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("fields", "source", "reason"),
    [
        ({}, "127.0.0.1", None),
        ({"disabled": True}, "127.0.0.1", "user disabled"),
        ({"expires": datetime.date(2027, 2, 1)}, "127.0.0.1", None),
        ({"expires": datetime.date(2027, 1, 31)}, "127.0.0.1", "user expired"),
        ({"expires": datetime.datetime(2027, 1, 31, 12, 1)}, "127.0.0.1", None),
        (
            {"expires": datetime.datetime(2027, 1, 31, 11, 59)},
            "127.0.0.1",
            "user expired",
        ),
        ({"allowed_networks": _networks("127.0.0.1/32")}, "127.0.0.1", None),
        (
            {"allowed_networks": _networks("10.0.0.0/8")},
            "127.0.0.1",
            "source address not allowed",
        ),
        ({"allowed_networks": _networks("10.0.0.0/8", "::1/128")}, "::1", None),
        ({"allowed_networks": _networks("127.0.0.0/8")}, "::ffff:127.0.0.2", None),
        (
            {"allowed_networks": _networks("127.0.0.0/8")},
            "not an address",
            "source address not allowed",
        ),
    ],
)
def test_login_refusal_gives_the_real_reason(
    fields: dict[str, object], source: str, reason: str | None
) -> None:
    assert login_refusal(_user("alice", **fields), source, NOW) == reason


def test_added_user_keeps_every_new_field(users_path: Path) -> None:
    users_path.write_text(COMMENTED)
    carol = _user(
        "carol",
        disabled=True,
        expires=datetime.date(2027, 1, 31),
        allowed_networks=_networks("192.0.2.0/24"),
        permissions={"/": READ_PERMISSIONS, "/in box": frozenset({"upload"})},
        quota_bytes=5000,
        quota_files=7,
    )

    UsersFile(users_path).add(carol)
    UsersFile(users_path).add(_user("dave"))

    text = users_path.read_text()
    assert "# where her files live" in text
    assert '"/in box" = ["upload"]' in text
    assert '"/" = ["list", "download"]' in text
    assert "expires = 2027-01-31" in text
    dave_table = text.split("[users.dave]")[1]
    assert "permissions" not in dave_table and "disabled" not in dave_table
    users = UsersFile(users_path).load()
    assert users["carol"] == carol
    assert users["dave"] == _user("dave")


def test_permissions_stay_small_enough_for_one_message(users_path: Path) -> None:
    entries = "".join(f'"/d{number}" = ["list"]\n' for number in range(32))
    _write(users_path, f'[users.alice.permissions]\n"/" = []\n{entries}')
    long_name = "/" + "x" * 255
    _write(
        users_path.with_name("long.toml"),
        f'[users.alice.permissions]\n"/" = []\n"{long_name}" = []\n',
    )

    with pytest.raises(UsersFileError, match="at most 32 directories"):
        UsersFile(users_path).load()
    with pytest.raises(UsersFileError, match="longer than 255 bytes"):
        UsersFile(users_path.with_name("long.toml")).load()


def test_disable_and_enable_keep_the_rest_of_the_file(users_path: Path) -> None:
    _write(
        users_path,
        """\
        # the drop box's users
        [users.alice]
        home = "alice"  # her own
        """,
    )
    users_file = UsersFile(users_path)

    users_file.set_disabled("alice", True)
    disabled = users_file.get("alice").disabled
    text_while_disabled = users_path.read_text()
    users_file.set_disabled("alice", False)

    assert disabled is True
    assert "disabled = true" in text_while_disabled
    assert users_file.get("alice").disabled is False
    assert "disabled" not in users_path.read_text()
    assert "# the drop box's users" in users_path.read_text()
    assert "# her own" in users_path.read_text()
    with pytest.raises(UnknownUserError):
        users_file.set_disabled("bob", True)
