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
  again after `SharedStore.retry_delay` seconds, until it succeeds.

Going from connected to disconnected logs one ERROR line; each failed
retry one DEBUG line; coming back one INFO line.  So an outage shows in
the log as exactly two lines, whatever its length.
"""

from __future__ import annotations

import logging
import selectors
from collections.abc import Callable

from sftpjail.errors import DatabaseError, DatabaseUnavailableError, UsersFileError
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
        if self._closed or self.connected:
            return
        # XXX Should this connect with libpq's non-blocking calls?  A
        # database that drops packets holds the loop for connect_timeout
        # (3 s) on each retry; one that is down answers at once.
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
