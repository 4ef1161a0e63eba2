"""Live user changes: notice that the users file changed, and what follows.

Theory of operation: three things make the supervisor read the users file
again: SIGHUP, a `reload` request on the control socket (which `sftpjail
user ...` sends after each edit), and an inotify watch.  The watch is on
the file's *directory*, not the file: editors and `sftpjail user` replace
the file by renaming a new one over it, and Kubernetes swaps a `..data`
symbolic link beside it, both of which a watch on the old file would never
see.  Events arrive on a descriptor the supervisor's `selectors` loop
polls; no thread waits on them.  A burst of events (write, rename) is
coalesced by the caller, and `FileSignature` tells whether the file really
changed, so the lock file's events and repeated triggers cost one stat.

Whatever the trigger, the whole new file is validated before it replaces
the old users.  `sessions_to_end` then names the logged-in sessions whose
user was removed, disabled, has expired or may no longer connect from that
address; changed keys and passwords only matter to the next login.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify, flags

from sftpjail.users import User, login_refusal

logger = logging.getLogger("sftpjail.reload")

# Kubernetes updates a mounted ConfigMap by renaming this link.
KUBERNETES_DATA_LINK = "..data"
_EVENTS = (
    flags.CLOSE_WRITE
    | flags.MOVED_TO
    | flags.MOVED_FROM
    | flags.CREATE
    | flags.DELETE
    | flags.ATTRIB
)


@dataclass(frozen=True)
class FileSignature:
    """Enough of a file's identity to tell that it was replaced or changed."""

    device: int
    inode: int
    size: int
    modified_ns: int

    @classmethod
    def of(cls, path: Path) -> FileSignature | None:
        """The signature of the file `path` names now; None if it is absent."""

        try:
            status = os.stat(path)
        except OSError:
            return None
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class UsersWatch:
    """An inotify watch on the directory that holds the users file."""

    def __init__(self, users_file: Path) -> None:
        self.users_file = users_file
        self._inotify = INotify(nonblocking=True)
        try:
            self._inotify.add_watch(users_file.parent, _EVENTS)
        except OSError:
            self._inotify.close()
            raise

    def fileno(self) -> int:
        """The descriptor to poll for events."""

        return int(self._inotify.fileno())

    def changed(self) -> bool:
        """Read every pending event; True if one may concern the users file."""

        relevant = False
        for event in self._inotify.read(timeout=0):
            if event.mask & (flags.Q_OVERFLOW | flags.IGNORED):
                relevant = True
            elif event.name in (self.users_file.name, KUBERNETES_DATA_LINK):
                relevant = True
        return relevant

    def close(self) -> None:
        """Stop watching."""

        self._inotify.close()


@dataclass(frozen=True)
class LiveSession:
    """The little `sessions_to_end` needs to know about a session."""

    connection_id: int
    user: str
    peer_host: str


def sessions_to_end(
    sessions: Iterable[LiveSession],
    users: Mapping[str, User],
    now: datetime.datetime | None = None,
) -> list[tuple[LiveSession, str]]:
    """The sessions that must end under `users`, each with the reason."""

    ending = []
    for session in sessions:
        user = users.get(session.user)
        if user is None:
            ending.append((session, "user removed"))
            continue
        reason = login_refusal(user, session.peer_host, now)
        if reason is not None:
            ending.append((session, reason))
    return ending
