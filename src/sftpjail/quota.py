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
(`HomeWalk`: no links followed, at most `MAX_MEASURED_ENTRIES` entries,
a few thousand per turn of the supervisor's loop, while the user's
reservations wait); while the user has other sessions the books carry on,
and once the last session ends they are dropped, so every quiet login
starts from the truth on disk.

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
never freed, the pool of a worker that crashed stays counted, and a
directory that another session of the user moves, while the home is
measured, from a part not yet walked into one already walked is missed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections import deque
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
    """Count the regular files below `home` and their sizes, in one go."""

    walk = HomeWalk(home, max_entries, max_depth)
    while not walk.done:
        walk.step(max_entries + 1)
    return walk.measurement


# How many entries a walk takes in one step: a few milliseconds of the
# supervisor's loop, which serves other connections between steps.
ENTRIES_PER_STEP = 2_000

# Homes measured at the same time; the others wait their turn.  A walk
# holds a descriptor per directory level (up to MAX_MEASURED_DEPTH), so
# this bounds what walks take of the supervisor's descriptors.
MAX_WALKS_AT_ONCE = 2


@dataclass
class _Directory:
    """A directory on the walk's way down, and how far it has been read."""

    fd: int
    # os.scandir's iterator while the directory is read, then None.
    entries: os._ScandirIterator[str] | None
    subdirectories: list[str] = field(default_factory=list)


class HomeWalk:
    """A walk that counts the regular files below a home, step by step.

    The walk holds a descriptor per directory on its way down and opens
    each child with O_NOFOLLOW|O_DIRECTORY, so a directory swapped for a
    link meanwhile is skipped, never followed.  It stops after
    `max_entries` entries or below `max_depth` levels and then reports an
    incomplete count.  `step` may stop in the middle of a directory and go
    on later; `close` lets go of the descriptors of a walk left unfinished.
    """

    def __init__(
        self,
        home: Path,
        max_entries: int = MAX_MEASURED_ENTRIES,
        max_depth: int = MAX_MEASURED_DEPTH,
    ) -> None:
        self.max_entries = max_entries
        self.max_depth = max_depth
        self.usage = Usage()
        self.entries = 0
        self.stopped = False
        self._linked: set[tuple[int, int]] = set()
        self._stack: list[_Directory] = []
        self._enter(os.open(home, _DIRECTORY_FLAGS))

    @property
    def done(self) -> bool:
        return not self._stack

    @property
    def measurement(self) -> Measurement:
        return Measurement(self.usage, self.entries, complete=not self.stopped)

    def step(self, budget: int) -> bool:
        """Walk on for about `budget` entries; True once the walk is over."""

        stop_at = self.entries + budget
        try:
            while self._stack and self.entries < stop_at:
                if not self._advance(self._stack[-1], stop_at):
                    self.stopped = True
                    self.close()
        except BaseException:
            self.close()
            raise
        return self.done

    def close(self) -> None:
        """Let go of every descriptor the walk holds."""

        while self._stack:
            self._leave()

    def _advance(self, directory: _Directory, stop_at: int) -> bool:
        """Read on in `directory`, or go down or up; False to stop the walk."""

        if directory.entries is not None:
            return self._read(directory, stop_at)
        if not directory.subdirectories:
            self._leave()
            return True
        name = directory.subdirectories.pop()
        if len(self._stack) > self.max_depth:
            return False
        try:
            child = os.open(name, _DIRECTORY_FLAGS, dir_fd=directory.fd)
        except OSError:
            return True
        self._enter(child)
        return True

    def _read(self, directory: _Directory, stop_at: int) -> bool:
        """Count entries of `directory` until it ends or the step does."""

        assert directory.entries is not None
        try:
            for entry in directory.entries:
                self.entries += 1
                if self.entries > self.max_entries:
                    return False
                self._look_at(directory, entry)
                if self.entries >= stop_at:
                    return True
        except OSError as error:
            # The rest of the directory goes uncounted: say the count is short.
            logger.warning("Could not read a directory while measuring: %s", error)
            self.stopped = True
        self._finish_reading(directory)
        return True

    def _look_at(self, directory: _Directory, entry: os.DirEntry[str]) -> None:
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            # Removed since the directory was read (the user's sessions go
            # on while the walk runs): nothing left to count.
            return
        if stat.S_ISDIR(info.st_mode):
            directory.subdirectories.append(entry.name)
        elif stat.S_ISREG(info.st_mode):
            self._count(info)

    def _count(self, info: os.stat_result) -> None:
        if info.st_nlink > 1:
            inode = (info.st_dev, info.st_ino)
            if inode in self._linked:
                return
            self._linked.add(inode)
        self.usage.bytes += info.st_size
        self.usage.files += 1

    def _enter(self, fd: int) -> None:
        try:
            entries: os._ScandirIterator[str] | None = os.scandir(fd)
        except OSError as error:
            logger.warning("Could not read a directory while measuring: %s", error)
            entries = None
        self._stack.append(_Directory(fd, entries))

    @staticmethod
    def _finish_reading(directory: _Directory) -> None:
        if directory.entries is not None:
            directory.entries.close()
            directory.entries = None

    def _leave(self) -> None:
        directory = self._stack.pop()
        self._finish_reading(directory)
        os.close(directory.fd)


# -- the books (supervisor) ------------------------------------------------


@dataclass
class UserLedger:
    """One user's usage: files on disk plus what workers hold reserved."""

    limits: QuotaLimits
    used: Usage
    connections: set[int] = field(default_factory=set)
    # While the home is measured: the walk, and the requests that wait for it.
    walk: HomeWalk | None = None
    waiting: list[tuple[int, ipc.QuotaRequest]] = field(default_factory=list)

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


# Runs an action at the next turn of the supervisor's loop.
Later = Callable[[Callable[[], None]], None]
# Sends a message to the worker of a session: (connection id, message).
Answer = Callable[[int, dict[str, Any]], None]


class QuotaLedger:
    """The supervisor's books: every user with a quota and a live session.

    Given `later` and `answer`, the ledger measures a home one step per
    turn of the supervisor's loop, so a home of a million files holds up
    no other connection; the user's reservations wait for the measurement
    and are answered through `answer`.  At most `max_walks` homes are
    measured at once, the others in the order their users logged in.
    Without `later` and `answer` (tests, tools), a home is measured at once.
    """

    def __init__(
        self,
        max_entries: int = MAX_MEASURED_ENTRIES,
        later: Later | None = None,
        answer: Answer | None = None,
        max_walks: int = MAX_WALKS_AT_ONCE,
    ) -> None:
        # Reservations that wait for a walk need someone to answer them.
        assert (later is None) == (answer is None), "give both later and answer"
        self.max_entries = max_entries
        self.max_walks = max_walks
        self.users: dict[str, UserLedger] = {}
        self._user_of: dict[int, str] = {}
        self._later = later
        self._answer = answer
        self._walking = 0
        self._queued: deque[tuple[str, UserLedger]] = deque()

    def join(
        self, connection_id: int, user: str, limits: QuotaLimits, home: Path
    ) -> None:
        """A session of `user` logged in; measure the home if it is the only one."""

        if limits.unlimited:
            return
        ledger = self.users.get(user)
        if ledger is None:
            ledger = self._open_books(user, limits, home)
            self.users[user] = ledger
            self._start_walks()
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
        # A reservation still waiting for the measurement has nobody to
        # answer; granting it later would charge the user for nothing.
        ledger.waiting = [
            (waiting, request)
            for waiting, request in ledger.waiting
            if waiting != connection_id
        ]
        if not ledger.connections:
            del self.users[user]
            if ledger.walk is not None:
                ledger.walk.close()

    def handle(
        self, connection_id: int, request: ipc.QuotaRequest
    ) -> dict[str, Any] | None:
        """Apply a worker's request; return the reply, or None for none now.

        While the home is measured, a reservation waits and is answered
        once the measurement is done.  A release then is dropped: the walk
        counts what is on disk, so the file freed may never be counted,
        and a quota that counts too much until the next measurement is
        the safe side of not knowing.
        """

        user = self._user_of.get(connection_id)
        if user is None:
            raise ipc.ProtocolError("quota message from a session without a quota")
        ledger = self.users[user]
        if ledger.walk is None:
            return _apply(ledger, request)
        if request.is_release:
            return None
        if any(waiting == connection_id for waiting, _ in ledger.waiting):
            raise ipc.ProtocolError("a second quota reservation before the first reply")
        ledger.waiting.append((connection_id, request))
        return None

    def _open_books(self, user: str, limits: QuotaLimits, home: Path) -> UserLedger:
        if self._later is None:
            return UserLedger(limits, self._measure(user, home))
        ledger = UserLedger(limits, Usage())
        try:
            ledger.walk = HomeWalk(home, self.max_entries)
        except OSError as error:
            _log_unmeasured(user, error)
            return ledger
        self._queued.append((user, ledger))
        return ledger

    def _start_walks(self) -> None:
        """Start the walks that wait, as far as `max_walks` lets."""

        while self._walking < self.max_walks and self._queued:
            user, ledger = self._queued.popleft()
            if self.users.get(user) is not ledger or ledger.walk is None:
                continue  # the user left while the walk waited
            self._walking += 1
            self._step_later(user, ledger)

    def _step_later(self, user: str, ledger: UserLedger) -> None:
        assert self._later is not None
        self._later(lambda: self._walk_on(user, ledger))

    def _walk_on(self, user: str, ledger: UserLedger) -> None:
        """Take one step of measuring `user`'s home; answer the waiting when done."""

        walk = ledger.walk
        if walk is None or self.users.get(user) is not ledger:
            self._walk_ended()
            return
        try:
            if not walk.step(ENTRIES_PER_STEP):
                self._step_later(user, ledger)
                return
        except OSError as error:
            _log_unmeasured(user, error)
        else:
            ledger.used = _measured(user, walk.measurement)
        ledger.walk = None
        self._walk_ended()

        waiting, ledger.waiting = ledger.waiting, []
        for connection_id, request in waiting:
            reply = _apply(ledger, request)
            if reply is not None and self._answer is not None:
                self._answer(connection_id, reply)

    def _walk_ended(self) -> None:
        self._walking -= 1
        self._start_walks()

    def _measure(self, user: str, home: Path) -> Usage:
        try:
            measured = measure_home(home, self.max_entries)
        except OSError as error:
            _log_unmeasured(user, error)
            return Usage()
        return _measured(user, measured)


def _apply(ledger: UserLedger, request: ipc.QuotaRequest) -> dict[str, Any] | None:
    """A request against measured books: the reply, or None for a release."""

    if request.is_release:
        ledger.release(-request.bytes, -request.files)
        return None
    granted = ledger.reserve(request.bytes, request.files)
    return {"type": "quota_reply", "ok": granted is not None, "bytes": granted or 0}


def _log_unmeasured(user: str, error: OSError) -> None:
    logger.error(
        "Could not measure the home of %s for its quota (%s); counting it as empty.",
        user,
        error.strerror,
    )


def _measured(user: str, measured: Measurement) -> Usage:
    """What a finished walk found, with a word to the operator about it."""

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
