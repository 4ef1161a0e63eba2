"""The two servers under test, started the same way and seen the same way.

Both log in the same user (`BENCH_USER`) with the same client key and put
its writable directory at `work/` of the client's view, so every sftp
command line is identical for both.  Each server lives in its own
directory below the run's root; its stderr goes to a file there (a pipe
nobody reads would eventually stop the server) and it is ready once that
file shows the server's "listening" line.

The top `shared_levels` levels of the process tree serve every client
(sshd's listener; sftpjail's supervisor and its zygote).  Every process
below them belongs to one session, which is how the memory scenario
charges memory to sessions.
"""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from pathlib import Path

from bench import procfs

BENCH_USER = "sftpbench"
WORK_DIR = "work"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServerError(Exception):
    """A server could not be prepared, started or stopped."""


class BenchServer(ABC):
    """One server process tree on 127.0.0.1, owned by the benchmark."""

    name: str
    shared_levels = 1

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.log_path = root / "server.log"
        self.stdout_path = root / "stdout.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    @abstractmethod
    def work_dir(self) -> Path:
        """Where the user's `work/` directory is on this host."""

    @property
    @abstractmethod
    def ready_line(self) -> str:
        """The log line saying the server accepts connections."""

    @abstractmethod
    def prepare(self, client_public_key: Path) -> None:
        """Write configuration, keys and the user's directories."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the server in the foreground."""

    def environment(self) -> dict[str, str] | None:
        """The server's environment; None inherits the benchmark's."""

        return None

    def start(self) -> None:
        """Start the server and wait until it listens."""

        with (
            self.log_path.open("ab") as log,
            self.stdout_path.open("ab") as output,
            open(os.devnull, "rb") as nothing,
        ):
            self.process = subprocess.Popen(
                self.command(),
                stdin=nothing,
                stdout=output,
                stderr=log,
                start_new_session=True,
                cwd=self.root,
                env=self.environment(),
            )
        self._wait_until_ready()

    @property
    def root_pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    def shared_pids(self) -> list[int]:
        """The processes that serve every session, root first."""

        children = procfs.children_map()
        level = [self.root_pid]
        shared: list[int] = []
        for _ in range(self.shared_levels):
            shared += level
            level = [child for pid in level for child in children.get(pid, [])]
        return shared

    def session_groups(self) -> list[list[int]]:
        """The processes of each connected session, one list a session."""

        children = procfs.children_map()
        shared = self.shared_pids()
        groups = []
        for parent in shared:
            for child in sorted(children.get(parent, [])):
                if child not in shared:
                    groups.append(procfs.descendants(child, children))
        return groups

    def cpu_seconds(self) -> float:
        """All CPU the server's process tree has used so far."""

        return procfs.tree_cpu_seconds(self.root_pid)

    def stop(self) -> None:
        """Stop the server, by force if it does not stop in time."""

        if self.process is None:
            return
        tree = {
            pid: procfs.command_of(pid)
            for pid in procfs.descendants(self.process.pid)[1:]
        }
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        # sshd puts each connection in a session of its own, so killing the
        # listener's process group would miss them: end what is left by pid,
        # if the pid still runs the same command (it was not reused).
        for pid, command in tree.items():
            if procfs.command_of(pid) == command:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.process = None

    def _wait_until_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.ready_line in self.log_path.read_text(errors="replace"):
                return
            assert self.process is not None
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        raise ServerError(
            f"{self.name} did not start; its log {self.log_path} says:\n"
            + self.log_path.read_text(errors="replace")[-3000:]
        )

    def log_tail(self, characters: int = 2000) -> str:
        """The end of the server's log, for error messages."""

        try:
            return self.log_path.read_text(errors="replace")[-characters:]
        except FileNotFoundError:
            return ""


class ChrootedServer(BenchServer):
    """A server that shows the client `chroot/` as `/`."""

    @property
    def chroot(self) -> Path:
        return self.root / "chroot"

    @property
    def work_dir(self) -> Path:
        return self.chroot / WORK_DIR


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_system_user(name: str) -> pwd.struct_passwd:
    """Create a system account without a home or shell if it is missing."""

    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            name,
        ],
        check=True,
    )
    return pwd.getpwnam(name)


def make_work_dir(path: Path, owner: pwd.struct_passwd) -> None:
    """The user's writable `work/` directory."""

    path.mkdir(mode=0o755, exist_ok=True)
    os.chown(path, owner.pw_uid, owner.pw_gid)
