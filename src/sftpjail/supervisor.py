"""The supervisor: owns the sockets, the users and every login decision.

Theory of operation
-------------------
Three kinds of process cooperate:

* The **supervisor** (this module and the parts it owns) binds the
  listening sockets, holds the users, decides every authentication and
  enforces the connection limits.  It is a plain `selectors` loop with no
  asyncio and no threads, so it can never be caught forking in the middle
  of a running event loop.
* The **zygote** (`sftpjail.zygote`) is started once with a fresh
  interpreter, before anything secret is loaded here.  It imports
  everything a worker needs and then forks one worker per connection when
  the supervisor hands it the accepted socket.  Because its memory never
  held the users file, no worker's memory holds a password hash either.
* Each **worker** (`sftpjail.worker`) speaks SSH with one client inside a
  kernel sandbox and asks the supervisor, over its own socket pair, whether
  a user name and credential are good.

The supervisor trusts no worker.  It answers a worker only about that
worker's own connection, delays every failure itself, counts attempts
itself, and ends a worker that breaks the message protocol.  It learns of a
worker's end when the worker's socket pair closes, and ends workers that
outlive the login grace time without logging in.

This module holds the life of the process (`startup`, `main_loop`,
`shutdown`), its signals, and the loop's dispatch of each event to the
part that owns it.  Each part keeps its own state and is handed only the
others it works with:

* `sftpjail.listeners`: the listening sockets, and who is let in before
  the SSH handshake;
* `sftpjail.sessions`: one record per connection, and how each one ends;
* `sftpjail.logins`: the login decision, its delays and failure scores;
* `sftpjail.zygote_link`: the zygote, asked for one worker per connection;
* `sftpjail.timers`: the loop's timers;
* `sftpjail.status`: what `sftpjail status` and the gauges show.

Around that core, all in the same loop:

* **Defence** (`sftpjail.defense`): failed logins are scored per address
  and per user name; a banned address is closed before the SSH handshake.
* **Live users** (`sftpjail.reload.LiveUsers`): SIGHUP, a control
  request or an inotify event reloads the users file; sessions of users
  that were removed, disabled or have expired get an `end` message, then
  SIGTERM and SIGKILL through their pidfd if they linger.
* **Replicas** (`sftpjail.store.link`): with `[database] url` set, users
  and bans come from PostgreSQL and change notices arrive on a LISTEN
  connection in this loop; while the database is away, logins are
  refused and the sessions already open carry on.
* **Its own sandbox** (`sftpjail.sandbox`): once every socket is bound
  and the zygote runs, `run` confines the supervisor itself.
* **Local services** (`sftpjail.exchange`): the control socket
  (`sftpjail.control`, status and reload) and the optional Prometheus
  endpoint (`sftpjail.metrics`) answer one request per connection.
"""

from __future__ import annotations

import errno
import logging
import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from sftpjail import ipc, sandbox
from sftpjail.audit import audit
from sftpjail.config import Config
from sftpjail.control import (
    ControlResponder,
    bind_control_socket,
    control_socket_path,
    peer_is_trusted,
)
from sftpjail.defense import Defense, defense_from_settings
from sftpjail.exchange import ExchangeListener
from sftpjail.hostkeys import HostKeySigner, SigningRefusedError, load_host_keys
from sftpjail.listeners import (
    OUT_OF_RESOURCES,
    admission_refusal,
    bind_listener,
    refuse_connection,
)
from sftpjail.logins import Logins, home_owner
from sftpjail.metrics import Metrics, MetricsResponder
from sftpjail.quota import QuotaLedger
from sftpjail.reload import LiveUsers
from sftpjail.sessions import KILL_AFTER_TERM, Session, Sessions
from sftpjail.status import status_reply, watch_state
from sftpjail.store.postgres import tcp_ports
from sftpjail.store.shared import SharedStore
from sftpjail.timers import Timers
from sftpjail.zygote_link import ZygoteLink

logger = logging.getLogger("sftpjail.supervisor")

# On shutdown, a logged-in session without a request or byte moved for
# this long is ended at once instead of at the end of the grace time.
# Workers report activity every ipc.TRANSFER_REPORT_INTERVAL (2 seconds),
# so only a session whose client has stalled this long mid-transfer could
# be taken for idle.
SHUTDOWN_IDLE_SECONDS = 2.5 * ipc.TRANSFER_REPORT_INTERVAL

# accept() errors that say the server, not the client, ran out of something;
# accepting pauses this long instead of spinning on the listener.
_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_PAUSE_SECONDS = 0.5


class Supervisor:
    """Accepts connections, hands them to workers and answers their questions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self.listeners: list[socket.socket] = []
        # False while accepting pauses for want of descriptors or memory.
        self._accepting = True
        self.should_exit = False
        self.shutdown_deadline: float | None = None
        self.started_at = time.time()
        self.sandbox_layers: str | None = None
        self.signer = HostKeySigner([])
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._local_services: list[ExchangeListener] = []
        self._control_socket_bound = False

        # A replica shares its users and bans with the others in a database.
        shared = None
        if config.database.url is not None:
            shared = SharedStore(config.database.url, config.defense)
        self.defense = (
            Defense(config.defense, shared.bans)
            if shared is not None
            else defense_from_settings(config.defense)
        )
        self.metrics = Metrics()
        # Homes are measured a step per loop turn (`_later`); reservations
        # that waited for it are answered through `_answer_quota_later`.
        self.quotas = QuotaLedger(later=self._later, answer=self._answer_quota_later)

        self.sessions = Sessions(self.selector, self.timers, self._settle_forgotten)
        self.live_users = LiveUsers(
            config,
            self.selector,
            self.timers,
            self.metrics,
            shared,
            self.sessions.end_refused,
        )
        self.logins = Logins(
            config,
            self.live_users,
            self.sessions,
            self.defense,
            self.metrics,
            self.quotas,
            self.timers,
        )
        self.zygote = ZygoteLink(config, self.selector, self.sessions, self.metrics)
        watch_state(self.metrics, self)

    # -- lifecycle -------------------------------------------------------

    def startup(self) -> None:
        """Load keys and users, bind the sockets, start the zygote."""

        logger.info("Starting sftpjail supervisor (pid %d).", os.getpid())
        # A replica shares its keys with the others: making its own would
        # give clients a different host key depending on the replica.
        replica = self.config.replica
        host_keys = load_host_keys(self.config.state_dir, create=not replica)
        for host_key in host_keys:
            logger.info("Host key %s.", host_key.describe())
        self.signer = HostKeySigner(host_keys)
        self.zygote.host_keys = [host_key.public_line for host_key in host_keys]

        self.logins.home_owner = home_owner(self.config)
        self.live_users.load()

        for address in self.config.listen:
            self.listeners.append(bind_listener(address))
            logger.info("Listening on %s.", address)
        self._start_local_services()

        self._install_signal_handlers()
        self.zygote.start()
        for listener in self.listeners:
            self.selector.register(listener, selectors.EVENT_READ, self._accept)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, self._on_signal)
        logger.info("Ready to accept connections.")

    def main_loop(self) -> None:
        """Serve until asked to stop and every session has ended."""

        while not self._finished():
            timeout = self.timers.run_due()
            for key, _events in self.selector.select(timeout):
                handler: Callable[[], None] = key.data
                handler()

    def shutdown(self) -> None:
        """End the remaining workers and the zygote; close everything."""

        for session in list(self.sessions.values()):
            self.sessions.kill(session, "server stopped")
        self._stop_local_services()
        self.live_users.close()
        self.zygote.stop()
        logger.info("Stopped.")

    def run(self) -> None:
        """Start, serve, stop: the whole life of the server."""

        try:
            self.startup()
            self.enter_sandbox()
            self.main_loop()
        finally:
            self.shutdown()

    def enter_sandbox(self) -> None:
        """Confine this process: every socket is bound, the zygote runs.

        Not part of `startup`, so a test can run a supervisor in its own
        process without confining itself.
        """

        url = self.config.database.url
        ports = tcp_ports(url) if url is not None else ()
        policy = sandbox.supervisor_policy(
            self.config, control_socket_path(self.config), ports, self.zygote.scratch
        )
        layers = sandbox.enter_supervisor_sandbox(policy)
        logger.info("Supervisor sandboxed: %s.", layers.describe())

    def _finished(self) -> bool:
        if not self.should_exit:
            return False
        if not self.sessions:
            return True
        assert self.shutdown_deadline is not None
        return time.monotonic() >= self.shutdown_deadline + KILL_AFTER_TERM

    # -- signals ---------------------------------------------------------

    def _install_signal_handlers(self) -> None:
        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, lambda _signum, _frame: None)

    def _on_signal(self) -> None:
        """Act on signals outside their handlers, from the main loop."""

        try:
            received = os.read(self._wakeup_read, 512)
        except BlockingIOError:
            return
        for signum in received:
            if signum in (signal.SIGTERM, signal.SIGINT):
                self._begin_shutdown(signal.Signals(signum).name)
            elif signum == signal.SIGHUP:
                self.live_users.reload("SIGHUP")
            elif signum == signal.SIGCHLD:
                self.zygote.reap(restart=not self.should_exit)

    def _begin_shutdown(self, reason: str) -> None:
        if self.should_exit:
            return
        grace = self.config.limits.shutdown_grace_time
        logger.info(
            "Shutting down on %s; waiting up to %.0f seconds for %d sessions.",
            reason,
            grace,
            len(self.sessions),
        )
        self.should_exit = True
        self.shutdown_deadline = time.monotonic() + grace
        self._stop_accepting()
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()
        self.timers.schedule(grace, self._end_remaining_sessions)
        self._end_idle_sessions()

    def _end_idle_sessions(self) -> None:
        """While shutting down, end sessions with nothing left to finish.

        The grace time is for transfers in progress; a session idle for a
        few seconds (a client left open) would only hold the shutdown up.
        """

        ended = self.sessions.end_idle(SHUTDOWN_IDLE_SECONDS, "server shutting down")
        if ended:
            logger.info("Ending %d idle sessions for the shutdown.", ended)
        if self.sessions:
            self.timers.schedule(1.0, self._end_idle_sessions)

    def _end_remaining_sessions(self) -> None:
        if self.sessions:
            logger.info("Grace time over; ending %d sessions.", len(self.sessions))
        for session in list(self.sessions.values()):
            self.sessions.signal(session, signal.SIGTERM)

    # -- local services ----------------------------------------------------

    def _start_local_services(self) -> None:
        """The control socket, the metrics endpoint and the users watch."""

        path = control_socket_path(self.config)
        control_listener = bind_control_socket(path)
        self._control_socket_bound = True
        control = ControlResponder(
            {"status": self.status, "reload": self._reload_on_request}
        )
        self._local_services.append(
            ExchangeListener(
                control_listener,
                self.selector,
                self.timers.schedule,
                control,
                admit=peer_is_trusted,
            )
        )
        logger.info("Control socket at %s.", path)

        address = self.config.metrics.listen
        if address is not None:
            endpoint = MetricsResponder(self.metrics)
            self._local_services.append(
                ExchangeListener(
                    bind_listener(address),
                    self.selector,
                    self.timers.schedule,
                    endpoint,
                )
            )
            logger.info("Serving metrics on http://%s/metrics.", address)

        self.live_users.watch()

    def _stop_local_services(self) -> None:
        for service in self._local_services:
            service.close()
        self._local_services.clear()
        # Only a socket this server bound is its to remove: a start that
        # failed must leave a running server's socket alone.
        path = control_socket_path(self.config)
        if self._control_socket_bound and path.is_socket():
            path.unlink()

    def _reload_on_request(self) -> dict[str, object]:
        changed = self.live_users.reload_if_changed("a control request")
        return {"changed": changed, "users": len(self.live_users.users)}

    def status(self) -> dict[str, object]:
        """What `sftpjail status` shows: server, sessions and bans."""

        return status_reply(self)

    # -- accepting -------------------------------------------------------

    def _accept(self) -> None:
        """Take every waiting connection off the listeners and judge it."""

        for listener in self.listeners:
            try:
                connection, address = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as error:
                if error.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting(error)
                    return
                logger.warning("Accepting a connection failed: %s", error.strerror)
                continue
            self._admit(connection, address[0], address[1])

    def _pause_accepting(self, error: OSError) -> None:
        """Leave waiting connections in the backlog for a moment.

        The listener stays readable while accept() fails for want of a
        descriptor, so the loop would otherwise spin on it; sessions that
        end meanwhile give their descriptors back.
        """

        logger.error(
            "Cannot accept connections: %s; trying again in %g seconds.",
            error.strerror,
            ACCEPT_PAUSE_SECONDS,
        )
        self._stop_accepting()
        self.timers.schedule(ACCEPT_PAUSE_SECONDS, self._resume_accepting)

    def _stop_accepting(self) -> None:
        if self._accepting:
            for listener in self.listeners:
                self.selector.unregister(listener)
            self._accepting = False

    def _resume_accepting(self) -> None:
        if self._accepting or self.should_exit:
            return
        for listener in self.listeners:
            self.selector.register(listener, selectors.EVENT_READ, self._accept)
        self._accepting = True

    def _admit(self, connection: socket.socket, host: str, port: int) -> None:
        """Open a session for a new connection and ask for its worker."""

        limits = self.config.limits
        reason = admission_refusal(host, self.sessions, self.defense, limits)
        if reason is not None:
            refuse_connection(connection, host, port, reason, self.metrics)
            return

        try:
            session, theirs = self.sessions.open(host, port, self._on_worker_message)
        except OSError as error:
            # Out of descriptors or memory: this client is turned away,
            # the sessions already served go on.
            logger.error("Could not open a session: %s", error.strerror)
            refuse_connection(connection, host, port, OUT_OF_RESOURCES, self.metrics)
            return
        audit(
            "connection.accepted",
            connection=session.connection_id,
            peer=host,
            port=port,
        )
        self.metrics.connection_accepted()

        try:
            self._hand_to_zygote(session, connection, theirs)
        finally:
            connection.close()
            theirs.close()
        self.sessions.enforce_login_grace(session, limits.login_grace_time)

    def _hand_to_zygote(
        self, session: Session, connection: socket.socket, link: socket.socket
    ) -> None:
        """Ask the zygote for a worker; forget the session if it cannot be asked."""

        try:
            self.zygote.hand_over(session, connection, link)
        except OSError as error:
            logger.error(
                "Could not hand connection %d to the zygote: %s",
                session.connection_id,
                error,
            )
            self.sessions.forget(session, "no zygote")

    # -- talking to workers ---------------------------------------------

    def _on_worker_message(self, session: Session) -> None:
        """Read one message of a session's worker and act on it."""

        try:
            data = session.link.recv(ipc.MAX_MESSAGE_BYTES + 1)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.sessions.forget(session, "closed")
            return

        try:
            message = ipc.parse_worker_message(data)
            self._handle(session, message)
        except ipc.ProtocolError as error:
            logger.warning(
                "Ending connection %d: its worker broke the protocol: %s",
                session.connection_id,
                error,
            )
            self.sessions.kill(session, "protocol violation")
        except Exception:
            # Whatever one worker's message breaks ends that worker's
            # session; the supervisor must keep serving everyone else.
            logger.exception(
                "Ending connection %d: handling its message failed.",
                session.connection_id,
            )
            self.sessions.kill(session, "internal error")

    def _handle(self, session: Session, message: ipc.WorkerMessage) -> None:
        """Hand a worker's message to the part that answers it."""

        if isinstance(message, ipc.AuthRequest):
            self.logins.authenticate(session, message)
        elif isinstance(message, ipc.LoginNotice):
            self.logins.confirm(session, message.user)
            self.sessions.enforce_idle_timeout(session, self.config.limits.idle_timeout)
        elif isinstance(message, ipc.TransferNotice):
            grown = session.take_transfer(message)
            self.metrics.transfer(grown.bytes_in, grown.bytes_out, grown.operations)
        elif isinstance(message, ipc.SandboxNotice):
            session.sandbox = message.layers
            self.sandbox_layers = message.layers
        elif isinstance(message, ipc.QuotaRequest):
            self._answer_quota(session, message)
        elif isinstance(message, ipc.SignRequest):
            self._answer_signature(session, message)

    def _answer_signature(self, session: Session, request: ipc.SignRequest) -> None:
        """Sign a worker's key exchange: once before login, then on each rekey.

        A client has no reason to exchange keys again before it logs in, and
        a worker taken over before login must not get a signature per
        request it makes up.
        """

        try:
            if session.user is None and session.signatures >= 1:
                raise SigningRefusedError("only one key exchange before login")
            signature = self.signer.sign(request.key, request.algorithm, request.data)
        except SigningRefusedError as error:
            logger.warning(
                "Refused a host key signature for connection %d: %s.",
                session.connection_id,
                error,
            )
            self.sessions.send(session, {"type": "signature", "error": str(error)})
            return
        session.signatures += 1
        reply: dict[str, object] = {
            "type": "signature",
            "signature": ipc.to_base64(signature),
        }
        self.sessions.send(session, reply)

    def _answer_quota(self, session: Session, request: ipc.QuotaRequest) -> None:
        reply = self.quotas.handle(session.connection_id, request)
        if reply is not None:
            self.sessions.send(session, reply)

    def _answer_quota_later(self, connection_id: int, reply: dict[str, object]) -> None:
        if connection_id in self.sessions:
            self.sessions.send(self.sessions[connection_id], reply)

    def _later(self, action: Callable[[], None]) -> None:
        """Run `action` at the next turn of the loop, after what is ready now."""

        self.timers.schedule(0, action)

    def _settle_forgotten(self, session: Session, reason: str) -> None:
        """What a session leaves behind: keys to score, quota books."""

        self.logins.score_refused_keys(session, reason)
        self.quotas.leave(session.connection_id)


def serve(config: Config) -> None:
    """Run a supervisor for `config` until it is told to stop."""

    Path(config.data_dir).mkdir(parents=True, exist_ok=True, mode=0o711)
    Supervisor(config).run()
