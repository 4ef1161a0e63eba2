"""Helpers for the operations tests: edit a running server's users, ask it.

They work on a `ServerLab` (tests/serverlab.py) the way an operator would:
through the `sftpjail` command, by replacing the users file atomically, or
through the control socket.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import asyncssh
import tomlkit

from serverlab import ClientKey, ServerLab
from sftpjail.control import ask


def run_cli(*arguments: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run `python -m sftpjail ARGUMENTS` and capture what it says."""

    return subprocess.run(
        [sys.executable, "-m", "sftpjail", *arguments],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )


def replace_users_text(lab: ServerLab, text: str) -> None:
    """Write a new users file beside the old one and rename it over it."""

    fresh = lab.users_file.with_name(".users.toml.new")
    fresh.write_text(text)
    fresh.chmod(0o600)
    os.rename(fresh, lab.users_file)


def set_user_fields(lab: ServerLab, name: str, **fields: Any) -> None:
    """Set keys of one user's table, keeping the rest of the file."""

    document = tomlkit.parse(lab.users_file.read_text())
    table = document["users"][name]
    for key, value in fields.items():
        table[key] = value
    replace_users_text(lab, document.as_string())


def control(lab: ServerLab, request: str) -> dict[str, Any]:
    """Ask the lab's server through its control socket."""

    return ask(lab.state_dir / "control.sock", request)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` every 0.1 s for at most `timeout` seconds."""

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def open_session(lab: ServerLab, user: str, key: ClientKey) -> subprocess.Popen[bytes]:
    """An interactive sftp session that stays logged in until stdin closes."""

    session = subprocess.Popen(
        ["sftp", *lab.ssh_options(key), "-P", str(lab.port), f"{user}@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    wait_until(
        lambda: any(
            event["user"] == user and event["state"] == "active"
            for event in control(lab, "status")["sessions"]
        ),
        15,
        f"{user} to log in",
    )
    return session


def wait_for_close(lab: ServerLab, user: str, timeout: float) -> None:
    """Wait until the audit log says a connection of `user` closed."""

    wait_until(
        lambda: any(
            event["user"] == user for event in lab.audit_events("connection.closed")
        ),
        timeout,
        f"a connection of {user} to close",
    )


async def password_login(lab: ServerLab, password: str, source: str) -> str:
    """Log in as alice with `password` from `source`; 'ok', 'denied' or why not."""

    try:
        async with asyncssh.connect(
            "127.0.0.1",
            lab.port,
            local_addr=(source, 0),
            username="alice",
            password=password,
            known_hosts=None,
            client_keys=None,
            preferred_auth="password",
            connect_timeout=10,
        ):
            return "ok"
    except asyncssh.PermissionDenied:
        return "denied"
    except (asyncssh.Error, OSError) as error:
        return f"closed: {error}"
