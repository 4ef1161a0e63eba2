"""sftpjail itself, configured as an operator would, with room for the load.

The user is added with the project's own `sftpjail user add` command,
which also creates the home.  Limits are raised so that the concurrency
scenarios fit (the defaults allow 10 sessions per source address, and
every client here comes from 127.0.0.1).  Logs stay at "info", like
sshd's default LogLevel, so both write a line or two per login; the JSON
audit log goes to stdout as in production, into a file.

By default the server runs from the code Python imports (the working
tree, for an editable install).  `export_revision` copies one committed
revision of src/ instead, so a long run measures fixed code even while
the working tree changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bench.servers import (
    BENCH_USER,
    WORK_DIR,
    BenchServer,
    ServerError,
    ensure_system_user,
    make_work_dir,
)

SERVICE_USER = "sftpjail"
MAX_SESSIONS = 1000
# As with the MaxStartups given to sshd: room for every concurrent login.
# Given in the environment, which versions without the [defense] section
# ignore, where the same key in the file would be refused.
EXTRA_ENVIRONMENT = {"SFTPJAIL_DEFENSE_MAX_UNAUTHENTICATED_PER_SOURCE": "1000"}
REPOSITORY = Path(__file__).resolve().parent.parent


class SftpjailServer(BenchServer):
    """`python -m sftpjail serve` on 127.0.0.1 with its own data directory."""

    name = "sftpjail"
    shared_levels = 2  # the supervisor and its zygote

    def __init__(self, root: Path, source: Path | None = None) -> None:
        super().__init__(root)
        self.source = source

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def home(self) -> Path:
        return self.root / "data" / BENCH_USER

    @property
    def work_dir(self) -> Path:
        return self.home / WORK_DIR

    @property
    def ready_line(self) -> str:
        return "Ready to accept connections."

    def prepare(self, client_public_key: Path) -> None:
        service = ensure_system_user(SERVICE_USER)
        # Workers run as the service user and must pass through the root.
        self.root.chmod(0o755)
        self.config_path.write_text(self._config_text())
        key = str(client_public_key)
        added = subprocess.run(
            [
                *self.command_prefix(),
                *("user", "add", BENCH_USER, "--key-file", key),
                *("--config", str(self.config_path)),
            ],
            capture_output=True,
            text=True,
            env=self.environment(),
        )
        if added.returncode != 0:
            raise ServerError(f"sftpjail user add failed: {added.stderr}")
        make_work_dir(self.work_dir, service)

    def _config_text(self) -> str:
        return "\n".join(
            [
                "[server]",
                f'listen = ["127.0.0.1:{self.port}"]',
                f'data_dir = "{self.root / "data"}"',
                f'state_dir = "{self.root / "state"}"',
                f'users_file = "{self.root / "users.toml"}"',
                f'service_user = "{SERVICE_USER}"',
                'log_level = "info"',
                "[limits]",
                f"max_sessions = {MAX_SESSIONS}",
                f"max_sessions_per_source = {MAX_SESSIONS}",
                "login_grace_time = 60",
                "shutdown_grace_time = 5",
                "",
            ]
        )

    def command(self) -> list[str]:
        return [*self.command_prefix(), "serve", "--config", str(self.config_path)]

    def command_prefix(self) -> list[str]:
        return [sys.executable, "-m", "sftpjail"]

    def environment(self) -> dict[str, str] | None:
        """Raised limits, and the exported revision's code if there is one."""

        environment = {**os.environ, **EXTRA_ENVIRONMENT}
        if self.source is not None:
            environment["PYTHONPATH"] = str(self.source)
        return environment


def export_revision(revision: str, destination: Path) -> Path:
    """Copy src/ of a committed revision; return the directory to import from."""

    destination.mkdir(mode=0o755)
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", revision, "src"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise ServerError(
            f"cannot export revision {revision!r}: {archive.stderr.decode().strip()}"
        )
    subprocess.run(
        ["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True
    )
    return destination / "src"


def describe_revision(revision: str | None) -> str:
    """The commit measured, and whether uncommitted changes ran with it."""

    git = ["git", "-C", str(REPOSITORY)]
    commit = subprocess.run(
        [*git, "rev-parse", "--short", revision or "HEAD"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if not commit:
        return "unknown"
    if revision is not None:
        return commit
    changed = subprocess.run(
        [*git, "status", "--porcelain", "src"], capture_output=True, text=True
    ).stdout.strip()
    return f"{commit} with uncommitted changes" if changed else commit
