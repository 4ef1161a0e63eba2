"""The asyncssh transport tunings: what they need, and what the wire shows.

The tunings change asyncssh only inside the server's zygote and workers;
this test process keeps asyncssh as it is, so the tests here either call
the pieces directly or look at a real server from a real client.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import asyncssh
import pytest
from asyncssh.connection import SSHConnection

from serverlab import ServerLab
from sftpjail import transport


def test_every_tuning_fits_the_pinned_asyncssh() -> None:
    for tuning in transport.TUNINGS:
        assert tuning.unavailable(asyncssh.__version__) is None, tuning.name


def test_another_minor_version_gets_no_tuning_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    send_packet = SSHConnection.send_packet

    with caplog.at_level(logging.WARNING, logger="sftpjail.transport"):
        installed = transport.install_tunings(version="2.25.0")

    assert installed == []
    assert SSHConnection.send_packet is send_packet
    assert len(caplog.records) == len(transport.TUNINGS)
    assert "asyncssh 2.25.0 is not 2.24.x" in caplog.records[0].getMessage()


def test_a_missing_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(SSHConnection, "send_packet")

    reasons = [tuning.unavailable(asyncssh.__version__) for tuning in transport.TUNINGS]

    assert "asyncssh has no asyncssh.connection:SSHConnection.send_packet" in reasons


def _sftp_debug_log(lab: ServerLab, user: str, commands: str) -> str:
    """Run `sftp` with the client's packet-level debug log; return that log."""

    key = lab.client_key(user)
    options = [
        "LogLevel=DEBUG3" if option == "LogLevel=ERROR" else option
        for option in lab.ssh_options(key)
    ]
    completed = subprocess.run(
        ["sftp", *options, "-P", str(lab.port), "-b", "-", f"{user}@127.0.0.1"],
        input=commands.encode(),
        capture_output=True,
        timeout=60,
    )
    log = completed.stderr.decode(errors="replace")
    assert completed.returncode == 0, log
    return log


def test_the_server_sends_no_empty_ignore_packets(
    lab: ServerLab, tmp_path: Path
) -> None:
    lab.add_user("alice")
    lab.start()
    sample = tmp_path / "sample.bin"
    sample.write_bytes(bytes(300_000))

    log = _sftp_debug_log(lab, "alice", f"put {sample} sample.bin\nls -l\n")

    # Packets past the key exchange arrived (91: channel open confirmed),
    # and not one ignore packet with them.
    assert "receive packet: type 91" in log
    assert "Received SSH2_MSG_IGNORE" not in log
