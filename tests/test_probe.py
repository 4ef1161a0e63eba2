"""sftpjail probe: target syntax, verdicts and exit codes, on loopback only."""

from __future__ import annotations

import json
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from sftpjail.cli.probe import probe as probe_command
from sftpjail.errors import ProbeTargetError
from sftpjail.probe import (
    Target,
    build_dns_query,
    parse_dns_response,
    parse_target,
    probe,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tcp:127.0.0.1:80", Target("tcp:127.0.0.1:80", "tcp", "127.0.0.1", 80)),
        ("tcp:[::1]:80", Target("tcp:[::1]:80", "tcp", "::1", 80)),
        ("tcp6:[::1]:22", Target("tcp6:[::1]:22", "tcp6", "::1", 22)),
        ("udp:localhost:53", Target("udp:localhost:53", "udp", "localhost", 53)),
        ("dns:127.0.0.1", Target("dns:127.0.0.1", "dns", "127.0.0.1", 53)),
        ("dns:127.0.0.1:5353", Target("dns:127.0.0.1:5353", "dns", "127.0.0.1", 5353)),
        ("dns:[::1]", Target("dns:[::1]", "dns", "::1", 53)),
        ("dns:::1", Target("dns:::1", "dns", "::1", 53)),
        ("icmp:127.0.0.1", Target("icmp:127.0.0.1", "icmp", "127.0.0.1")),
        ("icmp6:::1", Target("icmp6:::1", "icmp6", "::1")),
        ("icmp6:[::1]", Target("icmp6:[::1]", "icmp6", "::1")),
        ("mptcp:127.0.0.1:80", Target("mptcp:127.0.0.1:80", "mptcp", "127.0.0.1", 80)),
    ],
)
def test_parse_target_accepts_each_form(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "host", "port", "url"),
    [
        ("http://127.0.0.1/x?y=1", "127.0.0.1", 80, "http://127.0.0.1/x?y=1"),
        ("http:http://127.0.0.1:8080/", "127.0.0.1", 8080, "http://127.0.0.1:8080/"),
        ("https://[::1]/", "::1", 443, "https://[::1]/"),
    ],
)
def test_parse_target_reads_urls(text: str, host: str, port: int, url: str) -> None:
    target = parse_target(text)

    assert (target.kind, target.host, target.port, target.url) == (
        "http",
        host,
        port,
        url,
    )


@pytest.mark.parametrize(
    "text",
    [
        "ftp:127.0.0.1:21",
        "tcp:127.0.0.1",
        "tcp:127.0.0.1:http",
        "tcp:127.0.0.1:0",
        "tcp:127.0.0.1:65536",
        "tcp6:[::1:22",
        "tcp6:[::1]22",
        "udp::53",
        "icmp:",
        "http://",
        "http://127.0.0.1:99999/",
        "127.0.0.1",
    ],
)
def test_parse_target_rejects_bad_syntax(text: str) -> None:
    with pytest.raises(ProbeTargetError, match="bad target"):
        parse_target(text)


def test_dns_query_is_a_well_formed_question() -> None:
    query = build_dns_query(0x1234, "example.com")

    assert query[:12] == struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    assert query[12:] == b"\x07example\x03com\x00\x00\x01\x00\x01"


def test_dns_response_must_match_the_query_id_and_be_a_response() -> None:
    answer = struct.pack("!HHHHHH", 7, 0x8183, 1, 0, 0, 0)

    assert parse_dns_response(answer, 7) == "rcode 3, 0 answer records"
    assert parse_dns_response(answer, 8) is None
    assert parse_dns_response(struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0), 7) is None
    assert parse_dns_response(b"short", 7) is None


# Real probes against loopback listeners of this test ----------------------


@pytest.fixture
def tcp_listener() -> Iterator[int]:
    """A loopback TCP server answering like HTTP; yields its port."""

    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                connection, _ = server.accept()
            except TimeoutError:
                continue
            with connection:
                connection.settimeout(2)
                try:
                    connection.recv(1024)
                    connection.sendall(b"HTTP/1.0 204 No Content\r\n\r\n")
                except OSError:
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    server.close()


@pytest.fixture
def udp_responder() -> Iterator[tuple[int, socket.socket]]:
    """A loopback UDP socket that answers DNS queries and echoes the rest."""

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(2048)
            except TimeoutError:
                continue
            if data.startswith(b"sftpjail probe"):
                server.sendto(data, peer)
            else:
                server.sendto(data[:2] + b"\x81\x80" + data[4:], peer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1], server
    stop.set()
    thread.join(timeout=5)
    server.close()


def closed_port() -> int:
    """A loopback TCP/UDP port nobody listens on (bound, then released)."""

    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port: int = placeholder.getsockname()[1]
    return port


def test_tcp_handshake_is_a_leak(tcp_listener: int) -> None:
    result = probe(parse_target(f"tcp:127.0.0.1:{tcp_listener}"), timeout=2)

    assert result.leaked
    assert result.detail == f"TCP connection established to 127.0.0.1:{tcp_listener}"


def test_http_answer_is_a_leak_and_is_quoted(tcp_listener: int) -> None:
    result = probe(parse_target(f"http://127.0.0.1:{tcp_listener}/"), timeout=2)

    assert result.leaked
    assert result.detail.endswith("HTTP/1.0 204 No Content")


def test_mptcp_handshake_is_a_leak_even_when_tcp_answers(tcp_listener: int) -> None:
    result = probe(parse_target(f"mptcp:127.0.0.1:{tcp_listener}"), timeout=2)

    if "cannot open socket" in result.detail:
        pytest.skip(f"this kernel has no MPTCP: {result.detail}")
    assert result.leaked


def test_refused_tcp_connection_is_blocked() -> None:
    result = probe(parse_target(f"tcp:127.0.0.1:{closed_port()}"), timeout=2)

    assert not result.leaked
    assert result.detail.startswith("connection refused")


def test_udp_reply_is_a_leak(udp_responder: tuple[int, socket.socket]) -> None:
    port, _ = udp_responder

    result = probe(parse_target(f"udp:127.0.0.1:{port}"), timeout=2)

    assert result.leaked
    assert result.detail == f"UDP reply of 15 bytes from 127.0.0.1:{port}"


def test_dns_answer_is_a_leak(udp_responder: tuple[int, socket.socket]) -> None:
    port, _ = udp_responder

    result = probe(parse_target(f"dns:127.0.0.1:{port}"), timeout=2)

    assert result.leaked
    assert "rcode 0" in result.detail


def test_silence_is_blocked_after_the_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]

        result = probe(parse_target(f"udp:127.0.0.1:{port}"), timeout=0.3)

    assert not result.leaked
    assert result.detail == "no answer within 0.3 s"


@pytest.mark.parametrize("target", ["icmp:127.0.0.1", "icmp6:::1"])
def test_echo_reply_is_a_leak(target: str) -> None:
    result = probe(parse_target(target), timeout=2)

    if "cannot open socket" in result.detail:
        pytest.skip(f"neither ping nor raw sockets here: {result.detail}")
    assert result.leaked
    assert result.detail.startswith("echo reply from ")


def test_unresolvable_name_is_blocked() -> None:
    result = probe(parse_target("tcp:name.invalid:80"), timeout=2)

    assert not result.leaked
    assert result.detail.startswith("cannot resolve name.invalid")


# Exit codes -----------------------------------------------------------------


def test_exit_code_is_0_when_everything_is_blocked() -> None:
    outcome = CliRunner().invoke(probe_command, [f"tcp:127.0.0.1:{closed_port()}"])

    assert outcome.exit_code == 0
    assert outcome.output.startswith("blocked  tcp:127.0.0.1:")


def test_exit_code_is_1_on_any_leak(tcp_listener: int) -> None:
    targets = [f"tcp:127.0.0.1:{closed_port()}", f"tcp:127.0.0.1:{tcp_listener}"]

    outcome = CliRunner().invoke(probe_command, ["--timeout", "2", *targets])

    assert outcome.exit_code == 1
    rows = outcome.output.splitlines()
    assert [row.split()[0] for row in rows] == ["blocked", "LEAK"]


def test_json_output_lists_every_target(tcp_listener: int) -> None:
    target = f"tcp:127.0.0.1:{tcp_listener}"

    outcome = CliRunner().invoke(probe_command, ["--json", target])

    document = json.loads(outcome.output)
    assert document["leaks"] == 1
    assert document["results"][0]["target"] == target
    assert document["results"][0]["verdict"] == "LEAK"


@pytest.mark.parametrize(
    "arguments", [[], ["tcp:nowhere"], ["--timeout", "0", "icmp:::1"]]
)
def test_exit_code_is_2_on_bad_usage(arguments: list[str]) -> None:
    outcome = CliRunner().invoke(probe_command, arguments)

    assert outcome.exit_code == 2
