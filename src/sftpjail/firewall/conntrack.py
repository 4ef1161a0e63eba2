"""Forgetting the connections the container opened before the rules existed.

Both backends let packets of ESTABLISHED flows through, which is what keeps
inbound SFTP sessions alive.  The flip side: a connection the container
opened before `apply` is still ESTABLISHED afterwards.  Deleting the
conntrack entries whose original source lies in the bridge subnets makes
the next packet of such a flow NEW again, and the NEW rule drops it.
Inbound SFTP flows are not touched: their original source is the client.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re

from sftpjail.firewall.commands import is_installed, run
from sftpjail.firewall.spec import FirewallSpec, IPNetwork

log = logging.getLogger(__name__)


def flush_commands(subnets: tuple[IPNetwork, ...]) -> list[list[str]]:
    """Return the conntrack commands that forget flows from `subnets`."""

    commands = []
    for subnet in subnets:
        family = "ipv6" if subnet.version == 6 else "ipv4"
        commands.append(["conntrack", "-D", "-f", family, "-s", str(subnet)])
    return commands


def bridge_subnets(bridge: str) -> tuple[IPNetwork, ...]:
    """Read the subnets of the addresses `bridge` carries, except link-local.

    Used when the operator gave no --subnet.  A bridge that does not exist
    (yet) carries no subnets.
    """

    command = ["ip", "-json", "address", "show", "dev", bridge]
    result = run(command, accept_failure=True)
    if result.returncode != 0:
        return ()

    subnets: list[IPNetwork] = []
    for link in json.loads(result.stdout or "[]"):
        for address in link.get("addr_info", []):
            interface = ipaddress.ip_interface(
                f"{address['local']}/{address['prefixlen']}"
            )
            if not interface.is_link_local and interface.network not in subnets:
                subnets.append(interface.network)
    return tuple(subnets)


def flush_bridge_flows(spec: FirewallSpec) -> list[str]:
    """Delete conntrack entries from the bridge subnets; return notes."""

    subnets = spec.subnets or bridge_subnets(spec.bridge)
    if not subnets:
        return [f"no subnet given or found on {spec.bridge}; no flows flushed"]
    if not is_installed("conntrack"):
        return [
            "conntrack is not installed, so connections opened before apply "
            "survive until they end; install the conntrack package"
        ]

    notes = []
    for command in flush_commands(subnets):
        result = run(command, accept_failure=True)
        # conntrack exits 1 when nothing matched; that is success here.
        said = result.stderr.strip()
        if result.returncode != 0 and "0 flow entries" not in said:
            notes.append(f"`{' '.join(command)}` failed: {said}")
            continue
        log.info("conntrack: %s", said)
        notes.append(f"{command[-1]}: {_deleted_count(said)} flows flushed")
    return notes


def _deleted_count(conntrack_message: str) -> str:
    """Pull N out of "conntrack ...: N flow entries have been deleted."."""

    match = re.search(r"(\d+) flow entr", conntrack_message)
    return match.group(1) if match else "?"
