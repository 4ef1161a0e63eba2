"""The PostgreSQL stores against a real PostgreSQL server (tests/pglab.py)."""

from __future__ import annotations

import datetime
import ipaddress
import select
import time
from pathlib import Path

import psycopg
import pytest

from pglab import Cluster, database_url_fixture, postgres_fixture  # noqa: F401
from serverlab import free_port
from sftpjail.config import DefenseSettings, load_config
from sftpjail.errors import (
    DatabaseError,
    DatabaseUnavailableError,
    UnknownUserError,
    UserExistsError,
    UsersFileError,
)
from sftpjail.passwords import hash_password
from sftpjail.public_keys import key_fingerprint
from sftpjail.store import schema
from sftpjail.store.postgres import Database, Notifications, connect, redacted
from sftpjail.store.postgres_bans import PostgresBanStore
from sftpjail.store.postgres_users import PostgresUserStore
from sftpjail.users import User, UsersFile

KEY_A = (
    "ssh-ed25519 "
    "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl a@x"
)
KEY_B = (
    "ssh-ed25519 "
    "AAAAC3NzaC1lZDI1NTE5AAAAIBq3Gl7WTuuB/2Sv0Mgwvma5F7jKqgY1lHg0Qn2GWy9J b@x"
)


@pytest.fixture
def migrated(database_url: str) -> str:
    """A database with the sftpjail tables."""

    with connect(database_url, "test") as connection:
        schema.migrate(connection)
    return database_url


def _full_user() -> User:
    return User(
        name="carol",
        password_hash=hash_password("a long enough password"),
        authorized_keys=(KEY_A,),
        home="drop/carol",
        read_only=False,
        disabled=False,
        expires=datetime.date(2031, 1, 31),
        allowed_networks=(ipaddress.ip_network("192.0.2.0/24"),),
        permissions={
            "/": frozenset({"list", "download"}),
            "/in": frozenset({"upload"}),
        },
        quota_bytes=10_000_000,
        quota_files=100,
    )


# -- schema --------------------------------------------------------------


def test_migrate_creates_the_latest_schema_once(database_url: str) -> None:
    with connect(database_url, "test") as connection:
        before = schema.current_version(connection)
        first = schema.migrate(connection)
        second = schema.migrate(connection)
        after = schema.current_version(connection)
        schema.require_current(connection)

    assert before is None
    assert [m.version for m in first] == [m.version for m in schema.MIGRATIONS]
    assert second == []
    assert after == schema.LATEST_VERSION


def test_the_server_refuses_a_database_without_tables(database_url: str) -> None:
    with connect(database_url, "test") as connection:
        with pytest.raises(DatabaseError, match="sftpjail db init"):
            schema.require_current(connection)


def test_an_old_schema_asks_for_migrate(database_url: str) -> None:
    with connect(database_url, "test") as connection:
        schema.migrate(connection)
        # What a release that knew only migration 1 left behind.
        connection.execute("DROP TABLE sftpjail_bans, sftpjail_login_failures")
        connection.execute("DELETE FROM sftpjail_schema WHERE version = 2")

        with pytest.raises(DatabaseError, match="sftpjail db migrate"):
            schema.require_current(connection)
        applied = schema.migrate(connection)
        schema.require_current(connection)

    assert [migration.version for migration in applied] == [2]


# -- users ---------------------------------------------------------------


def test_a_user_reads_back_as_the_users_file_would_hold_it(
    migrated: str, tmp_path: Path
) -> None:
    store = PostgresUserStore(Database(migrated, "test"))
    users_file = UsersFile(tmp_path / "users.toml")

    carol = _full_user()

    store.add(carol)
    users_file.add(carol)

    from_database = store.get("carol")
    from_file = users_file.get("carol")
    assert from_database.password_hash == from_file.password_hash
    assert from_database.authorized_keys == from_file.authorized_keys
    assert dict(from_database.permissions) == dict(from_file.permissions)
    assert from_database.expires_at == from_file.expires_at
    assert (
        from_database.home,
        from_database.allowed_networks,
        from_database.quota_bytes,
        from_database.quota_files,
    ) == (from_file.home, from_file.allowed_networks, 10_000_000, 100)
    assert list(store.load()) == ["carol"]


def test_names_and_homes_are_unique(migrated: str) -> None:
    store = PostgresUserStore(Database(migrated, "test"))
    store.add(User("dave", None, (KEY_A,), "dave"))

    with pytest.raises(UserExistsError):
        store.add(User("dave", None, (KEY_B,), "other"))
    with pytest.raises(UsersFileError, match="home"):
        store.add(User("erin", None, (KEY_B,), "dave"))
    with pytest.raises(UserExistsError):
        store.check_new_name("dave")
    with pytest.raises(UsersFileError, match="not a valid user name"):
        store.add(User("Not Valid", None, (), "x"))


def test_edits_change_one_field_and_are_checked(migrated: str) -> None:
    store = PostgresUserStore(Database(migrated, "test"))
    store.add(User("frank", hash_password("first password"), (KEY_A,), "frank"))

    store.add_key("frank", KEY_B)
    with pytest.raises(UsersFileError, match="already has key"):
        store.add_key("frank", KEY_B)
    removed = store.remove_key("frank", key_fingerprint(KEY_A))
    store.set_password("frank", None)
    store.set_disabled("frank", True)

    frank = store.get("frank")
    assert removed.split()[:2] == KEY_A.split()[:2]
    assert [line.split()[1] for line in frank.authorized_keys] == [KEY_B.split()[1]]
    assert frank.password_hash is None
    assert frank.disabled
    with pytest.raises(UnknownUserError):
        store.set_disabled("nobody", True)
    assert store.remove("frank").name == "frank"
    assert store.load() == {}


def test_a_row_the_users_file_would_refuse_is_refused(migrated: str) -> None:
    with connect(migrated, "test") as connection:
        connection.execute(
            "INSERT INTO sftpjail_users (name, home) VALUES ('grace', '../escape')"
        )
    store = PostgresUserStore(Database(migrated, "test"))

    with pytest.raises(UsersFileError, match='user "grace": home'):
        store.load()


def test_edits_notify_every_listener(migrated: str) -> None:
    listener = Notifications(migrated)
    store = PostgresUserStore(Database(migrated, "test"))
    try:
        nothing_yet = listener.pending()
        store.add(User("heidi", None, (KEY_A,), "heidi"))
        readable, _, _ = select.select([listener.fileno()], [], [], 10)
        changes = listener.pending()
    finally:
        listener.close()

    assert nothing_yet == set()
    assert readable
    assert changes == {"users"}


# -- bans ----------------------------------------------------------------


def test_a_ban_earned_through_one_store_holds_in_another(migrated: str) -> None:
    settings = DefenseSettings(max_failures=3, ban_time=60, max_ban_time=600)
    replica_a = PostgresBanStore(Database(migrated, "a"), settings)
    replica_b = PostgresBanStore(Database(migrated, "b"), settings)

    scores = [replica_a.record_failure("192.0.2.7", "ivan") for _ in range(2)]
    third = replica_b.record_failure("192.0.2.7", "ivan")
    replica_a.refresh()

    assert scores == [None, None]
    assert third is not None and third.seconds == 60 and third.failures == 3
    assert replica_a.is_banned("192.0.2.7") == third
    assert replica_a.is_banned("192.0.2.8") is None
    assert [ban.source for ban in replica_a.bans()] == ["192.0.2.7"]
    assert replica_b.record_failure("192.0.2.7", "ivan") is None  # already banned


def test_a_repeated_ban_doubles(migrated: str) -> None:
    settings = DefenseSettings(max_failures=2, ban_time=1, max_ban_time=600)
    store = PostgresBanStore(Database(migrated, "test"), settings)

    store.record_failure("198.51.100.1", "judy")
    first = store.record_failure("198.51.100.1", "judy")
    assert first is not None
    deadline = time.monotonic() + 10
    while store.is_banned("198.51.100.1") and time.monotonic() < deadline:
        time.sleep(0.1)
    store.record_failure("198.51.100.1", "judy")
    second = store.record_failure("198.51.100.1", "judy")

    assert (first.seconds, second and second.seconds) == (1, 2)


def test_many_addresses_guessing_one_name_are_each_banned(migrated: str) -> None:
    settings = DefenseSettings(max_failures=50, max_failures_per_user=4)
    store = PostgresBanStore(Database(migrated, "test"), settings)

    results = [store.record_failure(f"203.0.113.{n}", "root") for n in range(1, 6)]

    assert results[:3] == [None, None, None]
    assert [ban and ban.source for ban in results[3:]] == ["203.0.113.4", "203.0.113.5"]


def test_bans_notify_listeners(migrated: str) -> None:
    settings = DefenseSettings(max_failures=1)
    listener = Notifications(migrated)
    try:
        PostgresBanStore(Database(migrated, "test"), settings).record_failure(
            "192.0.2.99", "kim"
        )
        readable, _, _ = select.select([listener.fileno()], [], [], 10)
        changes = listener.pending()
    finally:
        listener.close()

    assert readable and changes == {"bans"}


# -- connections and secrets ---------------------------------------------


def test_a_refused_connection_names_the_database_but_not_the_password() -> None:
    url = f"postgresql://sftpjail:hunter2secret@127.0.0.1:{free_port()}/sftpjail"

    with pytest.raises(DatabaseUnavailableError) as caught:
        connect(url, "test")

    assert "hunter2secret" not in str(caught.value)
    assert "sftpjail@127.0.0.1" in str(caught.value)
    assert "hunter2secret" not in redacted(url)


def test_a_lost_connection_reconnects_on_the_next_use(migrated: str) -> None:
    database = Database(migrated, "test")
    store = PostgresUserStore(database)
    store.load()
    with connect(migrated, "killer") as killer:
        killer.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'sftpjail test'"
        )

    with pytest.raises(DatabaseUnavailableError, match="lost the database"):
        store.load()
    assert store.load() == {}


def test_the_database_url_can_come_from_a_secret_file(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        "[server]\n"
        'listen = "127.0.0.1:2222"\n'
        'data_dir = "/srv/data"\nstate_dir = "/srv/state"\n'
        'users_file = "/srv/users.toml"\nreplica = true\n'
    )
    secret = tmp_path / "url"
    secret.write_text("postgresql://sftpjail:s3cret@db:5432/sftpjail\n")

    loaded = load_config(config, {"SFTPJAIL_DATABASE_URL_FILE": str(secret)})

    assert loaded.replica
    assert loaded.database.url == "postgresql://sftpjail:s3cret@db:5432/sftpjail"
    assert "s3cret" not in repr(loaded)


def test_psycopg_is_the_version_the_store_needs() -> None:
    major, minor = (int(part) for part in psycopg.__version__.split(".")[:2])

    assert (major, minor) >= (3, 2)
