"""`sftpjail healthcheck` against a real server and against odd listeners.

The odd listeners are plain sockets on 127.0.0.1 that send exactly the
bytes a broken or foreign server would.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverlab import ServerLab

SRC_DIR = Path(__file__).resolve().parent.parent / "src"


def healthcheck(config: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "sftpjail", "healthcheck", "--config", str(config)]
    return subprocess.run(
        [*command, *arguments],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PYTHONPATH": str(SRC_DIR), "PATH": "/usr/bin:/bin"},
    )


def write_config(directory: Path, *listen: str) -> Path:
    config = directory / "config.toml"
    addresses = ", ".join(f'"{address}"' for address in listen)
    config.write_text(
        "[server]\n"
        f"listen = [{addresses}]\n"
        f'data_dir = "{directory / "data"}"\n'
        f'state_dir = "{directory / "state"}"\n'
        f'users_file = "{directory / "users.toml"}"\n'
    )
    return config


@pytest.fixture
def greeting_listener() -> Iterator[tuple[socket.socket, list[bytes]]]:
    """A listener on 127.0.0.1 that sends each connection the set greeting."""

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    greeting: list[bytes] = [b""]
    stop = threading.Event()

    def serve() -> None:
        held = []
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            connection.sendall(greeting[0])
            held.append(connection)  # stays open: a silent server stays silent
        for connection in held:
            connection.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener, greeting
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def test_a_running_server_is_healthy(lab: ServerLab) -> None:
    lab.start()

    result = healthcheck(lab.config_file)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"127.0.0.1:{lab.port} answered: SSH-2.0-")


def test_nobody_listening_is_unhealthy(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as reserved:
        port = reserved.getsockname()[1]
    config = write_config(tmp_path, f"127.0.0.1:{port}")

    result = healthcheck(config)

    assert result.returncode == 1
    assert f"the server does not answer on 127.0.0.1:{port}" in result.stderr


def test_lines_before_the_identification_are_allowed(
    greeting_listener: tuple[socket.socket, list[bytes]], tmp_path: Path
) -> None:
    listener, greeting = greeting_listener
    greeting[0] = b"welcome\r\nSSH-2.0-Other_1.0\r\n"
    config = write_config(tmp_path, f"0.0.0.0:{listener.getsockname()[1]}")

    result = healthcheck(config)

    assert result.returncode == 0, result.stderr
    assert "answered: SSH-2.0-Other_1.0" in result.stdout


def test_an_ssh1_server_is_unhealthy(
    greeting_listener: tuple[socket.socket, list[bytes]], tmp_path: Path
) -> None:
    listener, greeting = greeting_listener
    greeting[0] = b"SSH-1.5-Ancient\r\n"
    config = write_config(tmp_path, f"127.0.0.1:{listener.getsockname()[1]}")

    result = healthcheck(config)

    assert result.returncode == 1
    assert "unexpected identification 'SSH-1.5-Ancient'" in result.stderr


def test_a_silent_server_times_out(
    greeting_listener: tuple[socket.socket, list[bytes]], tmp_path: Path
) -> None:
    listener, _ = greeting_listener
    config = write_config(tmp_path, f"127.0.0.1:{listener.getsockname()[1]}")

    result = healthcheck(config, "--timeout", "0.5")

    assert result.returncode == 1
    assert "no identification in 0.5 s" in result.stderr
