"""The server's host keys: made once, kept in `state_dir`, reused forever.

A client pins the host key on first contact, so losing or regenerating it
makes every user see a scary warning.  Keys are therefore written once,
atomically and with mode 0600, and every later start reads the same files.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from sftpjail.errors import HostKeyError

logger = logging.getLogger("sftpjail.hostkeys")

# (file name, asyncssh algorithm, key size in bits as ssh-keygen shows it,
# the type name ssh-keygen prints).  Ed25519 first: every modern client
# prefers it; ECDSA P-256 covers clients without Ed25519.
HOST_KEY_TYPES = (
    ("ssh_host_ed25519_key", "ssh-ed25519", 256, "ED25519"),
    ("ssh_host_ecdsa_key", "ecdsa-sha2-nistp256", 256, "ECDSA"),
)


@dataclass(frozen=True)
class HostKey:
    """One loaded host key and how to show it to an operator."""

    path: Path
    key: asyncssh.SSHKey
    bits: int
    type_name: str

    @property
    def fingerprint(self) -> str:
        """SHA256 fingerprint, as `ssh-keygen -l` prints it."""

        return str(self.key.get_fingerprint("sha256"))

    def describe(self) -> str:
        """One line in the format of `ssh-keygen -l -f KEY`."""

        return f"{self.bits} {self.fingerprint} {self.path} ({self.type_name})"


def load_host_keys(state_dir: Path, *, create: bool = True) -> list[HostKey]:
    """Load every host key, generating the missing ones if `create` is true."""

    _ensure_state_dir(state_dir, create)
    keys = []
    for file_name, algorithm, bits, type_name in HOST_KEY_TYPES:
        path = state_dir / file_name
        if not path.exists():
            if not create:
                raise HostKeyError(
                    f"host key {path} is missing and this server may not create "
                    "one; copy the shared host keys into state_dir"
                )
            _generate(path, algorithm)
            logger.info("Generated host key %s.", path)
        keys.append(HostKey(path, _read(path), bits, type_name))
    return keys


def _ensure_state_dir(state_dir: Path, create: bool) -> None:
    if state_dir.is_dir():
        return
    if not create:
        raise HostKeyError(f"state_dir {state_dir} does not exist")
    try:
        state_dir.mkdir(mode=0o700, parents=True)
    except OSError as error:
        raise HostKeyError(
            f"cannot create state_dir {state_dir}: {error.strerror}"
        ) from None


def _generate(path: Path, algorithm: str) -> None:
    """Write a new key so that no reader ever sees a partial or open file."""

    key = asyncssh.generate_private_key(algorithm)
    data = key.export_private_key("openssh")
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        _fsync_directory(path.parent)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise HostKeyError(f"cannot write host key {path}: {error.strerror}") from None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path) -> asyncssh.SSHKey:
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise HostKeyError(
            f"host key {path} is readable by others (mode {mode:o}); "
            f"run chmod 600 {path}"
        )
    try:
        return asyncssh.read_private_key(path)
    except (OSError, asyncssh.KeyImportError) as error:
        raise HostKeyError(f"cannot read host key {path}: {error}") from None
