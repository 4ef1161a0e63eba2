"""The supervisor's sessions: one record per connection, and how each ends.

Theory of operation
-------------------
A session begins when the supervisor admits a connection (`Sessions.open`
makes the socket pair its worker will talk on) and lives in the table
until `forget` takes it out.  The worker's process is reached only through
the pidfd the zygote sends back, never its pid, so a signal cannot hit a
process that reused the number; a forgotten session's pidfd is closed and
nothing signals it again.

A session ends in one of three ways:

* **by force** (`kill`): its worker broke the protocol, its address was
  banned, the server stops, or it did not log in within the grace time
  (`enforce_login_grace`);
* **gently** (`end`): its user may no longer log in (removed, disabled,
  expired, another address), or it has moved nothing and made no SFTP
  request for `limits.idle_timeout` (`enforce_idle_timeout`; the worker's
  transfer reports are what counts as activity).  The worker gets an
  `end` message and disconnects its client with the reason; SIGTERM and
  then SIGKILL follow if it lingers;
* **by itself**: the worker exits, its link closes, and the supervisor
  forgets the session as "closed".

`forget` calls `on_forget` after the session has left the table and before
its link closes, so that the supervisor settles what the session leaves
behind (keys to score as failures, quota books) before the
`connection.closed` audit event is written.
"""

from __future__ import annotations

import itertools
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from sftpjail import ipc
from sftpjail.audit import audit
from sftpjail.reload import LiveSession, sessions_to_end
from sftpjail.timers import Timers
from sftpjail.users import User

logger = logging.getLogger("sftpjail.supervisor")

# A worker that has not logged in this long after the grace time is ended
# by force; asyncssh's own login timer should have closed it already.
_GRACE_MARGIN = 5.0
# A worker told to end its session gets this long before SIGTERM.
_END_GRACE = 2.0
# A worker sent SIGTERM gets this long before SIGKILL.
KILL_AFTER_TERM = 2.0
# Distinct "operation:result" counters one session may report.
_MAX_OPERATION_KINDS = 128


class Transfer(NamedTuple):
    """What a session moved and did since its worker's previous report."""

    bytes_in: int
    bytes_out: int
    operations: dict[str, int]


@dataclass
class Session:
    """What the supervisor knows about one connection and its worker."""

    connection_id: int
    peer_host: str
    peer_port: int
    link: socket.socket
    started: float
    pidfd: int | None = None
    pid: int | None = None
    user: str | None = None
    failures: int = 0
    granted: dict[str, tuple[User, str]] = field(default_factory=dict)
    pending_reply: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    operations: dict[str, int] = field(default_factory=dict)
    client_packets: int = 0
    connected_at: float = field(default_factory=time.time)
    logged_in_at: float | None = None
    sandbox: str | None = None
    password_failures: int = 0
    key_failure_user: str | None = None
    ending: str | None = None
    # Host key signatures made for this session's key exchanges.
    signatures: int = 0
    # When the worker last reported bytes, operations or packets (monotonic).
    last_active: float = field(default_factory=time.monotonic)

    def take_transfer(self, notice: ipc.TransferNotice) -> Transfer:
        """Take a worker's cumulative counters; only their growth counts."""

        grown = {
            key: count - self.operations.get(key, 0)
            for key, count in notice.operations.items()
            if count > self.operations.get(key, 0)
        }
        if len(self.operations.keys() | grown.keys()) > _MAX_OPERATION_KINDS:
            raise ipc.ProtocolError("too many kinds of operations")
        grown_in = max(0, notice.bytes_in - self.bytes_in)
        grown_out = max(0, notice.bytes_out - self.bytes_out)
        grown_packets = max(0, notice.client_packets - self.client_packets)

        self.bytes_in += grown_in
        self.bytes_out += grown_out
        for key, count in grown.items():
            self.operations[key] = self.operations.get(key, 0) + count
        self.client_packets += grown_packets
        if grown_in or grown_out or grown or grown_packets:
            self.last_active = time.monotonic()
        return Transfer(grown_in, grown_out, grown)


class Sessions(Mapping[int, Session]):
    """Every open session by connection id; opens, signals and ends them."""

    def __init__(
        self,
        selector: selectors.BaseSelector,
        timers: Timers,
        on_forget: Callable[[Session, str], None],
    ) -> None:
        self.selector = selector
        self.timers = timers
        self.on_forget = on_forget
        self._open: dict[int, Session] = {}
        self._connection_ids = itertools.count(1)

    def __getitem__(self, connection_id: int) -> Session:
        return self._open[connection_id]

    def __iter__(self) -> Iterator[int]:
        return iter(self._open)

    def __len__(self) -> int:
        return len(self._open)

    def open(
        self, host: str, port: int, on_message: Callable[[Session], None]
    ) -> tuple[Session, socket.socket]:
        """Make the session of an admitted connection.

        Returns the session and the worker's end of its socket pair;
        `on_message` is called whenever the worker's end has sent something.
        """

        connection_id = next(self._connection_ids)
        ours, theirs = ipc.socket_pair()
        session = Session(connection_id, host, port, ours, time.monotonic())
        self._open[connection_id] = session
        self.selector.register(ours, selectors.EVENT_READ, lambda: on_message(session))
        return session, theirs

    def from_source(self, host: str) -> list[Session]:
        """The open sessions of one client address."""

        return [session for session in self._open.values() if session.peer_host == host]

    def logged_in(self) -> int:
        """How many open sessions have logged in."""

        return sum(1 for session in self._open.values() if session.user is not None)

    def answer_login(self, session: Session, message: dict[str, object]) -> None:
        """Answer a session's worker's login request; see `send`."""

        session.pending_reply = False
        self.send(session, message)

    def send(self, session: Session, message: dict[str, object]) -> None:
        """Send to a session's worker; forget the session if its link is gone.

        Unlike `answer_login`, this leaves a login answer that is still due
        (a refusal waiting out its delay) due.
        """

        if session.connection_id not in self._open:
            return
        try:
            session.link.send(ipc.encode(message))
        except OSError:
            self.forget(session, "closed")

    def signal(self, session: Session, signum: signal.Signals) -> None:
        """Send a signal to a session's worker, if it is still known."""

        # A forgotten session's pidfd is closed and its number may be reused.
        if session.pidfd is None or session.connection_id not in self._open:
            return
        try:
            signal.pidfd_send_signal(session.pidfd, signum)
        except ProcessLookupError:
            pass

    def kill(self, session: Session, reason: str) -> None:
        """End a session by force: SIGKILL its worker and forget it."""

        self.signal(session, signal.SIGKILL)
        self.forget(session, reason)

    def forget(self, session: Session, reason: str) -> None:
        """Drop a session for good and audit its end; later calls do nothing."""

        if self._open.pop(session.connection_id, None) is None:
            return
        self.on_forget(session, reason)

        self.selector.unregister(session.link)
        session.link.close()
        if session.pidfd is not None:
            os.close(session.pidfd)

        duration = round(time.monotonic() - session.started, 3)
        audit(
            "connection.closed",
            connection=session.connection_id,
            peer=session.peer_host,
            user=session.user,
            duration=duration,
            reason=reason,
        )

    def enforce_login_grace(self, session: Session, grace_time: float) -> None:
        """Kill the session's worker unless it logs in within `grace_time`."""

        self.timers.schedule(
            grace_time + _GRACE_MARGIN, lambda: self._end_without_login(session)
        )

    def _end_without_login(self, session: Session) -> None:
        if session.connection_id in self._open and session.user is None:
            logger.warning(
                "Ending connection %d: no login within the grace time.",
                session.connection_id,
            )
            self.kill(session, "login grace time exceeded")

    def enforce_idle_timeout(self, session: Session, idle_timeout: float) -> None:
        """End a logged-in session once it has been idle for `idle_timeout`.

        Keepalives do not count: a client can answer them for ever without
        using its session.  0 turns the limit off.
        """

        if idle_timeout <= 0:
            return
        self._check_idle_after(idle_timeout, session.connection_id, idle_timeout)

    def _check_idle_after(
        self, delay: float, connection_id: int, idle_timeout: float
    ) -> None:
        # The timer keeps the id, not the session: a closed session's
        # records go when it is forgotten, not when its timer runs out.
        self.timers.schedule(
            delay, lambda: self._end_if_idle(connection_id, idle_timeout)
        )

    def _end_if_idle(self, connection_id: int, idle_timeout: float) -> None:
        session = self._open.get(connection_id)
        if session is None or session.ending is not None:
            return
        idle_for = time.monotonic() - session.last_active
        if idle_for < idle_timeout:
            # Active since: look again when it could first have been idle.
            self._check_idle_after(idle_timeout - idle_for, connection_id, idle_timeout)
            return
        self.end(session, f"idle for {idle_timeout:g} seconds")

    def end_idle(self, idle_for: float, reason: str) -> int:
        """End every logged-in session idle for `idle_for`; how many ended."""

        now = time.monotonic()
        idle = [
            session
            for session in self._open.values()
            if session.user is not None
            and session.ending is None
            and now - session.last_active >= idle_for
        ]
        for session in idle:
            self.end(session, reason)
        return len(idle)

    def end(self, session: Session, reason: str) -> None:
        """Ask the worker to end its session; stop it by force if it lingers."""

        session.ending = reason
        audit(
            "session.ended",
            connection=session.connection_id,
            user=session.user,
            peer=session.peer_host,
            reason=reason,
        )
        logger.info(
            "Ending the session of %s from %s (connection %d): %s.",
            session.user,
            session.peer_host,
            session.connection_id,
            reason,
        )

        try:
            session.link.send(ipc.encode({"type": "end", "reason": reason}))
        except OSError:
            pass
        self.timers.schedule(_END_GRACE, lambda: self._stop_worker(session))

    def _stop_worker(self, session: Session) -> None:
        if session.connection_id not in self._open:
            return
        self.signal(session, signal.SIGTERM)
        self.timers.schedule(
            KILL_AFTER_TERM, lambda: self.signal(session, signal.SIGKILL)
        )

    def end_refused(self, users: Mapping[str, User]) -> None:
        """End every logged-in session that `users` no longer lets in."""

        live = [
            session
            for session in self._open.values()
            if session.user is not None and session.ending is None
        ]
        self._end_each_refused(live, users)

    def end_if_refused(self, session: Session, users: Mapping[str, User]) -> None:
        """End a session that just logged in if `users` no longer lets it in.

        The users may have changed between the grant and the login.
        """

        self._end_each_refused([session], users)

    def _end_each_refused(
        self, candidates: list[Session], users: Mapping[str, User]
    ) -> None:
        by_id = {session.connection_id: session for session in candidates}
        live = [
            LiveSession(session.connection_id, session.user, session.peer_host)
            for session in candidates
            if session.user is not None
        ]
        for ending, reason in sessions_to_end(live, users):
            self.end(by_id[ending.connection_id], reason)
