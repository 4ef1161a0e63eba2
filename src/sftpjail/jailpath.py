"""Resolve client paths inside one home, the way a real chroot would.

Theory of operation
-------------------
A client names files with paths in its own namespace, where its home is `/`.
Checking those strings and then handing a joined path to the kernel is one
symlink away from an escape: the check and the use see different trees.  So
nothing here ever builds a host path.  A `Jail` holds an `O_PATH` descriptor
of the home, and every lookup starts from it:

* With `openat2(2)` and `RESOLVE_IN_ROOT` the kernel itself treats that
  descriptor as `/` for the whole lookup: `..` stops at the top, absolute
  symlink targets start again at the home, relative ones cannot climb out.
  The check and the use are the same system call, so a directory swapped
  for a symlink mid-request cannot redirect it.
* Kernels older than 5.6 lack `openat2`; there `_walk` does the same by
  hand: one component at a time with `O_NOFOLLOW`, holding a descriptor
  for each directory it passed, reading symlinks itself and restarting at
  the home for absolute targets.  It never asks the kernel to follow
  anything, so it is equally immune to swaps.

Operations that act on a name rather than on what it points to (lstat,
remove, rename, readlink, symlink, mkdir) resolve the *parent* this way and
then use the final name with a `*at` call that does not follow it.  Before
splitting, client paths are normalised lexically, so the final name is
never `.` or `..`.

Landlock (see `sftpjail.sandbox`) confines the worker to the home as well,
so a bug here is caught by the kernel a second time.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import posixpath
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Constants of openat2(2), from <linux/openat2.h>.
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_IN_ROOT = 0x10
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "armv7l": 437, "ppc64le": 437}
_MAX_SYMLINK_HOPS = 40
_MAX_EAGAIN_RETRIES = 16
_PATH_FLAGS = os.O_PATH | os.O_CLOEXEC


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _openat2(dir_fd: int, path: bytes, flags: int, mode: int) -> int:
    """Call openat2 with RESOLVE_IN_ROOT; raise OSError like os.open does."""

    how = _OpenHow(flags | os.O_CLOEXEC, mode if flags & os.O_CREAT else 0)
    how.resolve = _RESOLVE_IN_ROOT | _RESOLVE_NO_MAGICLINKS
    number = _SYS_OPENAT2[platform.machine()]

    # The kernel answers EAGAIN when a rename elsewhere raced a `..` step;
    # asking again is what its documentation recommends.
    for _attempt in range(_MAX_EAGAIN_RETRIES):
        fd = _libc.syscall(number, dir_fd, path, ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        code = ctypes.get_errno()
        if code not in (errno.EAGAIN, errno.EINTR):
            raise OSError(code, os.strerror(code))
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN))


def kernel_has_openat2() -> bool:
    """Whether this kernel and architecture offer openat2(2)."""

    if platform.machine() not in _SYS_OPENAT2:
        return False
    try:
        os.close(_openat2(os.open("/", _PATH_FLAGS), b".", _PATH_FLAGS, 0))
    except OSError as error:
        return error.errno != errno.ENOSYS
    return True


def normalize(client_path: bytes) -> bytes:
    """Turn a client path into a relative path below the home.

    `..` at the top stays at the top, repeated slashes collapse, and the
    home itself becomes `.`.  A NUL byte can never name a file.
    """

    if b"\0" in client_path:
        raise OSError(errno.EINVAL, "path contains a NUL byte")
    absolute = posixpath.normpath(b"/" + client_path)
    relative = absolute.lstrip(b"/")
    return relative or b"."


def client_form(relative: bytes) -> bytes:
    """The client's view of a relative path below the home."""

    return b"/" if relative == b"." else b"/" + relative


class Jail:
    """A home directory that every lookup stays inside."""

    def __init__(self, home: Path, *, use_openat2: bool | None = None) -> None:
        self.home = home
        self.root_fd = os.open(home, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if use_openat2 is None:
            use_openat2 = kernel_has_openat2()
        self.uses_openat2 = use_openat2

    def close(self) -> None:
        """Release the home's descriptor."""

        if self.root_fd >= 0:
            os.close(self.root_fd)
            self.root_fd = -1

    def open(self, client_path: bytes, flags: int, mode: int = 0) -> int:
        """Open what `client_path` names, following symlinks inside the home."""

        relative = normalize(client_path)
        if self.uses_openat2:
            return _openat2(self.root_fd, relative, flags, mode)
        return self._walk(relative, flags, mode)

    def open_path(self, client_path: bytes) -> int:
        """An `O_PATH` descriptor of what `client_path` names (followed)."""

        return self.open(client_path, _PATH_FLAGS)

    @contextmanager
    def parent(self, client_path: bytes) -> Iterator[tuple[int, bytes]]:
        """Yield (directory descriptor, final name) for a no-follow operation.

        The home itself has no parent inside the jail: operations on `/`
        that need one get EPERM, as they would at the top of a chroot.
        """

        relative = normalize(client_path)
        if relative == b".":
            raise OSError(errno.EPERM, "operation not permitted on the home")
        head, name = posixpath.split(relative)
        dir_fd = self.open(head or b".", _PATH_FLAGS | os.O_DIRECTORY)
        try:
            yield dir_fd, name
        finally:
            os.close(dir_fd)

    def client_path_of(self, fd: int) -> bytes:
        """The path of an open descriptor as the client sees it.

        The kernel knows where the descriptor really is; the home's prefix
        is cut off.  Anything not below the home is an error, never a host
        path shown to the client.
        """

        # The home's path is read each time, not kept: an operator may move
        # a home while its user is logged in, and a kept path could then
        # name another directory that took its place.
        inside = _below(_real_path(fd), _real_path(self.root_fd))
        if inside is None:
            raise OSError(errno.ENOENT, "no such file")
        return inside

    def _walk(self, relative: bytes, flags: int, mode: int) -> int:
        """Resolve `relative` one component at a time, never following links.

        `stack` holds a descriptor for every directory passed, so `..` pops
        one (and at the home stays put) instead of asking the kernel.
        """

        pending = [part for part in relative.split(b"/") if part not in (b"", b".")]
        stack = [os.dup(self.root_fd)]
        hops = 0
        try:
            while pending:
                part = pending.pop(0)
                if part == b"..":
                    if len(stack) > 1:
                        os.close(stack.pop())
                    continue

                last = not pending
                target = self._step(stack[-1], part, flags if last else None, mode)
                if isinstance(target, bytes):
                    hops += 1
                    if hops > _MAX_SYMLINK_HOPS:
                        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
                    pending = self._splice(target, pending, stack)
                    continue
                if last:
                    return target
                stack.append(target)

            # The path was the home itself (or climbed back to it).
            return os.open(".", flags | os.O_CLOEXEC, mode, dir_fd=stack[-1])
        finally:
            for fd in stack:
                os.close(fd)

    @staticmethod
    def _step(dir_fd: int, part: bytes, flags: int | None, mode: int) -> int | bytes:
        """Open one component; return its descriptor or a symlink's target."""

        try:
            info = os.stat(part, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            if flags is None or not flags & os.O_CREAT:
                raise
            info = None

        if info is not None and stat.S_ISLNK(info.st_mode):
            if flags is not None and flags & os.O_CREAT and flags & os.O_EXCL:
                # Exclusive creation never goes through a link, as in open(2).
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
            return os.readlink(part, dir_fd=dir_fd)
        if flags is None:
            return os.open(
                part, _PATH_FLAGS | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=dir_fd
            )
        # O_NOFOLLOW turns a symlink swapped in since the stat into ELOOP,
        # never into a file outside the home.
        return os.open(part, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)

    def _splice(
        self, target: bytes, pending: list[bytes], stack: list[int]
    ) -> list[bytes]:
        """Continue the walk through a symlink's target."""

        if target.startswith(b"/"):
            while len(stack) > 1:
                os.close(stack.pop())
        parts = [part for part in target.split(b"/") if part not in (b"", b".")]
        return parts + pending


def _real_path(fd: int) -> bytes:
    """Where an open descriptor really is, as the kernel names it."""

    return os.fsencode(os.readlink(f"/proc/self/fd/{fd}"))


def _below(real: bytes, home: bytes) -> bytes | None:
    """`real` in the client's view of `home`, or None if it is not below it."""

    if real == home:
        return b"/"
    top = home.rstrip(b"/")
    if real.startswith(top + b"/"):
        return real[len(top) :]
    return None
