"""`sftpjail db init|migrate|status`: the PostgreSQL store's schema.

Each command reads `[database] url` from the configuration (or
SFTPJAIL_DATABASE_URL, or SFTPJAIL_DATABASE_URL_FILE for a Secret) and
prints one fact per line.  Only `init` and `migrate` change anything, and
both are safe to run again, or from several replicas at once: the
migrations take an advisory lock and skip what is already applied.
"""

from __future__ import annotations

from pathlib import Path

import click

from sftpjail.cli.options import config_option, load
from sftpjail.errors import DatabaseError
from sftpjail.store import schema
from sftpjail.store.postgres import Connection, connect, redacted


def _connect(config_path: Path | None) -> tuple[Connection, str]:
    config = load(config_path)
    url = config.database.url
    if url is None:
        raise DatabaseError(
            "no database is configured; set url in the [database] section, "
            "or SFTPJAIL_DATABASE_URL (or SFTPJAIL_DATABASE_URL_FILE)"
        )
    return connect(url, "db"), redacted(url)


@click.group("db")
def db() -> None:
    """Create, upgrade and inspect the PostgreSQL store of replicas."""


@db.command("init")
@config_option
def init(config_path: Path | None) -> None:
    """Create the sftpjail tables in an empty database.

    Running it again changes nothing; on a database of an older release it
    refuses and points at `sftpjail db migrate`.
    """

    connection, where = _connect(config_path)
    with connection:
        version = schema.current_version(connection)
        if version is not None:
            if version < schema.LATEST_VERSION:
                raise DatabaseError(
                    f"{where} already holds sftpjail tables at version {version}; "
                    "upgrade them with `sftpjail db migrate`"
                )
            click.echo(f"{where} is already set up (schema version {version})")
            return
        applied = schema.migrate(connection)
    click.echo(f"created the sftpjail tables in {where}")
    _show_applied(applied)


@db.command("migrate")
@click.option(
    "--create",
    is_flag=True,
    help="Create the tables too if the database has none (for a step that "
    "runs before every start, such as a Kubernetes init container).",
)
@config_option
def migrate(create: bool, config_path: Path | None) -> None:
    """Apply the migrations the database lacks, in order."""

    connection, where = _connect(config_path)
    with connection:
        if schema.current_version(connection) is None and not create:
            raise DatabaseError(
                f"{where} has no sftpjail tables yet; create them with "
                "`sftpjail db init` (or pass --create)"
            )
        applied = schema.migrate(connection)
    if not applied:
        click.echo(f"{where} is up to date (schema version {schema.LATEST_VERSION})")
    _show_applied(applied)


@db.command("status")
@config_option
def status(config_path: Path | None) -> None:
    """Show the schema version, the users and the bans in force.

    Exits 1 unless the schema is the one this sftpjail needs.
    """

    connection, where = _connect(config_path)
    with connection:
        version = schema.current_version(connection)
        click.echo(f"database\t{where}")
        click.echo(f"schema\t{version if version is not None else 'none'}")
        click.echo(f"needed\t{schema.LATEST_VERSION}")
        if version == schema.LATEST_VERSION:
            click.echo(f"users\t{_count(connection, 'sftpjail_users')}")
            bans = _count(connection, "sftpjail_bans WHERE until > clock_timestamp()")
            click.echo(f"bans\t{bans}")
        schema.require_current(connection)


def _count(connection: Connection, table: str) -> int:
    row = connection.execute(f"SELECT count(*) FROM {table}").fetchone()  # noqa: S608
    return int(row[0]) if row is not None else 0


def _show_applied(applied: list[schema.Migration]) -> None:
    for migration in applied:
        click.echo(f"applied migration {migration.version}: {migration.description}")
