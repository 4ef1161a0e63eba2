"""What a worker may touch, computed in one place from the configuration."""

from __future__ import annotations

import site
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import sftpjail
from sftpjail.config import Config
from sftpjail.errors import SandboxError

# Descriptors a worker holds besides the client's open SFTP handles: the
# standard streams, the client socket, the link to the supervisor, the
# event loop's epoll and self-pipe, log and audit files, and some slack.
_BASELINE_DESCRIPTORS = 32

# Where the C library, OpenSSL and the other shared libraries live.
_SYSTEM_LIBRARY_DIRECTORIES = ("/usr/lib", "/lib", "/usr/lib64", "/lib64")


@dataclass(frozen=True)
class WorkerPolicy:
    """Everything the sandbox needs to know about one worker."""

    data_dir: Path
    read_only_paths: tuple[Path, ...]
    max_open_files: int
    max_file_size: int | None
    max_address_space: int | None
    require_kernel_jail: bool


def worker_policy(config: Config) -> WorkerPolicy:
    """The policy of the real worker: the one place it is computed.

    Raises `SandboxError` when the layout would let a worker read what it
    must not: the state directory (host keys) or the users file inside the
    data directory or inside a read-only path, or the data directory and a
    read-only path inside one another.
    """

    read_only = default_read_only_paths()
    _check_layout(config, read_only)
    return WorkerPolicy(
        data_dir=config.data_dir,
        read_only_paths=read_only,
        max_open_files=config.limits.max_open_handles + _BASELINE_DESCRIPTORS,
        max_file_size=None,
        max_address_space=None,
        require_kernel_jail=config.require_kernel_jail,
    )


def default_read_only_paths() -> tuple[Path, ...]:
    """The trees the interpreter reads code and libraries from, that exist.

    The Python installation (prefixes and site-packages), the directory
    sftpjail itself is imported from, and the system library directories.
    Never /etc, /tmp, /proc or a home directory as a whole.  Symbolic links
    are resolved, and a tree inside another listed tree is dropped.
    """

    candidates = [
        sys.prefix,
        sys.base_prefix,
        sys.exec_prefix,
        sys.base_exec_prefix,
        *site.getsitepackages(),
        str(Path(sftpjail.__file__).parent.parent),
        *_SYSTEM_LIBRARY_DIRECTORIES,
    ]
    if site.ENABLE_USER_SITE:
        candidates.append(site.getusersitepackages())
    return _outermost(
        Path(path).resolve() for path in candidates if Path(path).exists()
    )


def _outermost(paths: Iterable[Path]) -> tuple[Path, ...]:
    unique = sorted(set(paths))
    kept: list[Path] = []
    for path in unique:
        if not any(path.is_relative_to(parent) for parent in kept):
            kept.append(path)
    return tuple(kept)


def _check_layout(config: Config, read_only: tuple[Path, ...]) -> None:
    data_dir = config.data_dir.resolve()
    secrets = {
        "state_dir": config.state_dir.resolve(),
        "users_file": config.users_file.resolve(),
    }

    for key, secret in secrets.items():
        if secret.is_relative_to(data_dir):
            raise SandboxError(
                f"{key} {secret} is inside data_dir {data_dir}, where every "
                f"worker can read it; move {key} out of data_dir"
            )
        for tree in read_only:
            if secret.is_relative_to(tree):
                raise SandboxError(
                    f"{key} {secret} is inside {tree}, which every worker may "
                    f"read (it holds Python or system libraries); move {key} "
                    "elsewhere, for example below /var/lib/sftpjail"
                )

    for tree in read_only:
        if data_dir.is_relative_to(tree) or tree.is_relative_to(data_dir):
            raise SandboxError(
                f"data_dir {data_dir} and the library tree {tree} lie inside "
                "one another, so one user could read another's home; put "
                "data_dir elsewhere, for example /var/lib/sftpjail/data"
            )
