"""The run's throwaway directory: client key, payload files, server roots.

Everything lives below one directory made for the run under
/var/lib/sftpjail-bench, which is root-owned and not world-writable, as
sshd's ChrootDirectory demands of every component of its path.  Payloads
are random bytes (so no layer can compress them) hashed once, when they
are written.  `cleanup()` removes the whole directory.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PARENT = Path("/var/lib/sftpjail-bench")
_CHUNK = 4 * 1024 * 1024


@dataclass(frozen=True)
class Payload:
    """A file of random bytes and its SHA-256."""

    path: Path
    size: int
    sha256: str


class WorkspaceError(Exception):
    """The directory asked for cannot hold a run's files."""


class Workspace:
    """One run's directory tree."""

    def __init__(self, parent: Path = DEFAULT_PARENT) -> None:
        self.created_parent = not parent.exists()
        if self.created_parent:
            parent.mkdir(mode=0o755, parents=True)
        else:
            _check_parent(parent)
        self.parent = parent
        self.root = Path(tempfile.mkdtemp(prefix="run-", dir=parent))
        self.root.chmod(0o755)
        self.client_dir = self.root / "client"
        self.client_dir.mkdir(mode=0o700)
        self.key = self.client_dir / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.key)],
            check=True,
        )
        self._payloads: dict[str, Payload] = {}

    @property
    def public_key(self) -> Path:
        return self.key.with_suffix(".pub")

    def server_root(self, name: str) -> Path:
        """An empty directory for one server's files."""

        path = self.root / name
        path.mkdir(mode=0o755)
        return path

    def random_file(self, name: str, size: int) -> Payload:
        """A file of `size` random bytes, written and hashed once per run."""

        if name in self._payloads:
            return self._payloads[name]
        path = self.root / name
        digest = hashlib.sha256()
        with path.open("wb") as stream:
            left = size
            while left > 0:
                chunk = os.urandom(min(_CHUNK, left))
                digest.update(chunk)
                stream.write(chunk)
                left -= len(chunk)
        # Readable by both servers' users: downloads hard-link it.
        path.chmod(0o644)
        payload = Payload(path, size, digest.hexdigest())
        self._payloads[name] = payload
        return payload

    def small_tree(self, name: str, count: int, size: int) -> Path:
        """A directory of `count` random files of `size` bytes."""

        path = self.client_dir / name
        if not path.exists():
            path.mkdir()
            for number in range(count):
                (path / f"file-{number:05d}.bin").write_bytes(os.urandom(size))
        return path

    def cleanup(self) -> None:
        """Remove the run's directory, and the parent if it is now empty."""

        shutil.rmtree(self.root, ignore_errors=True)
        if not self.created_parent:
            return
        try:
            self.parent.rmdir()
        except OSError:
            pass  # something else is in it now


def _check_parent(parent: Path) -> None:
    """Refuse a directory sshd's ChrootDirectory would refuse; change none.

    A shared directory such as /dev/shm (mode 1777) is refused rather than
    made private: other users of the machine rely on its mode.
    """

    info = parent.stat()
    if not stat.S_ISDIR(info.st_mode):
        raise WorkspaceError(f"{parent} is not a directory")
    if info.st_uid != 0 or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise WorkspaceError(
            f"{parent} must be owned by root and writable by root only, as "
            "sshd's ChrootDirectory demands; make a directory of mode 755 in "
            "it and pass that"
        )


def sha256_of(path: Path) -> str:
    """The SHA-256 of a file, read in large chunks."""

    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
