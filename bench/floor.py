"""Small files and listings on three servers: OpenSSH, plain asyncssh, sftpjail.

The small-file and listing scenarios are bound by what each request
costs the server.  This runs them as `python -m bench` does (same
client, same commands, same clock and CPU accounting, servers taking
turns run after run) with a third server between the two: asyncssh's own
SFTP server with nothing of sftpjail's (`bench.reference`).  Its numbers
are the floor under any server that runs on asyncssh and asyncio, before
it adds a sandbox, rules or an audit log.

    python -m bench.floor                      # 2,000 files, 10,000 entries, 3 runs
    python -m bench.floor --files 1000 --runs 5 --workspace DIR

Needs what `python -m bench` needs (root, sshd, the OpenSSH client).
Prints medians and each server's ratio to OpenSSH; writes nothing.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

from bench import trees
from bench.cli import check_prerequisites, stop_on_sigterm
from bench.client import ClientError, log_in_once
from bench.context import LOGIN_TIMEOUT, BenchError, Context
from bench.jailserver import SftpjailServer
from bench.metrics import BASELINE, Metric
from bench.openssh import OpenSSHServer
from bench.reference import AsyncsshReference
from bench.servers import BenchServer, ServerError
from bench.settings import CHACHA20, FULL, Settings
from bench.workspace import DEFAULT_PARENT, Workspace, WorkspaceError


def main(argv: list[str] | None = None) -> None:
    """Measure the three servers and print the table."""

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s bench %(message)s", stream=sys.stderr
    )
    arguments = _parse(argv)
    problem = check_prerequisites()
    if problem is not None:
        sys.exit(f"bench.floor: {problem}")
    settings = replace(
        FULL,
        runs=arguments.runs,
        small_files=arguments.files,
        list_entries=arguments.entries,
        session_cipher=arguments.cipher,
        scenarios=("small-files", "listing"),
    )

    stop_on_sigterm()
    try:
        metrics = measure(settings, arguments.workspace)
    except (WorkspaceError, BenchError, ClientError, ServerError) as error:
        sys.exit(f"bench.floor: {error}")
    except KeyboardInterrupt:
        sys.exit("bench.floor: interrupted; servers stopped, files removed")
    print(table(metrics, ["openssh", "asyncssh", "sftpjail"]))


def measure(settings: Settings, workspace_parent: Path) -> list[Metric]:
    """Run both scenarios on the three servers; always stop them and clean up."""

    workspace = Workspace(workspace_parent)
    servers: list[BenchServer] = []
    try:
        servers = [
            OpenSSHServer(workspace.server_root("openssh")),
            AsyncsshReference(workspace.server_root("asyncssh")),
            SftpjailServer(workspace.server_root("sftpjail")),
        ]
        for server in servers:
            server.prepare(workspace.public_key)
            server.start()
        context = Context(settings, workspace, servers)
        for server in servers:
            log_in_once(context.target(server), LOGIN_TIMEOUT)
        return trees.small_files(context) + trees.listing(context)
    finally:
        for server in servers:
            server.stop()
        workspace.cleanup()


def table(metrics: list[Metric], names: list[str]) -> str:
    """Medians per server, and each one's ratio to OpenSSH's."""

    header = "| Measure | Unit | " + " | ".join(names) + " | "
    header += " | ".join(f"{name}/{BASELINE}" for name in names[1:]) + " |"
    lines = [header, "|---|---|" + "--:|" * (2 * len(names) - 1)]
    for metric in metrics:
        values = [metric.summary(name) for name in names]
        baseline = metric.summary(BASELINE)
        ratios = [
            f"{value / baseline:.2f}x" if value is not None and baseline else "-"
            for value in values[1:]
        ]
        shown = [f"{value:.0f}" if value is not None else "-" for value in values]
        lines.append(
            f"| {metric.title} | {metric.unit} | " + " | ".join(shown + ratios) + " |"
        )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description="Small files and listings: OpenSSH, plain asyncssh, sftpjail.",
    )
    parser.add_argument("--files", type=int, default=FULL.small_files)
    parser.add_argument("--entries", type=int, default=FULL.list_entries)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--cipher", default=CHACHA20)
    parser.add_argument(
        "--workspace",
        type=Path,
        default=DEFAULT_PARENT,
        help="root-owned directory for the run's files, e.g. on a tmpfs",
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    main()
