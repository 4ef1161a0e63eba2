"""The whole server against the real OpenSSH clients on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from serverlab import ClientKey, ServerLab


@pytest.fixture
def two_users(lab: ServerLab) -> tuple[ServerLab, ClientKey, ClientKey]:
    alice = lab.add_user("alice", password="correct horse battery")
    bob = lab.add_user("bob")
    lab.start()
    return lab, alice, bob


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_lifecycle_messages_are_fixed_sentences(lab: ServerLab) -> None:
    lab.add_user("alice")
    lab.start()

    lab.wait_for_log("Starting sftpjail supervisor", 1)
    lab.wait_for_log(f"Listening on 127.0.0.1:{lab.port}.", 1)
    lab.wait_for_log("Loaded 1 users from", 1)
    assert lab.stop() == 0
    lab.wait_for_log(
        "Shutting down on SIGTERM; waiting up to 5 seconds for 0 sessions.", 1
    )
    lab.wait_for_log("Stopped.", 1)


def test_upload_download_and_file_operations(
    two_users: tuple[ServerLab, ClientKey, ClientKey], tmp_path: Path
) -> None:
    lab, alice, _bob = two_users
    small = tmp_path / "small.bin"
    small.write_bytes(os.urandom(70_000))
    back = tmp_path / "back.bin"

    result = lab.sftp(
        "alice",
        f"put {small} first.bin\n"
        "mkdir docs\n"
        "rename first.bin docs/moved.bin\n"
        "chmod 600 docs/moved.bin\n"
        f"get docs/moved.bin {back}\n"
        "ls -l docs\n"
        "rm docs/moved.bin\n"
        "rmdir docs\n"
        "ls\n",
        key=alice,
    )

    assert result.returncode == 0, result.stderr
    assert _digest(back) == _digest(small)
    assert "moved.bin" in result.stdout
    assert "-rw-------" in result.stdout
    assert not (lab.data_dir / "alice" / "docs").exists()


def test_large_file_is_byte_identical(
    two_users: tuple[ServerLab, ClientKey, ClientKey], tmp_path: Path
) -> None:
    lab, alice, _bob = two_users
    big = tmp_path / "big.bin"
    with big.open("wb") as stream:
        for _ in range(100):
            stream.write(os.urandom(1024 * 1024))
    back = tmp_path / "big.back"

    result = lab.sftp("alice", f"put {big} big.bin\nget big.bin {back}\n", key=alice)

    assert result.returncode == 0, result.stderr
    assert _digest(lab.data_dir / "alice" / "big.bin") == _digest(big)
    assert _digest(back) == _digest(big)
    closes = [
        event for event in lab.audit_events("sftp.close") if event["path"] == "/big.bin"
    ]
    assert closes and closes[0]["bytes_written"] == 100 * 1024 * 1024


def test_password_login(two_users: tuple[ServerLab, ClientKey, ClientKey]) -> None:
    lab, _alice, _bob = two_users

    result = lab.sftp("alice", "pwd\n", password="correct horse battery")

    assert result.returncode == 0, result.stderr
    assert "Remote working directory: /" in result.stdout
    successes = lab.audit_events("auth.success")
    assert successes[-1]["method"] == "password"
    assert successes[-1]["user"] == "alice"


def test_failed_logins_look_the_same(
    two_users: tuple[ServerLab, ClientKey, ClientKey],
) -> None:
    lab, _alice, bob = two_users

    wrong_password = lab.sftp("alice", "pwd\n", password="wrong")
    unknown_user = lab.sftp("mallory", "pwd\n", password="wrong")
    wrong_key = lab.sftp("alice", "pwd\n", key=bob)

    for result in (wrong_password, unknown_user, wrong_key):
        assert result.returncode != 0
        assert "Permission denied" in result.stderr
    messages = {
        r.stderr.strip().splitlines()[-1].split(" (")[0]
        for r in (wrong_password, unknown_user)
    }
    assert len(messages) == 1
    failures = lab.audit_events("auth.failure")
    assert {event["user"] for event in failures} >= {"alice", "mallory"}
    assert all(
        "credential" not in event and "password" not in event for event in failures
    )


def test_secrets_never_reach_the_logs(
    two_users: tuple[ServerLab, ClientKey, ClientKey],
) -> None:
    lab, _alice, _bob = two_users

    lab.sftp("alice", "pwd\n", password="correct horse battery")
    lab.sftp("alice", "pwd\n", password="a-wrong-guess")
    lab.stop()

    everything = lab.stdout_path.read_text() + "\n".join(lab.stderr_lines)  # type: ignore[union-attr]
    assert "correct horse battery" not in everything
    assert "a-wrong-guess" not in everything
    assert "$argon2id$" not in everything


def test_attempt_limit_disconnects_within_one_connection(lab: ServerLab) -> None:
    lab.write_config(limits="max_auth_attempts = 2\nauth_failure_delay = 0.3")
    lab.add_user("alice", password="right")
    lab.start()

    import asyncio

    import asyncssh

    class Guesser(asyncssh.SSHClient):
        def __init__(self) -> None:
            self.count = 0

        def password_auth_requested(self) -> str | None:
            self.count += 1
            return f"guess{self.count}" if self.count <= 5 else None

    async def run() -> tuple[str, float, int]:
        started = time.monotonic()
        guesser = Guesser()
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                lab.port,
                username="alice",
                known_hosts=None,
                client_keys=None,
                preferred_auth="password",
                client_factory=lambda: guesser,
            ):
                return "connected", 0.0, guesser.count
        except asyncssh.DisconnectError as error:
            return error.reason, time.monotonic() - started, guesser.count

    reason, elapsed, count = asyncio.run(run())

    assert reason == "Too many authentication failures"
    assert count == 2
    assert elapsed >= 0.3 + 0.6
    assert [event["attempt"] for event in lab.audit_events("auth.failure")] == [1, 2]


@pytest.mark.parametrize(
    ("arguments", "request_name"),
    [
        (
            ["-N", "-o", "ExitOnForwardFailure=yes", "-R", "0:127.0.0.1:9", ""],
            "remote tcp forwarding",
        ),
        (["-W", "127.0.0.1:9", ""], "tcp forwarding"),
        (["echo hello"], "exec"),
        (["-tt", ""], "pty"),
        (["-A", "-tt", ""], "agent forwarding"),
    ],
)
def test_forbidden_requests_are_refused_and_audited(
    two_users: tuple[ServerLab, ClientKey, ClientKey],
    arguments: list[str],
    request_name: str,
) -> None:
    lab, alice, _bob = two_users
    if arguments[-1] == "":
        arguments = arguments[:-1]
        command: list[str] = []
    else:
        command = arguments[-1:]
        arguments = arguments[:-1]
    environment = dict(os.environ)
    agent = None
    if "-A" in arguments:
        agent = subprocess.run(
            ["ssh-agent", "-s"], capture_output=True, text=True, check=True
        )
        for part in agent.stdout.replace(";", "\n").splitlines():
            if "=" in part and part.strip().startswith("SSH_"):
                name, value = part.strip().split("=", 1)
                environment[name] = value
    try:
        completed = subprocess.run(
            [
                "ssh",
                *lab.ssh_options(alice),
                "-p",
                str(lab.port),
                *arguments,
                "alice@127.0.0.1",
                *command,
            ],
            capture_output=True,
            timeout=30,
            env=environment,
            stdin=subprocess.DEVNULL,
        )
    finally:
        if agent is not None:
            subprocess.run(["ssh-agent", "-k"], env=environment, capture_output=True)

    refusals = lab.audit_events("request.refused")
    assert request_name in {event["request"] for event in refusals}, (
        completed.stderr,
        refusals,
    )
    assert all(event["peer"] == "127.0.0.1" for event in refusals)
    assert "hello" not in completed.stdout.decode()


def test_local_and_socks_forwarding_are_refused(
    two_users: tuple[ServerLab, ClientKey, ClientKey],
) -> None:
    lab, alice, _bob = two_users
    target = socket.socket()
    target.bind(("127.0.0.1", 0))
    target.listen(1)
    target.settimeout(0.5)
    local_port = _free_port()
    socks_port = _free_port()

    tunnel = subprocess.Popen(
        [
            "ssh",
            *lab.ssh_options(alice),
            "-p",
            str(lab.port),
            "-N",
            "-L",
            f"{local_port}:127.0.0.1:{target.getsockname()[1]}",
            "-D",
            str(socks_port),
            "alice@127.0.0.1",
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _wait_for_port(local_port)
        with socket.create_connection(("127.0.0.1", local_port), timeout=5) as through:
            through.settimeout(5)
            assert through.recv(1) == b""
        with pytest.raises(TimeoutError):
            target.accept()
        with socket.create_connection(("127.0.0.1", socks_port), timeout=5) as socks:
            socks.settimeout(5)
            # SOCKS5: no auth, then CONNECT to the test's own listener.
            socks.sendall(b"\x05\x01\x00")
            assert socks.recv(2) == b"\x05\x00"
            socks.sendall(
                b"\x05\x01\x00\x01"
                + socket.inet_aton("127.0.0.1")
                + target.getsockname()[1].to_bytes(2, "big")
            )
            reply = socks.recv(10)
            assert reply[:2] != b"\x05\x00"
        with pytest.raises(TimeoutError):
            target.accept()
    finally:
        tunnel.terminate()
        tunnel.wait(10)
        target.close()

    refused = [
        event
        for event in lab.audit_events("request.refused")
        if event["request"] == "tcp forwarding"
    ]
    assert len(refused) >= 2


def test_unix_socket_forwarding_is_refused(
    two_users: tuple[ServerLab, ClientKey, ClientKey], tmp_path: Path
) -> None:
    lab, alice, _bob = two_users

    completed = subprocess.run(
        [
            "ssh",
            *lab.ssh_options(alice),
            "-p",
            str(lab.port),
            "-N",
            "-o",
            "ExitOnForwardFailure=yes",
            "-R",
            f"{tmp_path}/remote.sock:{tmp_path}/local.sock",
            "alice@127.0.0.1",
        ],
        capture_output=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )

    assert completed.returncode != 0
    requests = {event["request"] for event in lab.audit_events("request.refused")}
    assert "remote unix forwarding" in requests


def test_legacy_scp_is_refused_but_scp_over_sftp_works(
    two_users: tuple[ServerLab, ClientKey, ClientKey], tmp_path: Path
) -> None:
    lab, alice, _bob = two_users
    source = tmp_path / "file.txt"
    source.write_text("over sftp\n")
    common = ["scp", *lab.ssh_options(alice), "-P", str(lab.port)]

    modern = subprocess.run(
        [*common, str(source), "alice@127.0.0.1:copied.txt"],
        capture_output=True,
        timeout=30,
    )
    legacy = subprocess.run(
        [*common, "-O", str(source), "alice@127.0.0.1:legacy.txt"],
        capture_output=True,
        timeout=30,
    )

    assert modern.returncode == 0, modern.stderr
    assert (lab.data_dir / "alice" / "copied.txt").read_text() == "over sftp\n"
    assert legacy.returncode != 0
    assert not (lab.data_dir / "alice" / "legacy.txt").exists()
    assert "exec" in {event["request"] for event in lab.audit_events("request.refused")}


def test_users_cannot_reach_each_other(
    two_users: tuple[ServerLab, ClientKey, ClientKey], tmp_path: Path
) -> None:
    lab, alice, bob = two_users
    secret = lab.data_dir / "bob" / "secret.txt"
    secret.write_text("bob only\n")
    out = tmp_path / "stolen"

    attempts = [
        "../bob/secret.txt",
        "/../bob/secret.txt",
        "../../../../../../bob/secret.txt",
        "//bob/secret.txt",
        "/bob/secret.txt",
        "..\\bob\\secret.txt",
        f"{lab.data_dir}/bob/secret.txt",
        "a/" * 1500 + "../" * 1501 + "bob/secret.txt",
    ]
    for path in attempts:
        result = lab.sftp("alice", f'get "{path}" {out}\n', key=alice)
        assert result.returncode != 0, path
        assert not out.exists(), path

    listing = lab.sftp("alice", "ls -a /\nls -a ..\nls -a ../..\n", key=alice)
    assert listing.returncode == 0, listing.stderr
    assert "secret.txt" not in listing.stdout
    assert "bob" not in listing.stdout.replace("sftp>", "")

    write = lab.sftp("alice", f"put {__file__} ../bob/planted.py\n", key=alice)
    assert not (lab.data_dir / "bob" / "planted.py").exists()
    assert (
        not (lab.data_dir / "bob" / "planted.py").exists() and write.returncode != 0
    ) or (lab.data_dir / "alice" / "bob" / "planted.py").exists() is False
    assert lab.sftp("bob", f"get secret.txt {tmp_path}/own\n", key=bob).returncode == 0


def test_read_only_user_can_only_list_and_download(
    lab: ServerLab, tmp_path: Path
) -> None:
    viewer = lab.add_user("viewer", read_only=True)
    lab.start()
    home = lab.data_dir / "viewer"
    (home / "report.txt").write_text("read me\n")
    target = tmp_path / "report.txt"

    download = lab.sftp("viewer", f"ls\nget report.txt {target}\n", key=viewer)
    assert download.returncode == 0, download.stderr
    assert target.read_text() == "read me\n"

    for command in (
        f"put {target} new.txt",
        "mkdir d",
        "rm report.txt",
        "rename report.txt r.txt",
        "chmod 600 report.txt",
        "symlink report.txt l",
    ):
        result = lab.sftp("viewer", command + "\n", key=viewer)
        assert result.returncode != 0, command
    assert sorted(os.listdir(home)) == ["report.txt"]
    assert (home / "report.txt").stat().st_mode & 0o777 != 0o600
    assert {event["operation"] for event in lab.audit_events("sftp.refused")} >= {
        "open_write",
        "mkdir",
        "remove",
        "rename",
        "setstat",
        "symlink",
    }


def test_special_mode_bits_and_owner_changes_are_refused(
    two_users: tuple[ServerLab, ClientKey, ClientKey], tmp_path: Path
) -> None:
    lab, alice, _bob = two_users
    tool = lab.data_dir / "alice" / "tool"
    tool.write_text("x")
    home = (lab.data_dir / "alice").stat()
    os.chown(tool, home.st_uid, home.st_gid)

    for command in (
        "chmod 4755 tool",
        "chmod 2755 tool",
        "chmod 1755 tool",
        "chown 0 tool",
        "chgrp 0 tool",
    ):
        result = lab.sftp("alice", command + "\n", key=alice)
        assert result.returncode != 0, command
    assert (lab.data_dir / "alice" / "tool").stat().st_mode & 0o7000 == 0


def test_worker_crash_leaves_the_server_serving(
    two_users: tuple[ServerLab, ClientKey, ClientKey], tmp_path: Path
) -> None:
    lab, alice, bob = two_users
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(64 * 1024 * 1024))
    upload = subprocess.Popen(
        [
            "sftp",
            *lab.ssh_options(alice),
            "-P",
            str(lab.port),
            "-b",
            "-",
            "alice@127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert upload.stdin is not None
    upload.stdin.write(f"put {big} big.bin\n".encode())
    upload.stdin.close()

    worker = lab.wait_for_worker("alice")
    os.kill(worker, signal.SIGKILL)
    upload.wait(30)

    assert upload.returncode != 0
    assert lab.process is not None and lab.process.poll() is None
    result = lab.sftp("bob", "pwd\n", key=bob)
    assert result.returncode == 0, result.stderr
    crashed = lab.audit_events("worker.crashed")
    assert crashed and crashed[-1]["status"] == "SIGKILL"


def _open_idle_sftp(lab: ServerLab, key: ClientKey) -> subprocess.Popen[bytes]:
    """An interactive sftp session as alice that waits for commands."""

    session = subprocess.Popen(
        ["sftp", *lab.ssh_options(key), "-P", str(lab.port), "alice@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lab.wait_for_worker("alice")
    return session


def test_sigterm_waits_for_sessions_then_ends_them(
    lab: ServerLab, tmp_path: Path
) -> None:
    lab.write_config(limits="shutdown_grace_time = 2")
    alice = lab.add_user("alice")
    lab.start()
    session = _open_idle_sftp(lab, alice)

    started = time.monotonic()
    assert lab.stop(timeout=15) == 0
    elapsed = time.monotonic() - started

    assert 2.0 <= elapsed < 10
    lab.wait_for_log("waiting up to 2 seconds for 1 sessions.", 1)
    lab.wait_for_log("Grace time over; ending 1 sessions.", 1)
    session.kill()
    session.wait()


def test_sigterm_ends_idle_sessions_at_once_and_lets_busy_ones_finish(
    lab: ServerLab,
) -> None:
    """A client left open does not hold the shutdown for the whole grace
    time; a session still making requests goes on until it is done."""

    lab.write_config(limits="shutdown_grace_time = 60")
    alice = lab.add_user("alice")
    lab.start()
    idle = _open_idle_sftp(lab, alice)
    time.sleep(6)
    command = ["sftp", *lab.ssh_options(alice), "-b", "-", "-P", str(lab.port)]
    busy = subprocess.Popen(
        [*command, "alice@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert busy.stdin is not None
    busy.stdin.write("cd /\n!sleep 0.5\n" * 12 + "cd /\n")
    busy.stdin.close()
    time.sleep(1)

    started = time.monotonic()
    assert lab.stop(timeout=30) == 0
    elapsed = time.monotonic() - started

    assert busy.wait(timeout=10) == 0, busy.stderr.read() if busy.stderr else ""
    assert elapsed < 20
    lab.wait_for_log("Ending 1 idle sessions for the shutdown.", 1)
    reasons = [event["reason"] for event in lab.audit_events("session.ended")]
    assert reasons == ["server shutting down"]
    idle.kill()
    idle.wait()


def test_host_keys_survive_a_restart(lab: ServerLab) -> None:
    lab.add_user("alice")
    lab.start()
    first = [line for line in lab.stderr_lines if "Host key" in line]
    lab.stop()
    lab.stderr_lines.clear()
    lab.start()
    second = [line for line in lab.stderr_lines if "Host key" in line]

    def fingerprints(lines: list[str]) -> list[str]:
        return [
            word
            for line in lines
            for word in line.split()
            if word.startswith("SHA256:")
        ]

    assert len(fingerprints(first)) == 2
    assert fingerprints(first) == fingerprints(second)
    for key in lab.state_dir.glob("ssh_host_*_key"):
        assert key.stat().st_mode & 0o777 == 0o600
    keygen = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(lab.state_dir / "ssh_host_ed25519_key")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert keygen.stdout.split()[1] == fingerprints(first)[0]


def test_invalid_config_exits_2_and_starts_nothing(lab: ServerLab) -> None:
    code, stderr = _serve_with_changed_config(
        lab, f"127.0.0.1:{lab.port}", "127.0.0.1:notaport"
    )

    assert code == 2
    assert len(stderr) == 1
    assert "server.listen" in stderr[0]
    assert not lab.state_dir.exists()


def _serve_with_changed_config(
    lab: ServerLab, old: str, new: str
) -> tuple[int, list[str]]:
    """Start the server with `old` replaced by `new` in the config, which it
    must refuse; its exit code and stderr lines.

    Through the lab, so a server that wrongly starts is stopped with it.
    """

    lab.config_file.write_text(lab.config_file.read_text().replace(old, new))
    with pytest.raises(AssertionError, match="server never logged"):
        lab.start()
    return lab.exit_code, lab.stderr_lines


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_for_port(port: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


def test_environment_and_x11_requests_are_refused_and_audited(
    two_users: tuple[ServerLab, ClientKey, ClientKey],
) -> None:
    lab, alice, _bob = two_users
    environment = dict(os.environ, DISPLAY="127.0.0.1:99")

    with_env = lab.sftp("alice", "pwd\n", key=alice, extra=["-o", "SetEnv=PROBE=1"])
    target = ["-p", str(lab.port), "-X", "alice@127.0.0.1", "true"]
    x11 = subprocess.run(
        ["ssh", *lab.ssh_options(alice), *target],
        capture_output=True,
        timeout=30,
        env=environment,
        stdin=subprocess.DEVNULL,
    )

    assert with_env.returncode == 0, with_env.stderr
    assert x11.returncode != 0
    requests = {event["request"] for event in lab.audit_events("request.refused")}
    assert {"environment", "x11 forwarding", "exec"} <= requests


def test_idle_sessions_are_ended_and_busy_ones_are_not(lab: ServerLab) -> None:
    """A session that makes a request every half second outlives the idle
    timeout, even requests that move nothing and change nothing (`cd` is a
    realpath and a stat); one that only sends keepalives, every second, is
    ended with the reason."""

    key = lab.add_user("alice")
    lab.write_config("idle_timeout = 4")
    lab.start()

    busy = lab.sftp("alice", "cd /\n!sleep 0.5\n" * 14 + "cd /\n", key=key)
    assert busy.returncode == 0, busy.stderr
    assert lab.audit_events("session.ended") == []

    idle = lab.sftp(
        "alice",
        "ls\n!sleep 10\nls\n",
        key=key,
        extra=["-o", "ServerAliveInterval=1"],
    )
    assert idle.returncode != 0
    ended = lab.audit_events("session.ended")
    assert [event["reason"] for event in ended] == ["idle for 4 seconds"]
    lab.wait_for_log("(connection 2): idle for 4 seconds.", 5)


def test_connections_per_source_are_capped(lab: ServerLab) -> None:
    lab.write_config(limits="max_sessions_per_source = 2")
    alice = lab.add_user("alice")
    lab.start()
    holders = [
        subprocess.Popen(
            ["sftp", *lab.ssh_options(alice), "-P", str(lab.port), "alice@127.0.0.1"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(2)
    ]
    try:
        deadline = time.monotonic() + 15
        while len(lab.audit_events("auth.success")) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)

        third = lab.sftp("alice", "pwd\n", key=alice)
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()

    assert third.returncode != 0
    # A clean close after the reason line, not a reset.
    assert "Connection closed by remote host" in third.stderr
    refused = lab.audit_events("connection.refused")
    assert [event["reason"] for event in refused] == ["too many connections"]
    assert lab.process is not None and lab.process.poll() is None


def test_running_out_of_descriptors_turns_clients_away_not_the_server(
    lab: ServerLab,
) -> None:
    """With no descriptor left, accepting pauses (no spinning on the
    listener); with one left, the client is refused; with room again, the
    connection that waited in the backlog is served."""

    alice = lab.add_user("alice")
    lab.start()
    assert lab.process is not None
    supervisor = lab.process.pid
    in_use = len(os.listdir(f"/proc/{supervisor}/fd"))
    usual = _descriptor_limit(supervisor)

    _limit_descriptors(supervisor, in_use + 1)  # room for accept() only
    refused = lab.sftp("alice", "pwd\n", key=alice, timeout=30)
    _limit_descriptors(supervisor, in_use)  # not even for accept()
    waiting = subprocess.Popen(
        [
            "sftp",
            "-b",
            "-",
            *lab.ssh_options(alice),
            "-P",
            str(lab.port),
            "alice@127.0.0.1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        lab.wait_for_log("Cannot accept connections", 15)
        cpu_before = _cpu_seconds(supervisor)
        time.sleep(2)
        cpu_while_full = _cpu_seconds(supervisor) - cpu_before
        _limit_descriptors(supervisor, usual)
        output, _errors = waiting.communicate(b"pwd\n", timeout=60)
    finally:
        waiting.kill()
        waiting.wait()

    assert refused.returncode != 0
    reasons = [event["reason"] for event in lab.audit_events("connection.refused")]
    assert reasons == ["out of resources"]
    assert cpu_while_full < 0.5  # paused, not spinning on the listener
    assert waiting.returncode == 0
    assert b"Remote working directory: /" in output
    assert lab.process.poll() is None


def _limit_descriptors(pid: int, count: int) -> None:
    """Set the soft limit only: raising it again needs no privilege."""

    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={count}:"], check=True)


def _descriptor_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError(f"no open-files limit for {pid}")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_handle_and_request_size_limits(lab: ServerLab) -> None:
    lab.write_config(limits="max_open_handles = 4\nmax_request_size = 65536")
    alice = lab.add_user("alice")
    lab.start()

    import asyncio

    import asyncssh

    async def exceed() -> tuple[str, str, int]:
        async with (
            asyncssh.connect(
                "127.0.0.1",
                lab.port,
                username="alice",
                client_keys=[str(alice.private)],
                known_hosts=None,
            ) as connection,
            connection.start_sftp_client() as sftp,
        ):
            files = []
            handles = ""
            try:
                for index in range(5):
                    files.append(await sftp.open(f"file{index}", "w"))
            except asyncssh.SFTPFailure as error:
                handles = error.reason
            for file in files:
                await file.close()

            too_large = ""
            big = await sftp.open("big", "wb", block_size=256 * 1024)
            try:
                await big.write(b"x" * 256 * 1024)
            except asyncssh.SFTPFailure as error:
                too_large = error.reason
            await big.close()
            reopened = await sftp.open("file0", "w")  # handles were given back
            await reopened.close()
            return handles, too_large, len(files)

    handles, too_large, opened = asyncio.run(exceed())

    assert opened == 4
    assert "too many open handles (limit 4)" in handles
    assert "over the 65536 limit" in too_large
    assert (lab.data_dir / "alice" / "big").stat().st_size == 0
    assert lab.process is not None and lab.process.poll() is None


def test_unknown_users_cost_as_much_as_wrong_passwords(lab: ServerLab) -> None:
    lab.write_config(limits="auth_failure_delay = 0.5")
    lab.add_user("alice", password="right")
    lab.start()

    import asyncio
    import statistics

    import asyncssh

    async def attempt(user: str) -> float:
        started = time.monotonic()
        with pytest.raises(asyncssh.PermissionDenied):
            async with asyncssh.connect(
                "127.0.0.1",
                lab.port,
                username=user,
                password="wrong",
                known_hosts=None,
                client_keys=None,
                preferred_auth="password",
            ):
                pass
        return time.monotonic() - started

    async def measure() -> tuple[float, float]:
        known, unknown = [], []
        # Two each: five failures from one address would earn a ban.
        for _ in range(2):
            known.append(await attempt("alice"))
            unknown.append(await attempt("nobody-here"))
        return statistics.median(known), statistics.median(unknown)

    known, unknown = asyncio.run(measure())

    # Both wait for the same delay after a real argon2 verification (a dummy
    # hash for the unknown name), so neither answer gives the name away.
    assert known >= 0.5
    assert unknown >= 0.5
    assert abs(known - unknown) < 0.5


def test_secrets_inside_data_dir_are_refused_before_anything_starts(
    lab: ServerLab,
) -> None:
    # Every worker can read data_dir before login: host keys there would be
    # readable by any worker taken over during the handshake.
    code, stderr = _serve_with_changed_config(
        lab, f'state_dir = "{lab.state_dir}"', f'state_dir = "{lab.data_dir}/keys"'
    )

    assert code == 2
    assert "server.state_dir" in "\n".join(stderr)
    assert "inside data_dir" in "\n".join(stderr)
    assert not (lab.data_dir / "keys").exists()


def test_a_directory_that_cannot_be_searched_lists_its_names_only(
    two_users: tuple[ServerLab, ClientKey, ClientKey],
) -> None:
    lab, alice, _bob = two_users
    home = lab.data_dir / "alice"
    closed = home / "closed"
    closed.mkdir()
    (closed / "inside.txt").write_bytes(b"x")
    service = (home.stat().st_uid, home.stat().st_gid)
    os.chown(closed, *service)
    # Readable but not searchable: the names can be read, their
    # attributes cannot.
    closed.chmod(0o600)

    result = lab.sftp("alice", "ls -l closed\nls -l\n", key=alice)

    # Batch mode stops at the first failed command: both listings worked.
    assert result.returncode == 0, result.stderr
    # As OpenSSH does, an entry that cannot be looked up is left out
    # rather than failing the whole listing.
    assert "inside.txt" not in result.stdout
    entries = [line for line in result.stdout.splitlines() if line[:1] == "d"]
    assert [line.split()[-1] for line in entries] == ["closed"]
