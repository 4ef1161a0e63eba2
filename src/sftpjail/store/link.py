"""The supervisor's link to the shared store: connect, listen, retry.

Theory of operation
-------------------
The link lives in the supervisor's `selectors` loop and owns nothing but
the `SharedStore`'s LISTEN descriptor and one retry timer.  It has two
states:

* **connected**: the descriptor is registered; each notice that users
  changed reads them all again and hands them to `on_users`; a notice
  that bans changed re-reads the bans;
* **disconnected**: the supervisor refuses every login (it asks
  `connected`), sessions already logged in carry on, and `open` is tried
  again after `SharedStore.retry_delay` seconds, until it succeeds.  Each
  try starts in a child process (`ConnectProbe`), so a database that
  never answers holds up a child for libpq's `connect_timeout`, not the
  supervisor's loop; the loop connects itself once the child got through.

Going from connected to disconnected logs one ERROR line; each failed
retry one DEBUG line; coming back one INFO line.  So an outage shows in
the log as exactly two lines, whatever its length.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
from collections.abc import Callable
from typing import NoReturn

from sftpjail.errors import DatabaseError, DatabaseUnavailableError, UsersFileError
from sftpjail.store.postgres import connect
from sftpjail.store.shared import SharedStore
from sftpjail.users import User

logger = logging.getLogger("sftpjail.store")

Schedule = Callable[[float, Callable[[], None]], None]


class DatabaseLink:
    """Keeps a `SharedStore` connected from the supervisor's loop."""

    def __init__(
        self,
        shared: SharedStore,
        selector: selectors.BaseSelector,
        schedule: Schedule,
        on_users: Callable[[dict[str, User]], None],
    ) -> None:
        self.shared = shared
        self.selector = selector
        self.schedule = schedule
        self.on_users = on_users
        self._registered: int | None = None
        self._closed = False
        self._outage_logged = False
        self._probe: ConnectProbe | None = None

    @property
    def connected(self) -> bool:
        """Whether logins may be judged: the store is connected and heard."""

        return self._registered is not None

    def start(self) -> None:
        """Connect for the first time; DatabaseError if the schema is wrong.

        An unreachable database is not an error here: the server starts,
        refuses logins, and keeps trying.
        """

        try:
            self.shared.open()
            users = self.shared.users.load()
        except DatabaseUnavailableError as error:
            self._disconnected(error)
            return
        self._connected(users)
        logger.info("Connected to the user database %s.", self.shared.describe())

    def reload(self, trigger: str) -> bool:
        """Read the users again now (SIGHUP, control request); True if read."""

        if not self.connected:
            return False
        logger.info("Reading the users from the database again after %s.", trigger)
        return self._read_users()

    def lost(self, error: DatabaseUnavailableError) -> None:
        """A query failed for want of the database: go disconnected."""

        if self.connected:
            self._disconnected(error)

    def close(self) -> None:
        """Stop listening and retrying, for shutdown."""

        self._closed = True
        self._unregister()
        if self._probe is not None:
            self.selector.unregister(self._probe.pidfd)
            self._probe.finish()
            self._probe = None
        self.shared.close()

    # -- connected -------------------------------------------------------

    def _connected(self, users: dict[str, User] | None) -> None:
        self._registered = self.shared.fileno()
        self.selector.register(self._registered, selectors.EVENT_READ, self._on_notice)
        if users is not None:
            self.on_users(users)

    def _on_notice(self) -> None:
        try:
            changed = self.shared.pending()
        except DatabaseUnavailableError as error:
            self._disconnected(error)
            return
        if "bans" in changed:
            self._refresh_bans()
        if "users" in changed and self.connected:
            self._read_users()

    def _read_users(self) -> bool:
        try:
            users = self.shared.users.load()
        except DatabaseUnavailableError as error:
            self._disconnected(error)
            return False
        except (DatabaseError, UsersFileError) as error:
            logger.error("Kept the previous users: %s", error)
            return False
        self.on_users(users)
        return True

    def _refresh_bans(self) -> None:
        try:
            self.shared.bans.refresh()
        except DatabaseUnavailableError as error:
            self._disconnected(error)
        except DatabaseError as error:
            logger.error("Kept the previous bans: %s", error)

    # -- disconnected ----------------------------------------------------

    def _disconnected(self, error: DatabaseError) -> None:
        self._unregister()
        self.shared.lost()
        if not self._outage_logged:
            logger.error(
                "The user database is unreachable (%s); refusing logins until "
                "it is back.",
                error,
            )
            self._outage_logged = True
        else:
            logger.debug("The user database is still unreachable: %s", error)
        self.schedule(self.shared.retry_delay(), self._retry)

    def _retry(self) -> None:
        """Try the database from a child first; connect once it answered."""

        if self._closed or self.connected or self._probe is not None:
            return
        try:
            probe = ConnectProbe(self.shared.database.url)
        except OSError as error:
            self._disconnected(DatabaseUnavailableError(f"cannot try it: {error}"))
            return
        self._probe = probe
        self.selector.register(probe.pidfd, selectors.EVENT_READ, self._probe_exited)
        self.schedule(PROBE_TIMEOUT, lambda: self._probe_expired(probe))

    def _probe_exited(self) -> None:
        """The probe's child ended on its own: connect if it got through."""

        self._end_probe("the attempt failed")

    def _probe_expired(self, probe: ConnectProbe) -> None:
        """PROBE_TIMEOUT has passed since `probe` started."""

        if probe is self._probe:  # else it ended already
            self._end_probe("no answer")

    def _end_probe(self, failure: str) -> None:
        probe = self._probe
        if probe is None:
            return
        self._probe = None
        self.selector.unregister(probe.pidfd)
        answered = probe.finish()
        if self._closed:
            return
        if not answered:
            self.shared.attempt_failed()
            self._disconnected(DatabaseUnavailableError(failure))
            return
        self._reconnect()

    def _reconnect(self) -> None:
        """Connect from the loop, now that the database just answered."""

        try:
            self.shared.open()
        except DatabaseError as error:
            self._disconnected(error)
            return
        self._outage_logged = False
        self._connected(None)
        logger.info("The user database is back; accepting logins again.")
        # Notices sent while away are lost: read the users again.
        self._read_users()

    def _unregister(self) -> None:
        if self._registered is not None:
            try:
                self.selector.unregister(self._registered)
            except (KeyError, ValueError):
                pass
            self._registered = None


# How long a probe may try: libpq's connect_timeout (3 s) and some slack.
PROBE_TIMEOUT = 5.0


class ConnectProbe:
    """One attempt to connect to the database, made by a child process.

    A database that drops packets holds a connection attempt for libpq's
    whole `connect_timeout`, and the supervisor's loop must not wait that
    long.  The child, a fork of the supervisor in its sandbox, closes every
    descriptor it inherited (so no client connection stays open because of
    it), connects, and exits 0 if it could.  The loop hears of its end
    through the pidfd, and connects itself only then, which takes
    milliseconds from a database that just answered.
    """

    def __init__(self, url: str) -> None:
        pid = os.fork()
        if pid == 0:
            _probe_and_exit(url)
        try:
            self.pidfd = os.pidfd_open(pid)
        except OSError:
            # No way to hear of its end: stop it and collect it now.
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        self.pid = pid

    def finish(self) -> bool:
        """Collect the child (killing it if it still runs); True if it connected."""

        try:
            signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
        except ProcessLookupError:
            pass  # it has exited already
        try:
            _pid, status = os.waitpid(self.pid, 0)
        except ChildProcessError:
            return False  # collected elsewhere: its outcome is lost
        finally:
            os.close(self.pidfd)
        return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def _probe_and_exit(url: str) -> NoReturn:
    """In the child: connect once, exit with the outcome; never return.

    The exit code is the whole report, so every error only sets it.
    """

    code = 1
    with contextlib.suppress(BaseException):
        # The supervisor's signal wakeup descriptor is about to be closed,
        # and its number may be reused by the connection's socket.
        signal.set_wakeup_fd(-1)
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        connect(url, "probe").close()
        code = 0
    os._exit(code)
