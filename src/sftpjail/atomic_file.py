"""Rewriting a small file so that readers never see half of it.

Theory of operation: writers serialize on an exclusive flock of a sidecar
file, `<file>.lock`.  Locking the file itself would not work, because each
write replaces it with a rename: a second writer could lock the new file
while the first still holds the old one.  The sidecar is never removed,
for the same reason.

A write goes to a temporary file in the same directory (so the rename
cannot cross file systems), takes the old file's mode and owner, is synced,
renamed over the old file, and then the directory is synced so the rename
itself survives a crash.  Readers need no lock: they open either the old
file or the new one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

_POLL_INTERVAL = 0.02


class LockTimeoutError(TimeoutError):
    """Another process held the lock for longer than the caller would wait."""


def lock_path_of(path: Path) -> Path:
    """The sidecar lock file that guards edits of `path`."""

    return path.with_name(path.name + ".lock")


@contextlib.contextmanager
def exclusive_lock(path: Path, timeout: float) -> Iterator[None]:
    """Hold the edit lock of `path`; LockTimeoutError after `timeout` s.

    Raises OSError when the lock file cannot be opened or created.
    """

    flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
    descriptor = os.open(lock_path_of(path), flags, 0o600)

    # Closing the descriptor is what releases the lock.
    try:
        _wait_for_lock(descriptor, timeout)
        yield
    finally:
        os.close(descriptor)


def _wait_for_lock(descriptor: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeoutError from None
        time.sleep(_POLL_INTERVAL)


def replace_file(path: Path, data: bytes, new_file_mode: int) -> None:
    """Atomically make `data` the content of `path`.

    An existing file keeps its mode and owner; a new one gets
    `new_file_mode`.  Raises OSError; the temporary file never outlives a
    failure.
    """

    try:
        existing: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        existing = None

    descriptor, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(descriptor, "wb") as stream:
            _copy_mode_and_owner(stream.fileno(), existing, new_file_mode)
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise

    _sync_directory(path.parent)


def _copy_mode_and_owner(
    descriptor: int, existing: os.stat_result | None, new_file_mode: int
) -> None:
    if existing is None:
        os.fchmod(descriptor, new_file_mode)
        return

    os.fchmod(descriptor, stat.S_IMODE(existing.st_mode))
    current = os.fstat(descriptor)
    if (current.st_uid, current.st_gid) != (existing.st_uid, existing.st_gid):
        os.fchown(descriptor, existing.st_uid, existing.st_gid)


def _sync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
