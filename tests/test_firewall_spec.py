"""Parsing and validating what the operator asks the firewall to enforce."""

from __future__ import annotations

import ipaddress

import pytest

from sftpjail.errors import FirewallError
from sftpjail.firewall import AllowedDestination, FirewallSpec, parse_allowed
from sftpjail.firewall.spec import parse_network


@pytest.mark.parametrize(
    ("text", "network", "port"),
    [
        ("10.5.0.0/16:5432", "10.5.0.0/16", 5432),
        ("10.5.0.7", "10.5.0.7/32", None),
        ("10.5.0.0/16", "10.5.0.0/16", None),
        ("[fd00:5::/64]:5432", "fd00:5::/64", 5432),
        ("fd00:5::/64", "fd00:5::/64", None),
        ("[fd00:5::7]", "fd00:5::7/128", None),
    ],
)
def test_parse_allowed_accepts_each_form(
    text: str, network: str, port: int | None
) -> None:
    allowed = parse_allowed(text)

    assert allowed == AllowedDestination(ipaddress.ip_network(network), port)


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("10.5.0.1/16:5432", "host bits"),
        ("10.5.0.0/16:http", "not a number"),
        ("10.5.0.0/16:70000", "between 1 and 65535"),
        ("[fd00:5::/64", "[fd00:5::/64]:5432"),
        ("[fd00:5::/64]5432", "[fd00:5::/64]:5432"),
        ("db.example:5432", "not a network"),
    ],
)
def test_parse_allowed_explains_bad_input(text: str, complaint: str) -> None:
    with pytest.raises(FirewallError) as caught:
        parse_allowed(text)

    assert complaint in str(caught.value)


def test_allowed_destination_prints_as_it_is_written() -> None:
    assert str(parse_allowed("[fd00:5::/64]:5432")) == "[fd00:5::/64]:5432"
    assert str(parse_allowed("10.5.0.0/16:5432")) == "10.5.0.0/16:5432"
    assert str(parse_allowed("10.5.0.0/16")) == "10.5.0.0/16"


@pytest.mark.parametrize("bridge", ["docker0", "br-0123456789ab", "sjbr0"])
def test_spec_accepts_docker_bridge_names(bridge: str) -> None:
    assert FirewallSpec(bridge=bridge).bridge == bridge


@pytest.mark.parametrize("bridge", ["", "a b", 'br"0', "br-0123456789abc", "-br"])
def test_spec_rejects_names_that_are_no_interface(bridge: str) -> None:
    with pytest.raises(FirewallError, match="not a valid interface name"):
        FirewallSpec(bridge=bridge)


@pytest.mark.parametrize("port", [0, 65536, -1])
def test_spec_rejects_impossible_sftp_ports(port: int) -> None:
    with pytest.raises(FirewallError, match="--sftp-port"):
        FirewallSpec(bridge="docker0", sftp_port=port)


def test_parse_network_is_strict_about_host_bits() -> None:
    assert parse_network("fd00:203::/64") == ipaddress.ip_network("fd00:203::/64")
    with pytest.raises(FirewallError, match="host bits"):
        parse_network("10.203.0.1/24")
