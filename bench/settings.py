"""How big each scenario is: the full run, and the quick one."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.metrics import GIB, MIB

AES_GCM = "aes128-gcm@openssh.com"
CHACHA20 = "chacha20-poly1305@openssh.com"

# In the order they run; `--only` picks a subset.
SCENARIOS = ("logins", "small-files", "listing", "transfers", "concurrent", "idle")


@dataclass(frozen=True)
class Settings:
    """Sizes and counts of every scenario; the defaults are the full run."""

    runs: int = 5
    big_size: int = GIB
    ciphers: tuple[str, ...] = (AES_GCM, CHACHA20)
    # Scenarios that are not about ciphers use what OpenSSH clients pick
    # by default when the server offers it.
    session_cipher: str = CHACHA20
    small_files: int = 2000
    small_file_size: int = 4096
    list_entries: int = 10_000
    logins: int = 100
    concurrent_sessions: int = 50
    concurrent_size: int = 64 * MIB
    idle_sessions: int = 200
    scenarios: tuple[str, ...] = SCENARIOS
    time_limit: float = 60 * 60.0

    def describe(self) -> dict[str, object]:
        """The settings as JSON-friendly values."""

        return {
            "runs": self.runs,
            "big_file_bytes": self.big_size,
            "ciphers": list(self.ciphers),
            "session_cipher": self.session_cipher,
            "small_files": self.small_files,
            "small_file_bytes": self.small_file_size,
            "list_entries": self.list_entries,
            "logins": self.logins,
            "concurrent_sessions": self.concurrent_sessions,
            "concurrent_bytes_each": self.concurrent_size,
            "idle_sessions": self.idle_sessions,
            "scenarios": list(self.scenarios),
        }


FULL = Settings()
QUICK = replace(
    FULL,
    runs=1,
    big_size=16 * MIB,
    small_files=200,
    list_entries=1000,
    logins=10,
    concurrent_sessions=5,
    concurrent_size=4 * MIB,
    idle_sessions=20,
    time_limit=10 * 60.0,
)
