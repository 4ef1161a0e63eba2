"""Users with directory permissions and quotas for the server tests."""

from __future__ import annotations

import dataclasses

from serverlab import ClientKey, ServerLab
from sftpjail.users import UsersFile


def add_restricted_user(
    lab: ServerLab, name: str, *, read_only: bool = False, **fields: object
) -> ClientKey:
    """Add a user like `ServerLab.add_user`, then give it `fields`
    (permissions, quota_bytes, quota_files) through the users file."""

    key = lab.add_user(name, read_only=read_only)
    if "permissions" in fields:
        table = fields["permissions"]
        assert isinstance(table, dict)
        fields["permissions"] = {
            path: frozenset(names) for path, names in table.items()
        }
    users = UsersFile(lab.users_file)
    user = users.remove(name)
    users.add(dataclasses.replace(user, **fields))  # type: ignore[arg-type]
    return key
