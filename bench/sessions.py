"""Sessions themselves: how fast one logs in, how much an idle one costs.

Login latency is the time from starting `sftp` to its first answer, which
takes the TCP connection, key exchange, public key authentication, the
sftp subsystem and the SFTP version handshake.  Logins alternate between
the servers, one at a time.

Idle memory: all sessions log in, sit idle for a moment, and then each
session's processes are measured (sshd: the privileged monitor and the
user's child; sftpjail: the worker), as is what the server shares between
sessions (sshd's listener; sftpjail's supervisor and zygote).  Afterwards
every session must still answer a command that goes to the server.
"""

from __future__ import annotations

import statistics
import time

from bench import procfs
from bench.client import ClientError, SftpSession, sessions
from bench.context import LOGIN_TIMEOUT, BenchError, Context, logger
from bench.metrics import MIB, Metric, Target, at_most
from bench.servers import WORK_DIR, BenchServer

SETTLE_SECONDS = 3.0
SESSION_PSS_LIMIT_MIB = 25.0
ROUND_TRIP_COMMAND = f"cd {WORK_DIR}"


def logins(context: Context) -> list[Metric]:
    """Sequential logins, alternating servers: p50 and p95 in milliseconds."""

    count = context.settings.logins
    median = Metric(
        key="login.p50",
        title=f"Login latency p50 ({count} logins)",
        unit="ms",
        higher_is_better=False,
        target=at_most(1.0),
    )
    tail = Metric(
        key="login.p95",
        title=f"Login latency p95 ({count} logins)",
        unit="ms",
        higher_is_better=False,
        statistic="p95",
    )
    for _ in range(count):
        for server in context.servers:
            context.check_time()
            with sessions(context.target(server), 1) as (session,):
                milliseconds = session.wait_logged_in(LOGIN_TIMEOUT) * 1000
            median.add(server.name, milliseconds)
            tail.add(server.name, milliseconds)
    for server in context.servers:
        logger.info(
            "logins: %s p50 %.1f ms, p95 %.1f ms",
            server.name,
            median.summary(server.name),
            tail.summary(server.name),
        )
    return [median, tail]


def idle(context: Context) -> list[Metric]:
    """Memory of many idle sessions, per session and shared."""

    count = context.settings.idle_sessions
    metrics = _idle_metrics(count)
    for server in context.servers:
        context.check_time()
        with sessions(context.target(server), count) as pool:
            for session in pool:
                session.wait_logged_in(LOGIN_TIMEOUT + count)
            time.sleep(SETTLE_SECONDS)
            _measure_idle(server, count, metrics)
            metrics["connected"].add(server.name, _still_connected(pool))
    return list(metrics.values())


def _idle_metrics(count: int) -> dict[str, Metric]:
    return {
        "session_pss": Metric(
            key="idle.session_pss",
            title=f"Memory per idle session, PSS ({count} sessions)",
            unit="MiB",
            higher_is_better=False,
            target=Target(SESSION_PSS_LIMIT_MIB, at_most=True, on_ratio=False),
        ),
        "session_uss": Metric(
            key="idle.session_uss",
            title=f"Memory per idle session, USS ({count} sessions)",
            unit="MiB",
            higher_is_better=False,
        ),
        "shared_pss": Metric(
            key="idle.shared_pss",
            title="Memory of the listener/supervisor processes, PSS",
            unit="MiB",
            higher_is_better=False,
        ),
        "total_pss": Metric(
            key="idle.total_pss",
            title=f"Memory of the whole server with {count} idle sessions, PSS",
            unit="MiB",
            higher_is_better=False,
        ),
        "connected": Metric(
            key="idle.connected",
            title=f"Idle sessions still answering ({count} opened)",
            unit="sessions",
            higher_is_better=True,
            target=Target(count, at_most=False, on_ratio=False),
        ),
    }


def _measure_idle(server: BenchServer, count: int, metrics: dict[str, Metric]) -> None:
    groups = server.session_groups()
    if len(groups) != count:
        raise BenchError(
            f"{server.name} has {len(groups)} session process groups for "
            f"{count} idle sessions"
        )
    shared = procfs.NO_MEMORY
    for pid in server.shared_pids():
        shared += procfs.memory_of(pid)
    total = shared
    for group in groups:
        memory = procfs.NO_MEMORY
        for pid in group:
            memory += procfs.memory_of(pid)
        total += memory
        metrics["session_pss"].add(server.name, memory.pss / MIB)
        metrics["session_uss"].add(server.name, memory.uss / MIB)
    metrics["shared_pss"].add(server.name, shared.pss / MIB)
    metrics["total_pss"].add(server.name, total.pss / MIB)
    logger.info(
        "idle: %s %d sessions, %.2f MiB PSS each (median), %.1f MiB in all",
        server.name,
        count,
        statistics.median(metrics["session_pss"].samples[server.name]),
        total.pss / MIB,
    )


def _still_connected(pool: list[SftpSession]) -> int:
    """How many sessions still complete a round trip to the server."""

    for session in pool:
        session.send(ROUND_TRIP_COMMAND)
    answered = 0
    for session in pool:
        try:
            session.wait(LOGIN_TIMEOUT)
        except ClientError:
            continue
        answered += 1
    return answered
