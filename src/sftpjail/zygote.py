"""The zygote: a clean, pre-imported process that forks the workers.

The supervisor starts this module with a fresh interpreter (`python -m
sftpjail.zygote`), so its memory holds only what it loads itself: the
configuration, the public halves of the host keys (given on the command
line) and the code a worker runs.  Never the users file or a private key:
workers ask the supervisor for each host key signature.  Importing
asyncssh and the worker once here, before any fork, means each worker
starts in milliseconds and never imports anything after its sandbox has
closed the file system.

Protocol with the supervisor, over one `SOCK_SEQPACKET` pair:

* supervisor -> zygote: `spawn` with two descriptors, the client's socket
  and the worker's end of its own socket pair;
* zygote -> supervisor: `spawned` with a pidfd of the new worker, so the
  supervisor can signal it without racing pid reuse, and `exited` with
  the status of every worker the zygote reaps.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import sys
from pathlib import Path

import asyncssh

from sftpjail import ipc, transport, worker
from sftpjail.audit import configure_audit_descriptors, configure_logging
from sftpjail.config import Config, load_config
from sftpjail.errors import SandboxError, SftpjailError
from sftpjail.hostkeys import public_host_key

logger = logging.getLogger("sftpjail.zygote")


class Zygote:
    """Forks one worker per `spawn` request and reports on them."""

    def __init__(
        self, config: Config, link: socket.socket, host_keys: list[asyncssh.SSHKey]
    ) -> None:
        self.link = link
        transport.install_tunings()
        self.context = worker.prepare(config, host_keys)
        self.selector = selectors.DefaultSelector()
        self._wakeup_read, self._wakeup_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> None:
        """Prove the worker sandbox, then serve spawn requests until the
        supervisor goes away."""

        try:
            layers = worker.prove_sandbox(self.context)
        except SandboxError as error:
            self.link.send(ipc.encode({"type": "failed", "error": str(error)}))
            raise
        logger.info("Workers are sandboxed: %s.", layers)
        self.link.send(ipc.encode({"type": "ready", "layers": layers}))

        signal.set_wakeup_fd(self._wakeup_write, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: None)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.selector.register(self.link, selectors.EVENT_READ, self._on_request)
        self.selector.register(self._wakeup_read, selectors.EVENT_READ, self._reap)

        while self.selector.get_map():
            for key, _events in self.selector.select():
                key.data()

    def _on_request(self) -> None:
        try:
            message, fds = ipc.receive_with_fds(self.link, max_fds=2)
        except (EOFError, ConnectionError):
            # The supervisor is gone; running workers carry on by themselves.
            self.selector.unregister(self.link)
            self.selector.unregister(self._wakeup_read)
            return
        except ipc.ProtocolError as error:
            logger.error("Ignored a bad request from the supervisor: %s", error)
            return

        if message.get("type") != "spawn" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return
        self._spawn(message, fds[0], fds[1])

    def _spawn(self, message: dict[str, object], client_fd: int, link_fd: int) -> None:
        connection_id = int(str(message["connection_id"]))
        pid = os.fork()
        if pid == 0:
            self._become_worker(connection_id, client_fd, link_fd)

        os.close(client_fd)
        os.close(link_fd)
        pidfd = os.pidfd_open(pid)
        try:
            reply = {"type": "spawned", "connection_id": connection_id, "pid": pid}
            ipc.send_with_fds(self.link, reply, [pidfd])
        finally:
            os.close(pidfd)

    def _become_worker(self, connection_id: int, client_fd: int, link_fd: int) -> None:
        """In the child: drop everything of the zygote, then serve; never return."""

        status = 1
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
                signal.signal(signum, signal.SIG_DFL)
            self.selector.close()
            self.link.close()
            os.close(self._wakeup_read)
            os.close(self._wakeup_write)
            status = worker.run(self.context, connection_id, client_fd, link_fd)
        except BaseException:
            logger.exception("Worker for connection %d failed.", connection_id)
        finally:
            os._exit(status)

    def _reap(self) -> None:
        try:
            os.read(self._wakeup_read, 512)
        except BlockingIOError:
            pass
        while True:
            try:
                pid, wait_status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            status = _describe_status(wait_status)
            try:
                self.link.send(
                    ipc.encode({"type": "exited", "pid": pid, "status": status})
                )
            except OSError:
                pass


def _describe_status(wait_status: int) -> int | str:
    """An exit code, or the name of the signal that ended the worker."""

    if os.WIFSIGNALED(wait_status):
        return signal.Signals(os.WTERMSIG(wait_status)).name
    return os.waitstatus_to_exitcode(wait_status)


def main(argv: list[str] | None = None) -> None:
    """Entry point used by the supervisor; not meant to be run by hand."""

    parser = argparse.ArgumentParser(prog="sftpjail-zygote")
    parser.add_argument("--link-fd", type=int, required=True)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--audit-fd", type=int, action="append", default=[])
    parser.add_argument("--host-key", action="append", default=[])
    arguments = parser.parse_args(argv)

    try:
        config = load_config(arguments.config)
        configure_logging(config.log_level)
        configure_audit_descriptors(arguments.audit_fd)
        link = socket.socket(fileno=arguments.link_fd)
        host_keys = [public_host_key(line) for line in arguments.host_key]
        Zygote(config, link, host_keys).run()
    except SftpjailError as error:
        print(f"sftpjail zygote: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
