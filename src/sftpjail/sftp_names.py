"""SFTP v3 directory listings, encoded straight from stat results.

Theory of operation.  A listing is the one reply where per-entry work
adds up: `ls -l` of a large directory asks for its entries 128 at a
time, and asyncssh builds two records per entry (an `SFTPAttrs` with 23
fields and an `SFTPName`), formats the long name with three `strftime`
calls, then encodes both field by field.  For SFTP v3, which every
common client speaks, a listed entry on the wire is its name, its long
name and six numbers, so `encode_names` packs those from the
`os.stat_result` directly, and `LongNames` formats the long names the
way asyncssh's `SFTPServer.format_longname` does, remembering for the
whole listing the date text of each modification time and the name of
each owner and group it has seen.

The bytes are the same as asyncssh's for every entry a Linux file system
can hold (tests compare the two), with two differences on purpose: a time
outside the 32-bit range of SFTP v3 is sent modulo 2^32 instead of
failing the whole reply, and a date the C library cannot convert is
left empty.
"""

from __future__ import annotations

import os
import stat
import struct
import time
from collections.abc import Callable, Iterable

from asyncssh.constants import (
    FILEXFER_ATTR_ACMODTIME,
    FILEXFER_ATTR_PERMISSIONS,
    FILEXFER_ATTR_SIZE,
    FILEXFER_ATTR_UIDGID,
    FXP_NAME,
)

# An entry whose metadata could not be read (a vanished parent, say):
# listed with no attributes, as asyncssh lists an empty SFTPAttrs.
Entry = tuple[bytes, os.stat_result | None]

# The attributes a stat result fills in, in SFTP v3's order: size, owner
# and group, permissions, access and modification times.
_ALL_FLAGS = (
    FILEXFER_ATTR_SIZE
    | FILEXFER_ATTR_UIDGID
    | FILEXFER_ATTR_PERMISSIONS
    | FILEXFER_ATTR_ACMODTIME
)
_ATTRIBUTES = struct.Struct(">IQIIIII")
_NO_ATTRIBUTES = bytes(4)
_STRING_LENGTH = struct.Struct(">I")
# SSH_FXP_NAME up to its entries: length, type, request id, entry count.
_NAME_HEAD = struct.Struct(">IBII")
_UINT32 = 0xFFFFFFFF
_NS_PER_SECOND = 10**9

# `ls -l` shows the time of day for files changed in the last half year,
# the year for older ones and for those dated in the future.
_HALF_A_YEAR = 365 * 24 * 60 * 60 / 2


class LongNames:
    """The `ls -l` lines of SFTP v3 listings, for one listing request.

    `user_of` and `group_of` name an owner and a group as the server
    wants them shown; both are asked once per distinct number.
    """

    def __init__(
        self,
        user_of: Callable[[int | None], str],
        group_of: Callable[[int | None], str],
    ) -> None:
        self._user_of = user_of
        self._group_of = group_of
        self._users: dict[int | None, str] = {}
        self._groups: dict[int | None, str] = {}
        self._dates: dict[tuple[int, bool], str] = {}
        self._now = time.time()

    def of(self, name: bytes, info: os.stat_result | None) -> bytes:
        """The long name of one entry."""

        if info is None:
            detail = self._detail("", "", None, None, "", "")
            return detail.encode() + name
        mtime = info.st_mtime_ns // _NS_PER_SECOND
        detail = self._detail(
            stat.filemode(info.st_mode),
            str(info.st_nlink) if info.st_nlink else "",
            info.st_uid,
            info.st_gid,
            str(info.st_size),
            self._date(mtime),
        )
        return detail.encode() + name

    def _detail(
        self,
        mode: str,
        links: str,
        uid: int | None,
        gid: int | None,
        size: str,
        date: str,
    ) -> str:
        user = self._name(self._users, self._user_of, uid)
        group = self._name(self._groups, self._group_of, gid)
        return f"{mode:10s} {links:>4s} {user:8s} {group:8s} {size:>8s} {date:12s} "

    @staticmethod
    def _name(
        known: dict[int | None, str],
        name_of: Callable[[int | None], str],
        number: int | None,
    ) -> str:
        name = known.get(number)
        if name is None:
            name = known[number] = name_of(number)
        return name

    def _date(self, mtime: int) -> str:
        recent = self._now - _HALF_A_YEAR < mtime <= self._now
        date = self._dates.get((mtime, recent))
        if date is None:
            date = self._dates[(mtime, recent)] = _format_date(mtime, recent)
        return date


def _format_date(mtime: int, recent: bool) -> str:
    try:
        local = time.localtime(mtime)
    except (OverflowError, OSError):
        # Beyond what the C library can convert: no date rather than no
        # listing (asyncssh would fail the whole reply).
        return ""
    try:
        day = time.strftime("%e", local)
    except ValueError:
        # Some C libraries have no %e.
        day = time.strftime("%d", local)
    tail = time.strftime(" %H:%M" if recent else "  %Y", local)
    return time.strftime("%b ", local) + day + tail


def encode_attributes(info: os.stat_result | None) -> bytes:
    """The SFTP v3 attributes of a stat result (none for None)."""

    if info is None:
        return _NO_ATTRIBUTES
    return _ATTRIBUTES.pack(
        _ALL_FLAGS,
        info.st_size,
        info.st_uid,
        info.st_gid,
        info.st_mode,
        (info.st_atime_ns // _NS_PER_SECOND) & _UINT32,
        (info.st_mtime_ns // _NS_PER_SECOND) & _UINT32,
    )


def encode_names(
    request_id: int, entries: Iterable[Entry], long_names: LongNames
) -> bytes:
    """A whole SSH_FXP_NAME reply for SFTP v3, length prefix included."""

    pieces: list[bytes] = []
    count = 0
    for name, info in entries:
        long_name = long_names.of(name, info)
        pieces += (
            _STRING_LENGTH.pack(len(name)),
            name,
            _STRING_LENGTH.pack(len(long_name)),
            long_name,
            encode_attributes(info),
        )
        count += 1

    body = b"".join(pieces)
    head_bytes = _NAME_HEAD.size - _STRING_LENGTH.size
    head = _NAME_HEAD.pack(head_bytes + len(body), FXP_NAME, request_id, count)
    return head + body
