"""Rendering the firewall rules: pure functions, no kernel involved."""

from __future__ import annotations

import ipaddress

import pytest
from click.testing import CliRunner

from sftpjail.cli.firewall import firewall
from sftpjail.firewall import FirewallSpec, parse_allowed
from sftpjail.firewall.compare import describe_differences
from sftpjail.firewall.iptables import render_plan, render_restore_text, render_text
from sftpjail.firewall.nftables import (
    compare_tables,
    parse_chains,
    render_script,
    render_table,
)


def _spec(
    *allowed: str, sftp_port: int | None = None, subnets: tuple[str, ...] = ()
) -> FirewallSpec:
    return FirewallSpec(
        bridge="sjbr0",
        subnets=tuple(ipaddress.ip_network(subnet) for subnet in subnets),
        allowed=tuple(parse_allowed(text) for text in allowed),
        sftp_port=sftp_port,
    )


# nftables -----------------------------------------------------------------


def test_nftables_table_drops_new_traffic_on_forward_and_input() -> None:
    chains = parse_chains(render_table(_spec()))

    assert chains["egress"] == ["ct state established,related accept", "counter drop"]
    assert chains["forward"] == [
        "type filter hook forward priority filter - 10; policy accept;",
        'iifname "sjbr0" oifname != "sjbr0" jump egress',
    ]
    assert chains["input"] == [
        "type filter hook input priority filter - 10; policy accept;",
        'iifname "sjbr0" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert }'
        " accept",
        'iifname "sjbr0" jump egress',
    ]
    assert "inbound" not in chains


def test_nftables_allows_listed_destinations_before_the_drop() -> None:
    spec = _spec("10.5.0.0/16:5432", "[fd00:5::/64]:5432", "10.9.0.7", "fd00:9::/64")

    egress = parse_chains(render_table(spec))["egress"]

    assert egress == [
        "ct state established,related accept",
        "ip daddr 10.5.0.0/16 tcp dport 5432 accept",
        "ip6 daddr fd00:5::/64 tcp dport 5432 accept",
        "ip daddr 10.9.0.7 accept",
        "ip6 daddr fd00:9::/64 accept",
        "counter drop",
    ]


def test_nftables_sftp_port_limits_new_inbound_connections() -> None:
    chains = parse_chains(render_table(_spec(sftp_port=2222)))

    assert chains["inbound"] == [
        "ct state established,related accept",
        "tcp dport 2222 accept",
        "counter drop",
    ]
    assert 'iifname != "sjbr0" oifname "sjbr0" jump inbound' in chains["forward"]


def test_nftables_script_replaces_the_table_and_lists_the_flush() -> None:
    spec = _spec(subnets=("10.203.0.0/24", "fd00:203::/64"))

    script = render_script(spec)

    lines = script.splitlines()
    table_start = lines.index("table inet sftpjail {")
    assert lines[table_start - 2 : table_start] == [
        "table inet sftpjail",
        "delete table inet sftpjail",
    ]
    assert "#   conntrack -D -f ipv4 -s 10.203.0.0/24" in lines
    assert "#   conntrack -D -f ipv6 -s fd00:203::/64" in lines


def test_nftables_script_without_subnets_says_they_are_read_at_apply() -> None:
    script = render_script(_spec())

    assert "apply reads them from sjbr0" in script
    assert "conntrack -D" not in script


def test_parse_chains_ignores_counter_values() -> None:
    live = render_table(_spec()).replace(
        "counter drop", "counter packets 12 bytes 3456 drop"
    )

    assert parse_chains(live) == parse_chains(render_table(_spec()))


def test_compare_tables_names_what_was_deleted_and_added() -> None:
    expected = parse_chains(render_table(_spec()))
    live = parse_chains(render_table(_spec("10.5.0.0/16:5432")))
    live["input"].remove('iifname "sjbr0" jump egress')

    problems = compare_tables(expected, live)

    assert problems == [
        "nftables: chain egress has unexpected `ip daddr 10.5.0.0/16 tcp dport "
        "5432 accept`",
        'nftables: chain input lacks `iifname "sjbr0" jump egress`',
    ]


def test_compare_tables_notices_missing_and_extra_chains() -> None:
    expected = parse_chains(render_table(_spec()))
    live = parse_chains(render_table(_spec(sftp_port=22)))
    del live["egress"]

    problems = compare_tables(expected, live)

    assert "nftables: chain egress is missing" in problems
    assert "nftables: unexpected chain inbound" in problems


def test_describe_differences_notices_reordering() -> None:
    assert describe_differences("x", ["a", "b"], ["b", "a"]) == [
        "x has its rules out of order"
    ]
    assert describe_differences("x", ["a", "b"], ["a", "b"]) == []


# iptables -----------------------------------------------------------------


def test_iptables_ipv4_plan_jumps_from_docker_user_and_input() -> None:
    plan = render_plan(_spec(), 4)

    assert plan.chains == {
        "SFTPJAIL-EGRESS": [
            "-A SFTPJAIL-EGRESS -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
            "-A SFTPJAIL-EGRESS -j DROP",
        ]
    }
    assert plan.jumps == [
        "-A DOCKER-USER -i sjbr0 ! -o sjbr0 -m comment --comment sftpjail "
        "-j SFTPJAIL-EGRESS",
        "-A INPUT -i sjbr0 -m comment --comment sftpjail -j SFTPJAIL-EGRESS",
    ]


def test_iptables_ipv6_plan_lets_neighbour_discovery_through() -> None:
    egress = render_plan(_spec(), 6).chains["SFTPJAIL-EGRESS"]

    assert egress[1:3] == [
        "-A SFTPJAIL-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 135 -j RETURN",
        "-A SFTPJAIL-EGRESS -p ipv6-icmp -m icmp6 --icmpv6-type 136 -j RETURN",
    ]
    assert egress[-1] == "-A SFTPJAIL-EGRESS -j DROP"


def test_iptables_puts_each_allowed_destination_in_its_family() -> None:
    spec = _spec("10.5.0.0/16:5432", "[fd00:5::/64]:5432", "10.9.0.7", "fd00:9::/64")

    ipv4 = render_plan(spec, 4).chains["SFTPJAIL-EGRESS"]
    ipv6 = render_plan(spec, 6).chains["SFTPJAIL-EGRESS"]

    assert ipv4[1:3] == [
        "-A SFTPJAIL-EGRESS -d 10.5.0.0/16 -p tcp -m tcp --dport 5432 -j RETURN",
        "-A SFTPJAIL-EGRESS -d 10.9.0.7/32 -j RETURN",
    ]
    assert ipv6[3:5] == [
        "-A SFTPJAIL-EGRESS -d fd00:5::/64 -p tcp -m tcp --dport 5432 -j RETURN",
        "-A SFTPJAIL-EGRESS -d fd00:9::/64 -j RETURN",
    ]
    assert not any("fd00" in rule for rule in ipv4)
    assert not any("10." in rule for rule in ipv6)


@pytest.mark.parametrize("version", [4, 6])
def test_iptables_sftp_port_adds_an_inbound_chain(version: int) -> None:
    plan = render_plan(_spec(sftp_port=2222), version)

    assert plan.chains["SFTPJAIL-INBOUND"] == [
        "-A SFTPJAIL-INBOUND -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN",
        "-A SFTPJAIL-INBOUND -p tcp -m tcp --dport 2222 -j RETURN",
        "-A SFTPJAIL-INBOUND -j DROP",
    ]
    assert (
        "-A DOCKER-USER ! -i sjbr0 -o sjbr0 -m comment --comment sftpjail "
        "-j SFTPJAIL-INBOUND"
    ) in plan.jumps


def test_iptables_restore_text_inserts_jumps_at_the_top_in_order() -> None:
    text = render_restore_text(render_plan(_spec(sftp_port=2222), 4))

    lines = text.splitlines()
    assert lines[0] == "*filter"
    assert lines[-1] == "COMMIT"
    assert ":SFTPJAIL-EGRESS - [0:0]" in lines
    assert ":DOCKER-USER - [0:0]" not in lines  # that would flush Docker's chain
    inserts = [line.split()[:3] for line in lines if line.startswith("-I ")]
    assert inserts == [
        ["-I", "DOCKER-USER", "1"],
        ["-I", "DOCKER-USER", "2"],
        ["-I", "INPUT", "1"],
    ]


def test_iptables_render_text_covers_both_families_and_the_flush() -> None:
    spec = _spec(subnets=("10.203.0.0/24", "fd00:203::/64"))

    text = render_text(spec, "iptables-legacy")

    assert "# IPv4: iptables-legacy" in text
    assert "# IPv6: ip6tables-legacy" in text
    assert text.count("*filter") == 2
    assert "#   conntrack -D -f ipv6 -s fd00:203::/64" in text


# the command line ----------------------------------------------------------


def test_firewall_without_a_verb_shows_help() -> None:
    shown = CliRunner().invoke(firewall, [])

    assert "Commands:" in shown.output
    assert "render" in shown.output


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_render_prints_the_rules_for_the_options(backend: str) -> None:
    arguments = ["render", "--backend", backend, "--bridge", "docker0"]
    arguments += ["--allow", "10.5.0.0/16:5432", "--sftp-port", "2222"]

    rendered = CliRunner().invoke(firewall, arguments)

    assert rendered.exit_code == 0, rendered.output
    assert "docker0" in rendered.output
    assert "5432" in rendered.output
    assert "2222" in rendered.output


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["render"], "--bridge NAME is required"),
        (["render", "--bridge", "docker0", "--allow", "x"], "not a network"),
        (["render", "--bridge", "docker0", "--subnet", "10.0.0.1/8"], "host bits"),
        (["render", "--bridge", "docker0", "--backend", "pf"], "nftables"),
    ],
)
def test_render_rejects_bad_options_as_usage_errors(
    arguments: list[str], complaint: str
) -> None:
    rendered = CliRunner().invoke(firewall, arguments)

    assert rendered.exit_code == 2
    assert complaint in rendered.output
