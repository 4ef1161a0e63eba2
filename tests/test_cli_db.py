"""`sftpjail db init|migrate|status` against a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pglab import database_url_fixture, postgres_fixture  # noqa: F401
from sftpjail.store import schema


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "config.toml"
    config.write_text(
        "[server]\n"
        'listen = "127.0.0.1:2222"\n'
        f'data_dir = "{tmp_path / "data"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
        f'users_file = "{tmp_path / "users.toml"}"\n'
    )
    return config


def _db(
    config: Path, verb: str, url: str | None, *options: str
) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.pop("SFTPJAIL_DATABASE_URL", None)
    if url is not None:
        secret = config.with_name("database-url")
        secret.write_text(url + "\n")
        environment["SFTPJAIL_DATABASE_URL_FILE"] = str(secret)
    return subprocess.run(
        [sys.executable, "-m", "sftpjail", "db", verb, *options, "--config", config],
        capture_output=True,
        text=True,
        timeout=60,
        env=environment,
    )


def test_init_then_status_then_migrate(database_url: str, tmp_path: Path) -> None:
    config = _config(tmp_path)
    password = database_url.split(":")[2].split("@")[0]

    before = _db(config, "status", database_url)
    migrate_first = _db(config, "migrate", database_url)
    created = _db(config, "init", database_url)
    again = _db(config, "init", database_url)
    after = _db(config, "status", database_url)
    migrated = _db(config, "migrate", database_url)

    assert before.returncode == 1, before.stderr
    assert "schema\tnone" in before.stdout
    assert migrate_first.returncode == 1
    assert "sftpjail db init" in migrate_first.stderr
    assert created.returncode == 0, created.stderr
    assert created.stdout.startswith("created the sftpjail tables in postgresql://")
    assert f"applied migration {schema.LATEST_VERSION}:" in created.stdout
    assert "already set up" in again.stdout
    assert after.returncode == 0, after.stderr
    assert "users\t0\nbans\t0" in after.stdout
    assert "up to date" in migrated.stdout
    for result in (before, created, again, after, migrated):
        assert password not in result.stdout + result.stderr


def test_migrate_with_create_sets_up_an_empty_database(
    database_url: str, tmp_path: Path
) -> None:
    config = _config(tmp_path)

    created = _db(config, "migrate", database_url, "--create")
    again = _db(config, "migrate", database_url, "--create")

    assert created.returncode == 0, created.stderr
    assert f"applied migration {schema.LATEST_VERSION}:" in created.stdout
    assert "up to date" in again.stdout


def test_without_a_database_the_commands_say_how_to_set_one(tmp_path: Path) -> None:
    result = _db(_config(tmp_path), "init", None)

    assert result.returncode == 1
    assert "SFTPJAIL_DATABASE_URL" in result.stderr
