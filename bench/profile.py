"""Where a sftpjail worker spends its time: py-spy during one workload.

`python -m bench.profile WORKLOAD` starts sftpjail alone (no sshd), opens
a session with the real sftp client, attaches py-spy to that session's
worker from outside (as root, through ptrace; the worker's own sandbox
does not stop a tracer that is not inside it) and runs the workload.  For
`logins`, py-spy follows the zygote and every worker it forks.

py-spy records with `--idle`, so time the worker spends waiting in the
event loop's `select` shows up as such.  The summary sorts every sample
by the kind of work its innermost frame does (waiting, socket system
calls, ciphers, our handlers, asyncssh's layers), then lists the
functions that hold the most samples, by own and by inclusive time.

Output, in --out (default bench/results/): PROFILE.txt (py-spy's folded
stacks) and PROFILE.summary.txt.
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.cli import stop_on_sigterm
from bench.client import SftpSession, Target, log_in_once, sessions
from bench.context import LOGIN_TIMEOUT
from bench.jailserver import SftpjailServer, export_revision
from bench.metrics import MIB
from bench.servers import WORK_DIR
from bench.settings import AES_GCM, CHACHA20
from bench.workspace import DEFAULT_PARENT, Workspace, WorkspaceError

WORKLOADS = ("upload", "download", "small-files", "listing", "logins")
PY_SPY_START_SECONDS = 1.0
TOP = 25
IDLE = "waiting in epoll (idle)"
# Kinds of work, matched in order against the innermost frame of a sample.
KINDS = (
    (IDLE, ("Selector.select (selectors.py",)),
    (
        "socket send/recv system calls",
        (
            "_SelectorSocketTransport.write (",
            "_read_ready__data_received (",
            "sock_recv",
            "sock_send",
        ),
    ),
    ("ciphers and MACs", ("asyncssh/crypto/", "cryptography/", "<frozen abc>")),
    ("sftpjail handlers (file system calls)", ("sftpjail/sftp_server.py",)),
    ("sftpjail audit log", ("sftpjail/audit.py", "json/")),
    ("sftpjail path resolution", ("sftpjail/jailpath.py",)),
    ("other sftpjail code", ("sftpjail/",)),
    ("asyncssh SFTP layer", ("asyncssh/sftp.py",)),
    ("asyncssh SSH packets and channels", ("asyncssh/",)),
)


def main(argv: list[str] | None = None) -> None:
    """Profile one workload and print the summary."""

    arguments = _parse(argv)
    _py_spy()  # missing: say so before anything is started
    output_dir: Path = arguments.out
    output_dir.mkdir(parents=True, exist_ok=True)
    stem = f"profile-{arguments.workload}-{time.strftime('%H%M%S')}"
    raw = output_dir / f"{stem}.txt"

    stop_on_sigterm()
    try:
        workspace = Workspace(arguments.workspace or DEFAULT_PARENT)
    except WorkspaceError as error:
        raise SystemExit(f"bench.profile: {error}") from None
    server: SftpjailServer | None = None
    try:
        source = arguments.sftpjail_source
        if arguments.sftpjail_revision:
            source = export_revision(
                arguments.sftpjail_revision, workspace.root / "snapshot"
            )
        server = SftpjailServer(workspace.server_root("sftpjail"), source)
        server.prepare(workspace.public_key)
        server.start()
        target = Target(
            server.port, workspace.key, arguments.cipher, workspace.client_dir
        )
        log_in_once(target, LOGIN_TIMEOUT)
        seconds = _run_workload(arguments, workspace, server, target, raw)
    finally:
        if server is not None:
            server.stop()
        workspace.cleanup()

    summary = summarize(raw.read_text())
    text = f"{arguments.workload}: {seconds:.2f} s under the profiler\n{summary}"
    raw.with_suffix(".summary.txt").write_text(text)
    print(text)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--cipher", default=AES_GCM, choices=(AES_GCM, CHACHA20))
    parser.add_argument("--size-mib", type=int, default=512)
    parser.add_argument("--count", type=int, default=2000, help="files/entries/logins")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--sftpjail-revision", metavar="REV")
    parser.add_argument("--sftpjail-source", type=Path, metavar="DIR")
    parser.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help="root-owned directory for the run's files, e.g. on a tmpfs",
    )
    return parser.parse_args(argv)


def _run_workload(
    arguments: argparse.Namespace,
    workspace: Workspace,
    server: SftpjailServer,
    target: Target,
    raw: Path,
) -> float:
    if arguments.workload == "logins":
        return _profile_logins(arguments, server, target, raw)

    command = _prepare_command(arguments, workspace, server)
    with sessions(target, 1) as (session,):
        session.wait_logged_in(LOGIN_TIMEOUT)
        [worker] = server.session_groups()[0][:1]
        spy = _start_py_spy(worker, raw, arguments.rate, follow=False)
        try:
            reply = session.run(command, timeout=600)
        finally:
            _stop_py_spy(spy)
    return reply.seconds


def _prepare_command(
    arguments: argparse.Namespace, workspace: Workspace, server: SftpjailServer
) -> str:
    """Put the workload's files in place; return the sftp command to time."""

    count = arguments.count
    if arguments.workload in ("upload", "download"):
        payload = workspace.random_file("big.bin", arguments.size_mib * MIB)
        if arguments.workload == "upload":
            return f"put {payload.path} {WORK_DIR}/uploaded.bin"
        os.link(payload.path, server.work_dir / "big.bin")
        return f"get {WORK_DIR}/big.bin {workspace.client_dir / 'downloaded.bin'}"
    if arguments.workload == "small-files":
        tree = workspace.small_tree("small", count, 4096)
        return f"put -r {tree} {WORK_DIR}/small"
    listed = server.work_dir / "many"
    listed.mkdir()
    for number in range(count):
        (listed / f"entry-{number:05d}").touch()
    return f"ls -l {WORK_DIR}/many"


def _profile_logins(
    arguments: argparse.Namespace, server: SftpjailServer, target: Target, raw: Path
) -> float:
    zygote = server.shared_pids()[1]
    spy = _start_py_spy(zygote, raw, arguments.rate, follow=True)
    started = time.monotonic()
    try:
        for _ in range(arguments.count):
            session = SftpSession(target)
            session.open()
            try:
                session.wait_logged_in(LOGIN_TIMEOUT)
            finally:
                session.close()
    finally:
        _stop_py_spy(spy)
    return time.monotonic() - started


def _py_spy() -> str:
    """py-spy from PATH, or from the virtual environment running this."""

    beside_python = Path(sys.executable).parent / "py-spy"
    found = shutil.which("py-spy") or (
        str(beside_python) if beside_python.exists() else None
    )
    if found is None:
        raise SystemExit("py-spy is missing: pip install -e '.[bench]'")
    return found


def _start_py_spy(
    pid: int, raw: Path, rate: int, *, follow: bool
) -> subprocess.Popen[bytes]:
    command = [
        _py_spy(),
        "record",
        "--pid",
        str(pid),
        "--format",
        "raw",
        "--output",
        str(raw),
        "--rate",
        str(rate),
        "--idle",
        "--nonblocking",
    ]
    if follow:
        command.append("--subprocesses")
    spy = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(PY_SPY_START_SECONDS)
    if spy.poll() is not None:
        assert spy.stderr is not None
        raise SystemExit(f"py-spy could not attach: {spy.stderr.read().decode()}")
    return spy


def _stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait()


def summarize(folded: str) -> str:
    """Where the working samples fall, by kind of work and by function."""

    kinds: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    for line in folded.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = [_function(frame) for frame in stack.split(";")]
        kind = _kind_of(frames[-1])
        kinds[kind] += count
        if kind == IDLE:
            continue
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    total = sum(kinds.values())
    working = total - kinds.pop(IDLE, 0)
    if working == 0:
        return "no working samples\n"

    lines = [
        f"{total} samples; {100 * (total - working) / total:.1f}% in epoll "
        "(py-spy's view; the CPU counters of /proc are the better measure "
        "of how busy the worker was).",
        "",
        f"{working} working samples by kind of work:",
    ]
    lines += [f"  {100 * n / working:5.1f}%  {name}" for name, n in kinds.most_common()]
    for title, counter in (("own", own), ("inclusive", inclusive)):
        lines += ["", f"Top {TOP} functions by {title} time (% of working samples):"]
        lines += [
            f"  {100 * n / working:5.1f}%  {name}"
            for name, n in counter.most_common(TOP)
        ]
    return "\n".join(lines) + "\n"


def _kind_of(leaf: str) -> str:
    """Name the kind of work a sample's innermost function does."""

    for kind, patterns in KINDS:
        if any(pattern in leaf for pattern in patterns):
            return kind
    return "asyncio and other Python"


def _function(frame: str) -> str:
    """`name (file:line)` without the line, so a function counts once."""

    head, _, _ = frame.rpartition(":")
    return head + ")" if head else frame


if __name__ == "__main__":
    main()
