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
    measures = PerItem(
        count,
        "small_files",
        f"Upload {count} files of {settings.small_file_size // 1024} KiB",
        "files/s",
        "Server CPU per small file uploaded",
        "CPU us/file",
    )
    timeout = 60.0 + count * 0.5
    for run in range(settings.runs):
        for server in context.servers:
            context.check_time()
            name = f"small-{run}"
            command = f"put -r {tree} {WORK_DIR}/{name}"
            reply, cpu_seconds = _timed(context, server, command, timeout)

            # Kept until the workspace goes: deleting them here would make
            # the next run's creations slower (ext4 passes over recently
            # freed inodes when it allocates one), and only the runs after
            # the first would pay.
            arrived = server.work_dir / name
            if len(os.listdir(arrived)) != count:
                raise BenchError(f"{server.name}: not all small files arrived")
            measures.add(f"small files run {run + 1}", server, reply, cpu_seconds)
    return measures.metrics()


def listing(context: Context) -> list[Metric]:
    """`ls -l` of a directory holding many entries."""

    settings = context.settings
    count = settings.list_entries
    measures = PerItem(
        count,
        "listing",
        f"ls -l of {count} entries",
        "entries/s",
        "Server CPU per 1000 entries listed",
        "CPU ms",
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
            measures.add(f"listing run {run + 1}", server, reply, cpu_seconds)
    return measures.metrics()


class PerItem:
    """A rate with its target, and the server's CPU per item, of `count` items.

    The CPU is kept in microseconds per item, which is also milliseconds
    per 1,000 items.
    """

    def __init__(
        self,
        count: int,
        key: str,
        title: str,
        unit: str,
        cpu_title: str,
        cpu_unit: str,
    ) -> None:
        self.count = count
        self.rate = Metric(
            key=key, title=title, unit=unit, higher_is_better=True, target=at_least(1.0)
        )
        self.cpu = Metric(
            key=f"cpu.{key}", title=cpu_title, unit=cpu_unit, higher_is_better=False
        )

    def add(
        self, run: str, server: BenchServer, reply: Reply, cpu_seconds: float
    ) -> None:
        """Record one run of `server` and log its rate."""

        per_second = self.count / reply.seconds
        self.rate.add(server.name, per_second)
        self.cpu.add(server.name, cpu_seconds / self.count * 1e6)
        logger.info("%s: %s %.0f %s", run, server.name, per_second, self.rate.unit)

    def metrics(self) -> list[Metric]:
        return [self.rate, self.cpu]


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
