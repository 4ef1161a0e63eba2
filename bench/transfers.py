"""Moving big files: one stream at a time, and many streams at once.

Single stream: for each run, cipher and direction, OpenSSH then sftpjail
(A B A B ...).  Each transfer gets a fresh session; the clock and the
CPU counters of the server and of the client (`sftp` with its `ssh`) are
read only around the `put` or `get` itself, so none includes the login.
Dirty pages of the previous run are flushed first, so no run pays for
another's writeback.  Every file that arrives is hashed and compared
with the source.

Downloads read a hard link of the same source file in each server's
directory: both servers read the same pages of the page cache.

Concurrent: all sessions log in first; the clock runs from the first
command sent to the last one finished, and the throughput is all bytes
moved over that time.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.client import sessions
from bench.context import LOGIN_TIMEOUT, BenchError, Context, logger
from bench.metrics import GIB, MIB, Metric, at_least, at_most
from bench.servers import WORK_DIR, BenchServer
from bench.settings import AES_GCM
from bench.workspace import Payload, sha256_of

BIG_NAME = "big.bin"
UPLOADED_NAME = "uploaded.bin"
CONCURRENT_NAME = "concurrent.bin"
DIRECTIONS = ("upload", "download")


def single_stream(context: Context) -> list[Metric]:
    """1 GiB up and down with each cipher: throughput and server CPU."""

    settings = context.settings
    payload = context.workspace.random_file(BIG_NAME, settings.big_size)
    _link_into_servers(context, payload, BIG_NAME)
    speed, cpu, client_cpu = _single_stream_metrics(settings.ciphers, payload.size)
    gib = payload.size / GIB

    for run in range(settings.runs):
        for cipher in settings.ciphers:
            for direction in DIRECTIONS:
                for server in context.servers:
                    context.check_time()
                    seconds, server_seconds, client_seconds = _transfer_once(
                        context, server, cipher, direction, payload
                    )
                    key = f"{direction}.{_short(cipher)}"
                    speed[key].add(server.name, payload.size / MIB / seconds)
                    cpu[key].add(server.name, server_seconds / gib)
                    client_cpu[key].add(server.name, client_seconds / gib)
                    logger.info(
                        "%s %s run %d: %s %.1f MiB/s, %.2f CPU s/GiB (client %.2f)",
                        direction,
                        _short(cipher),
                        run + 1,
                        server.name,
                        payload.size / MIB / seconds,
                        server_seconds / gib,
                        client_seconds / gib,
                    )
    return [*speed.values(), *cpu.values(), *client_cpu.values()]


def _single_stream_metrics(
    ciphers: tuple[str, ...], size: int
) -> tuple[dict[str, Metric], dict[str, Metric], dict[str, Metric]]:
    """Speed, server CPU and client CPU of each cipher and direction."""

    speed: dict[str, Metric] = {}
    cpu: dict[str, Metric] = {}
    client_cpu: dict[str, Metric] = {}
    for cipher in ciphers:
        short = _short(cipher)
        # The targets: AES-GCM must beat OpenSSH by a fifth, ChaCha20 match it.
        goal = 1.2 if cipher == AES_GCM else 1.0
        for direction in DIRECTIONS:
            key = f"{direction}.{short}"
            speed[key] = Metric(
                key=key,
                title=f"{direction.capitalize()} {_size(size)}, {short}",
                unit="MiB/s",
                higher_is_better=True,
                target=at_least(goal),
            )
            cpu[key] = Metric(
                key=f"cpu.{key}",
                title=f"Server CPU per GiB, {direction} {short}",
                unit="CPU s/GiB",
                higher_is_better=False,
                target=at_most(1.0),
            )
            # No target: the same client does the same work for both
            # servers, and on a machine it shares with the server its CPU
            # bounds how fast any server can be.
            client_cpu[key] = Metric(
                key=f"client_cpu.{key}",
                title=f"Client CPU per GiB, {direction} {short}",
                unit="CPU s/GiB",
                higher_is_better=False,
            )
    return speed, cpu, client_cpu


def _transfer_once(
    context: Context,
    server: BenchServer,
    cipher: str,
    direction: str,
    payload: Payload,
) -> tuple[float, float, float]:
    """One timed transfer: seconds, and the CPU seconds of server and client."""

    remote = server.work_dir / UPLOADED_NAME
    local = context.workspace.client_dir / "downloaded.bin"
    if direction == "upload":
        command = f"put {payload.path} {WORK_DIR}/{UPLOADED_NAME}"
        arrived = remote
    else:
        command = f"get {WORK_DIR}/{BIG_NAME} {local}"
        arrived = local
    arrived.unlink(missing_ok=True)
    os.sync()

    with sessions(context.target(server, cipher), 1) as (session,):
        session.wait_logged_in(LOGIN_TIMEOUT)
        server_before, client_before = server.cpu_seconds(), session.cpu_seconds()
        reply = session.run(command, context.timeout_for(payload.size))
        server_after, client_after = server.cpu_seconds(), session.cpu_seconds()

    _verify(arrived, payload, f"{direction} to/from {server.name}")
    arrived.unlink()
    return reply.seconds, server_after - server_before, client_after - client_before


def concurrent(context: Context) -> list[Metric]:
    """Many sessions moving a file each at the same time."""

    settings = context.settings
    count = settings.concurrent_sessions
    payload = context.workspace.random_file(CONCURRENT_NAME, settings.concurrent_size)
    _link_into_servers(context, payload, CONCURRENT_NAME)
    metrics = {
        direction: Metric(
            key=f"concurrent.{direction}",
            title=f"{count} sessions x {_size(payload.size)} {direction}, aggregate",
            unit="MiB/s",
            higher_is_better=True,
        )
        for direction in DIRECTIONS
    }
    cpu = {
        direction: Metric(
            key=f"cpu.concurrent.{direction}",
            title=f"Server CPU per GiB, {count} concurrent {direction}s",
            unit="CPU s/GiB",
            higher_is_better=False,
        )
        for direction in DIRECTIONS
    }

    for run in range(settings.runs):
        for direction in DIRECTIONS:
            for server in context.servers:
                context.check_time()
                seconds, cpu_seconds = _concurrent_once(
                    context, server, direction, payload
                )
                moved = payload.size * count
                metrics[direction].add(server.name, moved / MIB / seconds)
                cpu[direction].add(server.name, cpu_seconds / (moved / GIB))
                logger.info(
                    "concurrent %s run %d: %s %.1f MiB/s",
                    direction,
                    run + 1,
                    server.name,
                    moved / MIB / seconds,
                )
    return [*metrics.values(), *cpu.values()]


def _concurrent_once(
    context: Context, server: BenchServer, direction: str, payload: Payload
) -> tuple[float, float]:
    count = context.settings.concurrent_sessions
    arrivals = _concurrent_paths(context, server, direction, count)
    commands = _concurrent_commands(direction, arrivals, payload.path)
    for path in arrivals:
        path.unlink(missing_ok=True)
    os.sync()

    timeout = context.timeout_for(payload.size, count)
    with sessions(context.target(server), count) as pool:
        for session in pool:
            session.wait_logged_in(LOGIN_TIMEOUT + count)
        cpu_before = server.cpu_seconds()
        for session, command in zip(pool, commands, strict=True):
            session.send(command)
        started = min(session.sent_at for session in pool)
        finished = max(session.wait(timeout).finished_at for session in pool)
        cpu_after = server.cpu_seconds()

    for path in arrivals:
        _verify(path, payload, f"concurrent {direction} with {server.name}")
        path.unlink()
    return finished - started, cpu_after - cpu_before


def _concurrent_paths(
    context: Context, server: BenchServer, direction: str, count: int
) -> list[Path]:
    """Where each session's copy lands, on the server or on the client."""

    where = server.work_dir if direction == "upload" else context.workspace.client_dir
    return [where / f"copy-{number:03d}.bin" for number in range(count)]


def _concurrent_commands(
    direction: str, arrivals: list[Path], source: Path
) -> list[str]:
    if direction == "upload":
        return [f"put {source} {WORK_DIR}/{path.name}" for path in arrivals]
    return [f"get {WORK_DIR}/{CONCURRENT_NAME} {path}" for path in arrivals]


def _link_into_servers(context: Context, payload: Payload, name: str) -> None:
    """Hard-link a payload into each server's work directory for downloads."""

    for server in context.servers:
        target = server.work_dir / name
        if not target.exists():
            os.link(payload.path, target)


def _verify(path: Path, payload: Payload, what: str) -> None:
    if not path.exists():
        raise BenchError(f"{what}: {path.name} never arrived")
    if sha256_of(path) != payload.sha256:
        raise BenchError(f"{what}: {path.name} differs from the source")


def _short(cipher: str) -> str:
    return cipher.split("@", 1)[0]


def _size(size: int) -> str:
    if size >= GIB and size % GIB == 0:
        return f"{size // GIB} GiB"
    return f"{size / MIB:g} MiB"
