"""The iptables backend: our own chains, jumped to from DOCKER-USER and INPUT.

Theory of operation.  Docker rebuilds its FORWARD rules on every restart
but always sends forwarded traffic through DOCKER-USER first and leaves
that chain's contents alone, so the forward-path jump lives there.
Traffic from the container to the host's own addresses is not forwarded
and never sees DOCKER-USER; a second jump at the top of INPUT covers it.
Both jump to SFTPJAIL-EGRESS, which RETURNs established flows and the
allowed destinations and drops everything else.  With --sftp-port,
SFTPJAIL-INBOUND limits new connections into the bridge to that port.

Everything we add is either one of our own chains or a jump tagged with
an iptables comment starting with "sftpjail", so `remove` deletes exactly
those and leaves every other rule as it was.  Hosts without a DOCKER-USER
chain (no Docker yet, or an old Docker without one for IPv6) get one, plus
a FORWARD jump to it whose comment records that we created it; `remove`
takes both away again.

Chain contents are loaded with `iptables-restore --noflush`, which swaps a
chain's rules in one commit, so re-applying never leaves a gap.  Rules are
written the way `iptables -S` prints them, so `check` can compare the
live chains with a fresh rendering.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field

from sftpjail.firewall.commands import CommandResult, is_installed, run
from sftpjail.firewall.compare import describe_differences
from sftpjail.firewall.conntrack import flush_bridge_flows, flush_commands
from sftpjail.firewall.spec import FirewallSpec

EGRESS_CHAIN = "SFTPJAIL-EGRESS"
INBOUND_CHAIN = "SFTPJAIL-INBOUND"
OWN_CHAINS = (EGRESS_CHAIN, INBOUND_CHAIN)
DOCKER_USER = "DOCKER-USER"

TAG = "sftpjail"
CREATED_DOCKER_USER_TAG = "sftpjail: created DOCKER-USER"

# Matches as `iptables -S` prints them.
_ESTABLISHED = "-m conntrack --ctstate RELATED,ESTABLISHED"
_TCP_PORT = "-p tcp -m tcp --dport "

# Chains that may hold a jump of ours (or our FORWARD -> DOCKER-USER jump).
_JUMP_CHAINS = ("FORWARD", DOCKER_USER, "INPUT")

# ICMPv6 neighbour solicitation and advertisement: the container must
# resolve its gateway's link-layer address, and these never leave the link.
_NEIGHBOUR_DISCOVERY_TYPES = (135, 136)


@dataclass(frozen=True)
class IptablesPlan:
    """One address family's rules, every line in `iptables -S` form."""

    version: int
    chains: dict[str, list[str]] = field(default_factory=dict)
    jumps: list[str] = field(default_factory=list)


def render_plan(spec: FirewallSpec, version: int) -> IptablesPlan:
    """Build the chains and jumps for IPv4 (4) or IPv6 (6)."""

    plan = IptablesPlan(version)
    plan.chains[EGRESS_CHAIN] = _egress_rules(spec, version)
    plan.jumps.append(
        f"-A {DOCKER_USER} -i {spec.bridge} ! -o {spec.bridge} "
        f"-m comment --comment {TAG} -j {EGRESS_CHAIN}"
    )
    if spec.sftp_port is not None:
        plan.chains[INBOUND_CHAIN] = [
            f"-A {INBOUND_CHAIN} {_ESTABLISHED} -j RETURN",
            f"-A {INBOUND_CHAIN} {_TCP_PORT}{spec.sftp_port} -j RETURN",
            f"-A {INBOUND_CHAIN} -j DROP",
        ]
        plan.jumps.append(
            f"-A {DOCKER_USER} ! -i {spec.bridge} -o {spec.bridge} "
            f"-m comment --comment {TAG} -j {INBOUND_CHAIN}"
        )
    plan.jumps.append(
        f"-A INPUT -i {spec.bridge} -m comment --comment {TAG} -j {EGRESS_CHAIN}"
    )
    return plan


def render_restore_text(plan: IptablesPlan) -> str:
    """Render one family's plan as `iptables-restore --noflush` input."""

    lines = ["*filter"]
    lines.extend(f":{chain} - [0:0]" for chain in plan.chains)
    for rules in plan.chains.values():
        lines.extend(rules)
    lines.extend(_insert_lines(plan.jumps))
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_text(spec: FirewallSpec, program: str = "iptables") -> str:
    """Render both families for an operator to read (`firewall render`)."""

    flush = [" ".join(command) for command in flush_commands(spec.subnets)]
    parts = [
        f"# sftpjail: drop new connections from bridge {spec.bridge} to "
        "anything off the bridge.",
        f"# Each block is `{program}-restore --noflush` input; DOCKER-USER "
        "must exist first",
        "# (`sftpjail firewall apply` creates it when it is missing).",
    ]
    for version in (4, 6):
        parts.append(f"# IPv{version}: {_program(program, version)}")
        parts.append(render_restore_text(render_plan(spec, version)).rstrip("\n"))
    if flush:
        parts.append("# After loading, cut flows opened before the rules:")
        parts.extend(f"#   {command}" for command in flush)
    return "\n".join(parts) + "\n"


class IptablesBackend:
    """Applies, removes and checks the rules with iptables and ip6tables.

    `program` picks the variant: "iptables" (Debian's default, nft-based),
    "iptables-nft" or "iptables-legacy".  Use the one Docker uses.
    """

    name = "iptables"

    def __init__(self, program: str = "iptables") -> None:
        self.program = program

    def render(self, spec: FirewallSpec) -> str:
        """Return the iptables-restore style listing for `spec`."""

        return render_text(spec, self.program)

    def apply(self, spec: FirewallSpec) -> list[str]:
        """Load chains and jumps for both families, then flush old flows."""

        notes = []
        for version in (4, 6):
            table = _Table(_program(self.program, version), version)
            if not table.available():
                notes.append(table.unavailable_note())
                continue
            table.apply(render_plan(spec, version))
            notes.append(f"{table.label}: {table.program} rules loaded")
        return notes + flush_bridge_flows(spec)

    def remove(self) -> list[str]:
        """Delete our jumps and chains in both families; touch nothing else."""

        notes = []
        for version in (4, 6):
            table = _Table(_program(self.program, version), version)
            if table.available():
                notes.extend(table.remove())
        return notes

    def check(self, spec: FirewallSpec) -> list[str]:
        """Compare live chains and jumps with a fresh rendering."""

        problems = []
        for version in (4, 6):
            table = _Table(_program(self.program, version), version)
            if not table.available():
                if version == 4 or _kernel_has_ipv6():
                    problems.append(table.unavailable_note())
                continue
            problems.extend(table.check(render_plan(spec, version)))
        return problems


class _Table:
    """The filter table of one family, seen through one iptables program."""

    def __init__(self, program: str, version: int) -> None:
        self.program = program
        self.version = version
        self.label = f"IPv{version}"

    def available(self) -> bool:
        """Tell whether this family can be managed here."""

        if self.version == 6 and not _kernel_has_ipv6():
            return False
        return is_installed(self.program)

    def unavailable_note(self) -> str:
        """Explain an unavailable family to the operator."""

        return (
            f"{self.label}: {self.program} is not installed, so {self.label} "
            "egress is not filtered; install it or use --backend nftables"
        )

    def apply(self, plan: IptablesPlan) -> None:
        """Load the chains atomically, then put every jump in place."""

        restore = f"{self.program}-restore"
        chains = IptablesPlan(plan.version, plan.chains)  # without the jumps
        run([restore, "-w", "--noflush"], stdin=render_restore_text(chains))
        self._ensure_docker_user()

        for chain in _JUMP_CHAINS:
            wanted = [jump for jump in plan.jumps if jump.split()[1] == chain]
            for position, jump in enumerate(wanted, start=1):
                arguments = shlex.split(jump)[2:]
                if not self._has_rule(chain, arguments):
                    self._iptables("-I", chain, str(position), *arguments)
            for stale in self._tagged_rules(chain):
                if _comment(stale) == TAG and stale not in map(shlex.split, wanted):
                    self._iptables("-D", chain, *stale[2:])

        for chain in OWN_CHAINS:
            if chain not in plan.chains and self._chain_rules(chain) is not None:
                self._delete_chain(chain)

    def remove(self) -> list[str]:
        """Undo `apply`: tagged jumps, then our chains, then DOCKER-USER."""

        created_docker_user = False
        removed = 0
        for chain in _JUMP_CHAINS:
            for rule in self._tagged_rules(chain):
                created_docker_user |= _comment(rule) == CREATED_DOCKER_USER_TAG
                self._iptables("-D", chain, *rule[2:])
                removed += 1

        for chain in OWN_CHAINS:
            if self._chain_rules(chain) is not None:
                self._delete_chain(chain)
                removed += 1

        notes = [f"{self.label}: removed {removed} sftpjail rules and chains"]
        if created_docker_user:
            notes.append(self._remove_docker_user())
        return notes

    def check(self, plan: IptablesPlan) -> list[str]:
        """Describe every way the live rules differ from `plan`."""

        problems = []
        for chain, wanted in plan.chains.items():
            have = self._chain_rules(chain)
            if have is None:
                problems.append(f"{self.label}: chain {chain} is missing")
            else:
                where = f"{self.label}: {chain}"
                problems.extend(describe_differences(where, wanted, have))

        for jump in plan.jumps:
            chain = jump.split()[1]
            rules = self._chain_rules(chain) or []
            if jump not in rules:
                problems.append(f"{self.label}: jump missing: {jump}")
                continue
            problems.extend(
                f"{self.label}: `{rule}` comes before sftpjail's jump in {chain} "
                "and lets traffic bypass it"
                for rule in rules[: rules.index(jump)]
                if rule.endswith(("-j ACCEPT", "-j RETURN"))
            )

        forward = self._chain_rules("FORWARD") or []
        if not any(rule.endswith(f"-j {DOCKER_USER}") for rule in forward):
            problems.append(
                f"{self.label}: FORWARD does not jump to {DOCKER_USER}, so the "
                "forward rules are never reached; rerun apply"
            )
        return problems

    def _ensure_docker_user(self) -> None:
        """Create DOCKER-USER, reached from FORWARD, if Docker has not."""

        if self._chain_rules(DOCKER_USER) is not None:
            return
        self._iptables("-N", DOCKER_USER)
        self._iptables(
            "-I",
            "FORWARD",
            "1",
            "-m",
            "comment",
            "--comment",
            CREATED_DOCKER_USER_TAG,
            "-j",
            DOCKER_USER,
        )

    def _remove_docker_user(self) -> str:
        """Delete the DOCKER-USER chain we created, if nobody uses it now."""

        if self._chain_rules(DOCKER_USER):
            return f"{self.label}: kept {DOCKER_USER}: others added rules to it"
        result = self._iptables("-X", DOCKER_USER, accept_failure=True)
        if result.returncode != 0:
            return f"{self.label}: kept {DOCKER_USER}: another rule jumps to it"
        return f"{self.label}: removed the {DOCKER_USER} chain apply created"

    def _delete_chain(self, chain: str) -> None:
        """Empty one of our chains, then delete it."""

        self._iptables("-F", chain)
        self._iptables("-X", chain)

    def _chain_rules(self, chain: str) -> list[str] | None:
        """Return a chain's rules in `-S` form, or None if it is absent."""

        result = self._iptables("-S", chain, accept_failure=True)
        if result.returncode != 0:
            return None
        lines = result.stdout.splitlines()
        return [line for line in lines if line.startswith("-A ")]

    def _tagged_rules(self, chain: str) -> list[list[str]]:
        """Return, split into words, the rules sftpjail added to `chain`."""

        rules = [shlex.split(line) for line in self._chain_rules(chain) or []]
        return [rule for rule in rules if _comment(rule).startswith(TAG)]

    def _has_rule(self, chain: str, arguments: list[str]) -> bool:
        """Ask iptables itself whether an identical rule exists (-C)."""

        result = self._iptables("-C", chain, *arguments, accept_failure=True)
        return result.returncode == 0

    def _iptables(self, *arguments: str, accept_failure: bool = False) -> CommandResult:
        """Run this family's iptables program, waiting for the xtables lock."""

        argv = [self.program, "-w", *arguments]
        return run(argv, accept_failure=accept_failure)


def _program(program: str, version: int) -> str:
    """Map "iptables[-variant]" onto its IPv6 twin "ip6tables[-variant]"."""

    if version == 6 and program.startswith("iptables"):
        return "ip6" + program[2:]
    return program


def _comment(rule: list[str]) -> str:
    """Return the `--comment` of a split rule, or "" if it has none."""

    if "--comment" in rule:
        return rule[rule.index("--comment") + 1]
    return ""


def _kernel_has_ipv6() -> bool:
    """Tell whether this network namespace has IPv6 at all."""

    return os.path.isdir("/proc/sys/net/ipv6")


def _egress_rules(spec: FirewallSpec, version: int) -> list[str]:
    """SFTPJAIL-EGRESS for one family."""

    rules = [f"-A {EGRESS_CHAIN} {_ESTABLISHED} -j RETURN"]
    if version == 6:
        rules.extend(
            f"-A {EGRESS_CHAIN} -p ipv6-icmp -m icmp6 --icmpv6-type {kind} -j RETURN"
            for kind in _NEIGHBOUR_DISCOVERY_TYPES
        )
    for allowed in spec.allowed:
        if allowed.network.version != version:
            continue
        port = "" if allowed.port is None else f" {_TCP_PORT}{allowed.port}"
        rules.append(f"-A {EGRESS_CHAIN} -d {allowed.network}{port} -j RETURN")
    rules.append(f"-A {EGRESS_CHAIN} -j DROP")
    return rules


def _insert_lines(jumps: list[str]) -> list[str]:
    """Turn `-A CHAIN ...` jumps into `-I CHAIN N ...` at the top, in order."""

    lines = []
    positions: dict[str, int] = {}
    for jump in jumps:
        _, chain, rest = jump.split(" ", 2)
        positions[chain] = positions.get(chain, 0) + 1
        lines.append(f"-I {chain} {positions[chain]} {rest}")
    return lines
