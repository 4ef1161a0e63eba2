"""What the host firewall should enforce, independent of any backend.

A `FirewallSpec` names the Docker bridge the sftpjail container sits on,
the subnets that bridge carries (for clearing old conntrack entries), the
few destinations the container may still reach, and optionally the one
port inbound connections may use.  Both backends render the same spec, so
the parsing and validation of operator input happens once, here.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sftpjail.errors import FirewallError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Linux interface names are at most 15 bytes (IFNAMSIZ - 1).  We also keep
# to the characters Docker uses ("docker0", "br-0123abcd") so a name can be
# quoted into an nft script or an iptables argument without escaping.
_BRIDGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


@dataclass(frozen=True)
class AllowedDestination:
    """A destination the container may still open connections to.

    With a port, only TCP to that port is allowed; without one, every
    protocol and port to the network is.
    """

    network: IPNetwork
    port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return str(self.network)
        if self.network.version == 6:
            return f"[{self.network}]:{self.port}"
        return f"{self.network}:{self.port}"


@dataclass(frozen=True)
class FirewallSpec:
    """Everything a backend needs to render the egress rules."""

    bridge: str
    subnets: tuple[IPNetwork, ...] = ()
    allowed: tuple[AllowedDestination, ...] = ()
    sftp_port: int | None = None

    def __post_init__(self) -> None:
        if not _BRIDGE_NAME.fullmatch(self.bridge):
            raise FirewallError(
                f"bridge name {self.bridge!r} is not a valid interface name; "
                "give the Docker bridge as `ip link` shows it (e.g. docker0)"
            )
        if self.sftp_port is not None:
            check_port(self.sftp_port, "--sftp-port")


def check_port(port: int, what: str) -> int:
    """Return `port` if it is a usable TCP port, else raise FirewallError."""

    if not 1 <= port <= 65535:
        raise FirewallError(f"{what} {port} is not a port between 1 and 65535")
    return port


def parse_network(text: str) -> IPNetwork:
    """Parse a CIDR (or a bare address, meaning one host) strictly."""

    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise FirewallError(
            f"{text!r} is not a network: {error}; "
            "write it as ADDRESS/PREFIX with the host bits zero"
        ) from error


def parse_allowed(text: str) -> AllowedDestination:
    """Parse `--allow CIDR[:PORT]`; IPv6 with a port is `[CIDR]:PORT`."""

    if text.startswith("["):
        network_text, bracket, port_text = text[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise FirewallError(
                f"--allow {text!r}: write an IPv6 network with a port as "
                "[fd00:5::/64]:5432"
            )
        return _allowed(network_text, port_text[1:] or None, text)

    if text.count(":") == 1:
        network_text, _, port_text = text.partition(":")
        return _allowed(network_text, port_text, text)

    return _allowed(text, None, text)


def _allowed(
    network_text: str, port_text: str | None, original: str
) -> AllowedDestination:
    """Build an AllowedDestination from the pieces `parse_allowed` split."""

    network = parse_network(network_text)
    if port_text is None:
        return AllowedDestination(network)
    if not port_text.isdigit():
        raise FirewallError(f"--allow {original!r}: port {port_text!r} is not a number")
    return AllowedDestination(network, check_port(int(port_text), "--allow port"))
