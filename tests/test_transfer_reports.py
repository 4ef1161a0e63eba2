"""Workers report bytes and operations, seen through the metrics endpoint."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from pathlib import Path

from grants import add_restricted_user
from serverlab import ServerLab, free_port

# A report goes out at most every 2 s while counters change.
REPORT_WAIT = 10.0


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _wait_for_metric(port: int, line: str) -> str:
    deadline = time.monotonic() + REPORT_WAIT
    while True:
        text = _metrics(port)
        if line in text.splitlines():
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"no {line!r} in:\n{text}")
        time.sleep(0.2)


def test_counters_arrive_during_and_after_a_session(
    lab: ServerLab, tmp_path: Path
) -> None:
    metrics_port = free_port()
    lab.extra_config = f'\n[metrics]\nlisten = "127.0.0.1:{metrics_port}"\n'
    lab.write_config()
    key = add_restricted_user(
        lab, "reporter", permissions={"/": ["list", "download", "upload"]}
    )
    lab.start()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(50_000))

    session = subprocess.Popen(
        ["sftp", *lab.ssh_options(key), "-P", str(lab.port), "reporter@127.0.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    assert session.stdin is not None
    try:
        session.stdin.write(f"put {payload} up.bin\n".encode())
        session.stdin.flush()
        # The session is still open: only the periodic report can tell.
        _wait_for_metric(metrics_port, "sftpjail_received_bytes_total 50000.0")
        session.stdin.write(b"rm up.bin\nget up.bin /dev/null\n")
    finally:
        session.communicate(timeout=30)

    text = _wait_for_metric(metrics_port, "sftpjail_sent_bytes_total 50000.0")
    operations = [
        'sftpjail_operations_total{operation="open_write",result="ok"} 1.0',
        'sftpjail_operations_total{operation="open_read",result="ok"} 1.0',
        'sftpjail_operations_total{operation="remove",result="refused"} 1.0',
    ]
    for line in operations:
        assert line in text.splitlines(), text
