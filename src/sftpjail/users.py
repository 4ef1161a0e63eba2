"""The users file: who may log in, with what, and where their files live.

Theory of operation: the users file is TOML with one table per user,
`[users.NAME]`.  Reading it (`UsersFile.load`) parses the text and checks
every record against one table of field parsers, `_FIELDS`; the result is
a mapping of frozen `User` records, or a `UsersFileError` naming the user
and the problem.  A new field is one `User` field plus one parser.

Restrictions on logging in (`disabled`, `expires`, `allowed_networks`) are
judged by `login_refusal`, which the supervisor asks after the credential
was found good; per-directory `permissions` and quotas travel to the
worker with the supervisor's yes.

Edits go through tomlkit, so the operator's comments, layout and keys this
version does not know survive them.  Each edit takes the file's exclusive
edit lock, re-reads the file, applies the change, checks the whole
resulting text with exactly the code `load` uses (so an edit can never
write a file the server would refuse), and replaces the file atomically
(see `sftpjail.atomic_file`).

No message, log line or repr made here contains a password hash.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import posixpath
import re
import tomllib
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import tomlkit
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AbstractTable, Array, Table

from sftpjail.atomic_file import (
    LockTimeoutError,
    exclusive_lock,
    lock_path_of,
    replace_file,
)
from sftpjail.errors import UnknownUserError, UserExistsError, UsersFileError
from sftpjail.homes import relative_home_problem
from sftpjail.passwords import is_supported_hash
from sftpjail.public_keys import (
    describe_key,
    key_line,
    key_matcher,
    parse_public_key,
    same_key,
)

logger = logging.getLogger(__name__)

USERS_SECTION = "users"
NEW_FILE_MODE = 0o600
DEFAULT_LOCK_TIMEOUT = 10.0

_USER_NAME = re.compile(r"[a-z_][a-z0-9_.-]{0,31}")

# What a user may do below a directory of their home.  The sftp handlers
# map each operation onto exactly one of these names.
PERMISSIONS = (
    "list",
    "download",
    "upload",
    "overwrite",
    "delete",
    "rename",
    "mkdir",
    "symlink",
    "chmod",
)
READ_PERMISSIONS = frozenset({"list", "download"})
ALL_PERMISSIONS = frozenset(PERMISSIONS)
HOME_DIRECTORY = "/"
MAX_PERMISSION_DIRECTORIES = 32
MAX_PERMISSION_DIRECTORY_BYTES = 255

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_Result = TypeVar("_Result")


@dataclass(frozen=True)
class User:
    """One account as the users file describes it, already validated.

    `authorized_keys` are normalized OpenSSH lines, "type base64 [comment]";
    `home` is relative to data_dir.  The hash is left out of the repr so
    that logging a user cannot leak it.

    `permissions` maps absolute directories of the user's own view ("/" is
    the home) onto permission names from `PERMISSIONS`; it always holds "/".
    Left empty, it becomes everything, or `READ_PERMISSIONS` for a
    read-only user.  `read_only` wins over it: a read-only user's sets are
    cut down to `READ_PERMISSIONS`.  `expires` is a date (logins end when
    that UTC day begins) or a datetime (naive ones are UTC).
    """

    name: str
    password_hash: str | None = field(repr=False)
    authorized_keys: tuple[str, ...]
    home: str
    read_only: bool = False
    disabled: bool = False
    expires: datetime.date | None = None
    allowed_networks: tuple[Network, ...] = ()
    permissions: Mapping[str, frozenset[str]] = field(default_factory=dict, hash=False)
    quota_bytes: int | None = None
    quota_files: int | None = None

    def __post_init__(self) -> None:
        granted = dict(self.permissions) or default_permissions(self.read_only)
        if self.read_only:
            granted = {
                path: names & READ_PERMISSIONS for path, names in granted.items()
            }
        object.__setattr__(self, "permissions", types.MappingProxyType(granted))

    @property
    def expires_at(self) -> datetime.datetime | None:
        """The moment logins stop being accepted, in UTC; None if never."""

        if self.expires is None:
            return None
        if isinstance(self.expires, datetime.datetime):
            moment = self.expires
        else:
            moment = datetime.datetime.combine(self.expires, datetime.time())
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=datetime.UTC)
        return moment


def default_permissions(read_only: bool) -> dict[str, frozenset[str]]:
    """What a user whose file names no permissions may do in their home."""

    return {HOME_DIRECTORY: READ_PERMISSIONS if read_only else ALL_PERMISSIONS}


def login_refusal(
    user: User, source: str, now: datetime.datetime | None = None
) -> str | None:
    """Why `user` may not log in from address `source` now, or None.

    The reason is for the audit log only; the client is told nothing more
    than for a wrong password.
    """

    if user.disabled:
        return "user disabled"
    expires_at = user.expires_at
    now = now or datetime.datetime.now(datetime.UTC)
    if expires_at is not None and now >= expires_at:
        return "user expired"
    if user.allowed_networks and not _within(source, user.allowed_networks):
        return "source address not allowed"
    return None


def _within(source: str, networks: tuple[Network, ...]) -> bool:
    try:
        address = ipaddress.ip_address(source)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


class _FieldError(Exception):
    """A field's value is wrong; the caller adds which user and file."""


def user_name_problem(name: str) -> str | None:
    """Say what is wrong with a user name, or None if it is acceptable."""

    if _USER_NAME.fullmatch(name):
        return None
    return (
        "is not a valid user name: use 1 to 32 characters, lower-case letters, "
        "digits, '_', '.' or '-', starting with a letter or '_'"
    )


def _shown(name: str) -> str:
    """A name fit for a message: quoted, with anything odd escaped."""

    if _USER_NAME.fullmatch(name):
        return f'"{name}"'
    return repr(name)


def check_user_name(name: str) -> None:
    """Raise UsersFileError if `name` cannot be a user name."""

    problem = user_name_problem(name)
    if problem is not None:
        raise UsersFileError(f"{_shown(name)} {problem}")


# -- reading and validation ---------------------------------------------


def _parse_password_hash(value: Any) -> str:
    if not isinstance(value, str):
        raise _FieldError("password_hash must be a string")
    if not is_supported_hash(value):
        raise _FieldError(
            "password_hash is neither an argon2id nor a bcrypt hash; "
            "make one with `sftpjail hash-password`"
        )
    return value


def _parse_authorized_keys(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _FieldError("authorized_keys must be a list of public key lines")

    lines: list[str] = []
    first_seen: dict[bytes, int] = {}
    for number, line in enumerate(value, start=1):
        if not isinstance(line, str):
            raise _FieldError(f"authorized_keys entry {number} must be a string")
        try:
            key = parse_public_key(line)
        except ValueError as error:
            raise _FieldError(f"authorized_keys entry {number} {error}") from None
        if key.public_data in first_seen:
            raise _FieldError(
                f"authorized_keys entry {number} repeats entry "
                f"{first_seen[key.public_data]} ({key.get_fingerprint('sha256')})"
            )
        first_seen[key.public_data] = number
        lines.append(key_line(key))
    return tuple(lines)


def _parse_home(value: Any) -> str:
    if not isinstance(value, str):
        raise _FieldError("home must be a string")
    problem = relative_home_problem(value)
    if problem is not None:
        raise _FieldError(f"home {value!r} {problem}")
    return value


def _parse_flag(key: str) -> Callable[[Any], bool]:
    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _FieldError(f"{key} must be true or false")
        return value

    return parse


def _parse_expires(value: Any) -> datetime.date:
    if not isinstance(value, datetime.date):
        raise _FieldError(
            "expires must be a TOML date (2027-01-31) or date-time "
            "(2027-01-31T18:00:00Z), without quotes"
        )
    return value


def _parse_allowed_networks(value: Any) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise _FieldError(
            'allowed_networks must be a list of networks, e.g. ["192.0.2.0/24"]'
        )
    networks = []
    for number, text in enumerate(value, start=1):
        if not isinstance(text, str):
            raise _FieldError(f"allowed_networks entry {number} must be a string")
        try:
            networks.append(ipaddress.ip_network(text))
        except ValueError as error:
            raise _FieldError(
                f"allowed_networks entry {number} {text!r} is not a network "
                f"in CIDR form ({error})"
            ) from None
    return tuple(networks)


def _parse_permissions(value: Any) -> dict[str, frozenset[str]]:
    if not isinstance(value, dict):
        raise _FieldError(
            'permissions must be a table of directories, e.g. "/" = ["list"]'
        )
    if len(value) > MAX_PERMISSION_DIRECTORIES:
        # The whole table travels to the worker in one small message.
        raise _FieldError(
            f"permissions may name at most {MAX_PERMISSION_DIRECTORIES} directories"
        )
    if HOME_DIRECTORY not in value:
        raise _FieldError(
            'permissions must include "/" (the home itself), e.g. '
            '"/" = ["list", "download"]'
        )
    return {
        _permission_directory(path): _permission_names(path, names)
        for path, names in value.items()
    }


def _permission_directory(path: str) -> str:
    if any(ord(character) < 0x20 or character == "\x7f" for character in path):
        raise _FieldError(
            f"permissions directory {path!r} contains a NUL or control character"
        )
    if not path.startswith("/"):
        raise _FieldError(
            f'permissions directory "{path}" must be absolute (start with "/")'
        )
    if len(path.encode()) > MAX_PERMISSION_DIRECTORY_BYTES:
        raise _FieldError(
            f"permissions directory {path[:40]!r}... is longer than "
            f"{MAX_PERMISSION_DIRECTORY_BYTES} bytes"
        )
    if ".." in path.split("/"):
        raise _FieldError(f'permissions directory "{path}" must not contain ".."')
    normal = "/" + posixpath.normpath(path).lstrip("/")
    if normal != path:
        raise _FieldError(
            f'permissions directory "{path}" is not in normal form; '
            f'write it as "{normal}"'
        )
    return path


def _permission_names(path: str, names: Any) -> frozenset[str]:
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise _FieldError(
            f'permissions for "{path}" must be a list of permission names'
        )
    unknown = sorted(set(names) - ALL_PERMISSIONS)
    if unknown:
        raise _FieldError(
            f'permissions for "{path}": unknown permission "{unknown[0]}"; '
            f"known: {', '.join(PERMISSIONS)}"
        )
    return frozenset(names)


def _parse_quota(key: str) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise _FieldError(f"{key} must be a whole number greater than zero")
        return value

    return parse


# Every key a user table may hold, with the function that checks and
# converts its value.  Keys are `User` field names; their order is the
# order in which a new user's table is written.
_FIELDS: dict[str, Callable[[Any], Any]] = {
    "password_hash": _parse_password_hash,
    "authorized_keys": _parse_authorized_keys,
    "home": _parse_home,
    "read_only": _parse_flag("read_only"),
    "disabled": _parse_flag("disabled"),
    "expires": _parse_expires,
    "allowed_networks": _parse_allowed_networks,
    "permissions": _parse_permissions,
    "quota_bytes": _parse_quota("quota_bytes"),
    "quota_files": _parse_quota("quota_files"),
}


def parse_users(text: str, source: Path, *, warn: bool = True) -> dict[str, User]:
    """Parse and validate the text of a users file read from `source`.

    Keys this version does not know are logged as warnings unless `warn`
    is false.
    """

    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UsersFileError(f"{source} is not valid TOML: {error}") from None

    for key in document:
        if key != USERS_SECTION and warn:
            logger.warning('%s: unknown top-level key "%s" is ignored', source, key)
    table = document.get(USERS_SECTION, {})
    if not isinstance(table, dict):
        raise UsersFileError(f"{source}: {USERS_SECTION} must be a table of users")

    users: dict[str, User] = {}
    owner_of_home: dict[str, str] = {}
    for name, record in table.items():
        user = _user_from_record(name, record, source, warn)
        if user.home in owner_of_home:
            raise UsersFileError(
                f'{source}: users "{owner_of_home[user.home]}" and "{name}" have '
                f'the same home "{user.home}"; give each user a home of their own'
            )
        owner_of_home[user.home] = name
        users[name] = user
    return users


def removal_matcher(key_or_fingerprint: str) -> Callable[[str], bool]:
    """Match the key to remove, given in full or as SHA256:...; explain if not."""

    try:
        return key_matcher(key_or_fingerprint)
    except ValueError:
        raise UsersFileError(
            "give the key to remove as a public key line or as its "
            "SHA256:... fingerprint (see `sftpjail user key-list NAME`)"
        ) from None


def user_from_record(name: str, record: Any, source: Path) -> User:
    """Validate one user's table as read from `source` (a file, a database).

    `record` maps `User` field names to values as TOML would give them;
    UsersFileError names the user and the problem.  Another store (see
    `sftpjail.store.postgres_users`) validates its rows through this, so
    it accepts exactly what a users file accepts.
    """

    return _user_from_record(name, record, source, warn=False)


def _user_from_record(name: str, record: Any, source: Path, warn: bool) -> User:
    problem = user_name_problem(name)
    if problem is not None:
        raise UsersFileError(f"{source}: user {_shown(name)} {problem}")
    if not isinstance(record, dict):
        raise UsersFileError(f'{source}: user "{name}" must be a table')

    values: dict[str, Any] = {"password_hash": None, "authorized_keys": ()}
    for key, value in record.items():
        parser = _FIELDS.get(key)
        if parser is None:
            _refuse_hidden_user(name, key, value, source)
            if warn:
                logger.warning(
                    '%s: user "%s": unknown key "%s" is ignored', source, name, key
                )
            continue
        try:
            values[key] = parser(value)
        except _FieldError as error:
            raise UsersFileError(f'{source}: user "{name}": {error}') from None

    values.setdefault("home", name)
    return User(name=name, **values)


def _refuse_hidden_user(name: str, key: str, value: Any, source: Path) -> None:
    """Refuse an unknown key that is really a user name with a dot in it."""

    if isinstance(value, dict):
        # [users.john.doe] declares user "john" holding a table "doe", not
        # user "john.doe": almost certainly a forgotten pair of quotes.
        raise UsersFileError(
            f'{source}: user "{name}" holds a table "{key}"; if "{name}.{key}" '
            f'is one user name, quote it: [{USERS_SECTION}."{name}.{key}"]'
        )
    # XXX Should any other unknown key be an error too?  A misspelt
    # restriction ("read_onyl") is only a warning, but an error would make a
    # file written for a newer version unusable by this one.


# -- editing -----------------------------------------------------------


class UsersFile:
    """The users file on disk: validated reads and locked, atomic edits.

    An edit waits at most `lock_timeout` seconds for another one to end.
    """

    def __init__(self, path: Path, lock_timeout: float = DEFAULT_LOCK_TIMEOUT) -> None:
        self.path = path
        self.lock_timeout = lock_timeout

    def load(self) -> dict[str, User]:
        """Read and validate every user; a missing file holds no users."""

        return parse_users(self._read_text(), self.path)

    def get(self, name: str) -> User:
        """Read the file and return one user; UnknownUserError if absent."""

        users = self.load()
        if name not in users:
            raise self._unknown_user(name)
        return users[name]

    def check_new_name(self, name: str) -> None:
        """Raise UserExistsError if `name` is taken (before asking for more)."""

        check_user_name(name)
        if name in self.load():
            raise self._user_exists(name)

    def add(self, user: User) -> None:
        """Add a new user; UserExistsError if the name is taken."""

        record = _record_of(user)

        def change(users: Table) -> None:
            if user.name in users:
                raise self._user_exists(user.name)
            users[user.name] = record

        self._edit(change)

    def remove(self, name: str) -> User:
        """Remove a user and return what the file said about them."""

        def change(users: Table) -> User:
            record = self._record(users, name)
            user = _user_from_record(name, record.unwrap(), self.path, warn=False)
            del users[name]
            return user

        return self._edit(change)

    def set_password(self, name: str, password_hash: str | None) -> None:
        """Replace a user's password hash, or remove it when None."""

        def change(users: Table) -> None:
            record = self._record(users, name)
            if password_hash is not None:
                record["password_hash"] = password_hash
            elif "password_hash" in record:
                del record["password_hash"]

        self._edit(change)

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable a user (a running server ends their sessions) or enable them."""

        def change(users: Table) -> None:
            record = self._record(users, name)
            if disabled:
                record["disabled"] = True
            elif "disabled" in record:
                del record["disabled"]

        self._edit(change)

    def add_key(self, name: str, key_or_line: str) -> None:
        """Add one OpenSSH public key line to a user; refuse a duplicate."""

        try:
            key = parse_public_key(key_or_line)
        except ValueError as error:
            raise UsersFileError(
                f"the new key for user {_shown(name)} {error}"
            ) from None

        def change(users: Table) -> None:
            keys = self._keys(users, name, create=True)
            if any(same_key(str(line), key) for line in keys):
                fingerprint = key.get_fingerprint("sha256")
                raise UsersFileError(
                    f"user {_shown(name)} already has key {fingerprint}"
                )
            keys.append(key_line(key))

        self._edit(change)

    def remove_key(self, name: str, key_or_fingerprint: str) -> str:
        """Remove a key given in full or as SHA256:...; return its line."""

        matches = removal_matcher(key_or_fingerprint)

        def change(users: Table) -> str:
            keys = self._keys(users, name, create=False)
            for index, line in enumerate(keys):
                if matches(str(line)):
                    del keys[index]
                    return str(line)
            wanted = describe_key(key_or_fingerprint)
            raise UsersFileError(f"user {_shown(name)} has no key matching {wanted}")

        return self._edit(change)

    def _user_exists(self, name: str) -> UserExistsError:
        return UserExistsError(
            f"user {_shown(name)} already exists in {self.path}; "
            "choose another name or remove that user first"
        )

    def _unknown_user(self, name: str) -> UnknownUserError:
        return UnknownUserError(f"no user {_shown(name)} in {self.path}")

    def _record(self, users: Table, name: str) -> AbstractTable:
        record = users.get(name)
        if record is None:
            raise self._unknown_user(name)
        if not isinstance(record, AbstractTable):
            raise UsersFileError(f"{self.path}: user {_shown(name)} must be a table")
        return record

    def _keys(self, users: Table, name: str, create: bool) -> Array:
        record = self._record(users, name)
        if "authorized_keys" not in record:
            if not create:
                raise UsersFileError(f"user {_shown(name)} has no authorized keys")
            record["authorized_keys"] = tomlkit.array().multiline(True)
        keys = record["authorized_keys"]
        if not isinstance(keys, Array):
            raise UsersFileError(
                f"{self.path}: user {_shown(name)}: authorized_keys must be a list"
            )
        return keys

    def _edit(self, change: Callable[[Table], _Result]) -> _Result:
        """Apply `change` to the users table under the lock; write if valid."""

        if self.path.is_symlink():
            raise UsersFileError(
                f"{self.path} is a symbolic link; edit the file it points to "
                f"({self.path.resolve()}) instead"
            )

        try:
            with exclusive_lock(self.path, self.lock_timeout):
                return self._edit_locked(change)
        except LockTimeoutError:
            raise UsersFileError(
                f"{self.path} is being edited by another process (which holds "
                f"{lock_path_of(self.path)}); try again"
            ) from None
        except FileNotFoundError:
            raise UsersFileError(
                f"directory {self.path.parent} does not exist; create it first"
            ) from None
        except OSError as error:
            raise UsersFileError(
                f"cannot update users file {self.path}: {error.strerror}"
            ) from None

    def _edit_locked(self, change: Callable[[Table], _Result]) -> _Result:
        document = self._read_document()
        result = change(_users_table(document, self.path))

        # An edit adds no unknown keys; warning again about the operator's
        # own would only repeat what load() said.
        text = document.as_string()
        parse_users(text, self.path, warn=False)
        replace_file(self.path, text.encode("utf-8"), NEW_FILE_MODE)
        return result

    def _read_text(self) -> str:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return ""
        except OSError as error:
            raise UsersFileError(
                f"cannot read users file {self.path}: {error.strerror}"
            ) from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            raise UsersFileError(f"users file {self.path} is not UTF-8 text") from None

    def _read_document(self) -> tomlkit.TOMLDocument:
        try:
            return tomlkit.parse(self._read_text())
        except TOMLKitError as error:
            raise UsersFileError(f"{self.path} is not valid TOML: {error}") from None


def _users_table(document: tomlkit.TOMLDocument, source: Path) -> Table:
    """The document's users table, created when the file has none."""

    if USERS_SECTION not in document:
        # A super table is written only through its children's headers
        # ([users.alice]), not as an empty [users] header of its own.
        document[USERS_SECTION] = tomlkit.table(is_super_table=True)
    table = document[USERS_SECTION]
    if not isinstance(table, Table):
        raise UsersFileError(
            f"{source}: write users as [{USERS_SECTION}.NAME] tables, "
            f"not as an inline table or array"
        )
    return table


def _record_of(user: User) -> Table:
    """Render a user as a TOML table: keys normalized, defaults left out."""

    check_user_name(user.name)
    record = tomlkit.table()
    for key in _FIELDS:
        value = getattr(user, key)
        if key == "authorized_keys":
            value = _normalized_keys(user)
        if value is None or value == () or (key == "disabled" and not value):
            continue
        if key == "permissions":
            if value == default_permissions(user.read_only):
                continue
            value = _permissions_table(value)
        record[key] = _toml_value(value)
    return record


def _permissions_table(permissions: Mapping[str, frozenset[str]]) -> Table:
    table = tomlkit.table()
    for path, names in permissions.items():
        # Written in PERMISSIONS order, so every file lists them alike.
        table[path] = [name for name in PERMISSIONS if name in names]
    return table


def _toml_value(value: Any) -> Any:
    if isinstance(value, tuple):
        # One item per line keeps later diffs of the file readable.
        array = tomlkit.array().multiline(True)
        array.extend(str(item) for item in value)
        return array
    return value


def _normalized_keys(user: User) -> tuple[str, ...]:
    lines = []
    for number, line in enumerate(user.authorized_keys, start=1):
        try:
            lines.append(key_line(parse_public_key(line)))
        except ValueError as error:
            raise UsersFileError(
                f"user {_shown(user.name)}: authorized_keys entry {number} {error}"
            ) from None
    return tuple(lines)
