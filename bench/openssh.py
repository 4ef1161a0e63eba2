"""OpenSSH's sshd with internal-sftp, chrooted, as the baseline.

The configuration is the usual hardened SFTP-only setup: key login only,
the bench user chrooted with `ForceCommand internal-sftp`, no forwarding.
sshd insists that every component of the chroot path is owned by root and
writable by nobody else, so the run's root must not live below a
world-writable directory such as /tmp.  The account needs a password field
that is not "locked" ("*", not "!"), or sshd refuses it without PAM.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from bench.servers import (
    BENCH_USER,
    ChrootedServer,
    ServerError,
    ensure_system_user,
    make_work_dir,
)

SSHD = Path("/usr/sbin/sshd")
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")
# Enough unauthenticated connections at once for the concurrency scenarios
# (sshd drops some above its default of 10).
MAX_STARTUPS = 1000


class OpenSSHServer(ChrootedServer):
    """sshd -D on 127.0.0.1 with its own host key and configuration."""

    name = "openssh"

    @property
    def config_path(self) -> Path:
        return self.root / "sshd_config"

    @property
    def ready_line(self) -> str:
        return "Server listening on"

    def prepare(self, client_public_key: Path) -> None:
        if not SSHD.exists():
            raise ServerError(f"{SSHD} is missing; install openssh-server")
        account = ensure_system_user(BENCH_USER)
        if _password_field(BENCH_USER).startswith("!"):
            subprocess.run(["usermod", "-p", "*", BENCH_USER], check=True)
        PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)

        self.root.chmod(0o755)
        host_key = self.root / "host_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
            check=True,
        )
        keys = self.root / "authorized_keys"
        keys.mkdir(mode=0o755)
        # sshd reads authorized keys as the user: world-readable, root-owned.
        shutil.copyfile(client_public_key, keys / BENCH_USER)
        (keys / BENCH_USER).chmod(0o644)

        self.chroot.mkdir(mode=0o755)
        make_work_dir(self.work_dir, account)
        self.config_path.write_text(self._config_text(host_key, keys))
        self._check_config()

    def _config_text(self, host_key: Path, keys: Path) -> str:
        return "\n".join(
            [
                f"Port {self.port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {self.root / 'sshd.pid'}",
                "UsePAM no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PubkeyAuthentication yes",
                f"AuthorizedKeysFile {keys}/%u",
                f"AllowUsers {BENCH_USER}",
                f"MaxStartups {MAX_STARTUPS}",
                "Subsystem sftp internal-sftp",
                f"Match User {BENCH_USER}",
                f"  ChrootDirectory {self.chroot}",
                "  ForceCommand internal-sftp",
                "  AllowTcpForwarding no",
                "  X11Forwarding no",
                "",
            ]
        )

    def _check_config(self) -> None:
        checked = subprocess.run(
            [str(SSHD), "-t", "-f", str(self.config_path)],
            capture_output=True,
            text=True,
        )
        if checked.returncode != 0:
            raise ServerError(f"sshd rejects its benchmark config: {checked.stderr}")

    def command(self) -> list[str]:
        return [str(SSHD), "-D", "-e", "-f", str(self.config_path)]


def _password_field(user: str) -> str:
    """The user's field in /etc/shadow ("!" means locked)."""

    for line in Path("/etc/shadow").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name == user:
            return rest.split(":", 1)[0]
    return ""
