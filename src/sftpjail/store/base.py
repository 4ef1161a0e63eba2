"""What the server and the `sftpjail user` commands need from a store.

Two stores hold users: the users file (`sftpjail.users.UsersFile`, the
default, one machine) and PostgreSQL (`sftpjail.store.postgres`, shared by
replicas).  Both validate every user with the same field parsers, so a
record that one store accepts the other accepts too.

A store also says when it changed, through a descriptor the supervisor's
`selectors` loop polls: for the users file the inotify watch
(`sftpjail.reload.UsersWatch`), for PostgreSQL a LISTEN connection
(`sftpjail.store.postgres.Notifications`).

Failed logins and bans go through `sftpjail.defense.BanStore`, kept in
memory by default and in PostgreSQL when replicas share them
(`DefenseStore` is that same protocol, named here so both stores' faces
are in one place).
"""

from __future__ import annotations

from typing import Protocol

from sftpjail.defense import BanStore
from sftpjail.users import User

DefenseStore = BanStore


class UserStore(Protocol):
    """Validated reads and checked edits of the users."""

    def load(self) -> dict[str, User]:
        """Every user, validated, by name."""

    def get(self, name: str) -> User:
        """One user; UnknownUserError if there is none of that name."""

    def check_new_name(self, name: str) -> None:
        """UserExistsError if `name` is taken, UsersFileError if invalid."""

    def add(self, user: User) -> None:
        """Add a new user; UserExistsError if the name is taken."""

    def remove(self, name: str) -> User:
        """Remove a user and return what the store held about them."""

    def set_password(self, name: str, password_hash: str | None) -> None:
        """Replace a user's password hash, or remove it when None."""

    def add_key(self, name: str, key_or_line: str) -> None:
        """Add one OpenSSH public key line; refuse a duplicate."""

    def remove_key(self, name: str, key_or_fingerprint: str) -> str:
        """Remove a key given in full or as SHA256:...; return its line."""

    def set_disabled(self, name: str, disabled: bool) -> None:
        """Disable a user (their sessions end) or enable them again."""
