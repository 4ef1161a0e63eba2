"""The PostgreSQL schema: numbered migrations and the table that records them.

Each migration is a number, a one-line description and its SQL, applied
once, in order, inside one transaction that also records it in
`sftpjail_schema`.  A transaction-level advisory lock makes two replicas
(or an operator and an init container) that migrate at once take turns:
the second finds the work done.  Migrations only ever get appended; a
released one is never edited, since databases in the field already ran it.

The server itself never migrates: it checks that the schema is exactly the
version it was built for and otherwise tells the operator to run
`sftpjail db migrate`.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import errors as pg_errors

from sftpjail.errors import DatabaseError
from sftpjail.store.postgres import Connection

# Any number works, as long as nothing else in the database takes this
# advisory lock; it spells "sftpjail" in ASCII, truncated to 63 bits.
_MIGRATION_LOCK = 0x736674706A61696C


@dataclass(frozen=True)
class Migration:
    """One step of the schema, applied once."""

    version: int
    description: str
    sql: str


MIGRATIONS = (
    Migration(
        1,
        "users",
        """
        CREATE TABLE sftpjail_users (
            name text PRIMARY KEY,
            password_hash text,
            authorized_keys text[] NOT NULL DEFAULT '{}',
            home text NOT NULL UNIQUE,
            read_only boolean NOT NULL DEFAULT false,
            disabled boolean NOT NULL DEFAULT false,
            expires timestamptz,
            allowed_networks text[] NOT NULL DEFAULT '{}',
            permissions jsonb,
            quota_bytes bigint,
            quota_files bigint,
            changed_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        """,
    ),
    Migration(
        2,
        "failed logins and bans",
        """
        CREATE TABLE sftpjail_login_failures (
            id bigserial PRIMARY KEY,
            source text NOT NULL,
            user_name text NOT NULL,
            failed_at timestamptz NOT NULL
        );
        CREATE INDEX sftpjail_login_failures_source
            ON sftpjail_login_failures (source, failed_at);
        CREATE INDEX sftpjail_login_failures_user
            ON sftpjail_login_failures (user_name, failed_at);
        CREATE INDEX sftpjail_login_failures_age
            ON sftpjail_login_failures (failed_at);
        CREATE TABLE sftpjail_bans (
            source text PRIMARY KEY,
            banned_at timestamptz NOT NULL,
            until timestamptz NOT NULL,
            seconds integer NOT NULL,
            failures integer NOT NULL,
            ban_count integer NOT NULL,
            last_seen timestamptz NOT NULL
        );
        """,
    ),
)
LATEST_VERSION = MIGRATIONS[-1].version

_CREATE_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS sftpjail_schema (
    version integer PRIMARY KEY,
    description text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT clock_timestamp()
)
"""


def current_version(connection: Connection) -> int | None:
    """The newest applied migration; None if sftpjail was never set up here."""

    try:
        with connection.transaction():
            row = connection.execute(
                "SELECT max(version) FROM sftpjail_schema"
            ).fetchone()
    except pg_errors.UndefinedTable:
        return None
    if row is None or row[0] is None:
        return None
    return int(str(row[0]))


def migrate(connection: Connection) -> list[Migration]:
    """Apply every migration the database lacks; return those applied."""

    applied = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        connection.execute(_CREATE_VERSION_TABLE)
        row = connection.execute("SELECT max(version) FROM sftpjail_schema").fetchone()
        done = int(str(row[0])) if row is not None and row[0] is not None else 0
        if done > LATEST_VERSION:
            raise _too_new(done)
        for migration in MIGRATIONS:
            if migration.version <= done:
                continue
            connection.execute(migration.sql.encode())
            connection.execute(
                "INSERT INTO sftpjail_schema (version, description) VALUES (%s, %s)",
                (migration.version, migration.description),
            )
            applied.append(migration)
    return applied


def require_current(connection: Connection) -> None:
    """Raise DatabaseError unless the schema is the one this version uses."""

    version = current_version(connection)
    if version is None:
        raise DatabaseError(
            "the database has no sftpjail tables; create them with "
            "`sftpjail db init --config PATH`"
        )
    if version > LATEST_VERSION:
        raise _too_new(version)
    if version < LATEST_VERSION:
        raise DatabaseError(
            f"the database schema is at version {version}, but this sftpjail "
            f"needs version {LATEST_VERSION}; run `sftpjail db migrate --config PATH`"
        )


def _too_new(version: int) -> DatabaseError:
    return DatabaseError(
        f"the database schema is at version {version}, newer than the "
        f"{LATEST_VERSION} this sftpjail knows; upgrade sftpjail on this machine"
    )
