"""Throwaway PostgreSQL servers for the tests, started by scripts/start-postgres.sh.

`postgres_cluster()` starts one cluster on a free loopback port in a fresh
directory and always stops and removes it.  The session fixture
`postgres` shares one cluster among the tests; `database_url` gives each
test a database of its own inside it, so tests never see each other's
users.  A test that stops the server (the outage tests) starts a cluster
of its own with `postgres_cluster()`, so it cannot disturb the others.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from serverlab import free_port

START_SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "start-postgres.sh"
COMMAND_TIMEOUT = 90


def _bin_directory() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


BIN = _bin_directory()
POSTGRES_MISSING = (
    "PostgreSQL is not installed (scripts/setup.sh installs it)" if BIN is None else ""
)


def _program(name: str) -> str:
    """One of PostgreSQL's programs; a Cluster exists only where BIN was found."""

    assert BIN is not None, POSTGRES_MISSING
    return str(BIN / name)


@dataclass
class Cluster:
    """One running (or stopped) PostgreSQL server of the tests."""

    directory: Path
    port: int
    url: str
    listen: str = "127.0.0.1"

    def admin(self, sql: str, database: str = "postgres") -> str:
        """Run `sql` as the superuser through the Unix socket; return stdout."""

        completed = self._as_owner(
            [_program("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
             "-h", str(self.directory), "-p", str(self.port), "-U", "postgres",
             "-d", database, "-c", sql],
        )  # fmt: skip
        return completed.stdout

    def new_database(self) -> str:
        """A fresh, empty database owned by sftpjail; its URL."""

        name = f"test_{secrets.token_hex(4)}"
        self.admin(f"CREATE DATABASE {name} OWNER sftpjail")
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def stop(self) -> None:
        """Stop the server at once, ending every connection."""

        self._pg_ctl("stop", "-m", "fast")

    def start(self) -> None:
        """Start the stopped server again with the same settings."""

        options = (
            f"-c listen_addresses={self.listen} -c port={self.port} "
            f"-c unix_socket_directories={self.directory} -c fsync=off"
        )
        self._pg_ctl("start", "-l", str(self.directory / "server.log"), "-o", options)

    def is_running(self) -> bool:
        """Whether pg_ctl finds the server running."""

        result = self._as_owner([_program("pg_ctl"), "-D", self._data(), "status"])
        return result.returncode == 0

    def _pg_ctl(self, *arguments: str) -> None:
        completed = self._as_owner(
            [_program("pg_ctl"), "-D", self._data(), "-w", "-t", "60", *arguments]
        )
        assert completed.returncode == 0, completed.stdout + completed.stderr

    def _data(self) -> str:
        return str(self.directory / "cluster")

    @staticmethod
    def _as_owner(argv: list[str]) -> subprocess.CompletedProcess[str]:
        if os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(
            argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )


@contextmanager
def postgres_cluster(
    listen: str = "127.0.0.1", prefix: Sequence[str] = ()
) -> Iterator[Cluster]:
    """Start a cluster with scripts/start-postgres.sh; always stop and remove it.

    `prefix` runs the script through another command, such as `ip netns
    exec NAME` to start the server inside a network namespace.
    """

    if BIN is None:
        pytest.skip(POSTGRES_MISSING)
    root = Path(tempfile.mkdtemp(prefix="sftpjail-pg-", dir="/tmp"))
    root.chmod(0o711)
    directory = root / "pg"
    port = free_port()
    started = subprocess.run(
        [*prefix, str(START_SCRIPT), str(directory), str(port), listen],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
    )
    printed = started.stdout.split()
    cluster = Cluster(directory, port, printed[-1] if printed else "", listen)
    try:
        assert started.returncode == 0, started.stderr
        yield cluster
    finally:
        if cluster.is_running():
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session", name="postgres")
def postgres_fixture() -> Iterator[Cluster]:
    """One PostgreSQL server for the whole test session."""

    with postgres_cluster() as cluster:
        yield cluster


@pytest.fixture(name="database_url")
def database_url_fixture(postgres: Cluster) -> str:
    """A fresh database of this test's own, in the session's server."""

    return postgres.new_database()
