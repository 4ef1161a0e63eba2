"""The benchmark harness still runs: every scenario, tiny sizes, both servers.

No speed is asserted here (speed targets live in docs/benchmarks.md); these
tests check that each scenario measures something for both servers, that
the results files are written, and that no server process or directory
outlives a run, even an interrupted one.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
WORKSPACES = Path("/var/lib/sftpjail-bench")
RUN_TIMEOUT = 240
TINY = [
    "--quick",
    "--runs=1",
    "--big-mib=2",
    "--small-files=20",
    "--list-entries=50",
    "--logins=2",
    "--concurrent=2",
    "--concurrent-mib=1",
    "--idle=3",
]
EXPECTED_METRICS = {
    "login.p50",
    "login.p95",
    "small_files",
    "cpu.small_files",
    "listing",
    "cpu.listing",
    "upload.aes128-gcm",
    "download.aes128-gcm",
    "upload.chacha20-poly1305",
    "download.chacha20-poly1305",
    "cpu.upload.aes128-gcm",
    "cpu.download.chacha20-poly1305",
    "client_cpu.download.aes128-gcm",
    "concurrent.upload",
    "concurrent.download",
    "idle.session_pss",
    "idle.shared_pss",
    "idle.connected",
}

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/sbin/sshd").exists(),
    reason="the benchmark starts sshd and creates users: needs root and sshd",
)


def bench_command(workspace: Path, results: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench",
        *TINY,
        f"--workspace={workspace}",
        f"--results-dir={results}",
        *extra,
    ]


def processes_mentioning(text: str) -> list[str]:
    """Command lines of live processes that contain `text`."""

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if text.encode() in command:
            found.append(command.decode(errors="replace"))
    return found


def test_a_tiny_run_measures_every_scenario_for_both_servers(tmp_path: Path) -> None:
    workspace = WORKSPACES / f"test-{uuid.uuid4().hex[:8]}"

    completed = subprocess.run(
        bench_command(workspace, tmp_path),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    [results] = tmp_path.glob("*.json")
    document = json.loads(results.read_text())
    assert document["errors"] == {}
    metrics = {metric["key"]: metric for metric in document["metrics"]}
    assert EXPECTED_METRICS <= set(metrics)
    for key in EXPECTED_METRICS:
        for server in ("openssh", "sftpjail"):
            summary = metrics[key]["summary"][server]
            # CPU is counted in 10 ms ticks: a tiny transfer may take none.
            smallest = 0 if "cpu." in key else 1e-9
            assert summary is not None and summary >= smallest, (key, server)
    assert metrics["idle.connected"]["summary"] == {"openssh": 3, "sftpjail": 3}
    assert "| Measure |" in next(tmp_path.glob("*.md")).read_text()
    assert document["machine"]["openssh"].startswith("OpenSSH")

    assert not workspace.exists()
    assert processes_mentioning(str(workspace)) == []


def test_the_chart_is_drawn_when_matplotlib_is_installed(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    workspace = WORKSPACES / f"test-{uuid.uuid4().hex[:8]}"

    completed = subprocess.run(
        bench_command(workspace, tmp_path, "--only=logins"),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    [chart] = tmp_path.glob("*.png")
    assert chart.read_bytes().startswith(b"\x89PNG")


def test_an_interrupted_run_leaves_no_server_and_no_files(tmp_path: Path) -> None:
    workspace = WORKSPACES / f"test-{uuid.uuid4().hex[:8]}"
    process = subprocess.Popen(
        bench_command(workspace, tmp_path, "--only=idle", "--idle=4"),
        cwd=REPOSITORY,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None

    # Interrupt once both servers run and the idle sessions are being opened.
    # A run that hangs without a word is killed, which ends its stderr.
    watchdog = threading.Timer(RUN_TIMEOUT, process.kill)
    watchdog.start()
    try:
        for line in process.stderr:
            if "Scenario idle." in line:
                break
    finally:
        watchdog.cancel()
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    try:
        status = process.wait(timeout=60)
    finally:
        process.kill()
        process.stderr.close()

    assert status == 130
    assert not workspace.exists()
    assert processes_mentioning(str(workspace)) == []
    assert list(tmp_path.glob("*.json")) == []


def test_bench_packets_times_both_sides_of_every_cipher() -> None:
    """`python -m bench.packets` checks byte identity, then times eight rows."""

    completed = subprocess.run(
        [sys.executable, "-m", "bench.packets", "--seconds=0.01"],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    rows = re.findall(r"^  (.+?) +([\d.]+) us/packet", completed.stdout, re.MULTILINE)
    names = [name for name, _micros in rows]
    expected = [
        f"{cipher} {direction}, {side}"
        for cipher in ("chacha20-poly1305", "aes128-gcm")
        for direction in ("encrypt", "decrypt")
        for side in ("asyncssh", "sftpjail")
    ]
    assert names == expected * 2
    assert all(float(micros) > 0 for _name, micros in rows)


def test_a_shared_directory_is_refused_as_workspace_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)

    completed = subprocess.run(
        bench_command(shared, tmp_path / "results", "--only=logins"),
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )

    assert completed.returncode == 2, completed.stderr[-4000:]
    assert "writable by root only" in completed.stderr
    assert shared.stat().st_mode & 0o7777 == 0o1777
    assert list(shared.iterdir()) == []


def test_bench_floor_measures_three_servers_and_leaves_nothing() -> None:
    """`python -m bench.floor`: OpenSSH, plain asyncssh and sftpjail, each
    with a rate for both scenarios and a ratio to OpenSSH."""

    workspace = WORKSPACES / f"test-{uuid.uuid4().hex[:8]}"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.floor",
            "--files=20",
            "--entries=50",
            "--runs=1",
            f"--workspace={workspace}",
        ],
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )

    assert completed.returncode == 0, completed.stderr[-4000:]
    header, _rule, *rows = completed.stdout.strip().splitlines()
    assert "| openssh | asyncssh | sftpjail |" in header
    rates = {row.split("|")[1].strip(): row.split("|")[3:6] for row in rows}
    for title in ("Upload 20 files of 4 KiB", "ls -l of 50 entries"):
        assert all(float(value) > 0 for value in rates[title]), rates
    assert not workspace.exists()
    assert processes_mentioning(str(workspace)) == []
