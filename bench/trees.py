"""Many small things: uploading a directory of small files, listing a big one.

Both are dominated by per-request costs (open, write, close; readdir and
the attributes of each name) rather than by bytes, so they show the
server's request handling.  The clock runs around the one sftp command;
the login is not included.  The server's CPU is read around the same
command, as for transfers, and reported per file or per 1,000 entries:
what each request costs the server, apart from how long the client took.
"""

from __future__ import annotations

import os
import shutil

from bench.client import Reply, sessions
from bench.context import LOGIN_TIMEOUT, BenchError, Context, logger
from bench.metrics import Metric, at_least
from bench.servers import WORK_DIR, BenchServer

LISTED_DIR = "many"


def small_files(context: Context) -> list[Metric]:
    """`put -r` of a directory of small files in one session."""

    settings = context.settings
    count = settings.small_files
    tree = context.workspace.small_tree("small", count, settings.small_file_size)
    metric = Metric(
        key="small_files",
        title=f"Upload {count} files of {settings.small_file_size // 1024} KiB",
        unit="files/s",
        higher_is_better=True,
        target=at_least(1.0),
    )
    cpu = Metric(
        key="cpu.small_files",
        title="Server CPU per small file uploaded",
        unit="CPU us/file",
        higher_is_better=False,
    )
    timeout = 60.0 + count * 0.5
    for run in range(settings.runs):
        for server in context.servers:
            context.check_time()
            name = f"small-{run}"
            command = f"put -r {tree} {WORK_DIR}/{name}"
            reply, cpu_seconds = _timed(context, server, command, timeout)

            arrived = server.work_dir / name
            if len(os.listdir(arrived)) != count:
                raise BenchError(f"{server.name}: not all small files arrived")
            shutil.rmtree(arrived)
            metric.add(server.name, count / reply.seconds)
            cpu.add(server.name, cpu_seconds / count * 1e6)
            logger.info(
                "small files run %d: %s %.0f files/s",
                run + 1,
                server.name,
                count / reply.seconds,
            )
    return [metric, cpu]


def listing(context: Context) -> list[Metric]:
    """`ls -l` of a directory holding many entries."""

    settings = context.settings
    count = settings.list_entries
    metric = Metric(
        key="listing",
        title=f"ls -l of {count} entries",
        unit="entries/s",
        higher_is_better=True,
        target=at_least(1.0),
    )
    cpu = Metric(
        key="cpu.listing",
        title="Server CPU per 1000 entries listed",
        unit="CPU ms",
        higher_is_better=False,
    )
    for server in context.servers:
        _fill_directory(server.work_dir / LISTED_DIR, count)

    timeout = 60.0 + count * 0.01
    for run in range(settings.runs):
        for server in context.servers:
            context.check_time()
            command = f"ls -l {WORK_DIR}/{LISTED_DIR}"
            reply, cpu_seconds = _timed(context, server, command, timeout)
            if len(reply.lines) < count:
                raise BenchError(
                    f"{server.name} listed {len(reply.lines)} of {count} entries"
                )
            metric.add(server.name, count / reply.seconds)
            cpu.add(server.name, cpu_seconds / count * 1e6)
            logger.info(
                "listing run %d: %s %.0f entries/s",
                run + 1,
                server.name,
                count / reply.seconds,
            )
    return [metric, cpu]


def _timed(
    context: Context, server: BenchServer, command: str, timeout: float
) -> tuple[Reply, float]:
    """Run one command in a new session: its reply and the server's CPU seconds."""

    with sessions(context.target(server), 1) as (session,):
        session.wait_logged_in(LOGIN_TIMEOUT)
        cpu_before = server.cpu_seconds()
        reply = session.run(command, timeout)
        cpu_after = server.cpu_seconds()
    return reply, cpu_after - cpu_before


def _fill_directory(path: os.PathLike[str], count: int) -> None:
    """A directory of `count` empty files, made directly on the host."""

    os.mkdir(path, 0o755)
    for number in range(count):
        descriptor = os.open(
            os.path.join(path, f"entry-{number:05d}"), os.O_CREAT | os.O_WRONLY, 0o644
        )
        os.close(descriptor)
