"""The kernel sandbox every worker applies to itself.

How the server uses it::

    preload_modules()                         # zygote, once, before forking
    policy = worker_policy(config)
    # in the forked worker, before reading from the client:
    drop_privileges(uid, gid)                 # when running as root
    layers = enter_worker_sandbox(policy)     # Landlock layer 1 + seccomp
    logger.info("Worker sandboxed: %s", layers.describe())
    # after login, synchronously, with the default executor shut down:
    narrow_to_home(home, read_only=False, policy=policy)

The supervisor confines itself too, once its sockets are bound::

    layers = enter_supervisor_sandbox(supervisor_policy(config, socket, ports))

`probe_kernel()` reports what the running kernel offers without enforcing
anything; `sftpjail check` prints it and tries the sandbox in a child.
Every failure is a `SandboxError` that says what to do.  docs/SECURITY.md
("Process") explains what each layer stops and what it does not.
"""

from sftpjail.sandbox._enforce import enter_worker_sandbox, narrow_to_home
from sftpjail.sandbox._policy import (
    WorkerPolicy,
    default_read_only_paths,
    worker_policy,
)
from sftpjail.sandbox._preload import preload_modules
from sftpjail.sandbox._process import drop_privileges
from sftpjail.sandbox._report import EnforcedLayers, KernelReport, probe_kernel
from sftpjail.sandbox._supervisor import (
    SupervisorPolicy,
    enter_supervisor_sandbox,
    supervisor_policy,
)
from sftpjail.sandbox._trial import run_in_child

__all__ = [
    "EnforcedLayers",
    "KernelReport",
    "SupervisorPolicy",
    "WorkerPolicy",
    "default_read_only_paths",
    "drop_privileges",
    "enter_supervisor_sandbox",
    "enter_worker_sandbox",
    "narrow_to_home",
    "preload_modules",
    "probe_kernel",
    "run_in_child",
    "supervisor_policy",
    "worker_policy",
]
