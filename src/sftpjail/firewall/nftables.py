"""The nftables backend: one table of our own, hooked in before Docker.

Theory of operation.  Netfilter runs every base chain registered at a
hook, in priority order, and a packet must be accepted by all of them: an
`accept` in one chain only ends that chain, a `drop` anywhere is final.
So a table of our own, `table inet sftpjail`, whose base chains hook
forward and input at `filter - 10`, drops the container's new connections
no matter what Docker's rules (iptables-nft, iptables-legacy or Docker
29's nftables tables) accept later, and it never has to edit Docker's
chains, which Docker rewrites on restart.

Packets arriving from the bridge are sent to the `egress` chain: replies
of established flows pass (so published SFTP keeps working), the allowed
destinations pass, everything else is counted and dropped.  The forward
hook covers the rest of the world, the input hook the host's own addresses.
With --sftp-port, new connections from outside into the bridge are limited
to that port by the `inbound` chain.

The rendered table is written the way `nft list table` prints it, so
`check` can compare the live table with a fresh rendering line by line.
"""

from __future__ import annotations

import re

from sftpjail.errors import FirewallError
from sftpjail.firewall.commands import run
from sftpjail.firewall.compare import describe_differences
from sftpjail.firewall.conntrack import flush_bridge_flows, flush_commands
from sftpjail.firewall.spec import AllowedDestination, FirewallSpec

TABLE = "inet sftpjail"

# Docker's filter chains (iptables-nft's and Docker 29's own) hook at
# priority filter (0); a lower number runs first.
PRIORITY = "filter - 10"

# IPv6 neighbour discovery to the gateway address must reach the host, or
# the container cannot even answer inbound IPv6 SFTP.  It never leaves
# the link, so accepting it opens no path out.
NEIGHBOUR_DISCOVERY = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }"

_COUNTER = re.compile(r"counter packets \d+ bytes \d+")


def render_table(spec: FirewallSpec) -> str:
    """Render the table exactly as `nft list table inet sftpjail` prints it."""

    bridge = f'"{spec.bridge}"'
    chains = [_chain("egress", _egress_rules(spec))]
    forward = [f"iifname {bridge} oifname != {bridge} jump egress"]
    if spec.sftp_port is not None:
        chains.append(_chain("inbound", _inbound_rules(spec.sftp_port)))
        forward.append(f"iifname != {bridge} oifname {bridge} jump inbound")

    chains.append(_base_chain("forward", forward))
    chains.append(
        _base_chain(
            "input",
            [
                f"iifname {bridge} {NEIGHBOUR_DISCOVERY} accept",
                f"iifname {bridge} jump egress",
            ],
        )
    )
    return f"table {TABLE} {{\n" + "\n\n".join(chains) + "\n}\n"


def render_script(spec: FirewallSpec) -> str:
    """Render a complete `nft -f` script that installs or replaces the table."""

    subnets = ", ".join(str(subnet) for subnet in spec.subnets) or (
        f"(none given: apply reads them from {spec.bridge})"
    )
    flush = [" ".join(command) for command in flush_commands(spec.subnets)]
    lines = [
        "#!/usr/sbin/nft -f",
        f"# sftpjail: drop new connections from bridge {spec.bridge} to "
        "anything off the bridge.",
        f"# Bridge subnets: {subnets}",
        "# Declaring and deleting the table first makes this script",
        "# replace an older copy atomically instead of adding a second one.",
        f"table {TABLE}",
        f"delete table {TABLE}",
        render_table(spec).rstrip("\n"),
    ]
    if flush:
        lines.append("# After loading, cut flows opened before the rules:")
        lines.extend(f"#   {command}" for command in flush)
    return "\n".join(lines) + "\n"


class NftablesBackend:
    """Applies, removes and checks `table inet sftpjail` with the nft tool."""

    name = "nftables"

    def render(self, spec: FirewallSpec) -> str:
        """Return the nft script for `spec`."""

        return render_script(spec)

    def apply(self, spec: FirewallSpec) -> list[str]:
        """Install (or atomically replace) the table, then flush old flows."""

        run(["nft", "-f", "-"], stdin=render_script(spec))
        return [f"nftables: table {TABLE} loaded", *flush_bridge_flows(spec)]

    def remove(self) -> list[str]:
        """Delete the table if it exists; nothing else was ever touched."""

        if self._live_table() is None:
            return [f"nftables: table {TABLE} was not loaded; nothing to remove"]
        run(["nft", "delete", "table", *TABLE.split()])
        return [f"nftables: table {TABLE} deleted"]

    def check(self, spec: FirewallSpec) -> list[str]:
        """Compare the live table with a fresh rendering; return the problems."""

        live = self._live_table()
        if live is None:
            return [
                f"nftables: table {TABLE} is not loaded; run `sftpjail firewall apply`"
            ]
        return compare_tables(parse_chains(render_table(spec)), parse_chains(live))

    def _live_table(self) -> str | None:
        """Return `nft list table` output, or None when the table is absent."""

        result = run(["nft", "list", "table", *TABLE.split()], accept_failure=True)
        if result.returncode == 0:
            return result.stdout
        if "No such file or directory" in result.stderr:
            return None
        raise FirewallError(f"cannot list table {TABLE}: {result.stderr.strip()}")


def parse_chains(listing: str) -> dict[str, list[str]]:
    """Split an nft table listing into chain name -> normalized lines."""

    chains: dict[str, list[str]] = {}
    current: list[str] | None = None
    for raw_line in listing.splitlines():
        line = _COUNTER.sub("counter", raw_line.strip())
        if line.startswith("chain ") and line.endswith("{"):
            current = chains.setdefault(line.split()[1], [])
        elif line == "}":
            current = None
        elif line and current is not None:
            current.append(line)
    return chains


def compare_tables(
    expected: dict[str, list[str]], live: dict[str, list[str]]
) -> list[str]:
    """Describe every way `live` differs from `expected`, chain by chain."""

    problems = []
    for chain, wanted in expected.items():
        have = live.get(chain)
        if have is None:
            problems.append(f"nftables: chain {chain} is missing")
            continue
        problems.extend(describe_differences(f"nftables: chain {chain}", wanted, have))
    problems.extend(
        f"nftables: unexpected chain {chain}" for chain in live if chain not in expected
    )
    return problems


def _egress_rules(spec: FirewallSpec) -> list[str]:
    """Rules for traffic coming out of the bridge."""

    return [
        "ct state established,related accept",
        *(_allow_rule(allowed) for allowed in spec.allowed),
        "counter drop",
    ]


def _inbound_rules(sftp_port: int) -> list[str]:
    """Rules for traffic going into the bridge from elsewhere."""

    return [
        "ct state established,related accept",
        f"tcp dport {sftp_port} accept",
        "counter drop",
    ]


def _allow_rule(allowed: AllowedDestination) -> str:
    """One accept rule; nft prints a single host without its /32 or /128."""

    network = allowed.network
    family = "ip6" if network.version == 6 else "ip"
    is_host = network.prefixlen == network.max_prefixlen
    address = network.network_address if is_host else network
    port = "" if allowed.port is None else f" tcp dport {allowed.port}"
    return f"{family} daddr {address}{port} accept"


def _chain(name: str, rules: list[str]) -> str:
    """Format a regular chain."""

    body = "".join(f"\t\t{rule}\n" for rule in rules)
    return f"\tchain {name} {{\n{body}\t}}"


def _base_chain(name: str, rules: list[str]) -> str:
    """Format a base chain hooked at `name` (forward or input)."""

    header = f"type filter hook {name} priority {PRIORITY}; policy accept;"
    return _chain(name, [header, *rules])
