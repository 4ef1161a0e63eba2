"""Modules a worker imports lazily, imported while the file system is open.

Some modules are imported on first use, deep inside a library.  Once a
worker has switched to the service user, it may no longer read the Python
installation (pyenv under /root, for example), and a later import would
fail in the middle of a session.  Importing them up front avoids that;
importing an already imported module costs a dictionary lookup.

Call `preload_modules()` in the process that forks the workers, before
forking (then every worker inherits the modules for free);
`enter_worker_sandbox` calls it again as a safety net.  The list was found
by recording `sys.modules` around a full SFTP session inside a worker.
"""

from __future__ import annotations

import importlib

from sftpjail.errors import SandboxError

WORKER_MODULES = (
    "asyncio",
    "asyncssh",
    "asyncssh.sftp",
    # asyncio's default executor, started by asyncssh.run_server.
    "concurrent.futures.thread",
    "queue",
    # asyncssh's SFTP server names owners in directory listings.
    "pwd",
    "grp",
    # Used on first compressed packet and first JSON log line.
    "zlib",
    "json",
    # time.strptime imports its helper on first call.
    "_strptime",
)


def preload_modules(extra: tuple[str, ...] = ()) -> None:
    """Import every module a worker may need later, plus `extra` ones."""

    for name in WORKER_MODULES + extra:
        try:
            importlib.import_module(name)
        except ImportError as error:
            raise SandboxError(
                f"cannot import {name} before sandboxing the worker: {error}; "
                "call preload_modules() before drop_privileges, while the "
                "Python installation is still readable"
            ) from None
