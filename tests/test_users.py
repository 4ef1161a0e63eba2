"""Tests for sftpjail.users: real files, real tomlkit, real key parsing."""

from __future__ import annotations

import fcntl
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
from sftpjail.users import User, UsersFile

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
