"""Users' home directories below data_dir, created without following links.

Theory of operation: a home is named relative to data_dir ("alice",
"team/alice").  Every directory inside data_dir may have been touched by a
user, so none of them is reached by path: the walk starts from a descriptor
of data_dir and enters one component at a time with O_NOFOLLOW|O_DIRECTORY
relative to the previous descriptor.  A component that is a symbolic link,
or not a directory, stops the walk with an error naming it, and nothing is
created past it.  Modes and owners are set through the descriptor of the
directory itself, never through a path that could be swapped meanwhile.

data_dir itself comes from the operator's configuration and is trusted,
links included (it may well live on another disk).

Modes: data_dir and the directories between it and a home are 0711, so the
service user can pass through them but cannot list who else has a home;
the home is 0700 and belongs to the account the worker runs as.
"""

from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

from sftpjail.errors import HomeError

DATA_DIR_MODE = 0o711
PASSAGE_MODE = 0o711
HOME_MODE = 0o700

_MAX_COMPONENT_BYTES = 255
_OPEN_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC


def relative_home_problem(home: str) -> str | None:
    """Say what is wrong with a home path relative to data_dir, or None."""

    if not home:
        return "is empty"
    if "\0" in home:
        return "contains a NUL byte"
    if any(ord(character) < 0x20 or character == "\x7f" for character in home):
        return "contains a control character"
    if home.startswith("/"):
        return "must be relative to data_dir, not an absolute path"
    components = home.split("/")
    if ".." in components:
        return 'must not contain ".."'
    if posixpath.normpath(home) == ".":
        return "must name a directory below data_dir, not data_dir itself"
    if posixpath.normpath(home) != home:
        return f'is not in normal form; write it as "{posixpath.normpath(home)}"'
    if any(len(part.encode()) > _MAX_COMPONENT_BYTES for part in components):
        return f"has a component longer than {_MAX_COMPONENT_BYTES} bytes"
    return None


def ensure_home(
    data_dir: Path, relative_home: str, owner: tuple[int, int] | None
) -> Path:
    """Create data_dir and the home below it if missing; return the home.

    `owner` is (uid, gid) for the home when given; it is applied even when
    the home already exists.  Raises HomeError naming the first component
    that is a symbolic link or not a directory.
    """

    problem = relative_home_problem(relative_home)
    if problem is not None:
        raise HomeError(f'home "{relative_home}" {problem}')
    data_dir = Path(os.path.abspath(data_dir))

    directory = _open_data_dir(data_dir)
    try:
        components = relative_home.split("/")
        for depth, name in enumerate(components):
            is_home = depth == len(components) - 1
            where = data_dir.joinpath(*components[: depth + 1])
            child = _enter(
                directory, name, HOME_MODE if is_home else PASSAGE_MODE, where
            )
            os.close(directory)
            directory = child

        if owner is not None:
            _change_owner(directory, owner, data_dir / relative_home)
    finally:
        os.close(directory)
    return data_dir / relative_home


def _open_data_dir(data_dir: Path) -> int:
    """Open data_dir, creating it (and its parents) when it is missing."""

    created = False
    try:
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        data_dir.mkdir(mode=DATA_DIR_MODE)
        created = True
    except FileExistsError:
        pass
    except OSError as error:
        raise HomeError(
            f"cannot create data_dir {data_dir}: {error.strerror}"
        ) from None

    try:
        directory = os.open(data_dir, _OPEN_DIRECTORY)
    except OSError as error:
        raise HomeError(f"cannot open data_dir {data_dir}: {error.strerror}") from None
    if created:
        # mkdir's mode went through the umask; set the intended one exactly.
        os.fchmod(directory, DATA_DIR_MODE)
    return directory


def _enter(parent: int, name: str, mode: int, where: Path) -> int:
    """Create `name` below the `parent` descriptor if missing, then open it."""

    created = False
    try:
        os.mkdir(name, mode, dir_fd=parent)
        created = True
    except FileExistsError:
        pass
    except OSError as error:
        raise HomeError(f"cannot create {where}: {error.strerror}") from None

    try:
        child = os.open(name, _OPEN_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent)
    except OSError as error:
        raise HomeError(_refusal(parent, name, where, error)) from None
    if created:
        os.fchmod(child, mode)
    return child


def _refusal(parent: int, name: str, where: Path, error: OSError) -> str:
    """Explain why a component of a home could not be entered."""

    try:
        found = os.lstat(name, dir_fd=parent)
    except OSError:
        return f"cannot open {where}: {error.strerror}"
    if stat.S_ISLNK(found.st_mode):
        return f"{where} is a symbolic link; remove it or choose another home"
    if not stat.S_ISDIR(found.st_mode):
        return f"{where} is not a directory; move it away or choose another home"
    return f"cannot open {where}: {error.strerror}"


def _change_owner(directory: int, owner: tuple[int, int], where: Path) -> None:
    uid, gid = owner
    try:
        os.fchown(directory, uid, gid)
    except OSError as error:
        raise HomeError(
            f"cannot give {where} to uid {uid} gid {gid}: {error.strerror}"
        ) from None
