"""Per-user quotas on bytes and files, kept exact while sessions write.

Theory of operation
-------------------
What counts: regular files only.  A file costs its `st_size` (what `ls`
shows, and what users understand; a sparse file costs its full size) and
one file.  Directories and symbolic links cost nothing.  A file with
several hard links is counted once: bytes and files are per inode, so a
second link costs nothing and only removing the last name frees the file.

The supervisor keeps the books (`QuotaLedger`), one `UserLedger` per user
who has a quota and at least one live session.  When the first of those
sessions logs in, the supervisor measures the home from the file system
(`measure_home`: no links followed, at most `MAX_MEASURED_ENTRIES`
entries); while the user has other sessions the books carry on, and once
the last session ends they are dropped, so every quiet login starts from
the truth on disk.

A worker must reserve before it grows a file and releases what it frees
(`QuotaAccount`).  Reserving one message per write would be slow, so the
ledger grants a little more than asked (at most `RESERVATION_CHUNK`, and
never more than half of what is left beyond the need), which the worker
keeps in a pool and spends write by write.  The ledger counts a grant as
used at once, so the sum of all sessions' pools and files on disk never
exceeds the quota.  The pool goes back to the ledger when a written file
is closed, when a reservation is refused, and when the session ends.

Messages (see `sftpjail.ipc`): a worker sends `{"type": "quota",
"bytes": b, "files": f}`.  With both numbers >= 0 it reserves and gets
`{"type": "quota_reply", "ok": ..., "bytes": granted}`; with both <= 0
it releases and gets no reply.  A worker reports only the dimensions
that are limited, so an unlimited one costs no messages.

Known inexactness, corrected at the next login without other sessions:
two sessions of one user growing the same file at the same moment may
both be charged, a hard link whose other name lies outside the home is
never freed, and the pool of a worker that crashed stays counted.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpjail import ipc

logger = logging.getLogger("sftpjail.quota")

RESERVATION_CHUNK = 4 * 1024 * 1024
MAX_MEASURED_ENTRIES = 1_000_000
MAX_MEASURED_DEPTH = 256

_DIRECTORY_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class QuotaLimits:
    """A user's limits; None means unlimited."""

    bytes: int | None = None
    files: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.bytes is None and self.files is None


@dataclass
class Usage:
    """Bytes and regular files counted against a quota."""

    bytes: int = 0
    files: int = 0


def describe_size(size: int) -> str:
    """A size as people read it: 512 bytes, 1.0 MiB, 2.5 GiB."""

    if size < 1024:
        return f"{size} bytes"
    value = float(size) / 1024
    units = ["KiB", "MiB", "GiB", "TiB"]
    while value >= 1024 and len(units) > 1:
        value /= 1024
        units.pop(0)
    return f"{value:.1f} {units[0]}"


class QuotaExceededError(Exception):
    """A reservation was refused; the text is meant for the user."""


# -- measuring a home (supervisor) -----------------------------------------


@dataclass
class Measurement:
    """What a walk of a home found, and whether it saw everything."""

    usage: Usage
    entries: int
    complete: bool


def measure_home(
    home: Path,
    max_entries: int = MAX_MEASURED_ENTRIES,
    max_depth: int = MAX_MEASURED_DEPTH,
) -> Measurement:
    """Count the regular files below `home` and their sizes.

    The walk holds a descriptor per directory on its way down and opens
    each child with O_NOFOLLOW|O_DIRECTORY, so a directory swapped for a
    link meanwhile is skipped, never followed.  It stops after
    `max_entries` entries or below `max_depth` levels and then reports an
    incomplete count.
    """

    # XXX Should a very large home be measured in steps of the supervisor's
    # loop, so that other logins are not held up while it is walked?
    usage = Usage()
    walk = _Walk(usage, max_entries)
    root = os.open(home, _DIRECTORY_FLAGS)
    stack = [(root, walk.scan(root))]
    try:
        while stack and not walk.stopped:
            directory, children = stack[-1]
            if not children:
                os.close(directory)
                stack.pop()
                continue
            name = children.pop()
            if len(stack) > max_depth:
                walk.stopped = True
                break
            try:
                child = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory)
            except OSError:
                continue
            stack.append((child, walk.scan(child)))
    finally:
        for directory, _children in stack:
            os.close(directory)
    return Measurement(usage, walk.entries, complete=not walk.stopped)


@dataclass
class _Walk:
    usage: Usage
    max_entries: int
    entries: int = 0
    stopped: bool = False
    linked: set[tuple[int, int]] = field(default_factory=set)

    def scan(self, directory: int) -> list[str]:
        """Count the files of one directory; return its subdirectories."""

        subdirectories: list[str] = []
        try:
            with os.scandir(directory) as entries:
                for entry in entries:
                    self.entries += 1
                    if self.entries > self.max_entries:
                        self.stopped = True
                        break
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        subdirectories.append(entry.name)
                    elif stat.S_ISREG(info.st_mode):
                        self._count(info)
        except OSError as error:
            logger.warning("Could not read a directory while measuring: %s", error)
        return subdirectories

    def _count(self, info: os.stat_result) -> None:
        if info.st_nlink > 1:
            inode = (info.st_dev, info.st_ino)
            if inode in self.linked:
                return
            self.linked.add(inode)
        self.usage.bytes += info.st_size
        self.usage.files += 1


# -- the books (supervisor) ------------------------------------------------


@dataclass
class UserLedger:
    """One user's usage: files on disk plus what workers hold reserved."""

    limits: QuotaLimits
    used: Usage
    connections: set[int] = field(default_factory=set)

    def reserve(self, needed_bytes: int, files: int) -> int | None:
        """Grant at least `needed_bytes` and `files`; None if over a limit."""

        if (
            self.limits.files is not None
            and self.used.files + files > self.limits.files
        ):
            return None
        granted = needed_bytes
        if self.limits.bytes is not None and needed_bytes > 0:
            remaining = self.limits.bytes - self.used.bytes
            if needed_bytes > remaining:
                return None
            granted += min(RESERVATION_CHUNK, (remaining - needed_bytes) // 2)
        self.used.bytes += granted
        self.used.files += files
        return granted

    def release(self, freed_bytes: int, files: int) -> None:
        """Take back bytes and files a worker no longer uses."""

        self.used.bytes = max(0, self.used.bytes - freed_bytes)
        self.used.files = max(0, self.used.files - files)


class QuotaLedger:
    """The supervisor's books: every user with a quota and a live session."""

    def __init__(self, max_entries: int = MAX_MEASURED_ENTRIES) -> None:
        self.max_entries = max_entries
        self.users: dict[str, UserLedger] = {}
        self._user_of: dict[int, str] = {}

    def join(
        self, connection_id: int, user: str, limits: QuotaLimits, home: Path
    ) -> None:
        """A session of `user` logged in; measure the home if it is the only one."""

        if limits.unlimited:
            return
        ledger = self.users.get(user)
        if ledger is None:
            ledger = UserLedger(limits, self._measure(user, home))
            self.users[user] = ledger
        # The newest limits win, so a changed users file applies at once.
        ledger.limits = limits
        ledger.connections.add(connection_id)
        self._user_of[connection_id] = user

    def leave(self, connection_id: int) -> None:
        """A session ended; drop the user's books with their last session."""

        user = self._user_of.pop(connection_id, None)
        if user is None:
            return
        ledger = self.users[user]
        ledger.connections.discard(connection_id)
        if not ledger.connections:
            del self.users[user]

    def handle(
        self, connection_id: int, request: ipc.QuotaRequest
    ) -> dict[str, Any] | None:
        """Apply a worker's request; return the reply, or None for a release."""

        user = self._user_of.get(connection_id)
        if user is None:
            raise ipc.ProtocolError("quota message from a session without a quota")
        ledger = self.users[user]
        if request.is_release:
            ledger.release(-request.bytes, -request.files)
            return None
        granted = ledger.reserve(request.bytes, request.files)
        return {"type": "quota_reply", "ok": granted is not None, "bytes": granted or 0}

    def _measure(self, user: str, home: Path) -> Usage:
        try:
            measured = measure_home(home, self.max_entries)
        except OSError as error:
            logger.error(
                "Could not measure the home of %s for its quota (%s); "
                "counting it as empty.",
                user,
                error.strerror,
            )
            return Usage()
        if not measured.complete:
            logger.error(
                "Stopped measuring the home of %s after %d entries; its quota "
                "counts only the %d files seen.",
                user,
                measured.entries,
                measured.usage.files,
            )
        logger.debug(
            "The home of %s holds %d files, %s.",
            user,
            measured.usage.files,
            describe_size(measured.usage.bytes),
        )
        return measured.usage


# -- one worker's share (worker) -------------------------------------------

Ask = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
Tell = Callable[[dict[str, Any]], None]


class QuotaAccount:
    """A worker's side of its user's quota, shared by all its SFTP channels.

    `pool` holds bytes granted by the ledger and not yet spent on file
    data.  Callers ask `covers` before growing a file, `reserve_bytes` when
    it does not, then `spend` the growth and `refund` what a failed write
    did not use.  With no limit on a dimension every call about it is free.
    """

    def __init__(self, limits: QuotaLimits, ask: Ask, tell: Tell) -> None:
        self.limits = limits
        self.pool = 0
        self._ask = ask
        self._tell = tell

    def covers(self, nbytes: int) -> bool:
        """Whether `nbytes` of growth can be spent without asking."""

        return self.limits.bytes is None or nbytes <= self.pool

    async def reserve_bytes(self, nbytes: int) -> None:
        """Make the pool hold at least `nbytes`; QuotaExceededError if not."""

        if self.covers(nbytes):
            return
        reply = await self._ask(
            {"type": "quota", "bytes": nbytes - self.pool, "files": 0}
        )
        if not reply.get("ok"):
            self.settle()
            assert self.limits.bytes is not None
            raise QuotaExceededError(
                f"quota exceeded: your files may use at most "
                f"{describe_size(self.limits.bytes)}; delete some to free space"
            )
        self.pool += int(reply["bytes"])

    async def reserve_file(self) -> None:
        """Reserve one new file; QuotaExceededError if the limit is reached."""

        if self.limits.files is None:
            return
        reply = await self._ask({"type": "quota", "bytes": 0, "files": 1})
        if not reply.get("ok"):
            raise QuotaExceededError(
                f"quota exceeded: you may keep at most {self.limits.files} files; "
                "delete some to make room"
            )

    def spend(self, nbytes: int) -> None:
        """Growth of a file, paid from the pool (after `covers` said yes)."""

        if self.limits.bytes is not None:
            self.pool -= nbytes

    def refund(self, nbytes: int) -> None:
        """Put back growth that did not happen after all."""

        if self.limits.bytes is not None and nbytes > 0:
            self.pool += nbytes

    def freed(self, nbytes: int = 0, files: int = 0) -> None:
        """A file shrank or went away: give its share back to the ledger."""

        nbytes = nbytes if self.limits.bytes is not None else 0
        files = files if self.limits.files is not None else 0
        if nbytes > 0 or files > 0:
            self._tell({"type": "quota", "bytes": -nbytes, "files": -files})

    def settle(self) -> None:
        """Give the unspent pool back to the ledger."""

        if self.pool > 0:
            self._tell({"type": "quota", "bytes": -self.pool, "files": 0})
        self.pool = 0
