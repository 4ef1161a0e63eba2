"""The test harness itself: no server a lab starts may outlive it.

Each test ends a lab's server the hard way (a start that never gets ready,
a supervisor that ignores SIGTERM, a test run that dies) and then looks in
/proc for every process that server started.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from serverlab import ServerLab, descendants, process_ids

TESTS_DIR = Path(__file__).parent
# Long enough for the zygote to start, so a failed start has one to leave,
# even on a machine busy with the rest of the suite (the first start also
# makes the host keys).
NOT_READY_TIMEOUT = 12.0
GONE_TIMEOUT = 30.0


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie has stopped running."""

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _processes_naming(config: Path) -> list[int]:
    """Every running process with `config` on its command line."""

    needle = str(config).encode()
    found = []
    for pid in process_ids():
        try:
            command_line = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in command_line and _alive(pid):
            found.append(pid)
    return found


def _wait_until_gone(config: Path) -> list[int]:
    """The processes naming `config` that are still there after a while."""

    deadline = time.monotonic() + GONE_TIMEOUT
    while _processes_naming(config) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _processes_naming(config)


class ProcessWatcher:
    """Records, from a thread, every process of a lab's server while it runs."""

    def __init__(self, lab: ServerLab) -> None:
        self.lab = lab
        self.seen: dict[int, bytes] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="watcher")

    def __enter__(self) -> ProcessWatcher:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _watch(self) -> None:
        deadline = time.monotonic() + GONE_TIMEOUT + NOT_READY_TIMEOUT
        while not self._stop.wait(0.05) and time.monotonic() < deadline:
            process = self.lab.process
            if process is None:
                continue
            for pid in [process.pid, *descendants(process.pid)]:
                try:
                    self.seen[pid] = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    pass

    def zygotes(self) -> list[int]:
        return [pid for pid, line in self.seen.items() if b"sftpjail.zygote" in line]


def test_a_start_that_never_gets_ready_leaves_no_process(lab: ServerLab) -> None:
    # A config the server accepts, but then it never logs the ready line.
    lab.extra_config = 'log_level = "warning"'
    lab.write_config()

    with (
        ProcessWatcher(lab) as watcher,
        pytest.raises(AssertionError, match="server never logged"),
    ):
        lab.start(timeout=NOT_READY_TIMEOUT)

    assert watcher.zygotes(), "the server never got as far as its zygote"
    assert [pid for pid in watcher.seen if _alive(pid)] == []
    assert _processes_naming(lab.config_file) == []
    assert lab.process is None


def test_a_supervisor_that_ignores_sigterm_takes_its_workers_along(
    lab: ServerLab,
) -> None:
    alice = lab.add_user("alice")
    lab.start()
    # Ends by itself should stop() ever hang on the session it holds.
    holder = subprocess.Popen(
        ["timeout", "60", "sftp", *lab.ssh_options(alice), "-P", str(lab.port),
         "alice@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        worker = lab.wait_for_worker("alice")
        assert lab.process is not None
        supervisor = lab.process.pid
        server = [supervisor, *descendants(supervisor)]
        os.kill(supervisor, signal.SIGSTOP)  # it can no longer end its workers

        started = time.monotonic()
        code = lab.stop(timeout=1)
        took = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait(10)

    assert code == -signal.SIGKILL
    assert worker in server and len(server) >= 3  # supervisor, zygote, worker
    assert [pid for pid in server if _alive(pid)] == []
    assert took < GONE_TIMEOUT, "stop() waited for the orphaned worker"


def test_a_test_run_that_dies_takes_its_server_along(lab: ServerLab) -> None:
    # Stands for pytest killed mid-test: no fixture finalizer runs.
    run = textwrap.dedent(
        f"""
        import os, signal, sys
        from pathlib import Path
        sys.path.insert(0, {str(TESTS_DIR)!r})
        from serverlab import ServerLab
        lab = ServerLab(Path({str(lab.root)!r}), port={lab.port})
        lab.start()
        print(lab.process.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    try:
        test_run = subprocess.run(
            [sys.executable, "-c", run], capture_output=True, text=True, timeout=60
        )
        left = _wait_until_gone(lab.config_file)
    finally:
        for pid in _processes_naming(lab.config_file):
            os.kill(pid, signal.SIGKILL)

    assert test_run.returncode == -signal.SIGKILL, test_run.stderr
    supervisor = int(test_run.stdout)
    assert not _alive(supervisor)
    assert left == []
