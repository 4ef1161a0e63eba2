"""The server's host keys: made once, kept in `state_dir`, reused forever.

A client pins the host key on first contact, so losing or regenerating it
makes every user see a scary warning.  Keys are therefore written once,
atomically and with mode 0600, and every later start reads the same files.

Only the supervisor holds the private halves.  A worker, which talks to
the network and may be taken over, gets the public halves as
`DelegatedHostKey`s, which ask the supervisor for each signature of a key
exchange; `HostKeySigner` answers, signing only values of an exchange
hash's size (32, 48 or 64 bytes): it cannot tell a real exchange hash
from any other value of that size.  As with OpenSSH's privilege
separation, a worker taken over can have signatures made while it runs,
but cannot take a key away with it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
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

    @property
    def public_line(self) -> str:
        """The public half in OpenSSH's one-line format, without a comment."""

        algorithm, blob, *_comment = self.key.export_public_key("openssh").split()
        return f"{algorithm.decode('ascii')} {blob.decode('ascii')}"


# The sizes of an SSH key exchange hash: SHA-256, SHA-384 and SHA-512.  A
# host key signs such a hash and nothing else in a session sftpjail serves.
EXCHANGE_HASH_SIZES = (32, 48, 64)


class SigningRefusedError(Exception):
    """The supervisor will not make this signature."""


class HostKeySigner:
    """The supervisor's side: signs exchange hashes with the private keys."""

    def __init__(self, host_keys: list[HostKey]) -> None:
        self._keys = {host_key.key.public_data: host_key.key for host_key in host_keys}

    def sign(self, public_data: bytes, algorithm: str, data: bytes) -> bytes:
        """Sign `data`, which must be an exchange hash, with the key named."""

        key = self._keys.get(public_data)
        if key is None:
            raise SigningRefusedError("no such host key")
        # UTF-8, not ASCII: a name no key has is refused below, never an
        # encoding error in the supervisor.
        name = algorithm.encode()
        if name not in key.sig_algorithms:
            raise SigningRefusedError(f"{algorithm} does not fit the key")
        if len(data) not in EXCHANGE_HASH_SIZES:
            raise SigningRefusedError(f"{len(data)} bytes are not an exchange hash")
        return bytes(key.sign(data, name))


# Asks the supervisor for a signature: (public key data, signature
# algorithm, data) -> the signature as asyncssh encodes it.
RemoteSigner = Callable[[bytes, str, bytes], bytes]


class DelegatedHostKey(asyncssh.SSHKeyPair):
    """A worker's host key: the public half, signing through the supervisor."""

    _key_type = "delegated"

    def __init__(self, public_key: asyncssh.SSHKey, signer: RemoteSigner) -> None:
        super().__init__(
            public_key.algorithm,
            public_key.algorithm,
            public_key.sig_algorithms,
            public_key.sig_algorithms,
            public_key.public_data,
            comment=None,
        )
        self._signer = signer

    def sign(self, data: bytes) -> bytes:
        """Have the supervisor sign `data` (an exchange hash)."""

        return self._signer(
            self.key_public_data, self.sig_algorithm.decode("ascii"), data
        )


def public_host_key(line: str) -> asyncssh.SSHKey:
    """Read one public host key line, as `HostKey.public_line` writes it."""

    try:
        return asyncssh.import_public_key(line)
    except asyncssh.KeyImportError as error:
        raise HostKeyError(f"cannot read public host key {line!r}: {error}") from None


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
