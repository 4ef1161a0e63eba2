"""A throwaway network of namespaces that looks like a Docker host.

Theory of operation.  `netlab()` builds four network namespaces with
random names and yields a `NetLab` describing them:

    container --(bridge sjbr0)-- host --(uplink)-- internet
                                  |
                               (public)-- client

- host: a Linux bridge like docker0 (10.203.0.1/24, fd00:203::1/64),
  forwarding on, masquerade from the bridge subnets out of the uplink, and
  a DNAT port forward public:2222 -> container:2222 (a published port);
- container: 10.203.0.2 and fd00:203::2 on the bridge, default routes via
  the host;
- internet: 10.204.0.2 and fd00:204::2 behind the uplink, running TCP,
  HTTP, UDP echo and DNS listeners; its kernel answers pings;
- client: 10.205.0.2, reaching the host's public address 10.205.0.1 the
  way an SFTP user on the Internet would.

Every address lives inside these namespaces; the machine's own network
and firewall are never touched.  Everything is torn down in `finally`.

Run as a script (`python netlab.py serve`) the module is the internet's
listeners, so the lab needs nothing beyond Python and iproute2.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import select
import shutil
import socket
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

BRIDGE = "sjbr0"
BRIDGE_SUBNET_V4 = "10.203.0.0/24"
BRIDGE_SUBNET_V6 = "fd00:203::/64"
HOST_BRIDGE_V4 = "10.203.0.1"
HOST_BRIDGE_V6 = "fd00:203::1"
CONTAINER_V4 = "10.203.0.2"
CONTAINER_V6 = "fd00:203::2"
INTERNET_V4 = "10.204.0.2"
INTERNET_V6 = "fd00:204::2"
HOST_PUBLIC_V4 = "10.205.0.1"
CLIENT_V4 = "10.205.0.2"
PUBLISHED_PORT = 2222

# Listener ports of `serve` (in the internet namespace and on the host).
HTTP_PORT = 80
ECHO_PORT = 7
DNS_PORT = 53

SRC_DIR = Path(__file__).resolve().parent.parent / "src"
COMMAND_TIMEOUT = 60.0
READY_TIMEOUT = 15.0

_FORWARD_TO = f"{CONTAINER_V4}:{PUBLISHED_PORT}"
_NAT_RULES = f"""
table inet netlab_nat {{
	chain prerouting {{
		type nat hook prerouting priority dstnat; policy accept;
		iifname "public" tcp dport {PUBLISHED_PORT} dnat ip to {_FORWARD_TO}
	}}
	chain postrouting {{
		type nat hook postrouting priority srcnat; policy accept;
		oifname "uplink" ip saddr {BRIDGE_SUBNET_V4} masquerade
		oifname "uplink" ip6 saddr {BRIDGE_SUBNET_V6} masquerade
	}}
}}
"""


def netns_unavailable_reason() -> str | None:
    """Say why this machine cannot build the lab, or None if it can."""

    if os.geteuid() != 0:
        return "building network namespaces needs root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (see scripts/setup.sh)"
    return None


# `pytestmark = NETNS_MARKS` in a test module that builds namespaces.
NETNS_MARKS = [
    pytest.mark.netns,
    pytest.mark.skipif(
        netns_unavailable_reason() is not None,
        reason=str(netns_unavailable_reason()),
    ),
]


@dataclass
class NetLab:
    """The namespaces of one lab and helpers to run things inside them."""

    host: str
    container: str
    internet: str
    client: str
    # Text-mode helpers and byte-mode servers alike; teardown stops them all.
    processes: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = field(
        default_factory=list
    )

    def run(
        self,
        namespace: str,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = COMMAND_TIMEOUT,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `namespace` and wait for it."""

        return subprocess.run(
            ["ip", "netns", "exec", namespace, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=python_env(),
        )

    def spawn(self, namespace: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        """Start `argv` inside `namespace`; it is killed at teardown."""

        process = subprocess.Popen(
            ["ip", "netns", "exec", namespace, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=python_env(),
        )
        self.processes.append(process)
        return process

    def sftpjail(
        self, namespace: str, *arguments: str, timeout: float = COMMAND_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run `python -m sftpjail ARGUMENTS` inside `namespace`."""

        argv = [sys.executable, "-m", "sftpjail", *arguments]
        return self.run(namespace, argv, check=False, timeout=timeout)

    def start_services(self, namespace: str) -> subprocess.Popen[str]:
        """Start this module's listeners in `namespace`; wait until they listen."""

        process = self.spawn(namespace, [sys.executable, __file__, "serve"])
        wait_for_line(process, "ready", READY_TIMEOUT)
        return process


def python_env() -> dict[str, str]:
    """The environment for child Pythons: ours, plus src/ on the path."""

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(SRC_DIR), env.get("PYTHONPATH", "")) if path
    )
    return env


def wait_for_line(process: subprocess.Popen[str], wanted: str, timeout: float) -> None:
    """Read `process` stdout until a line equals `wanted`, or fail."""

    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().strip() if ready else ""
    if line != wanted:
        process.kill()
        _, errors = process.communicate(timeout=5)
        raise RuntimeError(
            f"{process.args!r} did not say {wanted!r}: {line!r} {errors}"
        )


@contextmanager
def netlab() -> Iterator[NetLab]:
    """Build the lab, yield it, and always tear it down."""

    suffix = secrets.token_hex(3)
    lab = NetLab(
        host=f"sjhost-{suffix}",
        container=f"sjcont-{suffix}",
        internet=f"sjinet-{suffix}",
        client=f"sjclient-{suffix}",
    )
    created: list[str] = []
    try:
        for namespace in (lab.host, lab.container, lab.internet, lab.client):
            _ip("netns", "add", namespace)
            created.append(namespace)
            _ip("-n", namespace, "link", "set", "lo", "up")
        _build_host(lab)
        _build_container(lab)
        _build_internet(lab)
        _build_client(lab)
        lab.start_services(lab.internet)
        yield lab
    finally:
        _stop(lab.processes)
        for namespace in created:
            subprocess.run(["ip", "netns", "del", namespace], check=False, timeout=30)


def _ip(*arguments: str) -> None:
    """Run one `ip` command; fail loudly with its message."""

    subprocess.run(["ip", *arguments], check=True, capture_output=True, timeout=30)


def _link_veth(namespace: str, name: str, peer_namespace: str, peer_name: str) -> None:
    """Create a veth pair between two namespaces and bring both ends up."""

    _ip("-n", namespace, "link", "add", name, "type", "veth",
        "peer", "name", peer_name, "netns", peer_namespace)  # fmt: skip
    _ip("-n", namespace, "link", "set", name, "up")
    _ip("-n", peer_namespace, "link", "set", peer_name, "up")


def _address(namespace: str, device: str, *addresses: str) -> None:
    """Add addresses (IPv6 without duplicate detection, usable at once)."""

    for address in addresses:
        extra = ["nodad"] if ":" in address else []
        _ip("-n", namespace, "address", "add", address, "dev", device, *extra)


def _build_host(lab: NetLab) -> None:
    """The Docker host: bridge, uplink, public link, forwarding and NAT."""

    host = lab.host
    _ip("-n", host, "link", "add", BRIDGE, "type", "bridge")
    _ip("-n", host, "link", "set", BRIDGE, "up")
    _address(host, BRIDGE, f"{HOST_BRIDGE_V4}/24", f"{HOST_BRIDGE_V6}/64")
    _link_veth(host, "uplink", lab.internet, "eth0")
    _address(host, "uplink", "10.204.0.1/24", "fd00:204::1/64")
    _link_veth(host, "public", lab.client, "eth0")
    _address(host, "public", f"{HOST_PUBLIC_V4}/24")

    for setting in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
        lab.run(host, ["sysctl", "-q", "-w", setting])
    lab.run(host, ["nft", "-f", "-"], stdin=_NAT_RULES)


def _build_container(lab: NetLab) -> None:
    """The container: one veth end on the bridge, default routes via the host."""

    _link_veth(lab.host, "veth-cont", lab.container, "eth0")
    _ip("-n", lab.host, "link", "set", "veth-cont", "master", BRIDGE)
    _address(lab.container, "eth0", f"{CONTAINER_V4}/24", f"{CONTAINER_V6}/64")
    _ip("-n", lab.container, "route", "add", "default", "via", HOST_BRIDGE_V4)
    _ip("-n", lab.container, "-6", "route", "add", "default", "via", HOST_BRIDGE_V6)


def _build_internet(lab: NetLab) -> None:
    """The internet: addresses only; masquerade means it needs no routes."""

    _address(lab.internet, "eth0", f"{INTERNET_V4}/24", f"{INTERNET_V6}/64")


def _build_client(lab: NetLab) -> None:
    """The SFTP user: on the host's public link."""

    _address(lab.client, "eth0", f"{CLIENT_V4}/24")


def _stop(processes: list[subprocess.Popen[str] | subprocess.Popen[bytes]]) -> None:
    """Terminate what the lab started, killing what does not stop in time."""

    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate(timeout=10)


# ---------------------------------------------------------------------------
# `python netlab.py serve`: the listeners, run inside a lab namespace.


class _EchoDatagrams(asyncio.DatagramProtocol):
    """UDP echo: any datagram is sent back."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, address: tuple[str, int]) -> None:
        self.transport.sendto(data, address)


class _AnswerDns(_EchoDatagrams):
    """A DNS responder that answers every A query with INTERNET_V4."""

    def datagram_received(self, data: bytes, address: tuple[str, int]) -> None:
        if len(data) < 12:
            return
        query_id = struct.unpack("!H", data[:2])[0]
        question = data[12:]
        header = struct.pack("!HHHHHH", query_id, 0x8180, 1, 1, 0, 0)
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4)
        answer += socket.inet_aton(INTERNET_V4)
        self.transport.sendto(header + question + answer, address)


async def _answer_http(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Read a request head and answer 200 with a tiny body."""

    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nhi\n")
    await writer.drain()
    writer.close()


async def _echo_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """TCP echo until the peer closes: a long-lived flow to cut."""

    while data := await reader.read(4096):
        writer.write(data)
        await writer.drain()
    writer.close()


def _udp(host: str, port: int) -> socket.socket:
    """A bound UDP socket; IPv6 ones stay IPv6-only so both families can bind."""

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    datagram = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        datagram.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    datagram.bind((host, port))
    return datagram


async def _serve() -> None:
    """Listen on every address of this namespace, say "ready", run forever."""

    loop = asyncio.get_running_loop()
    for host in ("0.0.0.0", "::"):
        await asyncio.start_server(_answer_http, host, HTTP_PORT)
        await asyncio.start_server(_echo_stream, host, ECHO_PORT)
        await loop.create_datagram_endpoint(_EchoDatagrams, sock=_udp(host, ECHO_PORT))
        await loop.create_datagram_endpoint(_AnswerDns, sock=_udp(host, DNS_PORT))
    print("ready", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__" and sys.argv[1:] == ["serve"]:
    asyncio.run(_serve())
