"""The supervisor's side of the zygote: start it, feed it, hear from it.

The protocol is told in `sftpjail.zygote`.  Here the supervisor starts the
zygote with a fresh interpreter, the config file's path and the public
halves of the host keys, never the users or a private key, and keeps one
`SOCK_SEQPACKET` link to it in its `selectors` loop.
Through it the supervisor hands over each admitted connection, and learns
the pidfd of each new worker (`spawned`) and how each worker ended
(`exited`).  A zygote that dies is started again at once, unless the
server is stopping; the workers it forked live on without it.

The zygote gets a private temporary directory (`scratch`) as its TMPDIR:
a zygote started again inside the supervisor's sandbox still needs a
writable one while importing (`ctypes.util.find_library` writes there),
and the sandbox leaves only this one writable.
"""

from __future__ import annotations

import logging
import os
import select
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from sftpjail import ipc
from sftpjail.audit import audit, audit_descriptors
from sftpjail.config import Config
from sftpjail.errors import SandboxError, SftpjailError
from sftpjail.metrics import Metrics
from sftpjail.sessions import Session

logger = logging.getLogger("sftpjail.supervisor")

# How long a zygote asked to stop gets before SIGKILL.
_STOP_TIMEOUT = 5.0
# How long a new zygote may take to import everything and prove the worker
# sandbox in a child (asyncssh's first import can run a compiler to find a
# library, which is slow on a busy machine).
_READY_TIMEOUT = 120.0


class ZygoteLink:
    """The running zygote, its link, and what it says about workers."""

    def __init__(
        self,
        config: Config,
        selector: selectors.BaseSelector,
        sessions: Mapping[int, Session],
        metrics: Metrics,
    ) -> None:
        self.config = config
        # The public host keys, one OpenSSH line each: what workers offer.
        self.host_keys: list[str] = []
        self.selector = selector
        self.sessions = sessions
        self.metrics = metrics
        self.process: subprocess.Popen[bytes] | None = None
        self.link: socket.socket | None = None
        self.worker_layers = ""
        self.scratch = Path(tempfile.mkdtemp(prefix="sftpjail-zygote-"))

    def start(self) -> None:
        """Start a zygote and listen to it."""

        ours, theirs = ipc.socket_pair()
        command = [
            sys.executable,
            "-m",
            "sftpjail.zygote",
            "--link-fd",
            str(theirs.fileno()),
        ]
        if self.config.source is not None:
            command += ["--config", str(self.config.source)]
        for line in self.host_keys:
            command += ["--host-key", line]
        extra_audit = [fd for fd in audit_descriptors() if fd > 2]
        for fd in extra_audit:
            command += ["--audit-fd", str(fd)]

        environment = {**os.environ, "TMPDIR": str(self.scratch)}
        self.process = subprocess.Popen(
            command,
            pass_fds=[theirs.fileno(), *extra_audit],
            close_fds=True,
            env=environment,
        )
        theirs.close()
        self.link = ours
        self.worker_layers = _wait_until_ready(ours)
        self.selector.register(ours, selectors.EVENT_READ, self._on_message)

    def hand_over(
        self, session: Session, connection: socket.socket, link: socket.socket
    ) -> None:
        """Ask the zygote for a worker for `session`'s client connection.

        `link` is the worker's end of the session's socket pair.  Raises
        OSError if the zygote cannot be reached or none runs.
        """

        message = {
            "type": "spawn",
            "connection_id": session.connection_id,
            "peer_host": session.peer_host,
            "peer_port": session.peer_port,
        }
        if self.link is None:
            raise ConnectionError("no zygote is running")
        ipc.send_with_fds(self.link, message, [connection.fileno(), link.fileno()])

    def reap(self, *, restart: bool) -> None:
        """Notice that the zygote exited (on SIGCHLD); start a new one."""

        if self.process is None or self.process.poll() is None:
            return
        status = self.process.returncode
        if not restart:
            return
        logger.error("The zygote exited with status %s; starting a new one.", status)
        self._drop_link()
        self.start()

    def stop(self) -> None:
        """Stop the zygote and remove its temporary directory, for shutdown."""

        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def _drop_link(self) -> None:
        if self.link is not None:
            self.selector.unregister(self.link)
            self.link.close()
            self.link = None

    def _on_message(self) -> None:
        assert self.link is not None
        try:
            message, fds = ipc.receive_with_fds(self.link, max_fds=1)
        except (EOFError, ConnectionError):
            self._drop_link()
            return
        except ipc.ProtocolError as error:
            logger.error("The zygote sent a bad message: %s", error)
            return

        if message["type"] == "spawned" and fds:
            self._on_worker_spawned(message, fds[0])
        elif message["type"] == "exited":
            self._on_worker_exited(message)
        else:
            for fd in fds:
                os.close(fd)

    def _on_worker_spawned(self, message: dict[str, object], pidfd: int) -> None:
        session = self.sessions.get(int(str(message.get("connection_id", 0))))
        if session is None:
            os.close(pidfd)
            return
        session.pidfd = pidfd
        session.pid = int(str(message.get("pid", 0)))

    def _on_worker_exited(self, message: dict[str, object]) -> None:
        status = message.get("status")
        if status not in (0, None):
            self.metrics.worker_crashes.inc()
            audit("worker.crashed", pid=message.get("pid"), status=status)
            logger.warning(
                "Worker %s exited with status %s.", message.get("pid"), status
            )


def _wait_until_ready(link: socket.socket) -> str:
    """Block until a new zygote says it can fork sandboxed workers.

    The zygote answers `ready` with the worker's sandbox layers once it has
    imported everything and entered the worker sandbox in a test child, or
    `failed` when the kernel cannot enforce what the configuration
    requires; then the server must not start.  Returns the layers.
    """

    readable, _, _ = select.select([link], [], [], _READY_TIMEOUT)
    if not readable:
        raise SftpjailError(
            f"the zygote did not get ready within {_READY_TIMEOUT:.0f} seconds"
        )
    try:
        message, fds = ipc.receive_with_fds(link, max_fds=1)
    except (EOFError, ConnectionError, ipc.ProtocolError):
        raise SftpjailError(
            "the zygote exited while starting; its error is logged above"
        ) from None
    for fd in fds:
        os.close(fd)

    if message["type"] == "failed":
        raise SandboxError(str(message.get("error")))
    if message["type"] != "ready":
        raise SftpjailError(f"the zygote sent {message['type']!r} before ready")
    return str(message.get("layers", ""))
