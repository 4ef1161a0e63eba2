"""`sftpjail status` and the control socket, against a real server."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from operationslab import open_session, password_login, run_cli
from serverlab import SERVICE_USER, ServerLab
from sftpjail.cli.status import render
from sftpjail.control import ControlResponder


def test_status_shows_a_live_session_and_a_ban(lab: ServerLab) -> None:
    lab.extra_config = "[defense]\nmax_failures = 2"
    lab.write_config()
    alice = lab.add_user("alice")
    lab.start()
    for _ in range(2):
        asyncio.run(password_login(lab, "wrong", "127.0.0.2"))
    session = open_session(lab, "alice", alice)
    try:
        plain = run_cli("status", "--config", str(lab.config_file))
        as_json = run_cli("status", "--json", "--config", str(lab.config_file))
    finally:
        session.kill()
        session.wait()

    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.splitlines()
    assert "sessions: 1" in lines and "bans: 1" in lines
    session_row = lines[lines.index("sessions: 1") + 2].split("\t")
    assert session_row[1:4] == ["alice", "127.0.0.1", "active"]
    assert session_row[-1].isdigit()  # seconds idle
    ban_row = lines[lines.index("bans: 1") + 2].split("\t")
    assert ban_row[0] == "127.0.0.2" and ban_row[3] == "2"
    sandbox = next(line for line in lines if line.startswith("sandbox: "))
    assert "seccomp" in sandbox

    reply = json.loads(as_json.stdout)
    assert reply["server"]["pid"] == lab.process.pid  # type: ignore[union-attr]
    (live,) = reply["sessions"]
    assert live["user"] == "alice" and live["state"] == "active"
    assert 0 <= live["idle"] < 60
    assert [ban["peer"] for ban in reply["bans"]] == ["127.0.0.2"]


def test_control_socket_is_private_to_the_server_account(lab: ServerLab) -> None:
    # A directory every account can enter, so only the socket itself (its
    # mode, then the peer credentials) decides.
    (lab.root / "run").mkdir(mode=0o755)
    path = lab.root / "run" / "control.sock"
    lab.extra_config = f'control_socket = "{path}"'
    lab.write_config()
    lab.start()

    mode = stat.S_IMODE(path.stat().st_mode)
    by_mode = _ask_as_service_user(path)
    # Even with the file mode opened wide, the kernel's peer credentials
    # keep the service user (the workers' account) out.
    path.chmod(0o666)
    by_credentials = _ask_as_service_user(path)

    assert mode == 0o600
    assert path.stat().st_uid == os.geteuid()
    assert by_mode == "PermissionError"
    assert by_credentials == "closed without a reply"
    assert run_cli("status", "--config", str(lab.config_file)).returncode == 0


def test_status_without_a_server_says_so(lab: ServerLab) -> None:
    result = run_cli("status", "--config", str(lab.config_file))

    assert result.returncode == 1
    assert "no control socket at" in result.stderr
    assert "is the server running" in result.stderr


def test_control_socket_is_removed_on_stop(lab: ServerLab) -> None:
    lab.start()
    assert (lab.state_dir / "control.sock").is_socket()

    assert lab.stop() == 0

    assert not (lab.state_dir / "control.sock").exists()


@pytest.mark.parametrize(
    ("request_line", "error"),
    [
        (b"not json", "the request is not JSON"),
        (b'{"request": "shutdown"}', "unknown request; known: reload, status"),
        (b"[1, 2]", "unknown request"),
    ],
)
def test_control_responder_refuses_odd_requests(
    request_line: bytes, error: str
) -> None:
    responder = ControlResponder(
        {"status": lambda: {"x": 1}, "reload": lambda: {"y": 2}}
    )

    reply = json.loads(responder.answer(request_line))

    assert reply["ok"] is False and error in reply["error"]
    assert json.loads(responder.answer(b'{"request": "status"}')) == {
        "ok": True,
        "x": 1,
    }


def test_render_handles_an_idle_server() -> None:
    lines = render(
        {
            "server": {"pid": 1, "listen": ["127.0.0.1:2222"], "users": 0},
            "sessions": [],
            "bans": [],
        }
    )

    assert "sandbox: not reported yet (no worker ran)" in lines
    assert lines[-2:] == ["sessions: 0", "bans: 0"]


_CLIENT = """
import socket, sys
client = socket.socket(socket.AF_UNIX)
client.settimeout(10)
try:
    client.connect(sys.argv[1])
    client.sendall(b'{"request": "status"}\\n')
    print(client.recv(100).decode() or "closed without a reply")
except (ConnectionResetError, BrokenPipeError):
    print("closed without a reply")
except OSError as error:
    print(type(error).__name__)
"""


def _ask_as_service_user(path: Path) -> str:
    """Ask for status as the service user, with nothing but the socket module."""

    completed = subprocess.run(
        [
            "setpriv",
            f"--reuid={SERVICE_USER}",
            f"--regid={SERVICE_USER}",
            "--clear-groups",
            sys.executable,
            "-I",
            "-c",
            _CLIENT,
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return completed.stdout.strip()
