"""The sandbox package: ABI arithmetic, reports, each layer on the real kernel.

Pure functions (`rights_for_abi`, `check_kernel_support`, `describe`) are
tested with any ABI number.  Everything else runs in a forked child on
this machine's kernel, because a sandbox cannot be taken off again.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import logging
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypedDict, cast

import pytest

import sftpjail
from sftpjail.config import load_config
from sftpjail.errors import SandboxError
from sftpjail.sandbox import (
    EnforcedLayers,
    WorkerPolicy,
    _landlock,
    _seccomp,
    default_read_only_paths,
    drop_privileges,
    narrow_to_home,
    probe_kernel,
    worker_policy,
)
from sftpjail.sandbox._enforce import check_kernel_support, enter_with_support
from sftpjail.sandbox._landlock import PathRule, rights_for_abi
from sftpjail.sandbox._process import set_no_new_privs
from sftpjail.sandbox._trial import run_in_child

NOBODY = 65534
REPORT = probe_kernel()
needs_landlock = pytest.mark.skipif(
    REPORT.landlock_abi < 1, reason=f"no Landlock: {REPORT.landlock_problem}"
)
needs_landlock_scopes = pytest.mark.skipif(
    REPORT.landlock_abi < 6, reason="Landlock scopes need ABI 6 (Linux 6.12)"
)
needs_seccomp = pytest.mark.skipif(
    not REPORT.seccomp, reason=f"no seccomp: {REPORT.seccomp_problem}"
)


def errno_of(action: Callable[[], object]) -> str:
    """The errno name `action` failed with, or "ok"."""

    try:
        action()
    except OSError as error:
        return errno.errorcode[error.errno or 0]
    return "ok"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    for home in ("alice/inbox", "alice/outbox", "bob"):
        (data / home).mkdir(parents=True)
    (data / "alice" / "inbox" / "report.txt").write_text("alice's report")
    (data / "bob" / "secret.txt").write_text("bob's secret")
    return data


@pytest.fixture
def policy(data_dir: Path) -> WorkerPolicy:
    return WorkerPolicy(
        data_dir=data_dir,
        read_only_paths=default_read_only_paths(),
        max_open_files=128,
        max_file_size=None,
        max_address_space=None,
        require_kernel_jail=True,
    )


# --- ABI arithmetic (pure) --------------------------------------------------


def test_newest_abi_handles_every_known_right() -> None:
    rights = rights_for_abi(_landlock.NEWEST_KNOWN_ABI)

    assert rights.fs == _landlock.ALL_FS
    assert rights.net == _landlock.BIND_TCP | _landlock.CONNECT_TCP
    assert rights.scopes == _landlock.ALL_SCOPES
    assert rights.missing == ()


def test_future_abi_uses_what_this_module_knows() -> None:
    rights = rights_for_abi(42)
    assert (rights.fs, rights.net, rights.scopes) == (
        _landlock.ALL_FS,
        _landlock.ALL_NET,
        _landlock.ALL_SCOPES,
    )
    assert rights.missing_lines() == ()


@pytest.mark.parametrize(
    ("abi", "lacking_fs", "has_net", "has_scopes"),
    [
        (1, _landlock.REFER | _landlock.TRUNCATE | _landlock.IOCTL_DEV, False, False),
        (2, _landlock.TRUNCATE | _landlock.IOCTL_DEV, False, False),
        (3, _landlock.IOCTL_DEV, False, False),
        (4, _landlock.IOCTL_DEV, True, False),
        (5, 0, True, False),
        (6, 0, True, True),
    ],
)
def test_each_older_abi_loses_exactly_its_features(
    abi: int, lacking_fs: int, has_net: bool, has_scopes: bool
) -> None:
    rights = rights_for_abi(abi)

    assert rights.fs == _landlock.ALL_FS & ~lacking_fs
    assert bool(rights.net) is has_net
    assert bool(rights.scopes) is has_scopes
    assert [feature.abi for feature in rights.missing] == list(range(abi + 1, 8))


def test_missing_feature_line_names_the_kernel_that_brings_it() -> None:
    lines = rights_for_abi(3).missing_lines()

    assert lines[0] == (
        "Landlock TCP bind/connect needs ABI 4 (Linux 6.7); this kernel has "
        "ABI 3, so only seccomp keeps the worker off TCP"
    )
    assert len(lines) == 4
    assert "Linux 6.15" in lines[-1]


def test_abi_zero_handles_nothing() -> None:
    rights = rights_for_abi(0)

    assert (rights.fs, rights.net, rights.scopes) == (0, 0, 0)


# --- reports ---------------------------------------------------------------


def test_describe_is_one_line_naming_every_layer() -> None:
    layers = EnforcedLayers.from_rights(
        rights_for_abi(7), seccomp=True, no_new_privs=True
    )

    assert layers.describe() == (
        "landlock abi 7 (fs, tcp bind/connect, scopes: abstract-unix signal), "
        "seccomp, no_new_privs, rlimits"
    )


def test_describe_shows_what_an_old_or_missing_landlock_lacks() -> None:
    old = EnforcedLayers.from_rights(rights_for_abi(3), seccomp=True, no_new_privs=True)
    none = EnforcedLayers.from_rights(
        rights_for_abi(0), seccomp=False, no_new_privs=True
    )

    assert old.describe() == "landlock abi 3 (fs), seccomp, no_new_privs, rlimits"
    assert none.describe() == "NO landlock, NO seccomp, no_new_privs, rlimits"


def test_probe_kernel_reports_this_kernel() -> None:
    assert REPORT.kernel_release == os.uname().release
    if REPORT.landlock_abi:
        assert REPORT.landlock_problem == ""
        assert "read_file" in REPORT.landlock_fs_rights
    else:
        assert "Landlock" in REPORT.landlock_problem


@needs_landlock
def test_probe_kernel_lists_rights_of_the_running_abi() -> None:
    expected = rights_for_abi(REPORT.landlock_abi)

    assert len(REPORT.landlock_fs_rights) == bin(expected.fs).count("1")
    assert REPORT.landlock_missing == expected.missing_lines()


# --- require_kernel_jail (pure) ---------------------------------------------

NO_LANDLOCK = _landlock.Support(0, "Landlock is not enabled in this kernel")
LANDLOCK = _landlock.Support(7)
SECCOMP = _seccomp.Support(True)
NO_SECCOMP = _seccomp.Support(False, "no seccomp filter mode")


def test_missing_landlock_is_fatal_when_required() -> None:
    with pytest.raises(SandboxError) as raised:
        check_kernel_support(NO_LANDLOCK, SECCOMP, required=True)

    message = str(raised.value)
    assert "Landlock is not enabled in this kernel" in message
    assert "require_kernel_jail = false" in message


def test_missing_seccomp_is_fatal_when_required() -> None:
    with pytest.raises(SandboxError, match="no seccomp filter mode"):
        check_kernel_support(LANDLOCK, NO_SECCOMP, required=True)


def test_missing_layers_only_warn_when_not_required() -> None:
    warnings = check_kernel_support(NO_LANDLOCK, NO_SECCOMP, required=False)

    assert len(warnings) == 2
    assert all(line.startswith("SANDBOX INCOMPLETE: ") for line in warnings)


def test_complete_kernel_gives_no_warning() -> None:
    assert check_kernel_support(LANDLOCK, SECCOMP, required=True) == ()


# --- policy ----------------------------------------------------------------


def test_default_read_only_paths_hold_the_interpreter_and_nothing_private() -> None:
    paths = default_read_only_paths()

    assert any(Path(sys.prefix).resolve().is_relative_to(path) for path in paths)
    assert any(Path(sftpjail.__file__).resolve().is_relative_to(path) for path in paths)
    for private in ("/etc", "/tmp", "/proc", "/root", "/home", "/var", "/"):
        assert Path(private) not in paths
    assert all(path.exists() and path == path.resolve() for path in paths)
    for path in paths:
        assert not any(path != other and path.is_relative_to(other) for other in paths)


def write_config(directory: Path, **server: str) -> Path:
    values = {
        "listen": '["127.0.0.1:2222"]',
        "data_dir": '"data"',
        "state_dir": '"state"',
        "users_file": '"users.toml"',
        "service_user": '"nobody"',
    }
    values.update(server)
    lines = ["[server]", *(f"{key} = {value}" for key, value in values.items())]
    lines += ["[limits]", "max_open_handles = 40"]
    path = directory / "sftpjail.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_worker_policy_follows_the_config(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path, require_kernel_jail="false"))

    policy = worker_policy(config)

    assert policy.data_dir == tmp_path / "data"
    assert policy.max_open_files == 40 + 32
    assert policy.require_kernel_jail is False
    assert policy.read_only_paths == default_read_only_paths()


class LayoutPaths(TypedDict, total=False):
    """The Config fields a layout test moves; each of them is a Path."""

    data_dir: Path
    state_dir: Path
    users_file: Path


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ({"state_dir": '"data/state"'}, "state_dir .* is inside data_dir"),
        ({"users_file": '"data/users.toml"'}, "users_file .* is inside data_dir"),
        ({"data_dir": '"/usr/lib/sftpjail-data"'}, "lie inside one another"),
        ({"state_dir": f'"{sys.prefix}/sftpjail-state"'}, "which every worker may"),
    ],
)
def test_worker_policy_refuses_layouts_that_leak(
    tmp_path: Path, setting: dict[str, str], complaint: str
) -> None:
    # load_config refuses the first two layouts already; the policy checks
    # again for a Config built some other way, so it is built directly here.
    fields = {key: Path(value.strip('"')) for key, value in setting.items()}
    fields = {
        key: path if path.is_absolute() else tmp_path / path
        for key, path in fields.items()
    }
    # The keys come from the parameters above: always fields of LayoutPaths.
    moved = cast(LayoutPaths, fields)
    config = dataclasses.replace(load_config(write_config(tmp_path)), **moved)

    with pytest.raises(SandboxError, match=complaint):
        worker_policy(config)


# --- privileges ------------------------------------------------------------


def test_drop_privileges_refuses_root() -> None:
    with pytest.raises(SandboxError, match="uid or gid 0"):
        drop_privileges(0, 0)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_drop_privileges_cannot_be_undone() -> None:
    def body() -> dict[str, Any]:
        os.setgroups([0, 4])
        drop_privileges(NOBODY, NOBODY)
        return {
            "uids": os.getresuid(),
            "gids": os.getresgid(),
            "groups": os.getgroups(),
            "setuid 0": errno_of(lambda: os.setuid(0)),
            "seteuid 0": errno_of(lambda: os.seteuid(0)),
            "setgid 0": errno_of(lambda: os.setgid(0)),
            "read /etc/shadow": errno_of(lambda: open("/etc/shadow").close()),
        }

    result = run_in_child(body)

    assert result["uids"] == [NOBODY] * 3
    assert result["gids"] == [NOBODY] * 3
    assert result["groups"] == []
    assert result["setuid 0"] == "EPERM"
    assert result["seteuid 0"] == "EPERM"
    assert result["setgid 0"] == "EPERM"
    assert result["read /etc/shadow"] == "EACCES"


# --- each layer alone, on the real kernel -----------------------------------


def open_listener(family: int, host: str) -> socket.socket:
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(8)
    listener.setblocking(False)
    return listener


def assert_nothing_arrived(listener: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()


@needs_landlock
@needs_landlock_scopes
def test_landlock_alone_denies_tcp_abstract_unix_and_signals(data_dir: Path) -> None:
    """Without seccomp, Landlock itself refuses TCP, outside sockets, signals."""

    tcp = open_listener(socket.AF_INET, "127.0.0.1")
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0sftpjail-test-{os.getpid()}")
    abstract.listen(8)
    abstract.setblocking(False)
    parent = os.getpid()

    def body() -> dict[str, Any]:
        set_no_new_privs()
        rules = [PathRule(data_dir, _landlock.READ_WRITE)]
        _landlock.enforce(rights_for_abi(REPORT.landlock_abi), rules)
        return {
            "tcp connect": errno_of(
                lambda: socket.create_connection(tcp.getsockname())
            ),
            "tcp bind": errno_of(lambda: socket.socket().bind(("127.0.0.1", 0))),
            "abstract unix": errno_of(
                lambda: socket.socket(socket.AF_UNIX).connect(abstract.getsockname())
            ),
            "signal parent": errno_of(lambda: os.kill(parent, 0)),
            "read /etc/hostname": errno_of(lambda: open("/etc/hostname").close()),
            "read inside data_dir": errno_of(
                lambda: (data_dir / "bob" / "secret.txt").read_text()
            ),
        }

    result = run_in_child(body)

    assert result["tcp connect"] == "EACCES"
    assert result["tcp bind"] == "EACCES"
    assert result["abstract unix"] == "EPERM"
    assert result["signal parent"] == "EPERM"
    assert result["read /etc/hostname"] == "EACCES"
    assert result["read inside data_dir"] == "ok"
    assert_nothing_arrived(tcp)
    assert_nothing_arrived(abstract)


LIBC = ctypes.CDLL(None, use_errno=True)
CLONE_NEWUSER = 0x10000000


def check_libc(result: int) -> None:
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))


def set_limit(limit: int, value: int) -> None:
    """setrlimit through libc: Python turns its EPERM into a ValueError."""

    pair = (ctypes.c_ulong * 2)(value, value)
    check_libc(LIBC.setrlimit(limit, pair))


def ioctl_with_high_bits(fd: int, request: int) -> None:
    byte = ctypes.c_char(b"x")
    check_libc(LIBC.ioctl(fd, ctypes.c_ulong(request), ctypes.byref(byte)))


@needs_seccomp
def test_seccomp_alone_refuses_what_landlock_cannot_see() -> None:
    def body() -> dict[str, Any]:
        set_no_new_privs()
        _seccomp.build_filter().load()
        _primary, secondary = os.openpty()
        datagram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        return {
            "inet socket": errno_of(socket.socket),
            "exec": errno_of(lambda: os.execv("/bin/true", ["true"])),
            "fork": errno_of(os.fork),
            "new user namespace": errno_of(
                lambda: check_libc(LIBC.unshare(CLONE_NEWUSER))
            ),
            "TIOCSTI": errno_of(lambda: ioctl_with_high_bits(secondary, 0x5412)),
            "TIOCSTI, junk high bits": errno_of(
                lambda: ioctl_with_high_bits(secondary, (1 << 32) | 0x5412)
            ),
            "sendto an address": errno_of(lambda: datagram.sendto(b"x", "/dev/log")),
            "set a limit": errno_of(lambda: set_limit(resource.RLIMIT_NOFILE, 64)),
            "read a limit": errno_of(
                lambda: resource.getrlimit(resource.RLIMIT_NOFILE)
            ),
            "chown": errno_of(lambda: os.chown("/tmp", 0, 0)),
            "thread": errno_of(run_thread),
            "socketpair": errno_of(socket.socketpair),
        }

    result = run_in_child(body)

    for refused in (
        "exec",
        "fork",
        "new user namespace",
        "TIOCSTI",
        "TIOCSTI, junk high bits",
        "sendto an address",
        "set a limit",
        "chown",
    ):
        assert result[refused] == "EPERM", refused
    assert result["inet socket"] == "EAFNOSUPPORT"
    assert result["read a limit"] == "ok"
    assert result["thread"] == "ok"
    assert result["socketpair"] == "ok"


def run_thread() -> None:
    thread = threading.Thread(target=lambda: None)
    thread.start()
    thread.join()


# --- stages: degrade, warn, narrow -----------------------------------------


@needs_landlock
@needs_seccomp
def test_abi_1_rules_on_a_newer_kernel_refuse_cross_directory_renames(
    policy: WorkerPolicy, data_dir: Path
) -> None:
    """The degraded rights reach the kernel: ABI 1 cannot grant REFER."""

    def rename_across_directories(abi: int) -> dict[str, Any]:
        enter_with_support(policy, _landlock.Support(abi), _seccomp.probe())
        inbox = data_dir / "alice" / "inbox" / "report.txt"
        return {
            "rename": errno_of(
                lambda: inbox.rename(data_dir / "alice" / "outbox" / "r")
            )
        }

    assert run_in_child(lambda: rename_across_directories(1))["rename"] == "EXDEV"
    assert run_in_child(lambda: rename_across_directories(7))["rename"] == "ok"


@needs_seccomp
def test_without_landlock_and_not_required_the_worker_warns_and_goes_on(
    policy: WorkerPolicy,
) -> None:
    relaxed = WorkerPolicy(**{**policy.__dict__, "require_kernel_jail": False})

    def body() -> dict[str, Any]:
        records: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
        logging.getLogger("sftpjail.sandbox").addHandler(handler)
        layers = enter_with_support(relaxed, NO_LANDLOCK, _seccomp.probe())
        return {
            "layers": layers.describe(),
            "warnings": records,
            "read /etc/hostname": errno_of(lambda: open("/etc/hostname").close()),
            "inet socket": errno_of(socket.socket),
        }

    result = run_in_child(body)

    assert result["layers"] == "NO landlock, seccomp, no_new_privs, rlimits"
    assert any("SANDBOX INCOMPLETE" in line for line in result["warnings"])
    assert result["read /etc/hostname"] == "ok"
    assert result["inet socket"] == "EAFNOSUPPORT"


def test_without_landlock_and_required_nothing_starts(policy: WorkerPolicy) -> None:
    with pytest.raises(SandboxError, match="Landlock is not enabled"):
        run_in_child(lambda: enter_with_support(policy, NO_LANDLOCK, SECCOMP).__dict__)


@needs_landlock
def test_a_shared_library_loads_after_the_sandbox_without_execute_right(
    policy: WorkerPolicy,
) -> None:
    """Landlock's EXECUTE right governs execve only, so read-only suffices."""

    candidates = ("_lzma", "_bz2", "_sqlite3", "_curses", "_dbm", "_ctypes_test")
    unloaded = [name for name in candidates if name not in sys.modules]
    if not unloaded:
        pytest.skip("every candidate extension module is already imported")

    def body() -> dict[str, Any]:
        enter_with_support(policy, _landlock.probe(), _seccomp.probe())
        __import__(unloaded[0])
        return {"loaded": unloaded[0] in sys.modules}

    assert run_in_child(body) == {"loaded": True}


@needs_landlock
def test_narrow_refuses_a_home_outside_data_dir(
    policy: WorkerPolicy, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def body(home: Path) -> dict[str, Any]:
        narrow_to_home(home, read_only=False, policy=policy)
        return {}

    with pytest.raises(SandboxError, match="not a directory inside data_dir"):
        run_in_child(lambda: body(outside))
    with pytest.raises(SandboxError, match="not a directory inside data_dir"):
        run_in_child(lambda: body(policy.data_dir))


@needs_landlock
def test_narrow_refuses_while_another_thread_runs(
    policy: WorkerPolicy, data_dir: Path
) -> None:
    def body() -> dict[str, Any]:
        release = threading.Event()
        threading.Thread(target=release.wait, name="lingering").start()
        try:
            narrow_to_home(data_dir / "alice", read_only=False, policy=policy)
        finally:
            release.set()
        return {}

    with pytest.raises(SandboxError, match=r"single thread.*lingering"):
        run_in_child(body)


@needs_landlock
def test_read_only_home_can_be_read_not_changed(
    policy: WorkerPolicy, data_dir: Path
) -> None:
    alice = data_dir / "alice"

    def body() -> dict[str, Any]:
        narrow_to_home(alice, read_only=True, policy=policy)
        return {
            "read": errno_of(lambda: (alice / "inbox" / "report.txt").read_text()),
            "write": errno_of(lambda: (alice / "new.txt").write_text("x")),
            "delete": errno_of(lambda: (alice / "inbox" / "report.txt").unlink()),
        }

    result = run_in_child(body)

    assert result == {"read": "ok", "write": "EACCES", "delete": "EACCES"}


# --- sftpjail check ----------------------------------------------------------


def run_check(config: Path) -> subprocess.CompletedProcess[str]:
    source = str(Path(sftpjail.__file__).parent.parent)
    path = os.pathsep.join(filter(None, [source, os.environ.get("PYTHONPATH")]))
    return subprocess.run(
        [sys.executable, "-m", "sftpjail", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": path},
    )


@pytest.fixture
def check_dir() -> Iterator[Path]:
    """A layout the service user can reach (pytest's own tmp is 0700)."""

    root = Path(tempfile.mkdtemp(prefix="sftpjail-check-test-"))
    try:
        (root / "data").mkdir()
        (root / "state").mkdir()
        (root / "users.toml").write_text("")
        os.chmod(root, 0o755)
        if os.geteuid() == 0:
            os.chown(root / "data", NOBODY, NOBODY)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@needs_landlock
@needs_seccomp
def test_check_passes_on_this_machine(check_dir: Path) -> None:
    completed = run_check(write_config(check_dir))

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert f"landlock      ABI {REPORT.landlock_abi}" in completed.stdout
    assert "ok  run /bin/sh: refused (EPERM)" in completed.stdout
    assert "ok  read the users file: refused (EACCES)" in completed.stdout
    assert completed.stdout.rstrip().endswith(
        "every layer the configuration requires is enforced"
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="the service user matters as root")
def test_check_fails_when_the_service_user_is_missing(check_dir: Path) -> None:
    config = write_config(check_dir, service_user='"sftpjail-no-such-user"')

    completed = run_check(config)

    assert completed.returncode == 1
    assert "'sftpjail-no-such-user' does not exist" in completed.stdout
