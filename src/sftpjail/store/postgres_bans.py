"""Failed logins and bans in PostgreSQL: one defence for every replica.

The rules are those of `sftpjail.defense.MemoryBanStore` (read its theory
of operation first); only where the scores live differs.  Each failure is
one row in `sftpjail_login_failures`; each banned address one row in
`sftpjail_bans`.  `record_failure` runs as one transaction that takes an
advisory lock on the address, so two replicas scoring the same address at
once take turns, and it uses the database's clock, so replicas whose
clocks differ still agree on windows and ban times.

A new ban queues a NOTIFY on `sftpjail_bans`.  Every replica keeps the bans
in force in memory (`refresh`, called when that notice arrives and after
a reconnect), so refusing a banned address on accept costs no query.

When the database is unreachable, failures are not scored (the supervisor
refuses every login then anyway) and the bans last read stay in force.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable

from sftpjail.config import DefenseSettings
from sftpjail.defense import Ban
from sftpjail.errors import DatabaseError, DatabaseUnavailableError
from sftpjail.store.postgres import BANS_CHANNEL, Connection, Database, notify

logger = logging.getLogger("sftpjail.store")


class PostgresBanStore:
    """A `sftpjail.defense.BanStore` shared through the database."""

    def __init__(
        self,
        database: Database,
        settings: DefenseSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.database = database
        self.settings = settings
        self.clock = clock
        self._bans: dict[str, Ban] = {}

    def record_failure(self, source: str, user: str) -> Ban | None:
        """Count a failed login of `user` from `source`; ban if over a limit."""

        try:
            with self.database.transaction() as connection:
                ban = self._score(connection, source, user)
        except DatabaseUnavailableError as error:
            logger.debug("Failure from %s not scored: %s", source, error)
            return None
        except DatabaseError as error:
            logger.error("Failure from %s not scored: %s", source, error)
            return None
        if ban is not None:
            self._bans[ban.source] = ban
        return ban

    def is_banned(self, source: str) -> Ban | None:
        """The ban in force for `source`, as last read; None if it ran out."""

        ban = self._bans.get(source)
        if ban is None or ban.until <= self.clock():
            return None
        return ban

    def bans(self) -> list[Ban]:
        """Every ban in force, as last read, soonest to end first."""

        now = self.clock()
        active = [ban for ban in self._bans.values() if ban.until > now]
        return sorted(active, key=lambda ban: ban.until)

    def refresh(self) -> None:
        """Read the bans in force again; DatabaseUnavailableError if it cannot."""

        with self.database.transaction() as connection:
            rows = connection.execute(
                "SELECT source, extract(epoch FROM until), seconds, failures "
                "FROM sftpjail_bans WHERE until > clock_timestamp()"
            ).fetchall()
        self._bans = {
            str(row[0]): Ban(str(row[0]), float(row[1]), int(row[2]), int(row[3]))
            for row in rows
        }

    def _score(self, connection: Connection, source: str, user: str) -> Ban | None:
        """The steps of MemoryBanStore.record_failure, in one transaction."""

        settings = self.settings
        connection.execute(
            "SELECT pg_advisory_xact_lock(hashtext('sftpjail ban ' || %s))",
            (source,),
        )
        now = _database_now(connection)
        window_start = now - datetime.timedelta(seconds=settings.window)
        connection.execute(
            "DELETE FROM sftpjail_login_failures WHERE failed_at <= %s",
            (window_start,),
        )
        connection.execute(
            "INSERT INTO sftpjail_login_failures (source, user_name, failed_at) "
            "VALUES (%s, %s, %s)",
            (source, user, now),
        )
        targeted = self._count(connection, "user_name", user, window_start)
        ban_row = connection.execute(
            "SELECT until, ban_count, last_seen FROM sftpjail_bans "
            "WHERE source = %s FOR UPDATE",
            (source,),
        ).fetchone()

        # Failures before (and during) the last ban were paid for by it.
        since, ban_count = window_start, 0
        if ban_row is not None:
            until, count, last_seen = ban_row
            if until > now:
                return None
            since = max(window_start, until)
            if (now - max(until, last_seen)).total_seconds() <= settings.max_ban_time:
                ban_count = int(count)
        failures = self._count(connection, "source", source, since)

        if failures < settings.max_failures and (
            targeted < settings.max_failures_per_user
        ):
            connection.execute(
                "UPDATE sftpjail_bans SET last_seen = %s WHERE source = %s",
                (now, source),
            )
            return None
        return self._ban(connection, source, now, ban_count, failures)

    @staticmethod
    def _count(
        connection: Connection, column: str, value: str, since: datetime.datetime
    ) -> int:
        row = connection.execute(
            f"SELECT count(*) FROM sftpjail_login_failures "  # noqa: S608
            f"WHERE {column} = %s AND failed_at > %s",
            (value, since),
        ).fetchone()
        return int(row[0]) if row is not None else 0

    def _ban(
        self,
        connection: Connection,
        source: str,
        now: datetime.datetime,
        ban_count: int,
        failures: int,
    ) -> Ban:
        settings = self.settings
        seconds = min(settings.ban_time * 2**ban_count, settings.max_ban_time)
        until = now + datetime.timedelta(seconds=seconds)
        connection.execute(
            "INSERT INTO sftpjail_bans AS ban (source, banned_at, until, seconds, "
            "failures, ban_count, last_seen) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (source) DO UPDATE SET banned_at = excluded.banned_at, "
            "until = excluded.until, seconds = excluded.seconds, "
            "failures = excluded.failures, ban_count = excluded.ban_count, "
            "last_seen = excluded.last_seen",
            (source, now, until, round(seconds), failures, ban_count + 1, now),
        )
        notify(connection, BANS_CHANNEL, source)
        return Ban(source, until.timestamp(), round(seconds), failures)


def _database_now(connection: Connection) -> datetime.datetime:
    row = connection.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    moment: datetime.datetime = row[0]
    return moment
