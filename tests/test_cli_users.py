"""Tests for `sftpjail user ...` and `sftpjail hash-password`.

Most run the real click group in-process; the prompt tests run the real
program on a pseudo-terminal, since prompting needs a terminal.
"""

from __future__ import annotations

import os
import pty
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest
from click.testing import CliRunner, Result

import sftpjail
from sftpjail.cli import cli
from sftpjail.passwords import verify_password
from sftpjail.users import UsersFile

PASSWORD = "correct horse battery staple"


def _public_key(comment: str) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519", comment=comment)
    return key.export_public_key("openssh").decode().strip()


def _fingerprint(line: str) -> str:
    return asyncssh.import_public_key(line).get_fingerprint("sha256")


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        """\
[server]
listen = ["127.0.0.1:2222"]
data_dir = "data"
state_dir = "state"
users_file = "users.toml"
service_user = "nobody"
"""
    )
    return path


def _run(*arguments: str, stdin: str | None = None, **env: str | None) -> Result:
    """Run `sftpjail ARGUMENTS` in-process without SFTPJAIL_CONFIG unless given."""

    environment: dict[str, str | None] = {"SFTPJAIL_CONFIG": None, **env}
    return CliRunner().invoke(
        cli, list(arguments), input=stdin, env=environment, catch_exceptions=False
    )


def _add_alice(config_path: Path, *options: str) -> Result:
    return _run(
        "user",
        "add",
        "alice",
        "--config",
        str(config_path),
        *options,
        stdin=PASSWORD + "\n",
    )


# -- user add ----------------------------------------------------------


def test_add_with_password_stdin_creates_user_and_home(config_path: Path) -> None:
    key = _public_key("alice@laptop")
    home = config_path.parent / "data" / "alice"

    result = _add_alice(config_path, "--password-stdin", "--key", key)

    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"added user alice\nhome {home}\n"
    user = UsersFile(config_path.parent / "users.toml").get("alice")
    assert verify_password(user.password_hash, PASSWORD)
    assert user.authorized_keys == (key,)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


@pytest.mark.skipif(os.geteuid() != 0, reason="only root hands homes over")
def test_add_as_root_gives_the_home_to_the_service_user(config_path: Path) -> None:
    result = _add_alice(config_path, "--password-stdin")

    assert result.exit_code == 0, result.stderr
    home = config_path.parent / "data" / "alice"
    assert home.stat().st_uid == 65534  # nobody


def test_password_appears_only_as_a_hash(config_path: Path) -> None:
    result = _add_alice(config_path, "--password-stdin")
    listing = _run("user", "list", "--config", str(config_path))

    users_text = (config_path.parent / "users.toml").read_text()
    assert "$argon2id$" in users_text
    for text in (users_text, result.stdout, result.stderr, listing.stdout):
        assert PASSWORD not in text
    assert "$argon2id$" not in listing.stdout + result.stdout + result.stderr


def test_adding_an_existing_user_fails_and_changes_nothing(config_path: Path) -> None:
    _add_alice(config_path, "--password-stdin")
    users_path = config_path.parent / "users.toml"
    before = users_path.read_bytes()

    result = _add_alice(config_path, "--password-stdin", "--read-only")

    assert result.exit_code == 2
    assert 'sftpjail: user "alice" already exists' in result.stderr
    assert users_path.read_bytes() == before


def test_add_with_keys_from_files_skips_comments(
    config_path: Path, tmp_path: Path
) -> None:
    first, second = _public_key("one"), _public_key("two")
    key_file = tmp_path / "keys.pub"
    key_file.write_text(f"# alice's keys\n\n{first}\n{second}\n")

    result = _run(
        "user",
        "add",
        "alice",
        "--key-file",
        str(key_file),
        "--users-file",
        str(tmp_path / "users.toml"),
    )

    assert result.exit_code == 0, result.stderr
    user = UsersFile(tmp_path / "users.toml").get("alice")
    assert user.authorized_keys == (first, second)
    assert user.password_hash is None


def test_add_with_a_bad_key_names_it_and_writes_nothing(tmp_path: Path) -> None:
    result = _run(
        "user",
        "add",
        "alice",
        "--key",
        _public_key("good"),
        "--key",
        "ssh-ed25519 AAAAbroken",
        "--users-file",
        str(tmp_path / "u.toml"),
    )

    assert result.exit_code == 2
    assert "sftpjail: --key 2: the key is not an OpenSSH public key" in result.stderr
    assert not (tmp_path / "u.toml").exists()


def test_add_without_any_credential_says_so(tmp_path: Path) -> None:
    result = _run("user", "add", "bob", "--users-file", str(tmp_path / "u.toml"))

    assert result.exit_code == 0
    assert "bob has no password and no key" in result.stderr


@pytest.mark.parametrize("name", ["Alice", "a b", "../x", "x" * 33])
def test_add_refuses_bad_names(tmp_path: Path, name: str) -> None:
    result = _run("user", "add", name, "--users-file", str(tmp_path / "u.toml"))

    assert result.exit_code == 2
    assert "is not a valid user name" in result.stderr


def test_add_refuses_a_symlinked_home_but_keeps_the_user(
    config_path: Path, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "alice").symlink_to(tmp_path)

    result = _add_alice(config_path, "--password-stdin")

    assert result.exit_code == 1
    assert "user alice was added, but" in result.stderr
    assert "alice is a symbolic link" in result.stderr


# -- where the users file is ---------------------------------------------


def test_config_can_come_from_the_environment(config_path: Path) -> None:
    _add_alice(config_path, "--password-stdin")

    result = _run("user", "list", SFTPJAIL_CONFIG=str(config_path))

    assert result.exit_code == 0
    assert result.stdout.splitlines()[1].startswith("alice\t")


def test_a_users_file_is_required(tmp_path: Path) -> None:
    result = _run("user", "list")

    assert result.exit_code == 2
    assert "--config PATH, --users-file PATH" in result.stderr


def test_config_and_users_file_exclude_each_other(
    config_path: Path, tmp_path: Path
) -> None:
    result = _run(
        "user",
        "list",
        "--config",
        str(config_path),
        "--users-file",
        str(tmp_path / "u.toml"),
    )

    assert result.exit_code == 2
    assert "either --config or --users-file" in result.stderr


# -- the other user commands ---------------------------------------------


def test_list_shows_facts_but_never_the_hash(config_path: Path) -> None:
    key = _public_key("k")
    _add_alice(config_path, "--password-stdin", "--key", key)
    _run(
        "user", "add", "bob", "--read-only", "--home", "b", "--config", str(config_path)
    )

    result = _run("user", "list", "--config", str(config_path))

    assert result.exit_code == 0
    assert result.stdout == (
        "name\thome\tread_only\tkeys\tpassword\n"
        "alice\talice\tno\t1\tyes\n"
        "bob\tb\tyes\t0\tno\n"
    )


def test_remove_keeps_the_files_and_says_so(config_path: Path) -> None:
    _add_alice(config_path, "--password-stdin")
    home = config_path.parent / "data" / "alice"
    (home / "notes.txt").write_text("mine")

    result = _run("user", "remove", "alice", "--config", str(config_path))

    assert result.exit_code == 0
    assert result.stdout == f"removed user alice; their files in {home} were kept\n"
    assert (home / "notes.txt").read_text() == "mine"
    assert UsersFile(config_path.parent / "users.toml").load() == {}


def test_remove_of_an_unknown_user_fails(config_path: Path) -> None:
    result = _run("user", "remove", "carol", "--config", str(config_path))

    assert result.exit_code == 2
    assert 'no user "carol"' in result.stderr


def test_passwd_replaces_the_password(config_path: Path) -> None:
    _add_alice(config_path, "--password-stdin")

    result = _run(
        "user",
        "passwd",
        "alice",
        "--password-stdin",
        "--config",
        str(config_path),
        stdin="new password\n",
    )

    assert result.exit_code == 0
    assert result.stdout == "changed the password of alice\n"
    stored = UsersFile(config_path.parent / "users.toml").get("alice").password_hash
    assert verify_password(stored, "new password")
    assert not verify_password(stored, PASSWORD)


def test_passwd_remove_leaves_keys_only(config_path: Path) -> None:
    _add_alice(config_path, "--password-stdin")

    result = _run("user", "passwd", "alice", "--remove", "--config", str(config_path))

    assert result.exit_code == 0
    assert (
        UsersFile(config_path.parent / "users.toml").get("alice").password_hash is None
    )


def test_passwd_without_a_terminal_asks_for_password_stdin(config_path: Path) -> None:
    _add_alice(config_path, "--password-stdin")

    result = _run("user", "passwd", "alice", "--config", str(config_path))

    assert result.exit_code == 2
    assert "pass --password-stdin" in result.stderr


def test_key_add_list_and_remove_by_fingerprint(config_path: Path) -> None:
    _add_alice(config_path, "--password-stdin")
    key = _public_key("alice@laptop")
    fingerprint = _fingerprint(key)
    where = ("--config", str(config_path))

    added = _run("user", "key-add", "alice", key, *where)
    listed = _run("user", "key-list", "alice", *where)
    again = _run("user", "key-add", "alice", key, *where)
    removed = _run("user", "key-remove", "alice", fingerprint, *where)

    assert added.stdout == f"added key {fingerprint} to alice\n"
    assert listed.stdout == f"{fingerprint}\tssh-ed25519\talice@laptop\n"
    assert again.exit_code == 2
    assert "already has key" in again.stderr
    assert removed.stdout == f"removed key {fingerprint} from alice\n"
    assert (
        UsersFile(config_path.parent / "users.toml").get("alice").authorized_keys == ()
    )


def test_key_remove_of_a_key_the_user_lacks_fails(config_path: Path) -> None:
    _add_alice(config_path, "--password-stdin", "--key", _public_key("mine"))
    other = _public_key("other")

    result = _run("user", "key-remove", "alice", other, "--config", str(config_path))

    assert result.exit_code == 2
    assert f"has no key matching {_fingerprint(other)}" in result.stderr


# -- hash-password -------------------------------------------------------


def test_hash_password_from_stdin_verifies() -> None:
    result = _run("hash-password", "--password-stdin", stdin=PASSWORD + "\n")

    assert result.exit_code == 0
    printed = result.stdout.strip()
    assert printed.startswith("$argon2id$")
    assert verify_password(printed, PASSWORD)
    assert PASSWORD not in result.stdout + result.stderr


def test_hash_password_keeps_spaces_inside_the_password() -> None:
    result = _run("hash-password", "--password-stdin", stdin="  spaced  \r\n")

    assert verify_password(result.stdout.strip(), "  spaced  ")


def test_hash_password_refuses_empty_input() -> None:
    result = _run("hash-password", "--password-stdin", stdin="")

    assert result.exit_code == 2
    assert "no password on standard input" in result.stderr


def test_hash_password_without_terminal_or_flag_fails() -> None:
    result = _run("hash-password")

    assert result.exit_code == 2
    assert "pass --password-stdin" in result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["user", "add"],
        ["user", "remove"],
        ["user", "list"],
        ["user", "passwd"],
        ["user", "key-add"],
        ["user", "key-remove"],
        ["user", "key-list"],
        ["hash-password"],
    ],
)
def test_every_command_explains_itself(command: list[str]) -> None:
    result = _run(*command, "--help")

    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: cli {' '.join(command)} [OPTIONS]")
    assert len(result.stdout.splitlines()) > 5


# -- prompts on a real terminal ------------------------------------------


def _run_on_terminal(arguments: list[str], answers: dict[str, str]) -> str:
    """Run `python -m sftpjail` on a pty, answering prompts; return its output.

    Bounded: gives up after 60 seconds.
    """

    controller, terminal = pty.openpty()
    source_dir = str(Path(sftpjail.__file__).parents[1])
    environment = {**os.environ, "PYTHONPATH": source_dir}
    environment.pop("SFTPJAIL_CONFIG", None)
    child = subprocess.Popen(
        [sys.executable, "-m", "sftpjail", *arguments],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=environment,
        start_new_session=True,
    )
    os.close(terminal)

    output, pending = b"", dict(answers)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                output += chunk
            for prompt in list(pending):
                if output.rstrip().endswith(prompt.encode()):
                    os.write(controller, pending.pop(prompt).encode() + b"\n")
        assert child.wait(timeout=max(1.0, deadline - time.monotonic())) == 0, output
    finally:
        child.kill()
        child.wait()
        os.close(controller)
    return output.decode().replace("\r\n", "\n")


def test_hash_password_asks_twice_without_echo() -> None:
    output = _run_on_terminal(
        ["hash-password"], {"Password:": PASSWORD, "Repeat password:": PASSWORD}
    )

    assert "Password:" in output and "Repeat password:" in output
    assert PASSWORD not in output
    assert verify_password(output.strip().splitlines()[-1], PASSWORD)


def test_add_with_password_prompt(tmp_path: Path) -> None:
    users_path = tmp_path / "users.toml"

    output = _run_on_terminal(
        ["user", "add", "alice", "--password-prompt", "--users-file", str(users_path)],
        {"Password:": PASSWORD, "Repeat password:": PASSWORD},
    )

    assert "added user alice" in output
    assert PASSWORD not in output
    assert verify_password(UsersFile(users_path).get("alice").password_hash, PASSWORD)
