"""The OpenSSH `sftp` client, driven one command at a time.

Theory of operation: `sftp -b -` reads its batch from a pipe and, even on
a pipe, writes its output line by line.  It echoes each command as
"sftp> COMMAND" when it reads it, and reads the next one only when the
previous one has finished.  So after any command the benchmark sends a
`pwd`, which sftp answers locally with "Remote working directory: ...":
the moment that line arrives is the moment the command before it ended.
This times a transfer without the login, and a login without the
transfer, with nothing but the real client.

A reader thread per session stamps each line with its arrival time, so
many sessions can run at once and each is timed on its own.  In batch
mode sftp stops at the first failed command; the session then sees the
end of its output and raises `ClientError` with sftp's stderr.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench import procfs
from bench.servers import BENCH_USER

MARKER_COMMAND = "pwd"
MARKER_REPLY = "Remote working directory:"
ECHO_PREFIX = "sftp> "
CLOSE_TIMEOUT = 30.0
# Every scenario uses the same algorithms with both servers, so neither
# wins by negotiating something cheaper: Curve25519 key exchange, Ed25519
# host keys, and the cipher the scenario names.
KEX_ALGORITHM = "curve25519-sha256"
HOST_KEY_ALGORITHM = "ssh-ed25519"


class ClientError(Exception):
    """An sftp session failed or did not answer in time."""


@dataclass(frozen=True)
class Target:
    """Where and how a session connects."""

    port: int
    key: Path
    cipher: str
    stderr_dir: Path

    def argv(self) -> list[str]:
        options = {
            "UserKnownHostsFile": "/dev/null",
            "StrictHostKeyChecking": "no",
            "LogLevel": "ERROR",
            "IdentitiesOnly": "yes",
            "IdentityFile": str(self.key),
            "PasswordAuthentication": "no",
            "KbdInteractiveAuthentication": "no",
            "KexAlgorithms": KEX_ALGORITHM,
            "HostKeyAlgorithms": HOST_KEY_ALGORITHM,
            "Ciphers": self.cipher,
            "ConnectTimeout": "30",
        }
        argv = ["sftp", "-F", "/dev/null"]
        for name, value in options.items():
            argv += ["-o", f"{name}={value}"]
        return [*argv, "-P", str(self.port), "-b", "-", f"{BENCH_USER}@127.0.0.1"]


@dataclass(frozen=True)
class Reply:
    """What one command printed, and when it ended (monotonic clock)."""

    seconds: float
    finished_at: float
    lines: list[str]


class SftpSession:
    """One `sftp -b -` process; `open()` starts its login at once."""

    _numbers = iter(range(1, 1_000_000))

    def __init__(self, target: Target) -> None:
        self.target = target
        self.number = next(self._numbers)
        self.stderr_path = target.stderr_dir / f"sftp-{self.number}.err"
        self._lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self.sent_at = 0.0

    def open(self) -> None:
        """Start sftp and queue a marker, so the login gets timed."""

        with self.stderr_path.open("wb") as stderr:
            self._process = subprocess.Popen(
                self.target.argv(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
            )
        self.sent_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._write(MARKER_COMMAND)

    def cpu_seconds(self) -> float:
        """All CPU this client (`sftp` and its `ssh`) has used so far."""

        assert self._process is not None, "the session is not open"
        return procfs.tree_cpu_seconds(self._process.pid)

    def wait_logged_in(self, timeout: float) -> float:
        """Seconds from starting sftp to its first answer."""

        return self.wait(timeout).seconds

    def send(self, command: str) -> None:
        """Send a command followed by the marker; time starts now."""

        self.sent_at = time.monotonic()
        self._write(f"{command}\n{MARKER_COMMAND}")

    def wait(self, timeout: float) -> Reply:
        """Wait for the marker's answer; collect what came before it."""

        deadline = time.monotonic() + timeout
        lines: list[str] = []
        while True:
            remaining = deadline - time.monotonic()
            try:
                arrived, line = self._lines.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise ClientError(self._describe("no answer in time")) from None
            if line is None:
                raise ClientError(self._describe("sftp ended early"))
            if line.startswith(MARKER_REPLY):
                return Reply(arrived - self.sent_at, arrived, lines)
            if not line.startswith(ECHO_PREFIX):
                lines.append(line)

    def run(self, command: str, timeout: float) -> Reply:
        """Send one command and wait for it to finish."""

        self.send(command)
        return self.wait(timeout)

    def close(self, timeout: float = CLOSE_TIMEOUT) -> None:
        """End the session: end of batch, then wait; kill if it hangs."""

        if self._process is None:
            return
        self.end_batch()
        try:
            self._process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=timeout)
        if self._process.stdout is not None:
            self._process.stdout.close()
        self._process = None

    def end_batch(self) -> None:
        """Close sftp's input: it finishes what it has and logs out."""

        if self._process is None or self._process.stdin is None:
            return
        try:
            self._process.stdin.close()
        except OSError:
            pass

    def kill(self) -> None:
        """Stop sftp at once (on errors and interrupts)."""

        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self.close(timeout=5)

    def _write(self, text: str) -> None:
        assert self._process is not None and self._process.stdin is not None
        try:
            self._process.stdin.write(text.encode() + b"\n")
            self._process.stdin.flush()
        except BrokenPipeError:
            raise ClientError(self._describe("sftp is gone")) from None

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for raw in self._process.stdout:
            self._lines.put((time.monotonic(), raw.decode(errors="replace")))
        self._lines.put((time.monotonic(), None))

    def _describe(self, problem: str) -> str:
        try:
            stderr = self.stderr_path.read_text(errors="replace").strip()
        except FileNotFoundError:
            stderr = ""
        return f"sftp session {self.number} to port {self.target.port}: {problem}" + (
            f"; it said: {stderr[-500:]}" if stderr else ""
        )


@contextmanager
def sessions(target: Target, count: int) -> Iterator[list[SftpSession]]:
    """`count` sessions, all logging in at once; closed (or killed) after."""

    pool = [SftpSession(target) for _ in range(count)]
    try:
        for session in pool:
            session.open()
        yield pool
    except BaseException:
        for session in pool:
            session.kill()
        raise
    for session in pool:
        session.end_batch()
    for session in pool:
        session.close()


def log_in_once(target: Target, timeout: float) -> float:
    """One login and logout; returns the login's seconds."""

    with sessions(target, 1) as (session,):
        return session.wait_logged_in(timeout)
