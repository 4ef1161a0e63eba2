"""A compromised worker tries to break out, and every attempt fails.

The attacker is a forked child that applies exactly the real worker's
sandbox, `enter_worker_sandbox(worker_policy(config))` (and, after "login",
`narrow_to_home`), and then does what code injected into a worker would
do.  It reports each outcome to the test over a pipe.  The test runs as
root on purpose: root passes every file permission check, so each refusal
here comes from the sandbox alone.

The test process plays the supervisor; a second sandboxed child plays a
sibling worker serving bob.  Traffic goes only to listeners this test
opens on 127.0.0.1 and ::1, which afterwards confirm nothing arrived.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import select
import signal
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sftpjail.config import Config, load_config
from sftpjail.sandbox import (
    enter_worker_sandbox,
    narrow_to_home,
    probe_kernel,
    worker_policy,
)
from sftpjail.sandbox._trial import run_in_child

REPORT = probe_kernel()
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="the attacker must be root"),
    pytest.mark.skipif(
        REPORT.landlock_abi < 6,
        reason=f"needs Landlock ABI 6 (scopes), kernel has {REPORT.landlock_abi}",
    ),
    pytest.mark.skipif(not REPORT.seccomp, reason=REPORT.seccomp_problem),
]

LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
PTRACE_ATTACH = 16
PTRACE_DETACH = 17
WAIT_ALL = 0x40000000  # __WALL: wait for a traced process that is not a child
IPPROTO_MPTCP = 262
ETH_P_ALL = 0x0003
CLONE_NEWUSER = 0x10000000
# io_uring_setup has one number on every architecture with the unified
# system call table; x86-64 and arm64 are the ones we run on.
IO_URING_SETUP = {"x86_64": 425, "aarch64": 425}.get(platform.machine())
SIBLING_TIMEOUT = 60.0


@dataclass
class World:
    """Everything the attacker aims at, set up by the test."""

    config: Config
    alice: Path
    bob: Path
    host_key: Path
    tcp4: socket.socket
    tcp6: socket.socket
    udp4: socket.socket
    abstract: socket.socket
    service: socket.socket
    client_connection: socket.socket
    sibling: int
    supervisor: int
    supervisor_memory: ctypes.Array[ctypes.c_char]
    terminations: list[int]


def errno_of(action: Callable[[], object]) -> str:
    """The errno name `action` failed with, or "ok"."""

    try:
        action()
    except OSError as error:
        return errno.errorcode[error.errno or 0]
    return "ok"


def check_libc(result: int) -> int:
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


# --- the world ----------------------------------------------------------------


def write_layout(root: Path) -> Path:
    """Homes, a users file and host keys outside data_dir, and a config."""

    data = root / "data"
    (data / "alice" / "inbox").mkdir(parents=True)
    (data / "alice" / "outbox").mkdir()
    (data / "bob").mkdir()
    (data / "alice" / "inbox" / "notes.txt").write_text("alice's notes")
    (data / "bob" / "secret.txt").write_text("bob's secret")
    (root / "etc").mkdir()
    (root / "etc" / "users.toml").write_text(
        '[users.alice]\npassword = "$argon2id$x"\n'
    )
    (root / "state").mkdir()
    (root / "state" / "ssh_host_ed25519_key").write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nnot a real key\n"
    )
    config = root / "sftpjail.toml"
    config.write_text(
        "[server]\n"
        'listen = ["127.0.0.1:2222"]\n'
        'data_dir = "data"\n'
        'state_dir = "state"\n'
        'users_file = "etc/users.toml"\n'
        'service_user = "nobody"\n'
    )
    return config


def listener(family: int, kind: int, address: tuple[str, int] | str) -> socket.socket:
    server = socket.socket(family, kind)
    server.bind(address)
    if kind == socket.SOCK_STREAM:
        server.listen(8)
    server.setblocking(False)
    return server


def start_sibling(config: Config, bob: Path) -> int:
    """A second worker, sandboxed and narrowed to bob, waiting to be ended."""

    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            enter_worker_sandbox(worker_policy(config))
            narrow_to_home(bob, read_only=False, policy=worker_policy(config))
            os.write(ready_write, b"r")
            select.select([], [], [], SIBLING_TIMEOUT)
        finally:
            os._exit(0)

    os.close(ready_write)
    ready, _, _ = select.select([ready_read], [], [], 30)
    answer = os.read(ready_read, 1) if ready else b""
    os.close(ready_read)
    assert answer == b"r", "the sibling worker did not enter its sandbox"
    return pid


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("attack")
    config = load_config(write_layout(root))
    service = listener(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0))
    service.setblocking(True)
    client = socket.create_connection(service.getsockname())
    client_connection, _ = service.accept()
    # A second client waits in the backlog: an accept() that got through
    # would take it, and the test would notice it gone.
    waiting_client = socket.create_connection(service.getsockname())
    service.setblocking(False)

    terminations: list[int] = []
    previous = signal.signal(
        signal.SIGTERM, lambda signum, _: terminations.append(signum)
    )
    sibling = start_sibling(config, config.data_dir / "bob")
    world = World(
        config=config,
        alice=config.data_dir / "alice",
        bob=config.data_dir / "bob",
        host_key=config.state_dir / "ssh_host_ed25519_key",
        tcp4=listener(socket.AF_INET, socket.SOCK_STREAM, ("127.0.0.1", 0)),
        tcp6=listener(socket.AF_INET6, socket.SOCK_STREAM, ("::1", 0)),
        udp4=listener(socket.AF_INET, socket.SOCK_DGRAM, ("127.0.0.1", 0)),
        abstract=listener(
            socket.AF_UNIX, socket.SOCK_STREAM, f"\0sftpjail-attack-{os.getpid()}"
        ),
        service=service,
        client_connection=client_connection,
        sibling=sibling,
        supervisor=os.getpid(),
        supervisor_memory=ctypes.create_string_buffer(b"supervisor secret", 64),
        terminations=terminations,
    )
    try:
        yield world
    finally:
        signal.signal(signal.SIGTERM, previous)
        os.kill(sibling, signal.SIGKILL)
        os.waitpid(sibling, 0)
        for sock in (client, waiting_client, client_connection, service):
            sock.close()


# --- the attacks ---------------------------------------------------------------


def read(path: Path) -> bytes:
    with open(path, "rb") as stream:
        return stream.read()


def ptrace_attach(pid: int) -> None:
    """PTRACE_ATTACH; should it ever work, let the victim go again at once."""

    check_libc(LIBC.ptrace(PTRACE_ATTACH, pid, None, None))
    os.waitpid(pid, WAIT_ALL)
    LIBC.ptrace(PTRACE_DETACH, pid, None, None)


def read_memory(world: World) -> None:
    class IoVector(ctypes.Structure):
        _fields_ = (("base", ctypes.c_void_p), ("length", ctypes.c_size_t))

    local = ctypes.create_string_buffer(64)
    here = IoVector(ctypes.addressof(local), 64)
    there = IoVector(ctypes.addressof(world.supervisor_memory), 64)
    check_libc(
        LIBC.process_vm_readv(
            world.supervisor, ctypes.byref(here), 1, ctypes.byref(there), 1, 0
        )
    )


def io_uring_setup() -> None:
    parameters = ctypes.create_string_buffer(120)
    assert IO_URING_SETUP is not None
    check_libc(LIBC.syscall(ctypes.c_long(IO_URING_SETUP), 8, parameters))


def fork_process() -> None:
    """fork(); should it ever work, the new process leaves at once."""

    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def create(path: Path) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def planted_in_tmp(world: World) -> Path:
    return Path(f"/tmp/sftpjail-attack-{world.supervisor}")


def read_through_symlink(world: World) -> bytes:
    link = world.alice / "to-bob"
    os.symlink(world.bob / "secret.txt", link)
    return read(link)


def stage_one_attacks(world: World) -> dict[str, Callable[[], object]]:
    """What must fail from the first instruction on, before any login."""

    config = world.config
    return {
        "read the users file": lambda: read(config.users_file),
        "read the host key": lambda: read(world.host_key),
        "list state_dir": lambda: os.listdir(config.state_dir),
        "read /etc/shadow": lambda: read(Path("/etc/shadow")),
        "write /tmp": lambda: create(planted_in_tmp(world)),
        "read /proc/1/environ": lambda: read(Path("/proc/1/environ")),
        "tcp connect 127.0.0.1": lambda: socket.create_connection(
            world.tcp4.getsockname(), timeout=2
        ),
        "tcp connect ::1": lambda: socket.create_connection(
            world.tcp6.getsockname()[:2], timeout=2
        ),
        "udp sendto 127.0.0.1": lambda: socket.socket(
            socket.AF_INET, socket.SOCK_DGRAM
        ).sendto(b"leak", world.udp4.getsockname()),
        "mptcp socket": lambda: socket.socket(
            socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP
        ),
        "tcp fast open": lambda: socket.socket().sendto(
            b"leak", socket.MSG_FASTOPEN, world.tcp4.getsockname()
        ),
        "raw socket": lambda: socket.socket(
            socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP
        ),
        "packet socket": lambda: socket.socket(
            socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)
        ),
        "netlink socket": lambda: socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE
        ),
        "reconnect the client socket elsewhere": lambda: (
            world.client_connection.connect(world.tcp4.getsockname())
        ),
        "tcp fast open on the client socket": lambda: world.client_connection.sendto(
            b"leak", socket.MSG_FASTOPEN, world.tcp4.getsockname()
        ),
        "accept on the supervisor's listener": world.service.accept,
        "connect to an abstract unix socket": lambda: socket.socket(
            socket.AF_UNIX
        ).connect(world.abstract.getsockname()),
        "bind an abstract unix socket": lambda: socket.socket(socket.AF_UNIX).bind(
            "\0sftpjail-attacker"
        ),
        "exec /bin/sh": lambda: os.execv("/bin/sh", ["sh", "-c", "exit 0"]),
        "fork": fork_process,
        "new user namespace": lambda: check_libc(LIBC.unshare(CLONE_NEWUSER)),
        "ptrace the sibling": lambda: ptrace_attach(world.sibling),
        "ptrace the supervisor": lambda: ptrace_attach(world.supervisor),
        "read the supervisor's memory": lambda: read_memory(world),
        "signal 0 to the sibling": lambda: os.kill(world.sibling, 0),
        "SIGTERM to the sibling": lambda: os.kill(world.sibling, signal.SIGTERM),
        "signal 0 to the supervisor": lambda: os.kill(world.supervisor, 0),
        "SIGTERM to the supervisor": lambda: os.kill(world.supervisor, signal.SIGTERM),
        **({"io_uring_setup": io_uring_setup} if IO_URING_SETUP is not None else {}),
    }


def stage_two_attacks(world: World) -> dict[str, Callable[[], object]]:
    """What must fail once the worker is narrowed to alice's home."""

    bob_secret = world.bob / "secret.txt"
    notes = world.alice / "inbox" / "notes.txt"
    return {
        **stage_one_attacks(world),
        "list data_dir": lambda: os.listdir(world.config.data_dir),
        "read bob's file": lambda: read(bob_secret),
        "append to bob's file": lambda: open(bob_secret, "ab").close(),
        "create a file in bob's home": lambda: create(world.bob / "planted"),
        "truncate bob's file": lambda: os.truncate(bob_secret, 0),
        "move bob's file to alice": lambda: bob_secret.rename(world.alice / "moved"),
        "hard-link bob's file": lambda: os.link(bob_secret, world.alice / "linked"),
        "read bob's file through a symlink": lambda: read_through_symlink(world),
        "make a fifo": lambda: os.mkfifo(world.alice / "fifo"),
        "chown alice's file": lambda: os.chown(notes, 0, 0),
        "set an extended attribute": lambda: os.setxattr(notes, "user.x", b"1"),
    }


def allowed_after_login(world: World) -> dict[str, Callable[[], object]]:
    """What the worker must still be able to do for alice."""

    alice = world.alice
    return {
        "read alice's file": lambda: read(alice / "inbox" / "notes.txt"),
        "write a new file": lambda: (alice / "new.txt").write_text("hello"),
        "rename across directories": lambda: (alice / "new.txt").rename(
            alice / "outbox" / "new.txt"
        ),
        "truncate a file": lambda: os.truncate(alice / "outbox" / "new.txt", 1),
        "make and remove a directory": lambda: make_and_remove(alice / "dir"),
        "create a symlink": lambda: os.symlink("outbox/new.txt", alice / "link"),
        "chmod through /proc/self/fd": lambda: chmod_through_proc(alice / "link"),
        "delete a file": lambda: (alice / "outbox" / "new.txt").unlink(),
        "socketpair": socket.socketpair,
        "start a thread": run_thread,
    }


def make_and_remove(directory: Path) -> None:
    directory.mkdir()
    directory.rmdir()


def chmod_through_proc(path: Path) -> None:
    """How the SFTP server applies setstat: by the descriptor's /proc name."""

    fd = os.open(path, os.O_PATH)
    try:
        assert os.readlink(f"/proc/self/fd/{fd}").endswith("outbox/new.txt")
        os.chmod(f"/proc/self/fd/{fd}", 0o640)
    finally:
        os.close(fd)


def run_thread() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()


def attack(world: World, *, narrow: bool) -> dict[str, str]:
    """Run the attacker child; map each attempt to its errno name or "ok"."""

    def attacker() -> dict[str, Any]:
        enter_worker_sandbox(worker_policy(world.config))
        if not narrow:
            attempts = stage_one_attacks(world)
            attempts["read bob's file"] = lambda: read(world.bob / "secret.txt")
        else:
            narrow_to_home(
                world.alice, read_only=False, policy=worker_policy(world.config)
            )
            attempts = {**allowed_after_login(world), **stage_two_attacks(world)}
        # exec goes last: if it worked, nothing after it would run.
        shell = attempts.pop("exec /bin/sh")
        results = {name: errno_of(action) for name, action in attempts.items()}
        results["exec /bin/sh"] = errno_of(shell)
        return results

    return run_in_child(attacker, timeout=60)


@pytest.fixture(scope="module")
def after_login(world: World) -> dict[str, str]:
    return attack(world, narrow=True)


@pytest.fixture(scope="module")
def before_login(world: World) -> dict[str, str]:
    return attack(world, narrow=False)


# --- what must hold ------------------------------------------------------------

ENOSUPPORTED_FAMILY = "EAFNOSUPPORT"
STAGE_ONE_EXPECTED = {
    "read the users file": "EACCES",
    "read the host key": "EACCES",
    "list state_dir": "EACCES",
    "read /etc/shadow": "EACCES",
    "write /tmp": "EACCES",
    "read /proc/1/environ": "EACCES",
    "tcp connect 127.0.0.1": ENOSUPPORTED_FAMILY,
    "tcp connect ::1": ENOSUPPORTED_FAMILY,
    "udp sendto 127.0.0.1": ENOSUPPORTED_FAMILY,
    "mptcp socket": ENOSUPPORTED_FAMILY,
    "tcp fast open": ENOSUPPORTED_FAMILY,
    "raw socket": ENOSUPPORTED_FAMILY,
    "packet socket": ENOSUPPORTED_FAMILY,
    "netlink socket": ENOSUPPORTED_FAMILY,
    "reconnect the client socket elsewhere": "EPERM",
    "tcp fast open on the client socket": "EPERM",
    "accept on the supervisor's listener": "EPERM",
    "connect to an abstract unix socket": "EPERM",
    "bind an abstract unix socket": "EPERM",
    "exec /bin/sh": "EPERM",
    "fork": "EPERM",
    "new user namespace": "EPERM",
    "ptrace the sibling": "EPERM",
    "ptrace the supervisor": "EPERM",
    "read the supervisor's memory": "EPERM",
    "signal 0 to the sibling": "EPERM",
    "SIGTERM to the sibling": "EPERM",
    "signal 0 to the supervisor": "EPERM",
    "SIGTERM to the supervisor": "EPERM",
    **({"io_uring_setup": "EPERM"} if IO_URING_SETUP is not None else {}),
}
STAGE_TWO_EXPECTED = {
    **STAGE_ONE_EXPECTED,
    "list data_dir": "EACCES",
    "read bob's file": "EACCES",
    "append to bob's file": "EACCES",
    "create a file in bob's home": "EACCES",
    "truncate bob's file": "EACCES",
    "move bob's file to alice": "EACCES",
    "hard-link bob's file": "EXDEV",
    "read bob's file through a symlink": "EACCES",
    "make a fifo": "EPERM",
    "chown alice's file": "EPERM",
    "set an extended attribute": "EPERM",
}


@pytest.mark.parametrize(("attempt", "expected"), sorted(STAGE_TWO_EXPECTED.items()))
def test_after_login_the_attack_fails(
    after_login: dict[str, str], attempt: str, expected: str
) -> None:
    assert after_login[attempt] != "ok", f"{attempt} succeeded"
    assert after_login[attempt] == expected


@pytest.mark.parametrize(("attempt", "expected"), sorted(STAGE_ONE_EXPECTED.items()))
def test_before_login_the_attack_fails(
    before_login: dict[str, str], attempt: str, expected: str
) -> None:
    assert before_login[attempt] != "ok", f"{attempt} succeeded"
    assert before_login[attempt] == expected


def test_before_login_the_whole_data_dir_is_open(before_login: dict[str, str]) -> None:
    """Why stage 2 exists: stage 1 alone lets a worker read every home."""

    assert before_login["read bob's file"] == "ok"


ALLOWED = (
    "read alice's file",
    "write a new file",
    "rename across directories",
    "truncate a file",
    "make and remove a directory",
    "create a symlink",
    "chmod through /proc/self/fd",
    "delete a file",
    "socketpair",
    "start a thread",
)


@pytest.mark.parametrize("attempt", ALLOWED)
def test_after_login_the_worker_still_serves_alice(
    after_login: dict[str, str], attempt: str
) -> None:
    assert after_login[attempt] == "ok"


def test_nothing_reached_the_listeners(
    world: World, after_login: dict[str, str], before_login: dict[str, str]
) -> None:
    for stream in (world.tcp4, world.tcp6, world.abstract):
        with pytest.raises(BlockingIOError):
            stream.accept()
    with pytest.raises(BlockingIOError):
        world.udp4.recvfrom(16)


def test_the_waiting_client_is_still_in_the_supervisors_backlog(
    world: World, after_login: dict[str, str], before_login: dict[str, str]
) -> None:
    connection, _ = world.service.accept()
    connection.close()


def test_the_sibling_and_the_supervisor_survived(
    world: World, after_login: dict[str, str], before_login: dict[str, str]
) -> None:
    assert world.terminations == []
    assert os.waitpid(world.sibling, os.WNOHANG) == (0, 0)
    assert (world.bob / "secret.txt").read_text() == "bob's secret"
    assert not planted_in_tmp(world).exists()
