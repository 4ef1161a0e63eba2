"""SFTP request handlers for one logged-in user, confined to their home.

asyncssh parses the protocol and calls one method here per request.  Each
method reads as the same steps: resolve the path inside the jail, pass the
one permission check (`_require`) at the place the object really is, act
with a descriptor-relative system call on what was resolved, audit the
outcome if the request changes anything.  OS errors travel up to asyncssh,
which maps errno values onto SFTP status codes; their text never contains
a host path because no host path is ever built.

Which permission each operation needs, and in which directory, is a table
(`OPERATIONS`), so a reviewer can see the whole policy in one place; the
permissions themselves live per directory (`sftpjail.permissions`).
Resolving first and checking the resolved place means a symbolic link can
never carry one directory's permissions into another, and acting on the
descriptor that was checked means a link swapped in meanwhile cannot
either.

Quotas (`sftpjail.quota`): every request that grows a file reserves the
growth first, everything that shrinks or removes a file gives it back.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import posixpath
import stat
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncssh
import asyncssh.sftp

from sftpjail.audit import audit
from sftpjail.config import Limits
from sftpjail.jailpath import Jail, client_form, normalize
from sftpjail.permissions import (
    ALL_PERMISSIONS,
    NO_PERMISSION,
    Permission,
    PermissionMap,
    Rule,
    Scope,
    parent_of,
)
from sftpjail.quota import QuotaAccount, QuotaExceededError
from sftpjail.sftp_names import Entry, LongNames

logger = logging.getLogger("sftpjail.sftp")

T = TypeVar("T")

_PARENT = Scope.PARENT
_PATH = Scope.PATH

# What each request needs, and where (see docs/operations.md).  Paths are
# checked where the object really is: after following links for requests
# that follow them (open, opendir, stat, setstat, statvfs), and in the
# resolved directory holding the final name for those that do not.
OPERATIONS: dict[str, Rule] = {
    "open_read": Rule(Permission.DOWNLOAD, _PARENT),
    "open_write": Rule(Permission.UPLOAD, _PARENT),  # creates a new file
    "open_overwrite": Rule(Permission.OVERWRITE, _PARENT),  # an existing one
    "truncate": Rule(Permission.OVERWRITE, _PARENT),
    "opendir": Rule(Permission.LIST, _PATH),
    "setstat": Rule(Permission.CHMOD, _PARENT),
    "remove": Rule(Permission.DELETE, _PARENT),
    "rmdir": Rule(Permission.DELETE, _PARENT),
    "mkdir": Rule(Permission.MKDIR, _PARENT),
    "rename": Rule(Permission.RENAME, _PARENT),  # the source
    "rename_into": Rule(Permission.UPLOAD, _PARENT),  # the destination
    "rename_over": Rule(Permission.OVERWRITE, _PARENT),  # it replaces a file
    "symlink": Rule(Permission.SYMLINK, _PARENT),
    "link": Rule(Permission.SYMLINK, _PARENT),
    # A hard link is a second door to the same file: only for files the
    # user may already read and overwrite where they are.
    "link_source": Rule(Permission.DOWNLOAD | Permission.OVERWRITE, _PARENT),
    # Lookups (stat, lstat, readlink, statvfs) work wherever the user may
    # do anything at all, so an upload-only folder can be entered.
    "stat": Rule(ALL_PERMISSIONS, _PATH, any_of=True),
    # realpath reads nothing; OpenSSH's sftp quits at login without it.
    "realpath": Rule(NO_PERMISSION, _PATH),
}

_WRITE_FLAGS = (
    asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
)
_SPECIAL_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
_DEFAULT_FILE_MODE = 0o666
_DEFAULT_DIR_MODE = 0o777
# A write re-checks its reservation after each wait for the supervisor;
# another channel of the session may have grown the file meanwhile.
_RESERVE_ATTEMPTS = 3
# Opening for write retries when a file appears or vanishes in between.
_OPEN_ATTEMPTS = 3
_NS_PER_SECOND = 10**9


def tune_asyncssh(limits: Limits) -> None:
    """Advertise our per-request limit in `limits@openssh.com` replies.

    asyncssh reads these module constants when it answers, and each worker
    is its own process, so setting them here affects only this server.
    """

    asyncssh.sftp.MAX_SFTP_READ_LEN = limits.max_request_size
    asyncssh.sftp.MAX_SFTP_WRITE_LEN = limits.max_request_size

    # asyncssh swaps an SFTP v3 SYMLINK's two paths into the draft's order
    # unless the client's name says OpenSSH or paramiko.  An empty name
    # matches every client, so asyncssh always hands them over as they came;
    # `JailedSFTPServer.symlink` tells which is which.
    asyncssh.sftp.SFTPServerHandler._nonstandard_symlink_impls = [""]


@dataclass
class SessionStats:
    """What one connection moved and did, for the supervisor's metrics.

    Operation keys are "<operation>:<outcome>": an `OPERATIONS` name or
    "write", and "ok", "refused" (by a permission or a quota) or "failed"
    (by the file system).  `client_packets` counts the SSH packets of
    SFTP data the client sent, requests of every kind: what tells the
    supervisor that a session is in use although it moves nothing.
    """

    bytes_in: int = 0
    bytes_out: int = 0
    operations: Counter[str] = field(default_factory=Counter)
    client_packets: int = 0

    def count(self, operation: str, outcome: str) -> None:
        self.operations[f"{operation}:{outcome}"] += 1


@dataclass(frozen=True)
class SessionContext:
    """Who is logged in, where, and what they may do there."""

    user: str
    connection_id: int
    peer: str
    jail: Jail
    permissions: PermissionMap
    quota: QuotaAccount
    limits: Limits
    stats: SessionStats


@dataclass
class OpenFile:
    """An open file handle and what moved through it.

    `path` is where the file really is, in the client's view.
    """

    fd: int
    path: bytes
    writable: bool
    append: bool
    bytes_read: int = 0
    bytes_written: int = 0
    failure: str | None = None


# The SFTP file type of each kind of inode (used from SFTP v4 on).
_FILE_TYPES = {
    stat.S_IFREG: asyncssh.FILEXFER_TYPE_REGULAR,
    stat.S_IFDIR: asyncssh.FILEXFER_TYPE_DIRECTORY,
    stat.S_IFLNK: asyncssh.FILEXFER_TYPE_SYMLINK,
    stat.S_IFSOCK: asyncssh.FILEXFER_TYPE_SOCKET,
    stat.S_IFCHR: asyncssh.FILEXFER_TYPE_CHAR_DEVICE,
    stat.S_IFBLK: asyncssh.FILEXFER_TYPE_BLOCK_DEVICE,
    stat.S_IFIFO: asyncssh.FILEXFER_TYPE_FIFO,
}


def attributes_of(info: os.stat_result) -> asyncssh.SFTPAttrs:
    """The SFTP attributes of a stat result, without user or group names.

    asyncssh's `SFTPAttrs.from_local` looks up the owner's and the group's
    names for every stat reply and every listed entry.  In the worker's
    sandbox the password and group files are out of reach, so each lookup
    fails and falls back to the number, at a cost that dominated long
    listings.  SFTP v3 sends only the numbers, and the long names of a
    listing come from `format_user` and `format_group`.
    """

    atime, atime_ns = divmod(info.st_atime_ns, _NS_PER_SECOND)
    mtime, mtime_ns = divmod(info.st_mtime_ns, _NS_PER_SECOND)
    ctime, ctime_ns = divmod(info.st_ctime_ns, _NS_PER_SECOND)
    file_type = _FILE_TYPES.get(
        stat.S_IFMT(info.st_mode), asyncssh.FILEXFER_TYPE_SPECIAL
    )
    return asyncssh.SFTPAttrs(
        type=file_type,
        size=info.st_size,
        uid=info.st_uid,
        gid=info.st_gid,
        permissions=info.st_mode,
        atime=atime,
        atime_ns=atime_ns,
        # Linux reports no creation time; asyncssh gives the modification time.
        crtime=mtime,
        crtime_ns=mtime_ns,
        mtime=mtime,
        mtime_ns=mtime_ns,
        ctime=ctime,
        ctime_ns=ctime_ns,
        nlink=info.st_nlink,
    )


class DirectoryListing:
    """An open directory handle; releases its slot when asyncssh drops it.

    asyncssh iterates it for SFTPName records; the batching request loop
    takes the entries themselves (`take`) and encodes them on its own.
    Either way an entry whose metadata cannot be read is left out, as
    OpenSSH leaves it out, and an error reading the directory itself ends
    the listing with that error, reported by asyncssh as a status reply.
    """

    def __init__(self, server: JailedSFTPServer, fd: int, path: bytes) -> None:
        self._server = server
        self._fd = fd
        self._path = path
        self._entries = self._generate()
        self._failure: Exception | None = None
        self._long_names: LongNames | None = None

    def __aiter__(self) -> AsyncIterator[asyncssh.SFTPName]:
        return self

    async def __anext__(self) -> asyncssh.SFTPName:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        entry = next(self._entries, None)
        if entry is None:
            raise StopAsyncIteration
        name, info = entry
        attrs = asyncssh.SFTPAttrs() if info is None else attributes_of(info)
        return asyncssh.SFTPName(name, attrs=attrs)

    def take(self, limit: int) -> list[Entry]:
        """The next `limit` entries or fewer; none once the listing ended.

        When reading the directory fails, none either: the failure waits
        for asyncssh's path, whose next step (`__anext__`) raises it.
        """

        try:
            return list(itertools.islice(self._entries, limit))
        except Exception as error:
            self._failure = error
            return []

    def long_names(self) -> LongNames:
        """Long names for entries of this listing, as the server shows them."""

        if self._long_names is None:
            server = self._server
            self._long_names = LongNames(server.format_user, server.format_group)
        return self._long_names

    def _generate(self) -> Iterator[Entry]:
        yield b".", os.fstat(self._fd)
        yield b"..", self._server.stat_result_quietly(self._path + b"/..")
        with os.scandir(self._fd) as entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    # Removed since the directory was read, or in a
                    # directory that may be read but not searched.
                    continue
                yield os.fsencode(entry.name), info

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
            self._server.open_handles -= 1


class JailedSFTPServer(asyncssh.SFTPServer):
    """The SFTP operations of OpenSSH's sftp-server, inside one jail."""

    def __init__(self, chan: Any, context: SessionContext) -> None:
        super().__init__(chan)
        self.context = context
        self.jail = context.jail
        self.quota = context.quota
        self.stats = context.stats
        self.open_handles = 0
        self._uid = os.getuid()

    # -- the one permission check ---------------------------------------

    def _require(self, operation: str, path: bytes) -> None:
        """Refuse the request unless the user may do `operation` at `path`.

        `path` is where the object really is, in the client's view (see
        `_resolve` and `_entry`); the rule says whether its own
        permissions count or those of the directory holding it.
        """

        rule = OPERATIONS[operation]
        if self.context.permissions.allows(rule, path):
            return
        self.stats.count(operation, "refused")
        audit(
            "sftp.refused",
            **self._who(),
            operation=operation,
            path=path,
        )
        logger.warning("Refused %s of %r for %s.", operation, path, self.context.user)
        where = parent_of(path) if rule.scope is Scope.PARENT else path
        raise asyncssh.SFTPPermissionDenied(
            f"{operation} is not permitted in {os.fsdecode(where)}"
        )

    @contextmanager
    def _resolve(self, path: bytes) -> Iterator[tuple[int, bytes]]:
        """An O_PATH descriptor of what `path` names, links followed, and
        where that is in the client's view."""

        fd = self.jail.open_path(path)
        try:
            yield fd, self.jail.client_path_of(fd)
        finally:
            os.close(fd)

    @contextmanager
    def _entry(self, path: bytes) -> Iterator[tuple[int, bytes, bytes]]:
        """The directory holding `path` (resolved), the final name (not
        followed) and the entry's place in the client's view."""

        with self.jail.parent(path) as (dir_fd, name):
            directory = self.jail.client_path_of(dir_fd)
            yield dir_fd, name, _join(directory, name)

    def _audited(
        self, event: str, operation: str, action: Callable[[], T], **fields: object
    ) -> T:
        """Run a mutating action and write one audit line with its outcome."""

        try:
            result = action()
        except (OSError, asyncssh.SFTPError) as error:
            self.stats.count(operation, "failed")
            audit(event, **self._who(), **fields, outcome=_describe(error))
            raise
        self.stats.count(operation, "ok")
        audit(event, **self._who(), **fields, outcome="ok")
        return result

    def _who(self) -> dict[str, object]:
        return {"connection": self.context.connection_id, "user": self.context.user}

    def _take_handle(self) -> None:
        limit = self.context.limits.max_open_handles
        if self.open_handles >= limit:
            logger.warning(
                "Refused a handle for %s: %d are open.", self.context.user, limit
            )
            raise asyncssh.SFTPFailure(
                f"too many open handles (limit {limit}); close some files first"
            )
        self.open_handles += 1

    @contextmanager
    def _handle_slot(self) -> Iterator[None]:
        """Take a handle slot for the steps inside; give it back if they fail."""

        self._take_handle()
        try:
            yield
        except BaseException:
            self.open_handles -= 1
            raise

    # -- quotas ------------------------------------------------------------

    async def _reserve_bytes(self, nbytes: int, operation: str, path: bytes) -> None:
        try:
            await self.quota.reserve_bytes(nbytes)
        except QuotaExceededError as error:
            raise self._quota_refusal(error, operation, path) from None

    async def _reserve_file(self, path: bytes) -> None:
        try:
            await self.quota.reserve_file()
        except QuotaExceededError as error:
            raise self._quota_refusal(error, "open_write", path) from None

    def _quota_refusal(
        self, error: QuotaExceededError, operation: str, path: bytes
    ) -> asyncssh.SFTPError:
        self.stats.count(operation, "refused")
        audit("sftp.quota_exceeded", **self._who(), path=path, reason=str(error))
        logger.warning("Refused %r for %s: %s", path, self.context.user, error)
        return asyncssh.SFTPQuotaExceeded(str(error))

    def _forget_if_gone(self, fd: int) -> None:
        """Free the quota of a file whose last name was just removed."""

        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink == 0:
            self.quota.freed(nbytes=info.st_size, files=1)

    # -- files -----------------------------------------------------------

    async def open(
        self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs
    ) -> OpenFile:
        flags = _open_flags(pflags)
        if not pflags & _WRITE_FLAGS:
            return self._open_for_reading(path, flags)
        mode = (
            _DEFAULT_FILE_MODE
            if attrs.permissions is None
            else attrs.permissions & 0o777
        )
        reads = bool(pflags & asyncssh.FXF_READ)
        return await self._open_for_writing(path, flags, mode, reads)

    def _open_for_reading(self, path: bytes, flags: int) -> OpenFile:
        # Opening for reading changes nothing (O_NONBLOCK: a FIFO does not
        # block), so the check can follow the open and use what it found.
        fd = self.jail.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            where = self.jail.client_path_of(fd)
            self._require("open_read", where)
            _require_regular(fd)
            os.set_blocking(fd, True)
            self._take_handle()
        except BaseException:
            os.close(fd)
            raise
        self.stats.count("open_read", "ok")
        return OpenFile(fd, where, writable=False, append=False)

    async def _open_for_writing(
        self, path: bytes, flags: int, mode: int, reads: bool
    ) -> OpenFile:
        """Open an existing file (overwrite) or create a new one (upload).

        Which one it is decides the permission, so the file is looked up
        first; creation is exclusive, so a file appearing in between is
        found on the next round instead of being overwritten unchecked.
        """

        for _attempt in range(_OPEN_ATTEMPTS):
            if not flags & os.O_EXCL:
                try:
                    existing = self.jail.open_path(path)
                except FileNotFoundError:
                    if not flags & os.O_CREAT:
                        raise
                else:
                    return self._open_existing(existing, flags, reads)
            try:
                return await self._create(path, flags, mode, reads)
            except FileExistsError:
                if flags & os.O_EXCL:
                    raise
        raise OSError(errno.EEXIST, "the file keeps changing; try again")

    def _open_existing(self, path_fd: int, flags: int, reads: bool) -> OpenFile:
        try:
            where = self.jail.client_path_of(path_fd)
            self._require("open_overwrite", where)
            if reads:
                self._require("open_read", where)
            _require_regular(path_fd)
            with self._handle_slot():
                fd = self._audited(
                    "sftp.open",
                    "open_overwrite",
                    lambda: self._reopen(path_fd, flags),
                    path=where,
                    flags=_describe_flags(flags),
                )
        finally:
            os.close(path_fd)
        return OpenFile(fd, where, True, bool(flags & os.O_APPEND))

    def _reopen(self, path_fd: int, flags: int) -> int:
        """Open the very file `path_fd` names, through its /proc entry."""

        size_before = os.fstat(path_fd).st_size
        flags &= ~(os.O_CREAT | os.O_EXCL)
        fd = os.open(f"/proc/self/fd/{path_fd}", flags | os.O_CLOEXEC | os.O_NOCTTY)
        truncated = size_before - os.fstat(fd).st_size
        self.quota.freed(nbytes=truncated)
        return fd

    async def _create(
        self, path: bytes, flags: int, mode: int, reads: bool
    ) -> OpenFile:
        create = flags | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._entry(path) as (dir_fd, name, where):
            self._require("open_write", where)
            if reads:
                self._require("open_read", where)
            with self._handle_slot():
                await self._reserve_file(where)
                try:
                    fd = self._audited(
                        "sftp.open",
                        "open_write",
                        lambda: os.open(name, create, mode, dir_fd=dir_fd),
                        path=where,
                        flags=_describe_flags(flags | os.O_CREAT),
                        mode=oct(mode),
                    )
                except BaseException:
                    self.quota.freed(files=1)
                    raise
        return OpenFile(fd, where, True, bool(flags & os.O_APPEND))

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        file_obj = _open_file(file_obj)
        size = min(size, self.context.limits.max_request_size)
        data = os.pread(file_obj.fd, size, offset)
        file_obj.bytes_read += len(data)
        self.stats.bytes_out += len(data)
        return data

    async def write(self, file_obj: object, offset: int, data: bytes) -> int:
        file_obj = _open_file(file_obj)
        limit = self.context.limits.max_request_size
        if len(data) > limit:
            logger.warning(
                "Refused a write of %d bytes from %s.", len(data), self.context.user
            )
            size = len(data)
            raise asyncssh.SFTPFailure(
                f"write of {size} bytes is over the {limit} limit"
            )

        if self.quota.limits.bytes is None:
            # No byte quota: nothing to reserve, so no sizes to take.
            self._write_through(file_obj, offset, data)
            return len(data)

        size, growth = _growth(file_obj, offset, len(data))
        for _attempt in range(_RESERVE_ATTEMPTS):
            if self.quota.covers(growth):
                break
            try:
                await self._reserve_bytes(growth, "write", file_obj.path)
            except asyncssh.SFTPQuotaExceeded:
                file_obj.failure = "quota exceeded"
                raise
            size, growth = _growth(file_obj, offset, len(data))
        if not self.quota.covers(growth):
            raise asyncssh.SFTPFailure("the file kept growing; try the write again")

        # From here to the end nothing waits, so no other request can
        # change the file between the sizes taken before and after.
        self.quota.spend(growth)
        try:
            self._write_through(file_obj, offset, data)
        finally:
            self.quota.refund(growth - (os.fstat(file_obj.fd).st_size - size))
        return len(data)

    def _write_through(self, file_obj: OpenFile, offset: int, data: bytes) -> None:
        """Write all of `data` and count it; a full disk gets a clear error."""

        try:
            _write_all(file_obj, offset, data)
        except OSError as error:
            raise self._write_failure(file_obj, error) from None
        file_obj.bytes_written += len(data)
        self.stats.bytes_in += len(data)

    def _write_failure(self, file_obj: OpenFile, error: OSError) -> Exception:
        """A clear error for a full disk; other errors pass unchanged."""

        self.stats.count("write", "failed")
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            return error
        reason = (
            "the server's disk is full"
            if error.errno == errno.ENOSPC
            else "the server's disk quota is exceeded"
        )
        message = (
            f"{reason}; the file keeps what was written before this request; "
            "delete files or try again later"
        )
        if file_obj.failure is None:
            logger.error(
                "A write by %s to %r failed: %s.",
                self.context.user,
                os.fsdecode(file_obj.path),
                reason,
            )
        file_obj.failure = reason
        if error.errno == errno.ENOSPC:
            return asyncssh.SFTPNoSpaceOnFilesystem(message)
        return asyncssh.SFTPQuotaExceeded(message)

    def close(self, file_obj: object) -> None:
        if not isinstance(file_obj, OpenFile):
            return
        os.close(file_obj.fd)
        self.open_handles -= 1
        if file_obj.writable:
            self.quota.settle()
            audit(
                "sftp.close",
                **self._who(),
                path=file_obj.path,
                bytes_read=file_obj.bytes_read,
                bytes_written=file_obj.bytes_written,
                outcome=file_obj.failure or "ok",
            )

    def fstat(self, file_obj: object) -> asyncssh.SFTPAttrs:
        return attributes_of(os.fstat(_open_file(file_obj).fd))

    async def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        file_obj = _open_file(file_obj)
        await self._set_attributes(file_obj.fd, file_obj.path, attrs)

    def fsync(self, file_obj: object) -> None:
        os.fsync(_open_file(file_obj).fd)

    def exit(self) -> None:
        self.quota.settle()
        logger.debug("SFTP session of %s ended.", self.context.user)

    # -- metadata --------------------------------------------------------

    def stat(self, path: bytes) -> asyncssh.SFTPAttrs:
        with self._resolve(path) as (fd, where):
            self._require("stat", where)
            return attributes_of(os.fstat(fd))

    def stat_result_quietly(self, path: bytes) -> os.stat_result | None:
        """The stat result of `path` for a listing, or None if unreadable."""

        try:
            fd = self.jail.open_path(path)
        except OSError:
            return None
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def lstat(self, path: bytes) -> asyncssh.SFTPAttrs:
        if normalize(path) == b".":
            self._require("stat", b"/")
            return attributes_of(os.fstat(self.jail.root_fd))
        with self._entry(path) as (dir_fd, name, where):
            self._require("stat", where)
            return attributes_of(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))

    async def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        with self._resolve(path) as (fd, where):
            await self._set_attributes(fd, where, attrs)

    async def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        if normalize(path) != b".":
            with self._entry(path) as (dir_fd, name, where):
                info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if stat.S_ISLNK(info.st_mode):
                    self._require("setstat", where)
                    self._audited(
                        "sftp.setstat",
                        "setstat",
                        lambda: _set_link_times(dir_fd, name, attrs, info),
                        path=where,
                        **_describe_attrs(attrs),
                    )
                    return
        await self.setstat(path, attrs)

    async def _set_attributes(
        self, fd: int, where: bytes, attrs: asyncssh.SFTPAttrs
    ) -> None:
        """Apply size, mode and times through a descriptor, never by path."""

        info = os.fstat(fd)
        _refuse_owner_change(attrs, info)
        if attrs.size is not None:
            self._require("truncate", where)
        if attrs.permissions is not None or attrs.mtime is not None:
            self._require("setstat", where)
        if attrs.permissions is not None and attrs.permissions & _SPECIAL_MODE_BITS:
            raise asyncssh.SFTPPermissionDenied(
                "setuid, setgid and sticky bits are not allowed"
            )

        growth = 0
        if attrs.size is not None and stat.S_ISREG(info.st_mode):
            growth = max(0, attrs.size - info.st_size)
            await self._reserve_bytes(growth, "truncate", where)
            self.quota.spend(growth)

        def act() -> None:
            if attrs.size is not None:
                self._truncate(fd, attrs.size, growth)
            proc_path = f"/proc/self/fd/{fd}"
            if attrs.permissions is not None:
                os.chmod(proc_path, attrs.permissions & 0o777)
            if attrs.atime is not None and attrs.mtime is not None:
                os.utime(proc_path, ns=_times_ns(attrs))

        try:
            self._audited(
                "sftp.setstat", "setstat", act, path=where, **_describe_attrs(attrs)
            )
        except BaseException:
            self.quota.refund(growth)
            raise

    def _truncate(self, fd: int, size: int, reserved: int) -> None:
        """Set a regular file's size, settling the quota with what changed."""

        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise asyncssh.SFTPFailure("only regular files can be truncated")
        # The descriptor may be O_PATH or read-only; its /proc entry opens
        # the very same file for writing.
        writable = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            before = os.fstat(writable).st_size
            os.ftruncate(writable, size)
            after = os.fstat(writable).st_size
        finally:
            os.close(writable)
        self.quota.refund(reserved - max(0, after - before))
        self.quota.freed(nbytes=max(0, before - after))

    def statvfs(self, path: bytes) -> os.statvfs_result:
        with self._resolve(path) as (fd, where):
            self._require("stat", where)
            return os.statvfs(fd)

    def fstatvfs(self, file_obj: object) -> os.statvfs_result:
        return os.statvfs(_open_file(file_obj).fd)

    def realpath(self, path: bytes) -> bytes:
        """The canonical path in the client's namespace; the last part may be new."""

        canonical = self._canonical(path)
        self._require("realpath", canonical)
        return canonical

    def _canonical(self, path: bytes) -> bytes:
        """Resolve the longest part of `path` that exists; append the rest."""

        existing = normalize(path)
        missing: list[bytes] = []
        while True:
            try:
                fd = self.jail.open_path(client_form(existing))
                break
            except FileNotFoundError:
                if existing == b".":
                    raise
                existing, name = os.path.split(existing)
                existing = existing or b"."
                missing.append(name)
        try:
            canonical = self.jail.client_path_of(fd)
        finally:
            os.close(fd)
        for name in reversed(missing):
            canonical = _join(canonical, name)
        return canonical

    def readlink(self, path: bytes) -> bytes:
        with self._entry(path) as (dir_fd, name, where):
            self._require("stat", where)
            return os.readlink(name, dir_fd=dir_fd)

    def format_user(self, uid: int | None) -> str:
        return self.context.user if uid == self._uid else str(uid or "")

    def format_group(self, gid: int | None) -> str:
        return self.context.user if gid == os.getgid() else str(gid or "")

    # -- directories -----------------------------------------------------

    def scandir(self, path: bytes) -> DirectoryListing:
        # Opened here, not lazily, so a missing directory fails the opendir
        # request itself, which is where every client expects the error.
        fd = self.jail.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            where = self.jail.client_path_of(fd)
            self._require("opendir", where)
            self._take_handle()
        except BaseException:
            os.close(fd)
            raise
        self.stats.count("opendir", "ok")
        return DirectoryListing(self, fd, where)

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        mode = (
            _DEFAULT_DIR_MODE
            if attrs.permissions is None
            else attrs.permissions & 0o777
        )
        with self._entry(path) as (dir_fd, name, where):
            self._require("mkdir", where)
            self._audited(
                "sftp.mkdir",
                "mkdir",
                lambda: os.mkdir(name, mode, dir_fd=dir_fd),
                path=where,
                mode=oct(mode),
            )

    def rmdir(self, path: bytes) -> None:
        with self._entry(path) as (dir_fd, name, where):
            self._require("rmdir", where)
            self._audited(
                "sftp.rmdir",
                "rmdir",
                lambda: os.rmdir(name, dir_fd=dir_fd),
                path=where,
            )

    def remove(self, path: bytes) -> None:
        with self._entry(path) as (dir_fd, name, where):
            self._require("remove", where)
            self._audited(
                "sftp.remove",
                "remove",
                lambda: self._unlink(dir_fd, name),
                path=where,
            )

    def _unlink(self, dir_fd: int, name: bytes) -> None:
        # Holding the file while removing its name tells exactly whether
        # this was its last name, and so whether its quota is free now.
        victim = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.unlink(name, dir_fd=dir_fd)
            self._forget_if_gone(victim)
        finally:
            os.close(victim)

    # -- names and links ---------------------------------------------------

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """SFTP v3 rename: fails if the new name exists, like OpenSSH."""

        self._rename(oldpath, newpath, replace=False)

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        """posix-rename@openssh.com: atomically replaces the new name."""

        self._rename(oldpath, newpath, replace=True)

    def _rename(self, oldpath: bytes, newpath: bytes, *, replace: bool) -> None:
        with self._entry(oldpath) as (old_dir, old_name, old_where):
            with self._entry(newpath) as (new_dir, new_name, new_where):
                self._require("rename", old_where)
                self._require("rename_into", new_where)
                replaced = _open_entry(new_dir, new_name) if replace else None
                try:
                    if replaced is not None:
                        self._require("rename_over", new_where)
                    self._audited(
                        "sftp.rename",
                        "rename",
                        lambda: _move(
                            old_dir, old_name, new_dir, new_name, replaced is not None
                        ),
                        old=old_where,
                        new=new_where,
                    )
                    if replaced is not None:
                        self._forget_if_gone(replaced)
                finally:
                    if replaced is not None:
                        os.close(replaced)

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        """Create a link pointing at a target, stored as the user wrote it.

        The paths come as the client sent them (see `tune_asyncssh`), and
        `_target_and_link` tells which is which.  Every lookup resolves
        links inside the home, so any target is safe to follow; targets
        that climb above the home are still refused so that tools on the
        host which follow links never leave it either.
        """

        oldpath, newpath = self._target_and_link(oldpath, newpath)
        with self._entry(newpath) as (dir_fd, name, where):
            self._require("symlink", where)

            def act() -> None:
                _check_link_target(oldpath, where)
                os.symlink(oldpath, name, dir_fd=dir_fd)

            self._audited("sftp.symlink", "symlink", act, target=oldpath, path=where)

    def _target_and_link(self, first: bytes, second: bytes) -> tuple[bytes, bytes]:
        """The target and the link path of an SFTP v3 SYMLINK, in that order.

        OpenSSH's server reads the target first, and nearly every client
        sends that order (OpenSSH, paramiko, libssh2, Go's pkg/sftp, JSch,
        PuTTY and FileZilla).  The SFTP v3 draft puts the link first, and
        asyncssh's client, libssh and WinSCP send that to servers they do
        not know as OpenSSH.  Both lists go by the client's SSH version
        string.  For a client in neither, the file system decides: a link
        can only be made where nothing is, so when the would-be link names
        an entry and the would-be target (read from the link's directory)
        none, the client meant the other order.  (SFTP v4 and later fixed
        the order; this server speaks v3 only.)
        """

        client = str(self.channel.get_extra_info("client_version", "")).lower()
        if any(name in client for name in _LINK_FIRST_CLIENTS):
            return second, first
        if any(name in client for name in _TARGET_FIRST_CLIENTS):
            return first, second
        target, link = first, second
        if self._names_an_entry(link) and not self._names_an_entry(
            _seen_from(link, target)
        ):
            target, link = link, target
        return target, link

    def _names_an_entry(self, path: bytes) -> bool:
        """Whether `path` names something in the home (links not followed)."""

        try:
            with self._entry(path) as (dir_fd, name, _where):
                os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except (OSError, asyncssh.SFTPError):
            return False
        return True

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        with self._entry(oldpath) as (old_dir, old_name, old_where):
            with self._entry(newpath) as (new_dir, new_name, new_where):
                self._require("link_source", old_where)
                self._require("link", new_where)
                self._audited(
                    "sftp.link",
                    "link",
                    lambda: os.link(
                        old_name,
                        new_name,
                        src_dir_fd=old_dir,
                        dst_dir_fd=new_dir,
                        follow_symlinks=False,
                    ),
                    target=old_where,
                    path=new_where,
                )


# Clients that send an SFTP v3 SYMLINK's link path first, as the draft
# does, to a server other than OpenSSH, by their SSH version strings in
# lower case ("libssh_" is libssh; libssh2 names itself "libssh2_").
_LINK_FIRST_CLIENTS = ("asyncssh", "winscp", "libssh_")

# Clients known to send the target first, as OpenSSH's server expects.
_TARGET_FIRST_CLIENTS = (
    "openssh",
    "paramiko",
    "libssh2_",
    "-go",
    "jsch",
    "putty",
    "filezilla",
)


def _seen_from(link: bytes, target: bytes) -> bytes:
    """Where a link's target leads, as a path: relative ones start at the link."""

    if target.startswith(b"/"):
        return target
    return posixpath.join(posixpath.dirname(link), target)


def _join(directory: bytes, name: bytes) -> bytes:
    return directory.rstrip(b"/") + b"/" + name


def _require_regular(fd: int) -> None:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        raise asyncssh.SFTPFailure("not a regular file")


def _open_entry(dir_fd: int, name: bytes) -> int | None:
    """An O_PATH descriptor of the entry itself (links not followed), if any."""

    try:
        return os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _growth(file_obj: OpenFile, offset: int, length: int) -> tuple[int, int]:
    """The file's size now, and how much a write would grow it."""

    size = os.fstat(file_obj.fd).st_size
    end = (size if file_obj.append else offset) + length
    return size, max(0, end - size)


def _write_all(file_obj: OpenFile, offset: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        if file_obj.append:
            written = os.write(file_obj.fd, view)
        else:
            written = os.pwrite(file_obj.fd, view, offset)
        offset += written
        view = view[written:]


def _move(
    old_dir: int, old_name: bytes, new_dir: int, new_name: bytes, replace: bool
) -> None:
    if replace:
        os.rename(old_name, new_name, src_dir_fd=old_dir, dst_dir_fd=new_dir)
    else:
        _rename_no_replace(old_dir, old_name, new_dir, new_name)


def _set_link_times(
    dir_fd: int, name: bytes, attrs: asyncssh.SFTPAttrs, info: os.stat_result
) -> None:
    _refuse_owner_change(attrs, info)
    if attrs.permissions is not None:
        raise OSError(errno.EOPNOTSUPP, "symbolic links have no mode of their own")
    if attrs.atime is not None and attrs.mtime is not None:
        os.utime(name, ns=_times_ns(attrs), dir_fd=dir_fd, follow_symlinks=False)


def _open_file(file_obj: object) -> OpenFile:
    """asyncssh hands back whatever `open` returned; check it is ours."""

    if not isinstance(file_obj, OpenFile):
        raise asyncssh.SFTPInvalidHandle("invalid file handle")
    return file_obj


def _open_flags(pflags: int) -> int:
    """Translate SFTP v3 open flags into open(2) flags."""

    reads = bool(pflags & asyncssh.FXF_READ)
    writes = bool(pflags & _WRITE_FLAGS)
    if reads and writes:
        flags = os.O_RDWR
    elif writes:
        flags = os.O_WRONLY
    else:
        flags = os.O_RDONLY

    if pflags & asyncssh.FXF_APPEND:
        flags |= os.O_APPEND
    if pflags & asyncssh.FXF_CREAT:
        flags |= os.O_CREAT
        if pflags & asyncssh.FXF_EXCL:
            flags |= os.O_EXCL
    if pflags & asyncssh.FXF_TRUNC:
        flags |= os.O_TRUNC
    return flags


def _describe_flags(flags: int) -> str:
    names = [
        ("O_WRONLY", os.O_WRONLY),
        ("O_RDWR", os.O_RDWR),
        ("O_APPEND", os.O_APPEND),
    ]
    names += [("O_CREAT", os.O_CREAT), ("O_EXCL", os.O_EXCL), ("O_TRUNC", os.O_TRUNC)]
    return "|".join(name for name, bit in names if flags & bit) or "O_RDONLY"


def _describe_attrs(attrs: asyncssh.SFTPAttrs) -> dict[str, object]:
    fields: dict[str, object] = {}
    if attrs.permissions is not None:
        fields["mode"] = oct(attrs.permissions)
    if attrs.size is not None:
        fields["size"] = attrs.size
    if attrs.mtime is not None:
        fields["mtime"] = attrs.mtime
    return fields


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if isinstance(error, asyncssh.SFTPError):
        return str(error.reason)
    return str(error)


def _times_ns(attrs: asyncssh.SFTPAttrs) -> tuple[int, int]:
    atime = int(attrs.atime or 0) * 10**9 + int(attrs.atime_ns or 0)
    mtime = int(attrs.mtime or 0) * 10**9 + int(attrs.mtime_ns or 0)
    return atime, mtime


def _refuse_owner_change(attrs: asyncssh.SFTPAttrs, info: os.stat_result) -> None:
    """Owner and group may be re-sent unchanged (some clients do); never changed."""

    if attrs.uid is not None and attrs.uid != info.st_uid:
        raise asyncssh.SFTPPermissionDenied("changing the owner is not allowed")
    if attrs.gid is not None and attrs.gid != info.st_gid:
        raise asyncssh.SFTPPermissionDenied("changing the group is not allowed")


def _check_link_target(target: bytes, link_path: bytes) -> None:
    if not target or b"\0" in target:
        raise OSError(errno.EINVAL, "invalid link target")
    if target.startswith(b"/"):
        return
    depth = normalize(link_path).count(b"/")
    level = depth
    for part in target.split(b"/"):
        if part == b"..":
            level -= 1
            if level < 0:
                raise asyncssh.SFTPPermissionDenied(
                    "link target points outside your home"
                )
        elif part not in (b"", b"."):
            level += 1


_RENAME_NOREPLACE = 1
_libc_renameat2: Callable[..., int] | None
try:
    import ctypes

    _libc = ctypes.CDLL(None, use_errno=True)
    _libc_renameat2 = _libc.renameat2
except (OSError, AttributeError):
    _libc_renameat2 = None


def _rename_no_replace(
    old_dir: int, old_name: bytes, new_dir: int, new_name: bytes
) -> None:
    """rename(2) that fails with EEXIST instead of replacing the target."""

    if _libc_renameat2 is not None:
        result = _libc_renameat2(
            old_dir, old_name, new_dir, new_name, _RENAME_NOREPLACE
        )
        if result == 0:
            return
        code = ctypes.get_errno()
        if code not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(code, os.strerror(code))

    # The file system cannot rename without replacing: check, then rename.
    # XXX Is a racing creation of `new_name` by the same user worth a lock?
    try:
        os.stat(new_name, dir_fd=new_dir, follow_symlinks=False)
    except FileNotFoundError:
        os.rename(old_name, new_name, src_dir_fd=old_dir, dst_dir_fd=new_dir)
        return
    raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
