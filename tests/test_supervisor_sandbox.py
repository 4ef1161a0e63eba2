"""The supervisor's own sandbox, entered in a child exactly as the server does.

Each test starts a fresh Python that builds the real policy from a real
configuration, enters the sandbox and then tries things; it prints one
verdict per attempt, which the test compares.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from serverlab import ServerLab, descendants
from sftpjail.sandbox import probe_kernel

KERNEL = probe_kernel()
pytestmark = pytest.mark.skipif(
    KERNEL.landlock_abi < 4 or not KERNEL.seccomp,
    reason="needs Landlock ABI 4 (TCP rules, Linux 6.7) and seccomp",
)

CHILD = r"""
import ctypes, errno, json, os, socket, subprocess, sys
from pathlib import Path
from sftpjail.config import load_config
from sftpjail.sandbox import enter_supervisor_sandbox, supervisor_policy

config = load_config(Path(sys.argv[1]))
allowed, other = int(sys.argv[2]), int(sys.argv[3])
policy = supervisor_policy(config, config.state_dir / "control.sock", (allowed,))
layers = enter_supervisor_sandbox(policy)
verdicts = {"layers": layers.describe()}

def attempt(name, action):
    try:
        action()
        verdicts[name] = "allowed"
    except OSError as error:
        verdicts[name] = errno.errorcode.get(error.errno, str(error.errno))

def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass

def bind_tcp():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))

def write(path):
    Path(path).write_text("x")

def unshare_mounts():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:
        raise OSError(ctypes.get_errno(), "unshare")

attempt("connect database port", lambda: connect(allowed))
attempt("connect other port", lambda: connect(other))
attempt("bind tcp", bind_tcp)
attempt("netlink socket", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW))
attempt("read state_dir", lambda: (config.state_dir / "key").read_text())
attempt("write state_dir", lambda: write(config.state_dir / "new"))
attempt("write data_dir", lambda: write(config.data_dir / "home-file"))
attempt("read users file", lambda: config.users_file.read_text())
attempt("read /etc/shadow", lambda: Path("/etc/shadow").read_text())
attempt("write /tmp", lambda: write(config.data_dir.parent.parent / "outside"))
attempt("unshare", unshare_mounts)
run = subprocess.run([sys.executable, "-c", "print('child ran')"],
                     capture_output=True, text=True)
verdicts["start a python"] = run.stdout.strip() or run.stderr.strip()[-200:]
print(json.dumps(verdicts))
"""


@pytest.fixture
def listeners() -> Iterator[tuple[int, int]]:
    """Two loopback listeners: the "database" port and another one."""

    sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    try:
        yield sockets[0].getsockname()[1], sockets[1].getsockname()[1]
    finally:
        for listener in sockets:
            listener.close()


def test_the_supervisor_reaches_the_database_port_and_its_own_files_only(
    tmp_path: Path, listeners: tuple[int, int]
) -> None:
    root = tmp_path / "lab"
    for directory in ("data", "state", "etc"):
        (root / directory).mkdir(parents=True)
    (root / "state" / "key").write_text("host key")
    (root / "etc" / "users.toml").write_text("")
    config = root / "etc" / "config.toml"
    config.write_text(
        "[server]\n"
        'listen = "127.0.0.1:2222"\n'
        f'data_dir = "{root / "data"}"\n'
        f'state_dir = "{root / "state"}"\n'
        f'users_file = "{root / "etc" / "users.toml"}"\n'
    )
    allowed, other = listeners

    completed = subprocess.run(
        [sys.executable, "-c", CHILD, str(config), str(allowed), str(other)],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr
    verdicts = json.loads(completed.stdout)
    assert verdicts.pop("layers").startswith("landlock abi")
    assert verdicts == {
        "connect database port": "allowed",
        "connect other port": "EACCES",
        "bind tcp": "EPERM",
        "netlink socket": "EAFNOSUPPORT",
        "read state_dir": "allowed",
        "write state_dir": "EACCES",
        "write data_dir": "allowed",
        "read users file": "allowed",
        "read /etc/shadow": "EACCES",
        "write /tmp": "EACCES",
        "unshare": "EPERM",
        "start a python": "child ran",
    }


# -- the real server --------------------------------------------------------


def _zygote_of(lab: ServerLab) -> int:
    assert lab.process is not None
    for pid in descendants(lab.process.pid):
        if b"sftpjail.zygote" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return pid
    raise AssertionError("no zygote")


def test_the_sandboxed_supervisor_serves_reloads_and_restarts_its_zygote(
    lab: ServerLab,
) -> None:
    alice = lab.add_user("alice")
    lab.start()
    line = lab.wait_for_log("Supervisor sandboxed: ", 10)
    assert lab.process is not None
    status = Path(f"/proc/{lab.process.pid}/status").read_text()

    os.kill(_zygote_of(lab), signal.SIGKILL)
    lab.wait_for_log("starting a new one", 10)
    after_restart = lab.sftp("alice", "pwd\n", key=alice)
    bob = lab.add_user("bob")
    lab.process.send_signal(signal.SIGHUP)
    lab.wait_for_log("Reloaded 2 users", 10)
    new_user = lab.sftp("bob", "pwd\n", key=bob)
    code = lab.stop()

    assert "landlock abi" in line and "seccomp" in line
    assert "NoNewPrivs:\t1" in status and "Seccomp:\t2" in status
    assert after_restart.returncode == 0, after_restart.stderr
    assert new_user.returncode == 0, new_user.stderr
    assert code == 0
    assert not (lab.state_dir / "control.sock").exists()
