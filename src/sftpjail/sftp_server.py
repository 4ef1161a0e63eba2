"""SFTP request handlers for one logged-in user, confined to their home.

asyncssh parses the protocol and calls one method here per request.  Each
method reads as the same steps: resolve the path inside the jail, pass the
one permission check (`_require`), act with a descriptor-relative system
call, audit the outcome if the request changes anything.  OS errors travel
up to asyncssh, which maps errno values onto SFTP status codes; their text
never contains a host path because no host path is ever built.

Which permission each operation needs is a table (`OPERATIONS`), so a
reviewer can see the whole policy in one place.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import asyncssh
import asyncssh.sftp

from sftpjail.audit import audit
from sftpjail.config import Limits
from sftpjail.jailpath import Jail, client_form, normalize

logger = logging.getLogger("sftpjail.sftp")

T = TypeVar("T")


class Permission(enum.Flag):
    """What a user may do; read-only users hold LIST and DOWNLOAD only."""

    LIST = enum.auto()
    DOWNLOAD = enum.auto()
    UPLOAD = enum.auto()
    OVERWRITE = enum.auto()
    DELETE = enum.auto()
    RENAME = enum.auto()
    MKDIR = enum.auto()
    SYMLINK = enum.auto()
    CHMOD = enum.auto()


NO_PERMISSION = Permission(0)
ALL_PERMISSIONS = Permission(sum(member.value for member in Permission))
READ_ONLY_PERMISSIONS = Permission.LIST | Permission.DOWNLOAD

# The permission each request needs.  Metadata lookups (stat, realpath,
# readlink, statvfs) need none: clients cannot work without them and they
# reveal nothing outside the home.
OPERATIONS: dict[str, Permission] = {
    "open_read": Permission.DOWNLOAD,
    "open_write": Permission.UPLOAD,
    "opendir": Permission.LIST,
    "setstat": Permission.CHMOD,
    "truncate": Permission.OVERWRITE,
    "remove": Permission.DELETE,
    "rmdir": Permission.DELETE,
    "mkdir": Permission.MKDIR,
    "rename": Permission.RENAME,
    "symlink": Permission.SYMLINK,
    "link": Permission.SYMLINK,
    "stat": NO_PERMISSION,
}

_WRITE_FLAGS = (
    asyncssh.FXF_WRITE | asyncssh.FXF_APPEND | asyncssh.FXF_CREAT | asyncssh.FXF_TRUNC
)
_SPECIAL_MODE_BITS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX
_DEFAULT_FILE_MODE = 0o666
_DEFAULT_DIR_MODE = 0o777


def tune_asyncssh(limits: Limits) -> None:
    """Advertise our per-request limit in `limits@openssh.com` replies.

    asyncssh reads these module constants when it answers, and each worker
    is its own process, so setting them here affects only this server.
    """

    asyncssh.sftp.MAX_SFTP_READ_LEN = limits.max_request_size
    asyncssh.sftp.MAX_SFTP_WRITE_LEN = limits.max_request_size


@dataclass(frozen=True)
class SessionContext:
    """Who is logged in, where, and under which limits."""

    user: str
    connection_id: int
    peer: str
    jail: Jail
    read_only: bool
    limits: Limits

    @property
    def permissions(self) -> Permission:
        return READ_ONLY_PERMISSIONS if self.read_only else ALL_PERMISSIONS


@dataclass
class OpenFile:
    """An open file handle and what moved through it."""

    fd: int
    path: bytes
    writable: bool
    append: bool
    bytes_read: int = 0
    bytes_written: int = 0


class DirectoryListing:
    """An open directory handle; releases its slot when asyncssh drops it."""

    def __init__(self, server: JailedSFTPServer, fd: int, path: bytes) -> None:
        self._server = server
        self._fd = fd
        self._path = path
        self._names = self._generate()

    def __aiter__(self) -> AsyncIterator[asyncssh.SFTPName]:
        return self

    async def __anext__(self) -> asyncssh.SFTPName:
        return await self._names.__anext__()

    async def _generate(self) -> AsyncIterator[asyncssh.SFTPName]:
        yield asyncssh.SFTPName(
            b".", attrs=asyncssh.SFTPAttrs.from_local(os.fstat(self._fd))
        )
        parent = self._server.stat_quietly(self._path + b"/..")
        yield asyncssh.SFTPName(b"..", attrs=parent)
        with os.scandir(self._fd) as entries:
            for entry in entries:
                attrs = asyncssh.SFTPAttrs.from_local(entry.stat(follow_symlinks=False))
                yield asyncssh.SFTPName(os.fsencode(entry.name), attrs=attrs)

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
        self.open_handles = 0
        self._uid = os.getuid()

    # -- the one permission check ---------------------------------------

    def _require(self, operation: str, path: bytes) -> None:
        """Refuse the request unless the user holds the permission it needs."""

        needed = OPERATIONS[operation]
        if needed in self.context.permissions:
            return
        audit(
            "sftp.refused",
            connection=self.context.connection_id,
            user=self.context.user,
            operation=operation,
            path=path,
        )
        logger.warning("Refused %s of %r for %s.", operation, path, self.context.user)
        raise asyncssh.SFTPPermissionDenied(f"{operation} is not permitted here")

    def _audited(self, event: str, action: Callable[[], T], **fields: object) -> T:
        """Run a mutating action and write one audit line with its outcome."""

        try:
            result = action()
        except (OSError, asyncssh.SFTPError) as error:
            audit(event, **self._who(), **fields, outcome=_describe(error))
            raise
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

    # -- files -----------------------------------------------------------

    def open(self, path: bytes, pflags: int, attrs: asyncssh.SFTPAttrs) -> OpenFile:
        writes = bool(pflags & _WRITE_FLAGS)
        self._require("open_write" if writes else "open_read", path)
        flags = _open_flags(pflags)
        mode = (
            _DEFAULT_FILE_MODE
            if attrs.permissions is None
            else attrs.permissions & 0o777
        )

        self._take_handle()
        try:
            fd = self._open_regular(path, flags, mode, writes)
        except BaseException:
            self.open_handles -= 1
            raise
        return OpenFile(fd, path, writes, bool(flags & os.O_APPEND))

    def _open_regular(self, path: bytes, flags: int, mode: int, writes: bool) -> int:
        """Open a regular file; never block on a FIFO or touch a device."""

        def act() -> int:
            fd = self.jail.open(path, flags | os.O_NONBLOCK | os.O_NOCTTY, mode)
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise asyncssh.SFTPFailure("not a regular file")
            os.set_blocking(fd, True)
            return fd

        if not writes:
            return act()
        return self._audited(
            "sftp.open", act, path=path, flags=_describe_flags(flags), mode=oct(mode)
        )

    def read(self, file_obj: object, offset: int, size: int) -> bytes:
        file_obj = _open_file(file_obj)
        size = min(size, self.context.limits.max_request_size)
        data = os.pread(file_obj.fd, size, offset)
        file_obj.bytes_read += len(data)
        return data

    def write(self, file_obj: object, offset: int, data: bytes) -> int:
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
        view = memoryview(data)
        while view:
            if file_obj.append:
                written = os.write(file_obj.fd, view)
            else:
                written = os.pwrite(file_obj.fd, view, offset)
            offset += written
            view = view[written:]
        file_obj.bytes_written += len(data)
        return len(data)

    def close(self, file_obj: object) -> None:
        if not isinstance(file_obj, OpenFile):
            return
        os.close(file_obj.fd)
        self.open_handles -= 1
        if file_obj.writable:
            audit(
                "sftp.close",
                **self._who(),
                path=file_obj.path,
                bytes_read=file_obj.bytes_read,
                bytes_written=file_obj.bytes_written,
                outcome="ok",
            )

    def fstat(self, file_obj: object) -> os.stat_result:
        return os.fstat(_open_file(file_obj).fd)

    def fsetstat(self, file_obj: object, attrs: asyncssh.SFTPAttrs) -> None:
        file_obj = _open_file(file_obj)
        self._require("setstat", file_obj.path)
        self._audited(
            "sftp.setstat",
            lambda: self._apply_attrs(
                file_obj.fd, f"/proc/self/fd/{file_obj.fd}", attrs
            ),
            path=file_obj.path,
            **_describe_attrs(attrs),
        )

    def fsync(self, file_obj: object) -> None:
        os.fsync(_open_file(file_obj).fd)

    def exit(self) -> None:
        logger.debug("SFTP session of %s ended.", self.context.user)

    # -- metadata --------------------------------------------------------

    def stat(self, path: bytes) -> os.stat_result:
        fd = self.jail.open_path(path)
        try:
            return os.fstat(fd)
        finally:
            os.close(fd)

    def stat_quietly(self, path: bytes) -> asyncssh.SFTPAttrs:
        """Attributes of `path`, or empty ones if it cannot be read."""

        try:
            return asyncssh.SFTPAttrs.from_local(self.stat(path))
        except OSError:
            return asyncssh.SFTPAttrs()

    def lstat(self, path: bytes) -> os.stat_result:
        if normalize(path) == b".":
            return os.fstat(self.jail.root_fd)
        with self.jail.parent(path) as (dir_fd, name):
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)

    def setstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self._require("setstat", path)

        def act() -> None:
            fd = self.jail.open_path(path)
            try:
                # An O_PATH descriptor cannot be chmod-ed directly; its /proc
                # entry names exactly the object openat2 resolved in the jail.
                self._apply_attrs(None, f"/proc/self/fd/{fd}", attrs, path_fd=fd)
            finally:
                os.close(fd)

        self._audited("sftp.setstat", act, path=path, **_describe_attrs(attrs))

    def lsetstat(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self._require("setstat", path)

        def act() -> None:
            info = self.lstat(path)
            if not stat.S_ISLNK(info.st_mode):
                self.setstat(path, attrs)
                return
            _refuse_owner_change(attrs, info)
            if attrs.permissions is not None:
                raise OSError(
                    errno.EOPNOTSUPP, "symbolic links have no mode of their own"
                )
            with self.jail.parent(path) as (dir_fd, name):
                if attrs.atime is not None and attrs.mtime is not None:
                    os.utime(
                        name, ns=_times_ns(attrs), dir_fd=dir_fd, follow_symlinks=False
                    )

        self._audited("sftp.setstat", act, path=path, **_describe_attrs(attrs))

    def _apply_attrs(
        self,
        fd: int | None,
        proc_path: str,
        attrs: asyncssh.SFTPAttrs,
        path_fd: int | None = None,
    ) -> None:
        """Apply mode, times and size through a descriptor, never by path."""

        info = os.fstat(fd if fd is not None else path_fd)  # type: ignore[arg-type]
        _refuse_owner_change(attrs, info)

        if attrs.size is not None:
            self._truncate(fd, proc_path, attrs.size, info)
        if attrs.permissions is not None:
            if attrs.permissions & _SPECIAL_MODE_BITS:
                raise asyncssh.SFTPPermissionDenied(
                    "setuid, setgid and sticky bits are not allowed"
                )
            os.chmod(proc_path, attrs.permissions & 0o777)
        if attrs.atime is not None and attrs.mtime is not None:
            os.utime(proc_path, ns=_times_ns(attrs))

    def _truncate(
        self, fd: int | None, proc_path: str, size: int, info: os.stat_result
    ) -> None:
        if OPERATIONS["truncate"] not in self.context.permissions:
            raise asyncssh.SFTPPermissionDenied("truncate is not permitted here")
        if not stat.S_ISREG(info.st_mode):
            raise asyncssh.SFTPFailure("only regular files can be truncated")
        if fd is not None:
            os.ftruncate(fd, size)
            return
        writable = os.open(proc_path, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            os.ftruncate(writable, size)
        finally:
            os.close(writable)

    def statvfs(self, path: bytes) -> os.statvfs_result:
        fd = self.jail.open_path(path)
        try:
            return os.statvfs(fd)
        finally:
            os.close(fd)

    def fstatvfs(self, file_obj: object) -> os.statvfs_result:
        return os.statvfs(_open_file(file_obj).fd)

    def realpath(self, path: bytes) -> bytes:
        """The canonical path in the client's namespace; the last part may be new."""

        try:
            fd = self.jail.open_path(path)
        except FileNotFoundError:
            relative = normalize(path)
            head, name = os.path.split(relative)
            parent = self.realpath(client_form(head or b"."))
            return parent.rstrip(b"/") + b"/" + name
        try:
            return self.jail.client_path_of(fd)
        finally:
            os.close(fd)

    def readlink(self, path: bytes) -> bytes:
        with self.jail.parent(path) as (dir_fd, name):
            return os.readlink(name, dir_fd=dir_fd)

    def format_user(self, uid: int | None) -> str:
        return self.context.user if uid == self._uid else str(uid or "")

    def format_group(self, gid: int | None) -> str:
        return self.context.user if gid == os.getgid() else str(gid or "")

    # -- directories -----------------------------------------------------

    def scandir(self, path: bytes) -> DirectoryListing:
        # Opened here, not lazily, so a missing directory fails the opendir
        # request itself, which is where every client expects the error.
        self._require("opendir", path)
        self._take_handle()
        try:
            fd = self.jail.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except BaseException:
            self.open_handles -= 1
            raise
        return DirectoryListing(self, fd, path)

    def mkdir(self, path: bytes, attrs: asyncssh.SFTPAttrs) -> None:
        self._require("mkdir", path)
        mode = (
            _DEFAULT_DIR_MODE
            if attrs.permissions is None
            else attrs.permissions & 0o777
        )

        def act() -> None:
            with self.jail.parent(path) as (dir_fd, name):
                os.mkdir(name, mode, dir_fd=dir_fd)

        self._audited("sftp.mkdir", act, path=path, mode=oct(mode))

    def rmdir(self, path: bytes) -> None:
        self._require("rmdir", path)

        def act() -> None:
            with self.jail.parent(path) as (dir_fd, name):
                os.rmdir(name, dir_fd=dir_fd)

        self._audited("sftp.rmdir", act, path=path)

    def remove(self, path: bytes) -> None:
        self._require("remove", path)

        def act() -> None:
            with self.jail.parent(path) as (dir_fd, name):
                os.unlink(name, dir_fd=dir_fd)

        self._audited("sftp.remove", act, path=path)

    # -- names and links ---------------------------------------------------

    def rename(self, oldpath: bytes, newpath: bytes) -> None:
        """SFTP v3 rename: fails if the new name exists, like OpenSSH."""

        self._require("rename", oldpath)
        self._audited(
            "sftp.rename",
            lambda: self._rename(oldpath, newpath, replace=False),
            old=oldpath,
            new=newpath,
        )

    def posix_rename(self, oldpath: bytes, newpath: bytes) -> None:
        """posix-rename@openssh.com: atomically replaces the new name."""

        self._require("rename", oldpath)
        self._audited(
            "sftp.rename",
            lambda: self._rename(oldpath, newpath, replace=True),
            old=oldpath,
            new=newpath,
        )

    def _rename(self, oldpath: bytes, newpath: bytes, *, replace: bool) -> None:
        with self.jail.parent(oldpath) as (old_dir, old_name):
            with self.jail.parent(newpath) as (new_dir, new_name):
                if replace:
                    os.rename(
                        old_name, new_name, src_dir_fd=old_dir, dst_dir_fd=new_dir
                    )
                else:
                    _rename_no_replace(old_dir, old_name, new_dir, new_name)

    def symlink(self, oldpath: bytes, newpath: bytes) -> None:
        """Create `newpath` pointing at `oldpath`, stored as the user wrote it.

        Every lookup resolves links inside the home, so any target is safe
        to follow; targets that climb above the home are still refused so
        that tools on the host which follow links never leave it either.
        """

        self._require("symlink", newpath)

        def act() -> None:
            _check_link_target(oldpath, newpath)
            with self.jail.parent(newpath) as (dir_fd, name):
                os.symlink(oldpath, name, dir_fd=dir_fd)

        self._audited("sftp.symlink", act, target=oldpath, path=newpath)

    def link(self, oldpath: bytes, newpath: bytes) -> None:
        self._require("link", newpath)

        def act() -> None:
            with self.jail.parent(oldpath) as (old_dir, old_name):
                with self.jail.parent(newpath) as (new_dir, new_name):
                    os.link(
                        old_name,
                        new_name,
                        src_dir_fd=old_dir,
                        dst_dir_fd=new_dir,
                        follow_symlinks=False,
                    )

        self._audited("sftp.link", act, target=oldpath, path=newpath)


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
