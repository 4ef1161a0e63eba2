"""Try to reach the outside world and report whether anything answered.

Theory of operation.  Run inside the container, `sftpjail probe` sends one
real request per target (a TCP or MPTCP handshake, a UDP datagram, a DNS
query, an ICMP echo, an HTTP GET) and waits up to the timeout.  A target
is a LEAK only on positive proof of two-way traffic with it: a completed
handshake, a datagram or DNS answer, an echo reply, HTTP bytes.  Anything
else is `blocked`, with the reason:

- no answer before the timeout (what a DROP rule on the path looks like);
- a local refusal (EPERM/EACCES: a firewall in this namespace);
- unreachable (ENETUNREACH/EHOSTUNREACH: no route, or an ICMP error);
- refused (ECONNREFUSED: a RST or port-unreachable came back; the packet
  left, but nothing at the target talked to us);
- the name did not resolve, or the socket could not be opened at all (a
  process that cannot open an ICMP socket cannot ping either).

Targets run concurrently, one thread each, so a run takes about one
timeout however many targets are blocked.
"""

from __future__ import annotations

import errno
import secrets
import socket
import struct
import time
import urllib.parse
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from sftpjail.errors import ProbeTargetError

DEFAULT_TIMEOUT = 3.0
KINDS = ("tcp", "tcp6", "udp", "dns", "icmp", "icmp6", "mptcp", "http", "https")
SYNTAX = (
    "tcp:HOST:PORT, tcp6:[HOST]:PORT, udp:HOST:PORT, dns:RESOLVER[:PORT], "
    "icmp:HOST, icmp6:HOST, mptcp:HOST:PORT, http://HOST[:PORT]/PATH"
)

# Linux's number for MPTCP; socket.IPPROTO_MPTCP exists only from 3.10 on
# some builds, so fall back to the constant from linux/in.h.
IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)

# The name every DNS probe asks for.  Any well-formed answer counts, even
# NXDOMAIN, so the name only has to be a valid one.
DNS_QUERY_NAME = "example.com"

_MAX_THREADS = 16
_ICMP_ECHO = {4: (8, 0), 6: (128, 129)}  # family -> (request, reply) type


@dataclass(frozen=True)
class Target:
    """One parsed probe target."""

    text: str
    kind: str
    host: str
    port: int | None = None
    url: str = ""


@dataclass(frozen=True)
class ProbeResult:
    """What one target's probe found."""

    target: str
    leaked: bool
    detail: str

    @property
    def verdict(self) -> str:
        """`LEAK` or `blocked`, as printed."""

        return "LEAK" if self.leaked else "blocked"


def parse_target(text: str) -> Target:
    """Parse one target; raise ProbeTargetError with the accepted forms."""

    kind, colon, rest = text.partition(":")
    if not colon or kind not in KINDS or not rest:
        raise ProbeTargetError(f"bad target {text!r}; use one of: {SYNTAX}")
    if kind in ("http", "https"):
        return _parse_url(text, kind, rest)
    if kind in ("icmp", "icmp6"):
        return Target(text, kind, _unbracket(rest))
    if kind == "dns":
        host, port = _split_host_port(text, rest, default_port=53)
        return Target(text, kind, host, port)
    host, port = _split_host_port(text, rest, default_port=None)
    return Target(text, kind, host, port)


def probe(target: Target, timeout: float = DEFAULT_TIMEOUT) -> ProbeResult:
    """Probe one target and classify the outcome."""

    try:
        detail = _PROBES[target.kind](target, timeout)
    except socket.gaierror as error:
        return ProbeResult(
            target.text, False, f"cannot resolve {target.host}: {error.strerror}"
        )
    except TimeoutError:
        return ProbeResult(target.text, False, f"no answer within {timeout:g} s")
    except _SocketUnavailableError as error:
        return ProbeResult(target.text, False, f"cannot open socket: {error}")
    except OSError as error:
        return ProbeResult(target.text, False, _describe_os_error(error))
    return ProbeResult(target.text, True, detail)


def probe_all(
    targets: list[Target], timeout: float = DEFAULT_TIMEOUT
) -> list[ProbeResult]:
    """Probe every target concurrently; results keep the targets' order."""

    workers = max(1, min(_MAX_THREADS, len(targets)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda target: probe(target, timeout), targets))


class _SocketUnavailableError(Exception):
    """Neither kind of socket a probe needs could be opened."""


def _parse_url(text: str, kind: str, rest: str) -> Target:
    """Accept `http://host/path`, `https://host/` and `http:http://host/`."""

    url = rest if rest.startswith(("http://", "https://")) else f"{kind}:{rest}"
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as error:
        raise ProbeTargetError(f"bad target {text!r}: {error}") from error
    if not parts.hostname:
        raise ProbeTargetError(f"bad target {text!r}: the URL has no host")
    return Target(text, "http", parts.hostname, port, url)


def _split_host_port(text: str, rest: str, default_port: int | None) -> tuple[str, int]:
    """Split HOST:PORT or [HOST]:PORT; a bare IPv6 address has no port."""

    if rest.startswith("["):
        host, bracket, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else None
        if not bracket or (tail and port_text is None):
            raise ProbeTargetError(f"bad target {text!r}: write IPv6 as [ADDRESS]:PORT")
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
    else:
        host, port_text = rest, None

    if port_text is None:
        if default_port is None:
            raise ProbeTargetError(f"bad target {text!r}: a port is required")
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ProbeTargetError(f"bad target {text!r}: {port_text!r} is not a port")
    if not host:
        raise ProbeTargetError(f"bad target {text!r}: the host is empty")
    return host, int(port_text)


def _unbracket(host: str) -> str:
    """Drop the brackets around an IPv6 literal, if any."""

    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _resolve(
    host: str, port: int, family: int, socket_type: int
) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    """Return the first (family, address) `host` resolves to."""

    family_found, _, _, _, address = socket.getaddrinfo(
        host, port, family, socket_type
    )[0]
    return family_found, address  # type: ignore[return-value]


def _stream_family(target: Target) -> int:
    """tcp6 insists on IPv6; the other stream kinds take what resolves."""

    return socket.AF_INET6 if target.kind == "tcp6" else socket.AF_UNSPEC


def _connect(target: Target, timeout: float, protocol: int = 0) -> socket.socket:
    """Open a stream connection to the target, or raise."""

    assert target.port is not None
    family, address = _resolve(
        target.host, target.port, _stream_family(target), socket.SOCK_STREAM
    )
    try:
        connection = socket.socket(family, socket.SOCK_STREAM, protocol)
    except OSError as error:
        raise _SocketUnavailableError(error.strerror) from error
    connection.settimeout(timeout)
    try:
        connection.connect(address)
    except BaseException:
        connection.close()
        raise
    return connection


def _probe_tcp(target: Target, timeout: float) -> str:
    """A completed TCP handshake is a leak."""

    with _connect(target, timeout) as connection:
        return f"TCP connection established to {_peer(connection)}"


def _probe_mptcp(target: Target, timeout: float) -> str:
    """A completed MPTCP (or fallen-back TCP) handshake is a leak."""

    with _connect(target, timeout, IPPROTO_MPTCP) as connection:
        return f"MPTCP connection established to {_peer(connection)}"


def _probe_http(target: Target, timeout: float) -> str:
    """Send a GET; https only tests the TCP handshake to its port."""

    deadline = time.monotonic() + timeout
    with _connect(target, timeout) as connection:
        if target.url.startswith("https:"):
            return f"TCP connection to {_peer(connection)} (TLS not attempted)"

        parts = urllib.parse.urlsplit(target.url)
        path = parts.path or "/"
        if parts.query:
            path = f"{path}?{parts.query}"
        request = f"GET {path} HTTP/1.0\r\nHost: {parts.netloc}\r\n\r\n"
        connection.sendall(request.encode("ascii", "replace"))
        connection.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            first = connection.recv(1024).split(b"\r\n", 1)[0]
        except TimeoutError:
            return f"TCP connection to {_peer(connection)}, no HTTP answer yet"
        shown = first.decode("ascii", "replace")[:80] or "connection closed"
        return f"HTTP answer from {_peer(connection)}: {shown}"


def _probe_udp(target: Target, timeout: float) -> str:
    """Any datagram coming back from the target is a leak."""

    assert target.port is not None
    family, address = _resolve(
        target.host, target.port, socket.AF_UNSPEC, socket.SOCK_DGRAM
    )
    with socket.socket(family, socket.SOCK_DGRAM) as datagram:
        datagram.settimeout(timeout)
        datagram.connect(address)
        datagram.send(b"sftpjail probe\n")
        reply = datagram.recv(2048)
        return f"UDP reply of {len(reply)} bytes from {_format(address)}"


def _probe_dns(target: Target, timeout: float) -> str:
    """A DNS response matching our query ID is a leak, whatever its rcode."""

    assert target.port is not None
    family, address = _resolve(
        target.host, target.port, socket.AF_UNSPEC, socket.SOCK_DGRAM
    )
    query_id = secrets.randbits(16)
    deadline = time.monotonic() + timeout
    with socket.socket(family, socket.SOCK_DGRAM) as datagram:
        datagram.connect(address)
        datagram.send(build_dns_query(query_id, DNS_QUERY_NAME))
        while True:
            datagram.settimeout(_remaining(deadline))
            answer = parse_dns_response(datagram.recv(4096), query_id)
            if answer is not None:
                return f"DNS answer from {_format(address)}: {answer}"


def build_dns_query(query_id: int, name: str) -> bytes:
    """Build a recursive query for the A records of `name` (RFC 1035 4.1)."""

    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    labels = b"".join(
        bytes([len(label)]) + label.encode("ascii")
        for label in name.split(".")
        if label
    )
    return header + labels + b"\x00" + struct.pack("!HH", 1, 1)


def parse_dns_response(message: bytes, query_id: int) -> str | None:
    """Describe a response to `query_id`, or None if `message` is not one."""

    if len(message) < 12:
        return None
    answer_id, flags, _, answers, _, _ = struct.unpack("!HHHHHH", message[:12])
    if answer_id != query_id or not flags & 0x8000:
        return None
    return f"rcode {flags & 0x000F}, {answers} answer records"


def _probe_icmp(target: Target, timeout: float) -> str:
    """An echo reply carrying our token from the target is a leak."""

    version = 6 if target.kind == "icmp6" else 4
    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    _, address = _resolve(target.host, 0, family, socket.SOCK_DGRAM)
    request_type, reply_type = _ICMP_ECHO[version]
    token = secrets.token_bytes(8)
    deadline = time.monotonic() + timeout

    with _open_icmp_socket(family) as icmp:
        is_raw = icmp.type == socket.SOCK_RAW
        packet = _echo_request(request_type, token, with_checksum=version == 4)
        icmp.sendto(packet, address)
        while True:
            icmp.settimeout(_remaining(deadline))
            data, sender = icmp.recvfrom(2048)
            if is_raw and version == 4:
                data = data[(data[0] & 0x0F) * 4 :]  # raw IPv4 includes the IP header
            if (
                data[:1] == bytes([reply_type])
                and token in data
                and sender[0] == address[0]
            ):
                return f"echo reply from {sender[0]}"


def _open_icmp_socket(family: int) -> socket.socket:
    """Prefer the unprivileged ping socket; fall back to a raw one."""

    protocol = (
        socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    )
    try:
        return socket.socket(family, socket.SOCK_DGRAM, protocol)
    except OSError as datagram_error:
        try:
            return socket.socket(family, socket.SOCK_RAW, protocol)
        except OSError as raw_error:
            raise _SocketUnavailableError(
                f"ping socket: {datagram_error.strerror} "
                "(net.ipv4.ping_group_range excludes this group); "
                f"raw socket: {raw_error.strerror}"
            ) from raw_error


def _echo_request(icmp_type: int, token: bytes, with_checksum: bool) -> bytes:
    """Build an echo request; the kernel fills the ICMPv6 checksum itself."""

    identifier = secrets.randbits(16)
    payload = b"sftpjail-probe" + token
    header = struct.pack("!BBHHH", icmp_type, 0, 0, identifier, 1)
    if not with_checksum:
        return header + payload
    checksum = _internet_checksum(header + payload)
    return struct.pack("!BBHHH", icmp_type, 0, checksum, identifier, 1) + payload


def _internet_checksum(data: bytes) -> int:
    """The ones' complement sum of RFC 1071."""

    if len(data) % 2:
        data += b"\x00"
    words: tuple[int, ...] = struct.unpack(f"!{len(data) // 2}H", data)
    total = sum(words)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _remaining(deadline: float) -> float:
    """Seconds left before `deadline`; raise TimeoutError when none are."""

    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError
    return left


def _peer(connection: socket.socket) -> str:
    """Format the remote end of a connected socket."""

    return _format(connection.getpeername())


def _format(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    """HOST:PORT, with IPv6 hosts in brackets."""

    host, port = address[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _describe_os_error(error: OSError) -> str:
    """Explain why a socket error means the target was not reached."""

    reasons = {
        errno.EPERM: "refused by a local firewall",
        errno.EACCES: "refused by a local firewall",
        errno.ENETUNREACH: "network unreachable",
        errno.EHOSTUNREACH: "host unreachable",
        errno.ECONNREFUSED: "connection refused (something rejected it)",
        errno.EAFNOSUPPORT: "address family not supported here",
        errno.EADDRNOTAVAIL: "no local address for this family",
    }
    reason = reasons.get(error.errno or 0, "failed")
    return f"{reason}: {error.strerror or error}"


_PROBES: dict[str, Callable[[Target, float], str]] = {
    "tcp": _probe_tcp,
    "tcp6": _probe_tcp,
    "mptcp": _probe_mptcp,
    "http": _probe_http,
    "udp": _probe_udp,
    "dns": _probe_dns,
    "icmp": _probe_icmp,
    "icmp6": _probe_icmp,
}
