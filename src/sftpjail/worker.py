"""One worker process: one client, one SSH connection, one jail.

A worker is forked by the zygote with the client's socket and its own
socket pair to the supervisor.  In this order it:

1. switches to the service user (when the server runs as root);
2. enters the sandbox (`sftpjail.sandbox`): no new privileges, Landlock on
   the file system and the network, seccomp; all before reading a byte;
3. speaks SSH with asyncssh on a fresh event loop, asking the supervisor
   about every credential;
4. right after login, and before any channel is served, narrows Landlock
   to the user's home, then serves only the `sftp` subsystem.

Everything else a client may ask for is refused here and audited: shell,
exec, terminals, environment, agent and X11 forwarding, TCP and Unix
forwarding, tunnels.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import logging
import os
import pwd
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.stream import SSHReader, SSHServerStreamSession, SSHWriter

from sftpjail import ipc, sandbox, sftp_pipeline
from sftpjail.audit import audit
from sftpjail.config import Config
from sftpjail.hostkeys import DelegatedHostKey, RemoteSigner
from sftpjail.jailpath import Jail
from sftpjail.permissions import (
    ALL_PERMISSIONS,
    READ_ONLY_PERMISSIONS,
    PermissionMap,
)
from sftpjail.quota import QuotaAccount, QuotaLimits
from sftpjail.sftp_server import (
    JailedSFTPServer,
    SessionContext,
    SessionStats,
    tune_asyncssh,
)

logger = logging.getLogger("sftpjail.worker")

# Modern algorithms only: no SHA-1 anywhere, no CBC, no compression.
KEX_ALGORITHMS = (
    "mlkem768x25519-sha256",
    "curve25519-sha256",
    "curve25519-sha256@libssh.org",
    "ecdh-sha2-nistp256",
    "ecdh-sha2-nistp384",
    "ecdh-sha2-nistp521",
    "diffie-hellman-group16-sha512",
    "diffie-hellman-group18-sha512",
    "diffie-hellman-group14-sha256",
)
ENCRYPTION_ALGORITHMS = (
    "aes128-gcm@openssh.com",
    "aes256-gcm@openssh.com",
    "chacha20-poly1305@openssh.com",
    "aes128-ctr",
    "aes192-ctr",
    "aes256-ctr",
)
MAC_ALGORITHMS = (
    "hmac-sha2-256-etm@openssh.com",
    "hmac-sha2-512-etm@openssh.com",
    "hmac-sha2-256",
    "hmac-sha2-512",
)
SIGNATURE_ALGORITHMS = (
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
    "rsa-sha2-512",
    "rsa-sha2-256",
)

# Like OpenSSH's MaxSessions: SFTP channels one connection may open at once.
MAX_CHANNELS_PER_CONNECTION = 10
KEEPALIVE_INTERVAL = 30.0
KEEPALIVE_COUNT_MAX = 3
# How long a key exchange waits for the supervisor's host key signature.
SIGN_TIMEOUT = 10.0

# Channel requests an SFTP-only server never grants, and how to name them
# in the audit log.
REFUSED_CHANNEL_REQUESTS = {
    "shell": "shell",
    "exec": "exec",
    "pty-req": "pty",
    "x11-req": "x11 forwarding",
    "auth-agent-req@openssh.com": "agent forwarding",
    "env": "environment",
}


@dataclass(frozen=True)
class WorkerContext:
    """What the zygote prepares once and every worker inherits."""

    config: Config
    # Public halves only: signatures come from the supervisor.
    host_keys: tuple[asyncssh.SSHKey, ...]
    policy: sandbox.WorkerPolicy
    service_owner: tuple[int, int] | None


@dataclass(frozen=True)
class Grant:
    """The supervisor's yes: where the user lives and what they may do."""

    home: Path
    read_only: bool
    permissions: PermissionMap
    quota: QuotaLimits

    @classmethod
    def from_reply(cls, reply: dict[str, Any]) -> Grant:
        """Read a granting `auth_reply`; ValueError if it is malformed."""

        read_only = bool(reply["read_only"])
        mapping = reply.get("permissions")
        if mapping is None:
            everything = READ_ONLY_PERMISSIONS if read_only else ALL_PERMISSIONS
            permissions = PermissionMap.everywhere(everything)
        elif isinstance(mapping, dict):
            permissions = PermissionMap.from_grant(mapping, read_only=read_only)
        else:
            raise ValueError("permissions is not a table of directories")
        quota = QuotaLimits(
            _limit(reply.get("quota_bytes")), _limit(reply.get("quota_files"))
        )
        return cls(Path(str(reply["home"])), read_only, permissions, quota)

    @property
    def changes_nothing(self) -> bool:
        """Whether the user may not change anything anywhere in the home."""

        return not self.permissions.anywhere() & ~READ_ONLY_PERMISSIONS


def _limit(value: object) -> int | None:
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"quota limit {value!r} is not a number")


def prepare(config: Config, host_keys: list[asyncssh.SSHKey]) -> WorkerContext:
    """Resolve everything a worker needs while the file system is open."""

    owner = None
    if os.geteuid() == 0:
        entry = pwd.getpwnam(config.service_user)
        owner = (entry.pw_uid, entry.pw_gid)
    tune_asyncssh(config.limits)
    sandbox.preload_modules()
    return WorkerContext(
        config=config,
        host_keys=tuple(host_keys),
        policy=sandbox.worker_policy(config),
        service_owner=owner,
    )


def prove_sandbox(context: WorkerContext) -> str:
    """Enter the worker sandbox in a throwaway child; describe what held.

    The zygote calls this once at start-up, so a kernel that cannot
    enforce what the configuration requires stops the server before it
    accepts anyone, not at the first connection.  Raises `SandboxError`.
    """

    def enter() -> dict[str, Any]:
        if context.service_owner is not None:
            sandbox.drop_privileges(*context.service_owner)
        return {"layers": sandbox.enter_worker_sandbox(context.policy).describe()}

    return str(sandbox.run_in_child(enter)["layers"])


def run(
    context: WorkerContext, connection_id: int, client_fd: int, link_fd: int
) -> int:
    """Serve one connection; return the process exit status."""

    if context.service_owner is not None:
        sandbox.drop_privileges(*context.service_owner)
    layers = sandbox.enter_worker_sandbox(context.policy)

    client = socket.socket(fileno=client_fd)
    link = SupervisorLink(socket.socket(fileno=link_fd))
    link.notify({"type": "sandbox", "layers": layers.describe()})
    asyncio.run(_serve(context, connection_id, client, link))
    return 0


class InlineExecutor(concurrent.futures.ThreadPoolExecutor):
    """Runs "background" work at once, in the calling thread.

    Landlock restricts only the thread that asks, so a worker must have no
    other thread when it narrows itself to the home.  asyncssh hands a few
    small jobs to the loop's default executor; running them inline keeps
    the worker single-threaded, and a worker serves one client anyway.
    """

    def submit(
        self, fn: Any, /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as error:
            future.set_exception(error)
        return future


async def _serve(
    context: WorkerContext,
    connection_id: int,
    client: socket.socket,
    link: SupervisorLink,
) -> None:
    asyncio.get_running_loop().set_default_executor(InlineExecutor())
    peer_host = client.getpeername()[0]
    server = SessionServer(context, connection_id, peer_host, link)
    link.start()

    try:
        connection = await asyncssh.run_server(
            client,
            server_factory=lambda: server,
            **_ssh_options(context, link.sign),
        )
    except (TimeoutError, asyncssh.Error, OSError) as error:
        logger.debug("Connection %d ended before login: %s", connection_id, error)
        return
    reporter = asyncio.get_running_loop().create_task(_report_transfers(server))
    try:
        await connection.wait_closed()
    finally:
        reporter.cancel()
        server.finish()


async def _report_transfers(server: SessionServer) -> None:
    """Report the session's counters while they change, at most every 2 s."""

    while True:
        await asyncio.sleep(ipc.TRANSFER_REPORT_INTERVAL)
        server.report_transfers()


def _ssh_options(context: WorkerContext, signer: RemoteSigner) -> dict[str, Any]:
    host_keys = [DelegatedHostKey(key, signer) for key in context.host_keys]
    return {
        "server_host_keys": host_keys,
        "server_version": "sftpjail",
        "kex_algs": list(KEX_ALGORITHMS),
        "encryption_algs": list(ENCRYPTION_ALGORITHMS),
        "mac_algs": list(MAC_ALGORITHMS),
        "signature_algs": list(SIGNATURE_ALGORITHMS),
        "compression_algs": ["none"],
        "allow_pty": False,
        # The line editor only ever edits a terminal, which is refused; left
        # on, it wraps every channel and session in a forwarding layer that
        # each SFTP request and reply passes through.
        "line_editor": False,
        "agent_forwarding": False,
        "x11_forwarding": False,
        "login_timeout": context.config.limits.login_grace_time,
        "keepalive_interval": KEEPALIVE_INTERVAL,
        "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        "gss_host": None,
    }


class SupervisorLink:
    """The worker's side of its socket pair to the supervisor."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._reply: asyncio.Future[dict[str, Any]] | None = None
        self._reply_type = ""
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        # Called with the reason when the supervisor ends the session.
        self.on_end: Callable[[str], None] | None = None

    def start(self) -> None:
        """Begin reading the supervisor's messages in the background."""

        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def ask(self, message: dict[str, Any], reply_type: str) -> dict[str, Any]:
        """Send a request and wait for the supervisor's `reply_type` reply."""

        async with self._lock:
            loop = asyncio.get_running_loop()
            self._reply = loop.create_future()
            self._reply_type = reply_type
            await loop.sock_sendall(self._sock, ipc.encode(message))
            return await self._reply

    def sign(self, key: bytes, algorithm: str, data: bytes) -> bytes:
        """Have the supervisor sign a key exchange; wait for it here.

        asyncssh signs in the middle of handling a packet and cannot wait
        in the event loop, so this blocks for the reply (the supervisor
        answers at once).  Messages that arrive before it are handed to
        the usual reader once the loop runs again.
        """

        request = {
            "type": "sign",
            "key": ipc.to_base64(key),
            "algorithm": algorithm,
            "data": ipc.to_base64(data),
        }
        self._sock.settimeout(SIGN_TIMEOUT)
        try:
            self._sock.send(ipc.encode(request))
            while True:
                received = self._sock.recv(ipc.MAX_MESSAGE_BYTES)
                if not received:
                    raise ConnectionError("the supervisor went away")
                message = ipc.decode(received)
                if message["type"] == "signature":
                    break
                asyncio.get_running_loop().call_soon(self._dispatch, message)
        except (OSError, ipc.ProtocolError) as error:
            raise asyncssh.KeyExchangeFailed(
                f"no host key signature: {error}"
            ) from None
        finally:
            self._sock.setblocking(False)

        signature = message.get("signature")
        if not isinstance(signature, str):
            reason = message.get("error", "no signature in the reply")
            raise asyncssh.KeyExchangeFailed(f"host key signature refused: {reason}")
        return base64.b64decode(signature)

    def notify(self, message: dict[str, Any]) -> None:
        """Send a message that needs no reply."""

        try:
            self._sock.send(ipc.encode(message))
        except OSError as error:
            logger.warning("Could not tell the supervisor: %s", error)

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await loop.sock_recv(self._sock, ipc.MAX_MESSAGE_BYTES)
            except OSError:
                data = b""
            if not data:
                self._fail_pending("the supervisor went away")
                return
            self._dispatch(ipc.decode(data))

    def _dispatch(self, message: dict[str, Any]) -> None:
        """Act on one message of the supervisor's."""

        if message["type"] == "end":
            if self.on_end is not None:
                self.on_end(str(message.get("reason", "ended by the server")))
            return
        if (
            self._reply is not None
            and not self._reply.done()
            and message["type"] == self._reply_type
        ):
            self._reply.set_result(message)
        else:
            logger.warning(
                "Ignored an unexpected %s message from the supervisor.",
                message["type"],
            )

    def _fail_pending(self, reason: str) -> None:
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(ConnectionError(reason))


class SessionServer(asyncssh.SSHServer):
    """asyncssh's view of this worker: authentication and channel policy."""

    def __init__(
        self,
        context: WorkerContext,
        connection_id: int,
        peer: str,
        link: SupervisorLink,
    ) -> None:
        self.context = context
        self.connection_id = connection_id
        self.peer = peer
        self.link = link
        self.grants: dict[str, Grant] = {}
        self.user: str | None = None
        self.jail: Jail | None = None
        self.quota: QuotaAccount | None = None
        self.stats = SessionStats()
        self._last_report: dict[str, Any] = {}
        self.open_channels = 0
        self._connection: asyncssh.SSHServerConnection | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._connection = conn
        self.link.on_end = self.end_session
        self.ending = False

    def end_session(self, reason: str) -> None:
        """Disconnect the client because the supervisor ended the session."""

        logger.info("Ending connection %d: %s.", self.connection_id, reason)
        self.ending = True
        if self._connection is not None:
            self._connection.disconnect(
                asyncssh.DISC_BY_APPLICATION, f"Session ended by the server: {reason}"
            )

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return True

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_password(self, username: str, password: str) -> bool:
        return await self._ask(username, "password", password)

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        line = key.export_public_key("openssh").decode("ascii").strip()
        return await self._ask(username, "publickey", line)

    async def _ask(self, username: str, method: str, credential: str) -> bool:
        request = {
            "type": "auth",
            "user": username,
            "method": method,
            "credential": credential,
        }
        try:
            reply = await self.link.ask(request, "auth_reply")
        except (ConnectionError, ipc.ProtocolError) as error:
            logger.error(
                "Login for %s refused: no answer from the supervisor (%s).",
                username,
                error,
            )
            return False

        if reply.get("disconnect") and self._connection is not None:
            # Disconnect before asyncssh answers "failure": a client that
            # saw the failure first would race its next guess against the
            # disconnect and could report a broken pipe instead of why.
            self._connection.disconnect(
                asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE,
                "Too many authentication failures",
            )
        if not reply.get("ok"):
            return False
        try:
            self.grants[username] = Grant.from_reply(reply)
        except (KeyError, ValueError) as error:
            logger.error(
                "Login for %s refused: a malformed grant (%s).", username, error
            )
            return False
        return True

    def auth_completed(self) -> None:
        """Narrow the sandbox to the home before any channel is served.

        This runs synchronously inside asyncssh's success path, so no
        channel request can be handled before the jail is in place.
        """

        assert self._connection is not None
        username = str(self._connection.get_extra_info("username"))
        grant = self.grants[username]
        try:
            sandbox.narrow_to_home(
                grant.home,
                read_only=grant.read_only or grant.changes_nothing,
                policy=self.context.policy,
            )
            self.jail = Jail(grant.home)
        except Exception:
            logger.exception("Could not narrow the sandbox to %s; closing.", grant.home)
            os._exit(1)

        self.user = username
        self.quota = QuotaAccount(
            grant.quota,
            ask=lambda message: self.link.ask(message, "quota_reply"),
            tell=self.link.notify,
        )
        self.link.notify({"type": "login", "user": username})

    def session_requested(
        self,
    ) -> tuple[asyncssh.SSHServerChannel[bytes], SSHServerStreamSession[bytes]] | bool:
        assert self._connection is not None
        if self.open_channels >= MAX_CHANNELS_PER_CONNECTION:
            self.refuse("session", f"more than {MAX_CHANNELS_PER_CONNECTION} channels")
            return False

        channel = self._connection.create_server_channel(encoding=None)
        # asyncssh has no public hook to refuse channel requests with a log
        # line of our own, so the channel gets a subclass that adds one.
        channel.__class__ = SftpOnlyChannel
        channel.refuse = self.refuse  # type: ignore[attr-defined]
        channel.server = self  # type: ignore[attr-defined]
        session = SftpOnlySession(self)
        return channel, session

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> bool:
        self.refuse("tcp forwarding", f"{dest_host}:{dest_port}")
        return False

    def server_requested(self, listen_host: str, listen_port: int) -> bool:
        self.refuse("remote tcp forwarding", f"{listen_host}:{listen_port}")
        return False

    def unix_connection_requested(self, dest_path: str) -> bool:
        self.refuse("unix forwarding", dest_path)
        return False

    def unix_server_requested(self, listen_path: str) -> bool:
        self.refuse("remote unix forwarding", listen_path)
        return False

    def tun_requested(self, unit: int | None) -> bool:
        self.refuse("tun forwarding", str(unit))
        return False

    def tap_requested(self, unit: int | None) -> bool:
        self.refuse("tap forwarding", str(unit))
        return False

    def refuse(self, what: str, detail: str = "") -> None:
        """Audit a refused request with the client's address."""

        audit(
            "request.refused",
            connection=self.connection_id,
            user=self.user,
            peer=self.peer,
            request=what,
            detail=detail,
        )
        logger.warning("Refused %s for %s from %s.", what, self.user, self.peer)

    def sftp_context(self) -> SessionContext:
        """Everything the SFTP handlers need to know about this login."""

        assert self.jail is not None and self.user is not None
        assert self.quota is not None
        grant = self.grants[self.user]
        return SessionContext(
            user=self.user,
            connection_id=self.connection_id,
            peer=self.peer,
            jail=self.jail,
            permissions=grant.permissions,
            quota=self.quota,
            limits=self.context.config.limits,
            stats=self.stats,
        )

    def report_transfers(self) -> None:
        """Send the cumulative counters if they changed since the last time."""

        report = {
            "type": "transfer",
            "bytes_in": self.stats.bytes_in,
            "bytes_out": self.stats.bytes_out,
            "operations": dict(self.stats.operations),
            "client_packets": self.stats.client_packets,
        }
        if report != self._last_report:
            self.link.notify(report)
            self._last_report = report

    def finish(self) -> None:
        """The connection ended: return unused quota, report the last counts."""

        if self.quota is not None:
            self.quota.settle()
        self.report_transfers()


class SftpOnlyChannel(asyncssh.SSHServerChannel[bytes]):
    """A session channel that answers every non-SFTP request with a refusal."""

    refuse: Any
    server: SessionServer
    _exit_status_sent = False

    def close(self) -> None:
        """Report exit status 0 when SFTP ends, as OpenSSH's sftp-server does.

        scp in SFTP mode treats a channel closed without a status as a failed
        transfer.  When the server ends the session, nothing is sent: the
        disconnect that follows must be the first thing the client reads,
        or a client answering our channel close may hit the closed socket
        before it learns why.
        """

        if self.server.ending:
            return
        if not self._exit_status_sent and self.get_subsystem() == "sftp":
            self._exit_status_sent = True
            self.exit(0)
            return
        super().close()

    def _service_next_request(self) -> None:
        request = self._request_queue[0][0]
        if request in REFUSED_CHANNEL_REQUESTS:
            self.refuse(REFUSED_CHANNEL_REQUESTS[request], request)
            self._report_response(False)
            return
        super()._service_next_request()


class SftpOnlySession(SSHServerStreamSession[bytes]):
    """asyncssh's stream session, limited to the `sftp` subsystem."""

    def __init__(self, server: SessionServer) -> None:
        self._owner = server
        super().__init__(None, self._make_sftp_server, 3, False)

    def _make_sftp_server(self, channel: Any) -> JailedSFTPServer:
        return JailedSFTPServer(channel, self._owner.sftp_context())

    def data_received(self, data: bytes, datatype: int | None) -> None:
        # Any SFTP data from the client keeps the session from counting as
        # idle (limits.idle_timeout); keepalives are not channel data.
        self._owner.stats.client_packets += 1
        super().data_received(data, datatype)

    def session_started(self) -> None:
        """Serve SFTP with the batching request loop when it is in place."""

        if not sftp_pipeline.enabled():
            super().session_started()
            return
        channel, connection = self._chan, self._conn
        assert channel is not None and connection is not None
        reader: SSHReader[bytes] = SSHReader(self, channel)
        writer: SSHWriter[bytes] = SSHWriter(self, channel)
        handler = sftp_pipeline.PipelinedSFTPHandler(
            self._make_sftp_server(channel), reader, writer, self._sftp_version
        )
        connection.create_task(handler.run(), reader.logger)

    def subsystem_requested(self, subsystem: str) -> bool:
        if subsystem != "sftp":
            self._owner.refuse("subsystem", subsystem)
            return False
        return bool(super().subsystem_requested(subsystem))

    def connection_made(self, chan: Any) -> None:
        self._owner.open_channels += 1
        super().connection_made(chan)

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner.open_channels -= 1
        super().connection_lost(exc)
