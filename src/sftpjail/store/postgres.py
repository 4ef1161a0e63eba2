"""Connections to PostgreSQL: how they are opened, used, and listened on.

Theory of operation
-------------------
The supervisor is one `selectors` loop with no threads, so every database
call it makes blocks the loop.  Three things keep that short:

* users and bans are read into memory once and then again only when a
  NOTIFY says they changed, so a login needs no query at all; only a
  failed password login writes (one transaction);
* every connection carries short timeouts (connect, statement, TCP user
  timeout and keepalives), so a database that vanished costs seconds,
  not minutes;
* change notices arrive on a second connection that only LISTENs.  Its
  socket sits in the selector like any other descriptor; when it is
  readable, `Notifications.pending` reads what arrived without waiting.

A connection that fails is closed and reported as
`DatabaseUnavailableError`; the caller decides when to try again (the
supervisor retries on a timer, a CLI command just exits).  The connection
string may hold a password, so only `redacted()` forms of it are shown.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import TupleRow

from sftpjail.errors import DatabaseError, DatabaseUnavailableError

logger = logging.getLogger("sftpjail.store")

Connection = psycopg.Connection[TupleRow]

_DEFAULT_PORT = "5432"

# What each NOTIFY channel tells its listeners has changed.
USERS_CHANNEL = "sftpjail_users"
BANS_CHANNEL = "sftpjail_bans"
CHANNELS = {USERS_CHANNEL: "users", BANS_CHANNEL: "bans"}

# Defaults for settings the operator's connection string leaves out.  The
# statement timeout bounds how long one query may hold the supervisor's
# loop; the TCP settings notice a peer that vanished without a word.
_DEFAULT_PARAMETERS = {
    "connect_timeout": "3",
    "options": "-c statement_timeout=5000",
    "tcp_user_timeout": "5000",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}


def connection_parameters(url: str) -> dict[str, Any]:
    """The libpq parameters of `url`, with our defaults filled in."""

    try:
        parameters = conninfo_to_dict(url)
    except psycopg.ProgrammingError as error:
        raise DatabaseError(
            "database.url is neither a libpq connection string nor a "
            f"postgresql:// URI: {_first_line(error)}"
        ) from None
    for key, value in _DEFAULT_PARAMETERS.items():
        parameters.setdefault(key, value)
    return parameters


def tcp_ports(url: str) -> tuple[int, ...]:
    """The TCP ports `url` connects to; none for Unix socket directories.

    libpq takes comma-separated lists of hosts and ports (one port for all,
    or one per host); a host starting with "/" is a socket directory.
    """

    parameters = connection_parameters(url)
    hosts = str(parameters.get("host") or parameters.get("hostaddr") or "").split(",")
    ports = str(parameters.get("port") or _DEFAULT_PORT).split(",")
    if len(ports) == 1:
        ports = ports * len(hosts)
    found = {
        int(port or _DEFAULT_PORT)
        for host, port in zip(hosts, ports, strict=False)
        if not host.startswith("/") and host != ""
    }
    return tuple(sorted(found))


def redacted(url: str) -> str:
    """The connection string as it may be shown: user, host, port, database."""

    try:
        parameters = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an invalid database.url)"
    user = parameters.get("user", "")
    host = parameters.get("host") or parameters.get("hostaddr") or "localhost"
    port = parameters.get("port", "5432")
    name = parameters.get("dbname", user)
    return (
        f"postgresql://{user}@{host}:{port}/{name}"
        if user
        else (f"postgresql://{host}:{port}/{name}")
    )


def connect(url: str, purpose: str) -> Connection:
    """Open an autocommit connection; DatabaseUnavailableError if impossible."""

    parameters = connection_parameters(url)
    parameters.setdefault("application_name", f"sftpjail {purpose}")
    try:
        return psycopg.connect(autocommit=True, **parameters)
    except psycopg.OperationalError as error:
        raise DatabaseUnavailableError(
            f"cannot connect to the database {redacted(url)}: {_first_line(error)}"
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Database:
    """One connection for queries, opened on first use, dropped on failure."""

    def __init__(self, url: str, purpose: str) -> None:
        self.url = url
        self.purpose = purpose
        self._connection: Connection | None = None

    def describe(self) -> str:
        """Where the database is, without the password."""

        return redacted(self.url)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A connection inside one transaction, committed if the block ends.

        A lost connection becomes DatabaseUnavailableError (and is closed,
        so the next use reconnects); missing tables and any other refusal
        become DatabaseError.
        """

        if self._connection is None or self._connection.closed:
            self._connection = connect(self.url, self.purpose)
        connection = self._connection
        try:
            with connection.transaction():
                yield connection
        except pg_errors.UndefinedTable:
            raise DatabaseError(
                f"the database {self.describe()} has no sftpjail tables; create "
                "them with `sftpjail db init --config PATH`"
            ) from None
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            self.close()
            raise DatabaseUnavailableError(
                f"lost the database {self.describe()}: {_first_line(error)}"
            ) from None
        except psycopg.Error as error:
            raise DatabaseError(
                f"the database {self.describe()} refused a query: {_first_line(error)}"
            ) from None

    def close(self) -> None:
        """Close the connection; the next transaction opens a new one."""

        if self._connection is not None:
            self._connection.close()
            self._connection = None


class Notifications:
    """A connection that LISTENs on the sftpjail channels, for a selector."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection = connect(url, "notifications")
        try:
            for channel in CHANNELS:
                self._connection.execute(f"LISTEN {channel}".encode())
        except psycopg.Error as error:
            self._connection.close()
            raise DatabaseUnavailableError(
                f"cannot listen for changes in {redacted(url)}: {_first_line(error)}"
            ) from None

    def fileno(self) -> int:
        """The connection's socket: readable when a notice (or EOF) arrived."""

        return self._connection.fileno()

    def pending(self) -> set[str]:
        """What changed ("users", "bans") per the notices that arrived.

        Never waits.  DatabaseUnavailableError if the connection is gone.
        """

        try:
            arrived = list(self._connection.notifies(timeout=0))
        except (psycopg.OperationalError, psycopg.InterfaceError) as error:
            raise DatabaseUnavailableError(
                f"lost the database {redacted(self.url)}: {_first_line(error)}"
            ) from None
        return {CHANNELS[notice.channel] for notice in arrived}

    def close(self) -> None:
        """Stop listening and close the connection."""

        self._connection.close()


def notify(connection: Connection, channel: str, payload: str) -> None:
    """Queue a NOTIFY; PostgreSQL sends it when the transaction commits."""

    connection.execute("SELECT pg_notify(%s, %s)", (channel, payload))
