"""The state of real processes serving real sessions, seen through /proc.

A worker serving a logged-in `sftp` client must run as the unprivileged
service user with no capabilities, under seccomp and no_new_privs, in one
thread, unreachable by ptrace from a process of the same user, and holding
neither a listening socket, a password hash nor a host private key.  The
zygote it was forked from is a separate, freshly executed interpreter
whose memory never held the users file or a private key either; the
supervisor's does, which shows the memory scan can see them where they
are.
"""

from __future__ import annotations

import ctypes
import errno
import os
import pwd
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from serverlab import SERVICE_USER, ClientKey, ServerLab, descendants, uid_of
from sftpjail.users import UsersFile

MEMORY_CHUNK = 4 * 1024 * 1024
MAX_REGION_BYTES = 1024 * 1024 * 1024
MAX_SCANNED_BYTES = 4 * 1024 * 1024 * 1024
UNREADABLE_MAPPINGS = ("[vvar]", "[vvar_vclock]", "[vsyscall]")
PTRACE_SEIZE = 0x4206

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass
class Serving:
    """A server with one logged-in session and its three kinds of process."""

    lab: ServerLab
    supervisor: int
    zygote: int
    worker: int
    hashes: tuple[str, ...]


@contextmanager
def held_session(lab: ServerLab, user: str, key: ClientKey) -> Iterator[int]:
    """An interactive `sftp` kept open; yields the pid of its worker."""

    client = subprocess.Popen(
        ["sftp", *lab.ssh_options(key), "-P", str(lab.port), f"{user}@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield lab.wait_for_worker(user)
    finally:
        client.kill()
        client.wait(10)


@pytest.fixture
def serving(lab: ServerLab) -> Iterator[Serving]:
    alice = lab.add_user("alice", password="alice's long passphrase")
    lab.add_user("bob", password="bob's long passphrase")
    lab.start()
    users = UsersFile(lab.users_file).load()
    hashes = tuple(user.password_hash or "" for user in users.values())
    assert all(digest.startswith("$argon2id$") for digest in hashes)

    with held_session(lab, "alice", alice) as worker:
        assert lab.process is not None
        supervisor = lab.process.pid
        # Workers are forked, not executed: they share the zygote's command
        # line, but only the zygote is the supervisor's own child.
        zygotes = [
            pid
            for pid in descendants(supervisor)
            if b"sftpjail.zygote" in _cmdline(pid) and _parent(pid) == supervisor
        ]
        assert len(zygotes) == 1
        yield Serving(lab, supervisor, zygotes[0], worker, hashes)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


def _parent(pid: int) -> int:
    return int(_status(pid)["PPid"])


# -- identity and sandbox --------------------------------------------------------


def test_worker_runs_unprivileged_under_seccomp(serving: Serving) -> None:
    status = _status(serving.worker)
    service = pwd.getpwnam(SERVICE_USER)

    assert status["Uid"].split() == [str(service.pw_uid)] * 4
    assert status["Gid"].split() == [str(service.pw_gid)] * 4
    assert status["Groups"].strip() == ""
    for capabilities in ("CapInh", "CapPrm", "CapEff", "CapAmb"):
        assert int(status[capabilities], 16) == 0, capabilities
    assert status["NoNewPrivs"].strip() == "1"
    assert status["Seccomp"].strip() == "2"
    assert int(status["Seccomp_filters"]) >= 1
    # Landlock confines only the thread that asks: one thread, no other.
    assert status["Threads"].strip() == "1"


def test_supervisor_zygote_and_worker_are_separate_processes(
    serving: Serving,
) -> None:
    zygote_command = _cmdline(serving.zygote).split(b"\0")

    assert len({serving.supervisor, serving.zygote, serving.worker}) == 3
    assert _parent(serving.zygote) == serving.supervisor
    assert _parent(serving.worker) == serving.zygote
    # A freshly executed interpreter, not a fork of the supervisor.
    assert zygote_command[1:3] == [b"-m", b"sftpjail.zygote"]
    assert b"serve" in _cmdline(serving.supervisor).split(b"\0")
    assert os.readlink(f"/proc/{serving.zygote}/exe") == os.path.realpath(
        sys.executable
    )
    # The zygote stays root so it can fork workers that switch users.
    assert uid_of(serving.zygote) == 0
    assert _status(serving.zygote)["Seccomp"].strip() == "0"


def test_worker_cannot_be_traced_by_its_own_user(serving: Serving) -> None:
    service = pwd.getpwnam(SERVICE_USER)
    bystander = subprocess.Popen(
        ["sleep", "30"], user=service.pw_uid, group=service.pw_gid
    )
    try:
        # Control: the same user may trace an ordinary process of its own.
        assert _seize_as_service_user(bystander.pid) == 0
        assert _seize_as_service_user(serving.worker) == errno.EPERM
    finally:
        bystander.kill()
        bystander.wait()


def _seize_as_service_user(pid: int) -> int:
    """errno of PTRACE_SEIZE on `pid` from a process of the service user.

    A forked child of the test switches to the service user and asks; the
    interpreter under /root may not be executable by that user.
    """

    service = pwd.getpwnam(SERVICE_USER)
    child = os.fork()
    if child == 0:
        code = 255
        try:
            os.setgroups([])
            os.setresgid(service.pw_gid, service.pw_gid, service.pw_gid)
            os.setresuid(service.pw_uid, service.pw_uid, service.pw_uid)
            result = _libc.ptrace(PTRACE_SEIZE, pid, None, None)
            code = 0 if result == 0 else ctypes.get_errno()
        finally:
            os._exit(code)
    _, wait_status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(wait_status)


# -- descriptors ------------------------------------------------------------------


def _listening_socket_inodes() -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def _descriptor_targets(pid: int) -> list[str]:
    directory = Path(f"/proc/{pid}/fd")
    targets = []
    for entry in directory.iterdir():
        try:
            targets.append(os.readlink(entry))
        except OSError:
            continue
    return targets


def test_worker_holds_no_listener_and_no_secret_file(serving: Serving) -> None:
    listening = {f"socket:[{inode}]" for inode in _listening_socket_inodes()}
    lab = serving.lab

    worker = _descriptor_targets(serving.worker)
    supervisor = _descriptor_targets(serving.supervisor)

    assert listening & set(supervisor), "the control found no listener"
    assert not listening & set(worker)
    assert not listening & set(_descriptor_targets(serving.zygote))
    for secret in (lab.users_file, lab.state_dir):
        assert not [target for target in worker if target.startswith(str(secret))]


# -- memory -----------------------------------------------------------------------


def _memory_holds(pid: int, needles: tuple[bytes, ...]) -> set[bytes]:
    """Which of `needles` occur in the readable memory of `pid`.

    Reads /proc/PID/mem (as root) mapping by mapping, in bounded chunks
    that overlap by the longest needle so nothing is missed at an edge.
    """

    found: set[bytes] = set()
    overlap = max(len(needle) for needle in needles) - 1
    budget = MAX_SCANNED_BYTES
    with open(f"/proc/{pid}/mem", "rb", buffering=0) as memory:
        for start, end in _readable_regions(pid):
            tail = b""
            offset = start
            limit = min(end, start + MAX_REGION_BYTES)
            while offset < limit and budget > 0:
                size = min(MEMORY_CHUNK, limit - offset)
                try:
                    memory.seek(offset)
                    chunk = memory.read(size)
                except OSError:
                    break
                if not chunk:
                    break
                window = tail + chunk
                found |= {needle for needle in needles if needle in window}
                tail = window[-overlap:]
                offset += len(chunk)
                budget -= len(chunk)
    return found


def _readable_regions(pid: int) -> list[tuple[int, int]]:
    regions = []
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if not fields[1].startswith("r"):
            continue
        if len(fields) > 5 and fields[5] in UNREADABLE_MAPPINGS:
            continue
        start, end = (int(part, 16) for part in fields[0].split("-"))
        regions.append((start, end))
    return regions


def test_no_password_hash_outside_the_supervisor(serving: Serving) -> None:
    needles = tuple(digest.encode() for digest in serving.hashes)
    # The part after the last "$" is the hash proper; look for it alone too.
    needles += tuple(digest.rsplit("$", 1)[1].encode() for digest in serving.hashes)

    in_supervisor = _memory_holds(serving.supervisor, needles)
    in_zygote = _memory_holds(serving.zygote, needles)
    in_worker = _memory_holds(serving.worker, needles)

    assert in_supervisor == set(needles), "the scan cannot see the hashes"
    assert in_zygote == set()
    assert in_worker == set()


def _host_key_secrets(state_dir: Path) -> dict[str, tuple[bytes, ...]]:
    """The private numbers of each host key, as memory may hold them.

    An Ed25519 key is its 32-byte seed; an ECDSA key its private scalar,
    which OpenSSL keeps as a little-endian number, so both byte orders.
    """

    seed = serialization.load_ssh_private_key(
        (state_dir / "ssh_host_ed25519_key").read_bytes(), None
    )
    assert isinstance(seed, ed25519.Ed25519PrivateKey)
    scalar = serialization.load_ssh_private_key(
        (state_dir / "ssh_host_ecdsa_key").read_bytes(), None
    )
    assert isinstance(scalar, ec.EllipticCurvePrivateKey)
    value = scalar.private_numbers().private_value
    return {
        "ed25519": (seed.private_bytes_raw(),),
        "ecdsa": (value.to_bytes(32, "big"), value.to_bytes(32, "little")),
    }


def test_no_host_private_key_outside_the_supervisor(serving: Serving) -> None:
    secrets = _host_key_secrets(serving.lab.state_dir)
    needles = tuple(needle for found in secrets.values() for needle in found)

    in_supervisor = _memory_holds(serving.supervisor, needles)
    in_zygote = _memory_holds(serving.zygote, needles)
    in_worker = _memory_holds(serving.worker, needles)

    # The supervisor signs each key exchange, so the scan must see the keys
    # there; the worker that just had its key exchange signed holds none.
    assert set(secrets["ed25519"]) <= in_supervisor, "the scan cannot see the keys"
    assert in_supervisor & set(secrets["ecdsa"]), "the scan cannot see the keys"
    assert in_zygote == set()
    assert in_worker == set()
