"""Variant: remember user and group names instead of asking NSS every time.

asyncssh's `SFTPAttrs.from_local` looks up the owner's and group's names
for every stat reply and every listed entry; inside the sandbox the
password and group files are out of reach, so every lookup fails and
falls back to the number.  SFTP v3 does not even send the names.
"""

from __future__ import annotations

import functools

import asyncssh.sftp

asyncssh.sftp._lookup_user = functools.lru_cache(maxsize=1024)(
    asyncssh.sftp._lookup_user
)
asyncssh.sftp._lookup_group = functools.lru_cache(maxsize=1024)(
    asyncssh.sftp._lookup_group
)
