"""`sftpjail user ...` and `sftpjail hash-password`: manage the users file.

Every command finds the users the same way: `--users-file PATH`, or the
store of the configuration named by `--config PATH` or by SFTPJAIL_CONFIG:
its PostgreSQL database when `[database] url` is set (every replica then
hears of the change), else its `users_file`.  With a configuration,
`user add` also creates the home.

Outputs are plain lines meant for scripts as much as for people: one fact
per line, tab-separated columns, nothing secret.  A password is read from
a terminal without echo, or from the first line of standard input with
--password-stdin; it is hashed at once and never printed or logged, and
neither is its hash.
"""

from __future__ import annotations

import os
import pwd
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from sftpjail.config import Config, load_config
from sftpjail.control import ask, control_socket_path
from sftpjail.errors import ControlSocketError, HomeError, UsersFileError
from sftpjail.homes import ensure_home
from sftpjail.passwords import hash_password
from sftpjail.public_keys import key_fingerprint, normalize_public_key
from sftpjail.store.base import UserStore
from sftpjail.users import User, UsersFile

CONFIG_ENVIRONMENT_VARIABLE = "SFTPJAIL_CONFIG"

_Command = TypeVar("_Command", bound=Callable[..., Any])


@dataclass(frozen=True)
class _Target:
    """The users a command edits, and the configuration it came from."""

    users_file: UserStore
    config: Config | None


def notify_running_server(config: Config) -> None:
    """Tell a running server that the users file changed.

    Asks for a reload through the control socket.  No server running is
    not an error; a server that cannot be asked still notices the new file
    by itself (its inotify watch) or on SIGHUP, which the note says.
    """

    path = control_socket_path(config)
    if not path.exists():
        return
    try:
        ask(path, "reload")
    except ControlSocketError as error:
        click.echo(
            f"sftpjail: note: {error}; the server reloads on its own when it "
            "watches the file, or send it SIGHUP",
            err=True,
        )


def _location_options(command: _Command) -> _Command:
    """Add --config and --users-file, the two ways to find the users file."""

    command = click.option(
        "--users-file",
        "users_file_path",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Edit this users file directly (no home is created).",
    )(command)
    command = click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar=CONFIG_ENVIRONMENT_VARIABLE,
        show_envvar=True,
        help="Server configuration naming users_file and data_dir.",
    )(command)
    return command


def _locate(config_path: Path | None, users_file_path: Path | None) -> _Target:
    """Pick the users file from --users-file, --config or SFTPJAIL_CONFIG."""

    context = click.get_current_context()
    config_source = context.get_parameter_source("config_path")
    if users_file_path is not None:
        if config_source is click.core.ParameterSource.COMMANDLINE:
            raise click.UsageError("give either --config or --users-file, not both")
        return _Target(UsersFile(users_file_path), None)

    if config_path is None:
        raise click.UsageError(
            "say which users file to use: --config PATH, --users-file PATH, "
            f"or {CONFIG_ENVIRONMENT_VARIABLE}=PATH in the environment"
        )
    config = load_config(config_path)
    if config.database.url is not None:
        from sftpjail.store.postgres import Database
        from sftpjail.store.postgres_users import PostgresUserStore

        return _Target(PostgresUserStore(Database(config.database.url, "cli")), config)
    return _Target(UsersFile(config.users_file), config)


def _after_edit(target: _Target) -> None:
    # The database tells every replica itself (NOTIFY); a users file is
    # read again by the server on the same machine when asked.
    if target.config is not None and target.config.database.url is None:
        notify_running_server(target.config)


# -- passwords -----------------------------------------------------------


_password_stdin_option = click.option(
    "--password-stdin",
    is_flag=True,
    help="Read the password from the first line of standard input.",
)


def _password_from_stdin() -> str:
    """The first line of standard input, without its line ending."""

    line = sys.stdin.readline()
    password = line.removesuffix("\n").removesuffix("\r")
    if not password:
        raise click.UsageError("no password on standard input; send it as one line")
    return password


def _password_from_terminal() -> str:
    """Ask twice without echo; prompts go to stderr so stdout stays clean."""

    if not sys.stdin.isatty():
        raise click.UsageError(
            "standard input is not a terminal; "
            "pass --password-stdin to read the password from it"
        )
    password: str = click.prompt(
        "Password",
        hide_input=True,
        confirmation_prompt="Repeat password",
        err=True,
    )
    return password


def _new_password_hash(from_stdin: bool) -> str:
    password = _password_from_stdin() if from_stdin else _password_from_terminal()
    return hash_password(password)


# -- keys ----------------------------------------------------------------


def _collect_keys(
    key_lines: tuple[str, ...], key_files: tuple[IO[str], ...]
) -> list[str]:
    """Key lines from --key and --key-file, each checked where it came from."""

    labelled = [(f"--key {number}", line) for number, line in enumerate(key_lines, 1)]
    for stream in key_files:
        for number, line in enumerate(stream, start=1):
            if line.strip() and not line.lstrip().startswith("#"):
                labelled.append((f"{stream.name} line {number}", line))

    keys = []
    for label, line in labelled:
        try:
            keys.append(normalize_public_key(line))
        except ValueError as error:
            raise UsersFileError(f"{label}: the key {error}") from None
    return keys


_key_file_option = click.option(
    "--key-file",
    "key_files",
    multiple=True,
    type=click.File("r", encoding="utf-8"),
    metavar="PATH",
    help="A file of public keys, one a line, such as id_ed25519.pub. Repeatable.",
)


# -- homes ---------------------------------------------------------------


def _home_owner(config: Config) -> tuple[int, int]:
    """The service user when running as root and it exists, else ourselves."""

    if os.geteuid() != 0:
        return os.getuid(), os.getgid()
    try:
        entry = pwd.getpwnam(config.service_user)
    except KeyError:
        click.echo(
            f"note: service user {config.service_user} does not exist; "
            "the home stays owned by root",
            err=True,
        )
        return os.getuid(), os.getgid()
    return entry.pw_uid, entry.pw_gid


def _create_home(config: Config, user: User) -> Path:
    try:
        return ensure_home(config.data_dir, user.home, _home_owner(config))
    except HomeError as error:
        raise HomeError(f"user {user.name} was added, but {error}") from None


# -- commands ------------------------------------------------------------


@click.group("user")
def user() -> None:
    """Add, remove and list users and their keys.

    Every subcommand needs the users file: pass --config PATH (the server
    configuration, also read from SFTPJAIL_CONFIG) or --users-file PATH.
    """


@user.command("add")
@click.argument("name")
@_password_stdin_option
@click.option(
    "--password-prompt",
    is_flag=True,
    help="Ask for the password on the terminal, twice, without echo.",
)
@click.option(
    "--key",
    "key_lines",
    multiple=True,
    metavar="LINE",
    help='A public key line, "type base64 [comment]". Repeatable.',
)
@_key_file_option
@click.option(
    "--home",
    metavar="REL",
    help="Home directory, relative to data_dir.  [default: NAME]",
)
@click.option(
    "--read-only",
    is_flag=True,
    help="Let the user download and list, but change nothing.",
)
@_location_options
def add_user(
    name: str,
    password_stdin: bool,
    password_prompt: bool,
    key_lines: tuple[str, ...],
    key_files: tuple[IO[str], ...],
    home: str | None,
    read_only: bool,
    config_path: Path | None,
    users_file_path: Path | None,
) -> None:
    """Add user NAME to the users file.

    Without a password option the user logs in with keys only.  With
    --config, the home is also created below data_dir (mode 0700, owned by
    the service user when run as root).

    \b
    Example:
      sftpjail user add alice --config /etc/sftpjail/config.toml \\
          --key-file alice.pub --password-prompt
    """

    if password_stdin and password_prompt:
        raise click.UsageError("give either --password-stdin or --password-prompt")
    target = _locate(config_path, users_file_path)
    target.users_file.check_new_name(name)

    keys = _collect_keys(key_lines, key_files)
    wants_password = password_stdin or password_prompt
    password_hash = _new_password_hash(password_stdin) if wants_password else None
    new_user = User(name, password_hash, tuple(keys), home or name, read_only)

    target.users_file.add(new_user)
    click.echo(f"added user {name}")
    if target.config is not None:
        click.echo(f"home {_create_home(target.config, new_user)}")
    if password_hash is None and not keys:
        click.echo(
            f"note: {name} has no password and no key, so cannot log in yet; "
            "see `sftpjail user passwd` and `sftpjail user key-add`",
            err=True,
        )
    _after_edit(target)


@user.command("remove")
@click.argument("name")
@_location_options
def remove_user(
    name: str, config_path: Path | None, users_file_path: Path | None
) -> None:
    """Remove user NAME from the users file.

    Their files stay on disk; delete the home yourself once it is no
    longer needed.
    """

    target = _locate(config_path, users_file_path)
    removed = target.users_file.remove(name)

    if target.config is not None:
        home = str(target.config.data_dir / removed.home)
    else:
        home = f"{removed.home} (relative to data_dir)"
    click.echo(f"removed user {name}; their files in {home} were kept")
    _after_edit(target)


@user.command("list")
@_location_options
def list_users(config_path: Path | None, users_file_path: Path | None) -> None:
    """List the users, one a line, sorted by name.

    Tab-separated columns after a header line: name, home (relative to
    data_dir), read_only (yes/no), keys (how many), password (yes/no).
    """

    target = _locate(config_path, users_file_path)
    users = target.users_file.load()

    click.echo("name\thome\tread_only\tkeys\tpassword")
    for name in sorted(users):
        entry = users[name]
        columns = (
            name,
            entry.home,
            _yes_no(entry.read_only),
            str(len(entry.authorized_keys)),
            _yes_no(entry.password_hash is not None),
        )
        click.echo("\t".join(columns))


def _yes_no(value: bool) -> str:
    return "yes" if value else "no"


@user.command("passwd")
@click.argument("name")
@_password_stdin_option
@click.option(
    "--remove",
    is_flag=True,
    help="Remove the password: the user can then log in with keys only.",
)
@_location_options
def change_password(
    name: str,
    password_stdin: bool,
    remove: bool,
    config_path: Path | None,
    users_file_path: Path | None,
) -> None:
    """Set a new password for user NAME.

    Asks twice on the terminal without echo, unless --password-stdin.
    """

    if password_stdin and remove:
        raise click.UsageError("give either --password-stdin or --remove")
    target = _locate(config_path, users_file_path)
    target.users_file.get(name)

    if remove:
        target.users_file.set_password(name, None)
        click.echo(f"removed the password of {name}")
    else:
        target.users_file.set_password(name, _new_password_hash(password_stdin))
        click.echo(f"changed the password of {name}")
    _after_edit(target)


@user.command("disable")
@click.argument("name")
@_location_options
def disable_user(
    name: str, config_path: Path | None, users_file_path: Path | None
) -> None:
    """Disable user NAME: no new logins, and their sessions end.

    A running server (with a database: every replica) ends the user's
    sessions within seconds.  `sftpjail user enable NAME` undoes it.
    """

    target = _locate(config_path, users_file_path)
    target.users_file.set_disabled(name, True)
    click.echo(f"disabled user {name}")
    _after_edit(target)


@user.command("enable")
@click.argument("name")
@_location_options
def enable_user(
    name: str, config_path: Path | None, users_file_path: Path | None
) -> None:
    """Let user NAME log in again after `sftpjail user disable`."""

    target = _locate(config_path, users_file_path)
    target.users_file.set_disabled(name, False)
    click.echo(f"enabled user {name}")
    _after_edit(target)


@user.command("key-add")
@click.argument("name")
@click.argument("line", required=False)
@_key_file_option
@_location_options
def add_keys(
    name: str,
    line: str | None,
    key_files: tuple[IO[str], ...],
    config_path: Path | None,
    users_file_path: Path | None,
) -> None:
    """Add keys to user NAME: LINE, or each key in --key-file.

    Quote LINE, it holds spaces: 'ssh-ed25519 AAAA... alice@laptop'.
    Prints the SHA256 fingerprint of each key added.
    """

    keys = _collect_keys((line,) if line else (), key_files)
    if not keys:
        raise click.UsageError("give a key LINE or --key-file PATH")
    target = _locate(config_path, users_file_path)

    for key in keys:
        target.users_file.add_key(name, key)
        click.echo(f"added key {key_fingerprint(key)} to {name}")
    _after_edit(target)


@user.command("key-remove")
@click.argument("name")
@click.argument("key")
@_location_options
def remove_key(
    name: str, key: str, config_path: Path | None, users_file_path: Path | None
) -> None:
    """Remove a key from user NAME, given in full or as SHA256:... .

    `sftpjail user key-list NAME` shows the fingerprints.
    """

    target = _locate(config_path, users_file_path)
    removed = target.users_file.remove_key(name, key)

    click.echo(f"removed key {key_fingerprint(removed)} from {name}")
    _after_edit(target)


@user.command("key-list")
@click.argument("name")
@_location_options
def list_keys(
    name: str, config_path: Path | None, users_file_path: Path | None
) -> None:
    """List the keys of user NAME, one a line.

    Tab-separated: SHA256 fingerprint, key type, comment (may be empty).
    """

    target = _locate(config_path, users_file_path)
    for line in target.users_file.get(name).authorized_keys:
        key_type, _, rest = line.partition(" ")
        _, _, comment = rest.partition(" ")
        click.echo(f"{key_fingerprint(line)}\t{key_type}\t{comment}")


@click.command("hash-password")
@_password_stdin_option
def hash_password_command(password_stdin: bool) -> None:
    """Print an argon2id hash of a password, for the users file.

    Asks twice on the terminal without echo, unless --password-stdin.
    Paste the output as `password_hash = "..."` in a [users.NAME] table.
    """

    click.echo(_new_password_hash(password_stdin))
