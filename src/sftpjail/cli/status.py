"""`sftpjail status`: what a running server is doing right now.

Asks the server through its control socket (`sftpjail.control`), so it
needs the same configuration as `serve` and the right to use the socket:
root, or the account the server runs as.  The plain output is for people
and `grep`: a few `name: value` lines, then tab-separated tables with a
header line.  `--json` prints the server's reply unchanged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from sftpjail.cli.options import config_option, load
from sftpjail.control import ask, control_socket_path

_SESSION_COLUMNS = (
    "connection",
    "user",
    "peer",
    "state",
    "since",
    "bytes_in",
    "bytes_out",
    "idle",
)
_BAN_COLUMNS = ("peer", "until", "seconds", "failures")


@click.command()
@config_option
@click.option("--json", "as_json", is_flag=True, help="Print the reply as JSON.")
def status(config_path: Path | None, as_json: bool) -> None:
    """Show sessions, bans and sandbox layers of the running server."""

    config = load(config_path)
    reply = ask(control_socket_path(config), "status")
    if as_json:
        reply.pop("ok", None)
        click.echo(json.dumps(reply, indent=2, sort_keys=True))
        return
    for line in render(reply):
        click.echo(line)


def render(reply: dict[str, Any]) -> list[str]:
    """The plain-text lines for a status reply."""

    server = reply.get("server", {})
    listen = ", ".join(server.get("listen", []))
    lines = [
        f"server: pid {server.get('pid')}, running since {server.get('since')}, "
        f"{server.get('users')} users, listening on {listen}",
        f"sandbox: {server.get('sandbox') or 'not reported yet (no worker ran)'}",
        f"defense: {'on' if server.get('defense') else 'off'}",
    ]
    if server.get("database") is not None:
        lines.append(f"database: {server['database']}")
    sessions = reply.get("sessions", [])
    lines.append(f"sessions: {len(sessions)}")
    lines += _table(_SESSION_COLUMNS, sessions)
    bans = reply.get("bans", [])
    lines.append(f"bans: {len(bans)}")
    lines += _table(_BAN_COLUMNS, bans)
    return lines


def _table(columns: Sequence[str], rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = ["\t".join(columns)]
    for row in rows:
        cells = ["-" if row.get(name) is None else str(row[name]) for name in columns]
        lines.append("\t".join(cells))
    return lines
