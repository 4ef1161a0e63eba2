"""What every scenario works with: settings, servers, files and the clock."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from bench.client import Target
from bench.servers import BenchServer
from bench.settings import Settings
from bench.workspace import Workspace

logger = logging.getLogger("bench")

# Generous floors: a wait that runs out means something is broken, not slow.
LOGIN_TIMEOUT = 60.0
SLOWEST_THROUGHPUT = 5 * 1024 * 1024


class BenchError(Exception):
    """A scenario could not measure what it set out to."""


@dataclass
class Context:
    """Shared state of one benchmark run."""

    settings: Settings
    workspace: Workspace
    servers: list[BenchServer]
    started: float = field(default_factory=time.monotonic)

    def target(self, server: BenchServer, cipher: str | None = None) -> Target:
        """How to reach `server`, with the scenario's cipher."""

        return Target(
            port=server.port,
            key=self.workspace.key,
            cipher=cipher or self.settings.session_cipher,
            stderr_dir=self.workspace.client_dir,
        )

    def check_time(self) -> None:
        """Stop the run once it has used its time limit."""

        spent = time.monotonic() - self.started
        if spent > self.settings.time_limit:
            raise BenchError(
                f"the run took longer than its limit of "
                f"{self.settings.time_limit:.0f} s; use smaller sizes or "
                "--time-limit"
            )

    @staticmethod
    def timeout_for(size: int, sessions: int = 1) -> float:
        """How long moving `size` bytes in each of `sessions` may take."""

        return 60.0 + size * sessions / SLOWEST_THROUGHPUT
