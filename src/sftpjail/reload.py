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
address; changed keys and passwords only matter to the next login.  Expiry
needs no trigger: the logged-in sessions are checked every few seconds.

`LiveUsers` holds the users the supervisor judges logins by and does all
of the above.  On a replica (`[database] url`) the users come from the
shared store instead, and its change notices take the place of the file
watch (`sftpjail.store.link`).
"""

from __future__ import annotations

import datetime
import logging
import os
import selectors
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from inotify_simple import INotify, flags

from sftpjail.config import Config
from sftpjail.metrics import Metrics
from sftpjail.store.link import DatabaseLink
from sftpjail.store.shared import SharedStore
from sftpjail.timers import Timers
from sftpjail.users import User, UsersFile, login_refusal

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
# A rename comes with several events; read the file once they settle.
_RELOAD_SETTLE = 0.2
# How often logged-in users are checked against expiry dates.
_SWEEP_INTERVAL = 5.0


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


class LiveUsers:
    """The users logins are judged by, read again whenever they change.

    They come from the users file or, with `[database] url`, from the
    shared store through its `DatabaseLink`.  Whenever new users are taken,
    and every `_SWEEP_INTERVAL` seconds for expiry dates, `on_change` gets
    them, so that the sessions they no longer let in can be ended.
    """

    def __init__(
        self,
        config: Config,
        selector: selectors.BaseSelector,
        timers: Timers,
        metrics: Metrics,
        shared: SharedStore | None,
        on_change: Callable[[Mapping[str, User]], None],
    ) -> None:
        self.config = config
        self.selector = selector
        self.timers = timers
        self.metrics = metrics
        self.on_change = on_change
        self.users: dict[str, User] = {}
        self.database: DatabaseLink | None = None
        if shared is not None:
            self.database = DatabaseLink(shared, selector, timers.schedule, self._take)
        self._watch: UsersWatch | None = None
        self._signature: FileSignature | None = None
        self._reload_pending = False

    @property
    def unreachable(self) -> bool:
        """True while the shared store is away: no login can be judged."""

        return self.database is not None and not self.database.connected

    def load(self) -> None:
        """Read the users file, or connect to the shared store, at startup."""

        if self.database is not None:
            self.database.start()
            return
        self._signature = FileSignature.of(self.config.users_file)
        self.users = UsersFile(self.config.users_file).load()
        logger.info("Loaded %d users from %s.", len(self.users), self.config.users_file)

    def reload(self, trigger: str) -> bool:
        """Read the users file again; keep the old users if it is invalid.

        Sessions of users the new file removes, disables or lets expire
        are ended.  Returns whether the new file was taken.
        """

        if self.database is not None:
            return self.database.reload(trigger)
        logger.info("Reading the users file again after %s.", trigger)
        signature = FileSignature.of(self.config.users_file)
        try:
            users = UsersFile(self.config.users_file).load()
        except Exception as error:
            # Remembered, so the same broken file is not read on every event.
            self._signature = signature
            self.metrics.user_reloads.labels("failed").inc()
            logger.error(
                "Kept the previous users: the users file is invalid: %s", error
            )
            return False

        self.users = users
        self._signature = signature
        self.metrics.user_reloads.labels("ok").inc()
        logger.info("Reloaded %d users from %s.", len(users), self.config.users_file)
        self.on_change(self.users)
        return True

    def reload_if_changed(self, trigger: str) -> bool:
        """Read the users again unless the file is unchanged; True if read."""

        self._reload_pending = False
        if self.database is not None:
            return self.database.reload(trigger)
        if FileSignature.of(self.config.users_file) == self._signature:
            return False
        self.reload(trigger)
        return True

    def watch(self) -> None:
        """Watch the users file if so configured; check expiry dates often."""

        if self.config.watch_users_file and self.database is None:
            self._watch_users_file()
        self.timers.schedule(_SWEEP_INTERVAL, self._sweep)

    def close(self) -> None:
        """Stop watching the file and close the shared store, for shutdown."""

        if self._watch is not None:
            self.selector.unregister(self._watch.fileno())
            self._watch.close()
            self._watch = None
        if self.database is not None:
            self.database.close()

    def _take(self, users: dict[str, User]) -> None:
        """Users read from the shared store: take them, end refused sessions."""

        self.users = users
        self.metrics.user_reloads.labels("ok").inc()
        logger.info("Loaded %d users from the database.", len(users))
        self.on_change(self.users)

    def _watch_users_file(self) -> None:
        directory = self.config.users_file.parent
        try:
            self._watch = UsersWatch(self.config.users_file)
        except OSError as error:
            logger.warning(
                "Cannot watch %s for changes (%s); send SIGHUP after editing users.",
                directory,
                error.strerror,
            )
            return
        self.selector.register(
            self._watch.fileno(), selectors.EVENT_READ, self._on_file_event
        )
        logger.info("Watching %s for changes of the users file.", directory)

    def _on_file_event(self) -> None:
        assert self._watch is not None
        if self._watch.changed() and not self._reload_pending:
            self._reload_pending = True
            self.timers.schedule(_RELOAD_SETTLE, self._reload_after_file_event)

    def _reload_after_file_event(self) -> None:
        self.reload_if_changed("a change of the file")

    def _sweep(self) -> None:
        """End sessions whose user expired meanwhile; then wait again."""

        self.on_change(self.users)
        self.timers.schedule(_SWEEP_INTERVAL, self._sweep)
