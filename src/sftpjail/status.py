"""What a running supervisor shows of itself: `status` and the gauges.

Both read the supervisor's state only when asked, from its own loop, so
what they show is consistent.  `status_reply` is the control socket's
answer to `status`, printed by `sftpjail status`; `watch_state` adds the
gauges that `/metrics` reads at each scrape.  Times are ISO 8601 in UTC,
like the audit log's.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from sftpjail.defense import Ban
from sftpjail.metrics import Metrics
from sftpjail.sessions import Session
from sftpjail.store.link import DatabaseLink

if TYPE_CHECKING:
    from sftpjail.supervisor import Supervisor


def status_reply(supervisor: Supervisor) -> dict[str, object]:
    """What `sftpjail status` shows: server, sessions and bans."""

    sessions = supervisor.sessions.values()
    return {
        "server": _server(supervisor),
        "sessions": [_session(session) for session in sessions],
        "bans": [_ban(ban) for ban in supervisor.defense.bans()],
    }


def watch_state(metrics: Metrics, supervisor: Supervisor) -> None:
    """Export the supervisor's sessions, bans and users as gauges."""

    metrics.watch(
        "sftpjail_sessions_active",
        "Logged-in sessions.",
        supervisor.sessions.logged_in,
    )
    metrics.watch(
        "sftpjail_connections_open",
        "Open connections, logged in or not.",
        lambda: len(supervisor.sessions),
    )
    metrics.watch(
        "sftpjail_banned_sources",
        "Addresses banned right now.",
        lambda: len(supervisor.defense.bans()),
    )
    metrics.watch(
        "sftpjail_users",
        "Users in the users file.",
        lambda: len(supervisor.live_users.users),
    )


def _server(supervisor: Supervisor) -> dict[str, object]:
    config = supervisor.config
    return {
        "pid": os.getpid(),
        "since": _timestamp(supervisor.started_at),
        "listen": [str(address) for address in config.listen],
        "users": len(supervisor.live_users.users),
        "sandbox": supervisor.sandbox_layers,
        "require_kernel_jail": config.require_kernel_jail,
        "defense": config.defense.enabled,
        "database": _database_state(supervisor.live_users.database),
    }


def _session(session: Session) -> dict[str, object]:
    if session.ending is not None:
        state = "ending"
    else:
        state = "active" if session.user is not None else "authenticating"
    return {
        "connection": session.connection_id,
        "pid": session.pid,
        "user": session.user,
        "peer": session.peer_host,
        "port": session.peer_port,
        "state": state,
        "since": _timestamp(session.logged_in_at or session.connected_at),
        "bytes_in": session.bytes_in,
        "bytes_out": session.bytes_out,
        # Seconds since the worker last reported a request or a byte moved,
        # what `limits.idle_timeout` is measured against.
        "idle": _idle_seconds(session),
        "sandbox": session.sandbox,
    }


def _idle_seconds(session: Session) -> int | None:
    if session.user is None:
        return None
    return int(time.monotonic() - session.last_active)


def _ban(ban: Ban) -> dict[str, object]:
    return {
        "peer": ban.source,
        "until": _timestamp(ban.until),
        "seconds": ban.seconds,
        "failures": ban.failures,
    }


def _database_state(database: DatabaseLink | None) -> str | None:
    """The shared store as `status` shows it; None without one."""

    if database is None:
        return None
    return "connected" if database.connected else "unreachable"


def _timestamp(seconds: float) -> str:
    """Wall-clock seconds as ISO 8601 in UTC, like the audit log's times."""

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
