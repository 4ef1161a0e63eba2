"""The database as one replica's supervisor sees it: users, bans, health.

Theory of operation
-------------------
A replica is *connected* while its LISTEN connection is open.  `open`
first starts listening and only then checks the schema and reads the
bans (and its caller the users), so a change committed in between still
arrives as a notice (and costs one more read) instead of being lost.

While connected, the supervisor polls `fileno()`; `pending()` says what
changed.  A connection that breaks (the server stopped, the network
failed) raises `DatabaseUnavailableError` from `pending()` or from any
query; the supervisor then calls `lost()`, refuses every login until
`open` succeeds again, and retries on a timer with `retry_delay`.  The
sessions already logged in carry on: they need nothing from the database.
Notices sent while disconnected are gone, which is why a successful
`open` reads everything again.
"""

from __future__ import annotations

from sftpjail.config import DefenseSettings
from sftpjail.store import schema
from sftpjail.store.postgres import Database, Notifications
from sftpjail.store.postgres_bans import PostgresBanStore
from sftpjail.store.postgres_users import PostgresUserStore

# Seconds between attempts to reconnect: soon at first, then every 10 s.
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0)


class SharedStore:
    """Users and bans in PostgreSQL, with the notices that they changed."""

    def __init__(self, url: str, defense: DefenseSettings) -> None:
        self.database = Database(url, "supervisor")
        self.users = PostgresUserStore(self.database)
        self.bans = PostgresBanStore(self.database, defense)
        self._notifications: Notifications | None = None
        self._failed_attempts = 0

    @property
    def connected(self) -> bool:
        """Whether changes are being heard, and so logins may be judged."""

        return self._notifications is not None

    def describe(self) -> str:
        """Where the database is, without the password."""

        return self.database.describe()

    def open(self) -> None:
        """Listen, check the schema, read the bans; read users next.

        Raises `DatabaseError` (or its `DatabaseUnavailableError`) and
        stays disconnected if any step fails.
        """

        self._failed_attempts += 1
        notifications = Notifications(self.database.url)
        try:
            with self.database.transaction() as connection:
                schema.require_current(connection)
            self.bans.refresh()
        except BaseException:
            notifications.close()
            self.database.close()
            raise
        self._notifications = notifications
        self._failed_attempts = 0

    def fileno(self) -> int:
        """The LISTEN connection's socket, for the supervisor's selector."""

        assert self._notifications is not None
        return self._notifications.fileno()

    def pending(self) -> set[str]:
        """What changed ("users", "bans"); DatabaseUnavailableError if lost."""

        assert self._notifications is not None
        return self._notifications.pending()

    def attempt_failed(self) -> None:
        """An attempt made without `open` (a probe) failed: wait longer next."""

        self._failed_attempts += 1

    def retry_delay(self) -> float:
        """How long to wait before the next attempt to `open`."""

        index = min(self._failed_attempts, len(RETRY_DELAYS)) - 1
        return RETRY_DELAYS[max(index, 0)]

    def lost(self) -> None:
        """Forget both connections; `open` makes new ones."""

        if self._notifications is not None:
            self._notifications.close()
            self._notifications = None
        self.database.close()

    def close(self) -> None:
        """Close everything, for shutdown."""

        self.lost()
