"""Two replicas, one data directory, one PostgreSQL: clients cannot tell them apart.

Each replica is a real `sftpjail serve` on its own loopback port, with
`replica = true`, sharing `data_dir`, `state_dir` (the host keys) and a
database of the session's PostgreSQL server (tests/pglab.py).  Users are
managed with the `sftpjail` command against replica A's configuration,
exactly as an operator would; clients are the real OpenSSH ones.

A ban is earned from 127.0.0.2, a loopback address of its own, so the
ban does not lock the other tests (which connect from 127.0.0.1) out.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pglab import (  # noqa: F401
    Cluster,
    database_url_fixture,
    postgres_cluster,
    postgres_fixture,
)
from serverlab import (
    ClientKey,
    Result,
    ServerLab,
    descendants,
    ensure_service_user,
    make_lab_root,
)
from sftpjail.control import ask
from sftpjail.store.postgres import connect

BANNED_SOURCE = "127.0.0.2"
NOTICE_TIMEOUT = 15.0
_PWD_ANSWER = b"Remote working directory"


@dataclass
class Replica(ServerLab):
    """A ServerLab whose data and host keys live in a directory it shares."""

    shared: Path = field(default_factory=Path)

    @property
    def data_dir(self) -> Path:
        return self.shared / "data"

    @property
    def state_dir(self) -> Path:
        return self.shared / "state"

    @property
    def control_socket(self) -> Path:
        return self.root / "control.sock"

    def status(self) -> dict[str, Any]:
        """The server's status reply: decoded JSON, as `ask` returns it."""

        return ask(self.control_socket, "status")


def sftpjail(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m sftpjail ARGUMENTS`."""

    return subprocess.run(
        [sys.executable, "-m", "sftpjail", *arguments],
        capture_output=True,
        text=True,
        timeout=60,
    )


def make_replicas(url: str, count: int = 2) -> tuple[Path, list[Replica]]:
    """Configure `count` replicas of one database; start none."""

    ensure_service_user()
    shared = make_lab_root()
    replicas = []
    for _ in range(count):
        root = make_lab_root()
        replica = Replica(root, shared=shared)
        replica.extra_config = (
            "replica = true\n"
            f'control_socket = "{replica.control_socket}"\n'
            "[database]\n"
            f'url = "{url}"\n'
            "[defense]\n"
            "max_failures = 2\n"
        )
        replica.write_config()
        replicas.append(replica)
    return shared, replicas


@pytest.fixture
def replicas(database_url: str) -> Iterator[tuple[Replica, Replica]]:
    """Two configured replicas of a database with the sftpjail tables."""

    shared, (first, second) = make_replicas(database_url)
    try:
        prepare(first)
        yield first, second
    finally:
        for replica in (first, second):
            replica.stop()
            shutil.rmtree(replica.root, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)


def prepare(replica: Replica) -> None:
    """What an operator does once: create the tables and the host keys."""

    for command in (["db", "init"], ["hostkeys"]):
        done = sftpjail(*command, "--config", str(replica.config_file))
        assert done.returncode == 0, done.stderr


def add_user(replica: Replica, name: str) -> ClientKey:
    """`sftpjail user add NAME --key-file ... --config` against the database."""

    key = replica.client_key(name)
    added = sftpjail(
        "user", "add", name, "--key-file", f"{key.private}.pub",
        "--config", str(replica.config_file),
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    return key


def wait_for_users(replica: Replica, count: int) -> None:
    """Wait until `replica` has read `count` users from the database."""

    replica.wait_for_log(f"Loaded {count} users from the database.", NOTICE_TIMEOUT)


def wait_for_audit(replica: Replica, event: str, timeout: float) -> None:
    """Wait until the replica's audit log holds `event`."""

    deadline = time.monotonic() + timeout
    while not replica.audit_events(event):
        assert time.monotonic() < deadline, f"no {event} in {timeout} s"
        time.sleep(0.1)


def host_key(replica: Replica) -> str:
    """The Ed25519 host key the replica shows a client, as ssh-keyscan sees it."""

    scanned = subprocess.run(
        ["ssh-keyscan", "-t", "ed25519", "-p", str(replica.port), "127.0.0.1"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert scanned.returncode == 0, scanned.stderr
    return scanned.stdout.split(maxsplit=1)[1].strip()


def banner_from(replica: Replica, source: str) -> bytes:
    """What the replica says first to a client connecting from `source`."""

    with socket.create_connection(
        ("127.0.0.1", replica.port), timeout=10, source_address=(source, 0)
    ) as client:
        try:
            return client.recv(64)
        except ConnectionResetError:
            return b""


def sftp_from(replica: Replica, source: str, user: str, key: ClientKey) -> Result:
    """One `sftp` batch run from the loopback address `source`."""

    completed = subprocess.run(
        ["sftp", *replica.ssh_options(key), "-o", f"BindAddress={source}",
         "-P", str(replica.port), "-b", "-", f"{user}@127.0.0.1"],
        input=b"pwd\n",
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return Result(
        completed.returncode,
        completed.stdout.decode(errors="replace"),
        completed.stderr.decode(errors="replace"),
    )


class Session:
    """An interactive sftp session the test types commands into."""

    def __init__(self, replica: Replica, user: str, key: ClientKey) -> None:
        self.process = subprocess.Popen(
            ["sftp", *replica.ssh_options(key), "-P", str(replica.port),
             f"{user}@127.0.0.1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.output = b""
        assert self.ask("cd ."), self.output

    def ask(self, command: str, timeout: float = 15.0) -> bool:
        """Type `command`, then `pwd`; True once that `pwd` is answered.

        sftp runs commands in order, so the answer to the `pwd` (which sftp
        gives itself) means the server answered `command`.  False if the
        session ended.  `cd .` makes a round trip that changes nothing.
        """

        assert self.process.stdin is not None and self.process.stdout is not None
        answered = self.output.count(_PWD_ANSWER)
        try:
            self.process.stdin.write(f"{command}\npwd\n".encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            return False
        deadline = time.monotonic() + timeout
        while self.output.count(_PWD_ANSWER) <= answered:
            if time.monotonic() > deadline:
                return False
            ready, _, _ = select.select([self.process.stdout], [], [], 0.2)
            if ready:
                chunk = os.read(self.process.stdout.fileno(), 65536)
                if not chunk:
                    return False
                self.output += chunk
        return True

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


# -- the tests ---------------------------------------------------------------


def test_a_replica_without_the_shared_host_keys_refuses_to_start(
    database_url: str,
) -> None:
    shared, (replica,) = make_replicas(database_url, count=1)
    replica.state_dir.mkdir(mode=0o700)
    try:
        with pytest.raises(AssertionError):
            replica.start()
        code = replica.stop()
    finally:
        shutil.rmtree(replica.root, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)

    assert code != 0
    assert any("may not create one" in line for line in replica.stderr_lines)
    assert not (shared / "state" / "ssh_host_ed25519_key").exists()


def test_two_replicas_serve_as_one(
    replicas: tuple[Replica, Replica], tmp_path: Path
) -> None:
    first, second = replicas
    first.start()
    second.start()

    alice = add_user(first, "alice")
    wait_for_users(second, 1)
    login_on_second = second.sftp("alice", "pwd\n", key=alice)

    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(300_000))
    back = tmp_path / "back.bin"
    put = first.sftp("alice", f"put {upload} shared.bin\n", key=alice)
    get = second.sftp("alice", f"get shared.bin {back}\n", key=alice)

    assert login_on_second.returncode == 0, login_on_second.stderr
    assert put.returncode == 0, put.stderr
    assert get.returncode == 0, get.stderr
    assert back.read_bytes() == upload.read_bytes()
    assert host_key(first) == host_key(second)
    assert first.status()["server"]["database"] == "connected"
    shown = sftpjail("status", "--config", str(second.config_file))
    assert "database: connected" in shown.stdout.splitlines(), shown.stderr


def test_disabling_a_user_through_one_replica_ends_their_sessions_on_both(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    first.start()
    second.start()
    alice = add_user(first, "alice")
    wait_for_users(second, 1)
    on_first = Session(first, "alice", alice)
    on_second = Session(second, "alice", alice)
    try:
        disabled = sftpjail(
            "user", "disable", "alice", "--config", str(first.config_file)
        )
        for replica in (first, second):
            wait_for_audit(replica, "connection.closed", NOTICE_TIMEOUT)
        still_served = (on_first.ask("cd ."), on_second.ask("cd ."))
        retry = second.sftp("alice", "pwd\n", key=alice)
    finally:
        on_first.close()
        on_second.close()

    assert disabled.returncode == 0, disabled.stderr
    assert still_served == (False, False)
    assert retry.returncode != 0
    for replica in (first, second):
        reasons = [event["reason"] for event in replica.audit_events("session.ended")]
        assert reasons == ["user disabled"]


def test_a_ban_earned_on_one_replica_holds_on_the_other(
    replicas: tuple[Replica, Replica],
) -> None:
    first, second = replicas
    first.start()
    second.start()
    alice = add_user(first, "alice")
    wait_for_users(second, 1)
    stranger = first.client_key("stranger")

    before = banner_from(second, BANNED_SOURCE)
    for _ in range(2):
        failed = sftp_from(first, BANNED_SOURCE, "alice", stranger)
        assert failed.returncode != 0
    first.wait_for_log(f"Banned {BANNED_SOURCE}", NOTICE_TIMEOUT)
    deadline = time.monotonic() + NOTICE_TIMEOUT
    while banner_from(second, BANNED_SOURCE) and time.monotonic() < deadline:
        time.sleep(0.2)
    after = banner_from(second, BANNED_SOURCE)
    others = second.sftp("alice", "pwd\n", key=alice)

    assert before.startswith(b"SSH-2.0-")
    assert after == b""
    assert others.returncode == 0, others.stderr
    bans = second.status()["bans"]
    assert [ban["peer"] for ban in bans] == [BANNED_SOURCE]


def test_a_database_outage_refuses_logins_keeps_sessions_and_heals(
    tmp_path: Path,
) -> None:
    during = tmp_path / "during.txt"
    during.write_text("written during the outage\n")
    with postgres_cluster() as cluster:
        shared, (replica,) = make_replicas(cluster.new_database(), count=1)
        try:
            prepare(replica)
            replica.start()
            alice = add_user(replica, "alice")
            wait_for_users(replica, 1)
            session = Session(replica, "alice", alice)
            try:
                cluster.stop()
                replica.wait_for_log("The user database is unreachable", 15)
                refused = replica.sftp("alice", "pwd\n", key=alice)
                kept = session.ask(f"put {during} during.txt")
                stored = (shared / "data" / "alice" / "during.txt").read_bytes()
                state = replica.status()["server"]["database"]

                cluster.start()
                replica.wait_for_log("The user database is back", 30)
                healed = replica.sftp("alice", "pwd\n", key=alice)
            finally:
                session.close()
        finally:
            replica.stop()
            shutil.rmtree(replica.root, ignore_errors=True)
            shutil.rmtree(shared, ignore_errors=True)

    assert refused.returncode != 0
    refusal = (
        "Refused the login of alice from 127.0.0.1: the user database is unreachable."
    )
    assert any(refusal in line for line in replica.stderr_lines)
    assert kept
    assert stored == during.read_bytes()
    assert state == "unreachable"
    assert healed.returncode == 0, healed.stderr
    outage_lines = [line for line in replica.stderr_lines if "ERROR" in line]
    assert len(outage_lines) == 1, outage_lines


def test_a_row_no_replica_can_read_keeps_the_users_it_had(
    replicas: tuple[Replica, Replica], database_url: str
) -> None:
    first, _second = replicas
    first.start()
    alice = add_user(first, "alice")
    wait_for_users(first, 1)

    with connect(database_url, "test") as connection:
        connection.execute(
            "INSERT INTO sftpjail_users (name, home) VALUES ('mallory', '../up')"
        )
        connection.execute("SELECT pg_notify('sftpjail_users', 'mallory')")
    line = first.wait_for_log("Kept the previous users", NOTICE_TIMEOUT)
    login = first.sftp("alice", "pwd\n", key=alice)

    assert 'user "mallory": home' in line
    assert login.returncode == 0, login.stderr
    assert first.process is not None and first.process.poll() is None


class BlackHole:
    """A TCP port that takes connections and never says a word.

    A database behind a firewall that drops its answers looks like this to
    libpq: the connection attempt waits for its whole connect_timeout.
    """

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self.listener.getsockname()[1]
        self.held: list[socket.socket] = []

    def take_new(self) -> int:
        """Accept (and keep silent) whatever connected since; how many."""

        taken = 0
        while select.select([self.listener], [], [], 0)[0]:
            connection, _address = self.listener.accept()
            self.held.append(connection)
            taken += 1
        return taken

    def close(self) -> None:
        for connection in self.held:
            connection.close()
        self.listener.close()


def test_a_database_that_never_answers_holds_up_nothing_else() -> None:
    hole = BlackHole()
    url = f"postgresql://sftpjail@127.0.0.1:{hole.port}/sftpjail"
    shared, (replica,) = make_replicas(url, count=1)
    try:
        sftpjail("hostkeys", "--config", str(replica.config_file))
        replica.start()  # the first attempt waits out connect_timeout
        attempts_before = hole.take_new()

        assert replica.process is not None
        supervisor = replica.process.pid
        slowest = 0.0
        probes: list[ProbeView] = []
        deadline = time.monotonic() + 9.0  # retries after 1, 2 and 5 s
        while time.monotonic() < deadline:
            asked = time.monotonic()
            state = replica.status()["server"]["database"]
            slowest = max(slowest, time.monotonic() - asked)
            assert state == "unreachable"
            probes += _probes_of(supervisor)
            time.sleep(0.1)
        attempts_during = hole.take_new()
        sandbox = _sandbox_of(supervisor)
        inherited = set(_descriptors_of(supervisor))
    finally:
        replica.stop()
        hole.close()
        shutil.rmtree(replica.root, ignore_errors=True)
        shutil.rmtree(shared, ignore_errors=True)

    assert attempts_before >= 1
    # The replica kept trying while it answered...
    assert attempts_during >= 2
    # ...and no attempt held its loop: each hangs for 3 s (connect_timeout).
    assert slowest < 1.5, slowest
    # The attempts were made by children in the supervisor's own sandbox,
    # holding none of its sockets (listeners, clients, workers' links):
    # only the connection attempt's own socket and its poller.
    assert probes, "no retry child was seen"
    assert sandbox["Seccomp"] == "2"
    assert len([target for target in inherited if "socket:" in target]) > 2
    for probe in probes:
        assert probe.sandbox == sandbox
        assert not set(probe.descriptors) & inherited - {EPOLL}, probe
        assert len(probe.descriptors) <= 2, probe


@dataclass
class ProbeView:
    """A database retry child as /proc showed it."""

    sandbox: dict[str, str]
    # What each descriptor above 2 points at.
    descriptors: list[str]


# What /proc shows for any epoll descriptor: not told apart by name.
EPOLL = "anon_inode:[eventpoll]"


def _descriptors_of(pid: int) -> list[str]:
    """What each of the process's descriptors above 2 points at."""

    fd_dir = Path(f"/proc/{pid}/fd")
    return [os.readlink(entry) for entry in fd_dir.iterdir() if int(entry.name) > 2]


def _probes_of(supervisor: int) -> list[ProbeView]:
    """The supervisor's children that are forks of it (not the zygote).

    Only those forked a while ago: in its first moments a child still
    holds what it inherited, before it closes it.
    """

    command = Path(f"/proc/{supervisor}/cmdline").read_bytes()
    views = []
    for child in descendants(supervisor):
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() != command:
                continue
            if _age(child) < SETTLED_SECONDS:
                continue
            views.append(ProbeView(_sandbox_of(child), _descriptors_of(child)))
        except (OSError, ValueError):
            continue  # it ended while being looked at
    return views


# How old a retry child must be to have closed what it inherited; each
# one waits 3 s on the black hole, so there is time to see it after that.
SETTLED_SECONDS = 0.5


def _age(pid: int) -> float:
    """Seconds since `pid` started."""

    started = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - started / os.sysconf("SC_CLK_TCK")


def _sandbox_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
    wanted = ("Seccomp", "Seccomp_filters", "NoNewPrivs", "CapEff")
    return {name: fields[name].strip() for name in wanted}
