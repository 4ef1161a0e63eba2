"""A real sftpjail server on 127.0.0.1 and the real OpenSSH clients.

`ServerLab` writes a configuration, a users file and client keys into a
fresh directory, starts `python -m sftpjail serve` as a separate process and
drives it with `sftp`, `ssh` and `scp` exactly as a user would.
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from sftpjail.homes import ensure_home
from sftpjail.passwords import hash_password
from sftpjail.users import User, UsersFile

SERVICE_USER = "sftpjail"
READY_LINE = "Ready to accept connections."
START_TIMEOUT = 30.0
STDERR_DRAIN_TIMEOUT = 5.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_service_user() -> None:
    """Workers of a server started as root switch to this user."""

    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        subprocess.run(
            [
                "useradd",
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                SERVICE_USER,
            ],
            check=True,
        )


@dataclass
class ClientKey:
    private: Path
    public_line: str


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@dataclass
class ServerLab:
    """Everything one test's server needs, in one throwaway directory."""

    root: Path
    port: int = field(default_factory=free_port)
    extra_config: str = ""
    process: subprocess.Popen[bytes] | None = None
    stderr_lines: list[str] = field(default_factory=list)
    stdout_path: Path | None = None
    exit_code: int = 0
    _partial: bytes = b""

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def users_file(self) -> Path:
        return self.root / "etc" / "users.toml"

    @property
    def config_file(self) -> Path:
        return self.root / "etc" / "config.toml"

    def write_config(self, limits: str = "") -> None:
        settings = {"auth_failure_delay": "0.2", "shutdown_grace_time": "5"}
        for line in limits.splitlines():
            if "=" in line:
                name, value = line.split("=", 1)
                settings[name.strip()] = value.strip()
        limit_lines = "".join(f"{name} = {value}\n" for name, value in settings.items())
        (self.root / "etc").mkdir(exist_ok=True)
        text = (
            "[server]\n"
            f'listen = ["127.0.0.1:{self.port}"]\n'
            f'data_dir = "{self.data_dir}"\n'
            f'state_dir = "{self.state_dir}"\n'
            f'users_file = "{self.users_file}"\n'
            f'service_user = "{SERVICE_USER}"\n'
            f"{self.extra_config}\n"
            "[limits]\n"
            f"{limit_lines}"
        )
        self.config_file.write_text(text)

    def client_key(self, name: str) -> ClientKey:
        private = self.root / "keys" / name
        if not private.exists():
            private.parent.mkdir(exist_ok=True)
            subprocess.run(
                [
                    "ssh-keygen",
                    "-q",
                    "-t",
                    "ed25519",
                    "-N",
                    "",
                    "-C",
                    name,
                    "-f",
                    str(private),
                ],
                check=True,
            )
        public_line = private.with_suffix(".pub").read_text().strip()
        return ClientKey(private, public_line)

    def add_user(
        self,
        name: str,
        *,
        password: str | None = None,
        read_only: bool = False,
        home: str | None = None,
    ) -> ClientKey:
        key = self.client_key(name)
        user = User(
            name=name,
            password_hash=hash_password(password) if password else None,
            authorized_keys=(key.public_line,),
            home=home or name,
            read_only=read_only,
        )
        UsersFile(self.users_file).add(user)
        service = pwd.getpwnam(SERVICE_USER)
        ensure_home(self.data_dir, user.home, (service.pw_uid, service.pw_gid))
        return key

    # -- the server process -------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start the server and wait until it accepts connections.

        If it never gets ready (or the wait is interrupted), it is stopped
        before the error goes on: a failed start leaves no process behind.
        """

        self.stdout_path = self.root / "audit.jsonl"
        stdout = self.stdout_path.open("ab")
        self.process = subprocess.Popen(
            [
                # If the test run itself dies, the kernel stops the server.
                "setpriv",
                "--pdeathsig",
                "TERM",
                sys.executable,
                "-m",
                "sftpjail",
                "serve",
                "--config",
                str(self.config_file),
            ],
            stdout=stdout,
            stderr=subprocess.PIPE,
            # The server's own group holds its zygote and workers, so that
            # `stop` can end whatever the supervisor leaves behind.
            start_new_session=True,
        )
        stdout.close()
        try:
            self.wait_for_log(READY_LINE, timeout)
        except BaseException:
            self.stop()
            raise

    def wait_for_log(self, text: str, timeout: float) -> str:
        """Read the server's stderr until a line contains `text`."""

        deadline = time.monotonic() + timeout
        while True:
            for line in self.stderr_lines:
                if text in line:
                    return line
            if not self._read_stderr(deadline - time.monotonic()):
                break
        raise AssertionError(
            f"server never logged {text!r}; it logged:\n" + "\n".join(self.stderr_lines)
        )

    def _read_stderr(self, timeout: float) -> bool:
        """Collect whatever stderr holds; False once nothing more can come."""

        if timeout <= 0 or self.process is None or self.process.stderr is None:
            return False
        fd = self.process.stderr.fileno()
        ready, _, _ = select.select([fd], [], [], min(timeout, 0.2))
        if not ready:
            return self.process.poll() is None or timeout > 0.2
        chunk = os.read(fd, 65536)
        if not chunk:
            return False
        self._partial += chunk
        *lines, self._partial = self._partial.split(b"\n")
        self.stderr_lines.extend(line.decode(errors="replace") for line in lines)
        return True

    def stop(self, timeout: float = 15.0) -> int:
        """Stop the server and every process it started; its exit code.

        SIGTERM lets the supervisor end its sessions and its zygote; one
        that takes longer than `timeout` is killed.  Either way whatever is
        left of its process group is killed too: workers whose supervisor
        died would otherwise serve on (and keep stderr open).
        """

        if self.process is None:
            return self.exit_code
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code: int | None = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
        _kill_process_group(self.process.pid)
        if code is None:
            code = self.process.wait()

        self._read_rest_of_stderr()
        self.process = None
        self.exit_code = code
        return code

    def _read_rest_of_stderr(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        deadline = time.monotonic() + STDERR_DRAIN_TIMEOUT
        while self._read_stderr(deadline - time.monotonic()):
            pass
        if self._partial:
            self.stderr_lines.append(self._partial.decode(errors="replace"))
            self._partial = b""
        self.process.stderr.close()

    def wait_for_worker(self, user: str, timeout: float = 15) -> int:
        """The pid of the worker serving `user`, once that user has logged in."""

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            logins = self.audit_events("auth.success")
            if any(event["user"] == user for event in logins):
                assert self.process is not None
                workers = descendants(self.process.pid)
                serving = [pid for pid in workers if uid_of(pid) != 0]
                if serving:
                    return serving[-1]
            time.sleep(0.1)
        raise AssertionError(f"no worker for {user}")

    def audit_events(self, event: str | None = None) -> list[dict[str, object]]:
        assert self.stdout_path is not None
        events = []
        for line in self.stdout_path.read_text().splitlines():
            if line.startswith("{"):
                record = json.loads(line)
                if event is None or record.get("event") == event:
                    events.append(record)
        return events

    # -- clients ------------------------------------------------------------

    def ssh_options(self, key: ClientKey | None) -> list[str]:
        options = [
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            f"UserKnownHostsFile={self.root / 'known_hosts'}",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ]
        if key is not None:
            options += [
                "-o",
                "IdentitiesOnly=yes",
                "-o",
                "PasswordAuthentication=no",
                "-o",
                "KbdInteractiveAuthentication=no",
                "-i",
                str(key.private),
            ]
        return options

    def sftp(
        self,
        user: str,
        commands: str,
        *,
        key: ClientKey | None = None,
        password: str | None = None,
        timeout: float = 120,
        extra: list[str] | None = None,
    ) -> Result:
        """Run `sftp -b -` with `commands`; batch mode stops at the first error."""

        with _askpass(password) as environment:
            options = self.ssh_options(key)
            if password is not None:
                # -b turns BatchMode on, which forbids asking for a password;
                # an earlier -o wins in ssh, so turn it back off first.
                options = [
                    "-o",
                    "BatchMode=no",
                    "-o",
                    "PubkeyAuthentication=no",
                    "-o",
                    "NumberOfPasswordPrompts=1",
                    *options,
                ]
            completed = subprocess.run(
                [
                    "sftp",
                    *options,
                    *(extra or []),
                    "-P",
                    str(self.port),
                    "-b",
                    "-",
                    f"{user}@127.0.0.1",
                ],
                input=commands.encode(),
                capture_output=True,
                timeout=timeout,
                env=environment,
            )
        return Result(
            completed.returncode,
            completed.stdout.decode(errors="replace"),
            completed.stderr.decode(errors="replace"),
        )

    def ssh(
        self,
        user: str,
        arguments: list[str],
        *,
        key: ClientKey,
        timeout: float = 30,
        stdin: bytes = b"",
    ) -> Result:
        completed = subprocess.run(
            [
                "ssh",
                *self.ssh_options(key),
                "-p",
                str(self.port),
                *arguments[:-1],
                f"{user}@127.0.0.1",
                *arguments[-1:],
            ]
            if arguments
            else [
                "ssh",
                *self.ssh_options(key),
                "-p",
                str(self.port),
                f"{user}@127.0.0.1",
            ],
            input=stdin,
            capture_output=True,
            timeout=timeout,
        )
        return Result(
            completed.returncode,
            completed.stdout.decode(errors="replace"),
            completed.stderr.decode(errors="replace"),
        )


@contextmanager
def _askpass(password: str | None) -> Iterator[dict[str, str]]:
    """An environment in which ssh reads `password` from an askpass helper."""

    environment = dict(os.environ)
    if password is None:
        yield environment
        return
    directory = Path(tempfile.mkdtemp(prefix="askpass-"))
    try:
        secret = directory / "password"
        secret.write_text(password)
        helper = directory / "askpass.sh"
        helper.write_text(f"#!/bin/sh\ncat '{secret}'\n")
        helper.chmod(0o700)
        environment.update(
            SSH_ASKPASS=str(helper), SSH_ASKPASS_REQUIRE="force", DISPLAY=":0"
        )
        yield environment
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _kill_process_group(leader: int) -> None:
    """SIGKILL every process still in the group `leader` started."""

    try:
        os.killpg(leader, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the supervisor left nothing behind


def process_ids() -> list[int]:
    """The pid of every process in /proc right now."""

    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children before grandchildren."""

    children: list[int] = []
    for child in process_ids():
        try:
            stat = Path(f"/proc/{child}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == pid:
            children.append(child)
            children.extend(descendants(child))
    return sorted(children)


def uid_of(pid: int) -> int:
    """The real uid of a process, or -1 if it is gone."""

    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return -1
    for line in status.splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    return -1


def make_lab_root() -> Path:
    """A directory the unprivileged service user can traverse."""

    root = Path(tempfile.mkdtemp(prefix="sftpjail-test-", dir="/tmp"))
    root.chmod(0o711)
    return root
