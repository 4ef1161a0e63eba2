"""Users in PostgreSQL: the `UserStore` replicas share.

One row per user in `sftpjail_users`, one column per field of
`sftpjail.users.User`.  Every row read and every row about to be written
goes through the users file's own field parsers (`user_from_record`), so
the database can hold nothing the users file would refuse, and a user
moved from one store to the other means the same thing in both.

Each edit is one transaction: lock the row, check, write, and queue a
NOTIFY on `sftpjail_users` that PostgreSQL delivers to every replica when
the transaction commits.  The replicas then read the users again
(`load`), so a change made through one is seen by all within the time a
notice takes to cross the network.
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from psycopg import errors as pg_errors
from psycopg.types.json import Jsonb

from sftpjail.errors import UnknownUserError, UserExistsError, UsersFileError
from sftpjail.public_keys import (
    describe_key,
    key_line,
    parse_public_key,
    same_key,
)
from sftpjail.store.postgres import USERS_CHANNEL, Connection, Database, notify
from sftpjail.users import (
    User,
    check_user_name,
    default_permissions,
    removal_matcher,
    user_from_record,
)

_Result = TypeVar("_Result")

# How validation messages name this store ("the database: user ...").
_SOURCE = Path("the database")
_HOME_CONSTRAINT = "sftpjail_users_home_key"
_COLUMNS = (
    "name, password_hash, authorized_keys, home, read_only, disabled, expires, "
    "allowed_networks, permissions, quota_bytes, quota_files"
)


class PostgresUserStore:
    """The users in table `sftpjail_users`; every edit notifies the replicas."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def load(self) -> dict[str, User]:
        """Read and validate every user."""

        with self.database.transaction() as connection:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM sftpjail_users ORDER BY name"  # noqa: S608
            ).fetchall()
        return {str(row[0]): _user_from_row(row) for row in rows}

    def get(self, name: str) -> User:
        """One user; UnknownUserError if absent."""

        with self.database.transaction() as connection:
            return self._locked(connection, name)

    def check_new_name(self, name: str) -> None:
        """UserExistsError if `name` is taken, UsersFileError if invalid."""

        check_user_name(name)
        with self.database.transaction() as connection:
            found = connection.execute(
                "SELECT 1 FROM sftpjail_users WHERE name = %s", (name,)
            ).fetchone()
        if found is not None:
            raise self._user_exists(name)

    def add(self, user: User) -> None:
        """Insert a new user; UserExistsError if the name is taken."""

        checked = validated(user)
        with self.database.transaction() as connection:
            try:
                connection.execute(
                    f"INSERT INTO sftpjail_users ({_COLUMNS}) "  # noqa: S608
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    _row_of(checked),
                )
            except pg_errors.UniqueViolation as error:
                raise self._duplicate(checked, error) from None
            notify(connection, USERS_CHANNEL, user.name)

    def remove(self, name: str) -> User:
        """Delete a user and return what the row said about them."""

        with self.database.transaction() as connection:
            user = self._locked(connection, name)
            connection.execute("DELETE FROM sftpjail_users WHERE name = %s", (name,))
            notify(connection, USERS_CHANNEL, name)
        return user

    def set_password(self, name: str, password_hash: str | None) -> None:
        """Replace a user's password hash, or remove it when None."""

        self._set(name, password_hash=password_hash)

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable a user (every replica ends their sessions) or enable them."""

        self._set(name, disabled=disabled)

    def add_key(self, name: str, key_or_line: str) -> None:
        """Add one OpenSSH public key line to a user; refuse a duplicate."""

        try:
            key = parse_public_key(key_or_line)
        except ValueError as error:
            raise UsersFileError(f'the new key for user "{name}" {error}') from None

        def change(user: User) -> tuple[User, None]:
            if any(same_key(line, key) for line in user.authorized_keys):
                fingerprint = key.get_fingerprint("sha256")
                raise UsersFileError(f'user "{name}" already has key {fingerprint}')
            keys = (*user.authorized_keys, key_line(key))
            return dataclasses.replace(user, authorized_keys=keys), None

        self._edit(name, change)

    def remove_key(self, name: str, key_or_fingerprint: str) -> str:
        """Remove a key given in full or as SHA256:...; return its line."""

        matches = removal_matcher(key_or_fingerprint)

        def change(user: User) -> tuple[User, str]:
            for line in user.authorized_keys:
                if matches(line):
                    kept = tuple(k for k in user.authorized_keys if k != line)
                    return dataclasses.replace(user, authorized_keys=kept), line
            wanted = describe_key(key_or_fingerprint)
            raise UsersFileError(f'user "{name}" has no key matching {wanted}')

        return self._edit(name, change)

    def _set(self, name: str, **fields: Any) -> None:
        self._edit(name, lambda user: (dataclasses.replace(user, **fields), None))

    def _edit(
        self, name: str, change: Callable[[User], tuple[User, _Result]]
    ) -> _Result:
        """Lock the row, apply `change`, validate, write it back, notify."""

        with self.database.transaction() as connection:
            user, result = change(self._locked(connection, name))
            row = _row_of(validated(user))
            connection.execute(
                "UPDATE sftpjail_users SET password_hash = %s, authorized_keys = %s, "
                "disabled = %s, changed_at = clock_timestamp() WHERE name = %s",
                (row[1], row[2], row[5], name),
            )
            notify(connection, USERS_CHANNEL, name)
        return result

    def _locked(self, connection: Connection, name: str) -> User:
        row = connection.execute(
            f"SELECT {_COLUMNS} FROM sftpjail_users "  # noqa: S608
            "WHERE name = %s FOR UPDATE",
            (name,),
        ).fetchone()
        if row is None:
            raise UnknownUserError(
                f'no user "{name}" in the database {self.database.describe()}'
            )
        return _user_from_row(row)

    def _user_exists(self, name: str) -> UserExistsError:
        return UserExistsError(
            f'user "{name}" already exists in the database; choose another '
            "name or remove that user first"
        )

    def _duplicate(self, user: User, error: pg_errors.UniqueViolation) -> Exception:
        if error.diag.constraint_name == _HOME_CONSTRAINT:
            return UsersFileError(
                f'another user already has the home "{user.home}"; give each '
                "user a home of their own (--home)"
            )
        return self._user_exists(user.name)


def validated(user: User) -> User:
    """`user` as the users file's parsers see it: checked and normalized."""

    check_user_name(user.name)
    return user_from_record(user.name, _record_of(user), _SOURCE)


def _record_of(user: User) -> dict[str, Any]:
    """The user as the table of a users file would hold it."""

    record: dict[str, Any] = {
        "authorized_keys": list(user.authorized_keys),
        "home": user.home,
        "read_only": user.read_only,
        "disabled": user.disabled,
    }
    optional = {
        "password_hash": user.password_hash,
        "expires": user.expires,
        "quota_bytes": user.quota_bytes,
        "quota_files": user.quota_files,
    }
    record.update({key: value for key, value in optional.items() if value is not None})
    if user.allowed_networks:
        record["allowed_networks"] = [str(net) for net in user.allowed_networks]
    if dict(user.permissions) != default_permissions(user.read_only):
        record["permissions"] = _permission_lists(user)
    return record


def _permission_lists(user: User) -> dict[str, list[str]]:
    return {path: sorted(names) for path, names in user.permissions.items()}


def _row_of(user: User) -> tuple[Any, ...]:
    """The column values of `user`, in `_COLUMNS` order."""

    permissions = None
    if dict(user.permissions) != default_permissions(user.read_only):
        permissions = Jsonb(_permission_lists(user))
    return (
        user.name,
        user.password_hash,
        list(user.authorized_keys),
        user.home,
        user.read_only,
        user.disabled,
        user.expires_at,
        [str(network) for network in user.allowed_networks],
        permissions,
        user.quota_bytes,
        user.quota_files,
    )


def _user_from_row(row: tuple[Any, ...]) -> User:
    """Validate one row exactly as a users file's table would be."""

    (name, password_hash, keys, home, read_only, disabled, expires,
     networks, permissions, quota_bytes, quota_files) = row  # fmt: skip
    record: dict[str, Any] = {
        "authorized_keys": list(keys),
        "home": home,
        "read_only": read_only,
        "disabled": disabled,
    }
    optional: dict[str, Any] = {
        "password_hash": password_hash,
        "expires": _utc(expires),
        "permissions": permissions,
        "quota_bytes": quota_bytes,
        "quota_files": quota_files,
    }
    record.update({key: value for key, value in optional.items() if value is not None})
    if networks:
        record["allowed_networks"] = list(networks)
    return user_from_record(str(name), record, _SOURCE)


def _utc(moment: datetime.datetime | None) -> datetime.datetime | None:
    return None if moment is None else moment.astimezone(datetime.UTC)
