"""Per-directory permissions: what a user may do where in their home.

Theory of operation
-------------------
The users file grants permission names per directory of the user's own
view, where `/` is the home: `{"/": ["list", "download"], "/incoming":
["upload"]}`.  A directory's permissions hold for everything below it
until a deeper configured directory says otherwise, so the permissions of
any path are those of its *longest* configured prefix, compared component
by component ("/incoming" covers "/incoming/a/b" but not "/incomingX").
The sets do not add up: "/incoming" above replaces what "/" grants.

A `Rule` says what one SFTP operation needs and *where* it is checked:
at the path itself (a listed directory, a stat-ed object) or at the
directory that holds it (a new file, a removed entry).  The caller passes
the path where the object really is, after symlinks were resolved inside
the jail, so a link cannot carry one directory's permissions into another.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from sftpjail.jailpath import normalize


class Permission(enum.Flag):
    """What a user may do; read-only users hold LIST and DOWNLOAD only."""

    LIST = enum.auto()
    DOWNLOAD = enum.auto()
    UPLOAD = enum.auto()
    OVERWRITE = enum.auto()
    DELETE = enum.auto()
    RENAME = enum.auto()
    MKDIR = enum.auto()
    SYMLINK = enum.auto()
    CHMOD = enum.auto()


NO_PERMISSION = Permission(0)
ALL_PERMISSIONS = Permission(sum(member.value for member in Permission))
READ_ONLY_PERMISSIONS = Permission.LIST | Permission.DOWNLOAD

# The names the users file and the supervisor's grant use.
PERMISSION_NAMES: dict[str, Permission] = {
    str(member.name).lower(): member for member in Permission
}


class Scope(enum.Enum):
    """Which directory's permissions an operation is checked against."""

    PATH = "the path itself"
    PARENT = "the directory holding it"


@dataclass(frozen=True)
class Rule:
    """What one operation needs, and where.

    With `any_of` the user needs at least one of `needs` there instead of
    all of them; that is how lookups are allowed wherever the user may do
    anything at all.
    """

    needs: Permission
    scope: Scope
    any_of: bool = False


class PermissionGrantError(ValueError):
    """A grant names an unknown permission or a path that is not absolute."""


Components = tuple[bytes, ...]


def _components(client_path: bytes) -> Components:
    relative = normalize(client_path)
    return () if relative == b"." else tuple(relative.split(b"/"))


def parent_of(client_path: bytes) -> bytes:
    """The directory holding `client_path` (the home holds itself)."""

    parts = _components(client_path)[:-1]
    return b"/" + b"/".join(parts)


@dataclass(frozen=True)
class PermissionMap:
    """Configured directories and their permissions, deepest first."""

    rules: tuple[tuple[Components, Permission], ...]

    @classmethod
    def from_grant(
        cls, mapping: Mapping[str, Iterable[str]], *, read_only: bool = False
    ) -> PermissionMap:
        """Build the map from `{"/dir": ["upload", ...]}`.

        A home without an entry for "/" grants nothing there (the users
        file always has one).  `read_only` cuts every set down to list and
        download, whatever the mapping says.
        """

        ceiling = READ_ONLY_PERMISSIONS if read_only else ALL_PERMISSIONS
        rules: dict[Components, Permission] = {}
        for directory, names in mapping.items():
            if not isinstance(directory, str) or not directory.startswith("/"):
                raise PermissionGrantError(
                    f"permission directory {directory!r} is not an absolute path"
                )
            rules[_components(directory.encode())] = _parse_names(names) & ceiling
        ordered = sorted(rules.items(), key=lambda item: len(item[0]), reverse=True)
        return cls(tuple(ordered))

    @classmethod
    def everywhere(cls, permissions: Permission) -> PermissionMap:
        """The same permissions in the whole home."""

        return cls((((), permissions),))

    def at(self, client_path: bytes) -> Permission:
        """The permissions that hold at `client_path` (a client-view path)."""

        parts = _components(client_path)
        for prefix, permissions in self.rules:
            if parts[: len(prefix)] == prefix:
                return permissions
        return NO_PERMISSION

    def allows(self, rule: Rule, client_path: bytes) -> bool:
        """Whether `rule` is satisfied for an object at `client_path`."""

        where = parent_of(client_path) if rule.scope is Scope.PARENT else client_path
        held = self.at(where)
        if rule.any_of:
            return bool(held & rule.needs)
        return rule.needs in held

    def anywhere(self) -> Permission:
        """Every permission the user holds somewhere in the home."""

        combined = NO_PERMISSION
        for _prefix, permissions in self.rules:
            combined |= permissions
        return combined


def _parse_names(names: Iterable[str]) -> Permission:
    if isinstance(names, str):
        raise PermissionGrantError("permission names must be a list, not a string")
    combined = NO_PERMISSION
    for name in names:
        permission = PERMISSION_NAMES.get(name)
        if permission is None:
            known = ", ".join(PERMISSION_NAMES)
            raise PermissionGrantError(f"unknown permission {name!r}; known: {known}")
        combined |= permission
    return combined
