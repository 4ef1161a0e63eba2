"""Metrics: counting, the HTTP responder, the protocol, and a real scrape."""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from operationslab import wait_until
from serverlab import ServerLab, free_port
from sftpjail import ipc, metrics
from sftpjail.metrics import Metrics, MetricsResponder


def _value(exposition: str, series: str) -> float:
    """The value of one series line, e.g. 'sftpjail_bans_total'; 0 if absent."""

    for line in exposition.splitlines():
        name, _, value = line.rpartition(" ")
        if name == series:
            return float(value)
    return 0.0


# -- counting ----------------------------------------------------------------


def test_transfer_adds_bytes_and_operations() -> None:
    counters = Metrics()

    counters.transfer(10, 20, {"open_write:ok": 2, "remove:denied": 1})
    counters.transfer(5, 0, {"open_write:ok": 1})
    text = counters.exposition().decode()

    assert _value(text, "sftpjail_received_bytes_total") == 15
    assert _value(text, "sftpjail_sent_bytes_total") == 20
    ok = 'sftpjail_operations_total{operation="open_write",result="ok"}'
    denied = 'sftpjail_operations_total{operation="remove",result="denied"}'
    assert _value(text, ok) == 3
    assert _value(text, denied) == 1


def test_invented_operation_names_cannot_grow_the_series_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(metrics, "MAX_OPERATION_SERIES", 3)
    counters = Metrics()

    counters.transfer(0, 0, {f"invented{number}:ok": 1 for number in range(10)})
    text = counters.exposition().decode()

    series = [line for line in text.splitlines() if line.startswith("sftpjail_op")]
    assert len(series) == 4
    other = 'sftpjail_operations_total{operation="other",result="other"}'
    assert _value(text, other) == 7


# -- the HTTP responder ------------------------------------------------------


@pytest.mark.parametrize(
    ("request_head", "status"),
    [
        (b"GET /metrics HTTP/1.1\r\nHost: x", b"HTTP/1.1 200 OK"),
        (b"GET /metrics?name[]=x HTTP/1.0", b"HTTP/1.1 200 OK"),
        (b"GET / HTTP/1.1", b"HTTP/1.1 404 Not Found"),
        (b"POST /metrics HTTP/1.1", b"HTTP/1.1 405 Method Not Allowed"),
        (b"GET /metrics", b"HTTP/1.1 400 Bad Request"),
        (b"\x16\x03\x01 TLS hello", b"HTTP/1.1 400 Bad Request"),
    ],
)
def test_responder_answers_only_get_metrics(request_head: bytes, status: bytes) -> None:
    reply = MetricsResponder(Metrics()).answer(request_head)

    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == status
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Connection: close" in head


# -- the worker's transfer messages --------------------------------------------


def _transfer(operations: object) -> bytes:
    message = {"type": "transfer", "bytes_in": 1, "bytes_out": 2}
    message["operations"] = operations
    return json.dumps(message).encode()


def test_transfer_message_with_operations_is_accepted() -> None:
    notice = ipc.parse_worker_message(_transfer({"open_write:ok": 3}))

    assert notice == ipc.TransferNotice(1, 2, {"open_write:ok": 3})
    plain = b'{"type": "transfer", "bytes_in": 1, "bytes_out": 2}'
    assert ipc.parse_worker_message(plain) == ipc.TransferNotice(1, 2, {})
    counted = b'{"type":"transfer","bytes_in":1,"bytes_out":2,"client_packets":7}'
    assert ipc.parse_worker_message(counted) == ipc.TransferNotice(1, 2, {}, 7)


@pytest.mark.parametrize(
    "operations",
    [
        {f"op{number}:ok": 1 for number in range(65)},
        {"x" * 41: 1},
        {"open:ok": -1},
        {"open:ok": 1.5},
        {"open:ok": True},
        {"bad\nname": 1},
        ["open:ok"],
    ],
)
def test_bad_operation_counters_break_the_protocol(operations: object) -> None:
    with pytest.raises(ipc.ProtocolError):
        ipc.parse_worker_message(_transfer(operations))


# -- a real server -------------------------------------------------------------


def test_scrape_shows_counters_moving(lab: ServerLab, tmp_path: Path) -> None:
    port = free_port()
    lab.extra_config = f'[metrics]\nlisten = "127.0.0.1:{port}"'
    lab.write_config()
    alice = lab.add_user("alice")
    lab.start()
    url = f"http://127.0.0.1:{port}/metrics"
    lab.wait_for_log(f"Serving metrics on {url}.", 1)

    def scrape() -> str:
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return str(response.read().decode())

    before = scrape()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(300_000))
    result = lab.sftp("alice", f"put {upload} up.bin\n", key=alice)
    assert result.returncode == 0, result.stderr
    stranger = lab.client_key("stranger")
    assert lab.sftp("alice", "pwd\n", key=stranger).returncode != 0

    accepted = 'sftpjail_connections_total{reason="",result="accepted"}'
    key_ok = 'sftpjail_authentications_total{method="publickey",result="ok"}'
    wait_until(
        lambda: _value(scrape(), "sftpjail_received_bytes_total") >= 300_000,
        10,
        "the upload's bytes to be counted",
    )
    after = scrape()
    assert _value(before, accepted) == 0
    assert _value(after, accepted) == 2
    assert _value(after, key_ok) == 1
    assert _value(after, "sftpjail_sessions_active") == 0
    assert _value(after, "sftpjail_users") == 1
    assert re.search(r'sftpjail_operations_total\{operation="[a-z_]+"', after)

    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5)
    assert missing.value.code == 404


def test_endpoint_survives_a_slow_and_an_oversized_client(lab: ServerLab) -> None:
    port = free_port()
    lab.extra_config = f'[metrics]\nlisten = "127.0.0.1:{port}"'
    lab.write_config()
    lab.start()

    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as flood:
        flood.sendall(b"GET /" + b"a" * 10_000)
        answer = flood.recv(100)
    with urllib.request.urlopen(
        f"http://127.0.0.1:{port}/metrics", timeout=5
    ) as response:
        status = response.status
    idle.settimeout(10)
    closed_after_timeout = idle.recv(10)
    idle.close()

    assert answer.startswith(b"HTTP/1.1 431")
    assert status == 200
    assert closed_after_timeout == b""
