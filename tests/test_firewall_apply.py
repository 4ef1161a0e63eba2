"""apply, remove and check against a real kernel, inside a namespace of ours.

Each test gets a fresh network namespace holding one bridge, so the real
nft and iptables programs run for real while the machine's own firewall
is never touched.  Traffic is tested in test_netlab_egress.py.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

from netlab import BRIDGE, NETNS_MARKS, python_env

pytestmark = NETNS_MARKS

# (backend, iptables variant): the variant only matters to iptables.
VARIANTS = [
    pytest.param("nftables", "iptables", id="nftables"),
    pytest.param("iptables", "iptables-nft", id="iptables-nft"),
    pytest.param("iptables", "iptables-legacy", id="iptables-legacy"),
]
SPEC_ARGUMENTS = [
    "--bridge",
    BRIDGE,
    "--subnet",
    "10.203.0.0/24",
    "--subnet",
    "fd00:203::/64",
    "--allow",
    "10.9.0.0/24:5432",
    "--sftp-port",
    "2222",
]


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace with an addressed bridge, deleted afterwards."""

    name = f"sjfw-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        for command in (
            ["link", "add", BRIDGE, "type", "bridge"],
            ["address", "add", "10.203.0.1/24", "dev", BRIDGE],
            ["link", "set", BRIDGE, "up"],
        ):
            subprocess.run(["ip", "-n", name, *command], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def in_namespace(namespace: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a command inside the namespace, capturing its output."""

    return subprocess.run(
        ["ip", "netns", "exec", namespace, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=python_env(),
    )


def firewall(
    namespace: str, verb: str, backend: str, variant: str, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run `sftpjail firewall VERB` inside the namespace."""

    return in_namespace(
        namespace,
        sys.executable,
        "-m",
        "sftpjail",
        "firewall",
        verb,
        "--backend",
        backend,
        "--iptables",
        variant,
        *arguments,
    )


def snapshot(namespace: str, backend: str, variant: str) -> str:
    """The namespace's whole firewall state, without counters or dates."""

    if backend == "nftables":
        text = in_namespace(namespace, "nft", "list", "ruleset").stdout
    else:
        text = "".join(
            in_namespace(namespace, program).stdout
            for program in (f"{variant}-save", f"ip6{variant[2:]}-save")
        )
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return re.sub(r"packets \d+ bytes \d+|\[\d+:\d+\]", "", "\n".join(lines))


def add_docker_like_rules(namespace: str, backend: str, variant: str) -> None:
    """Stand in for Docker and an admin: rules that must survive remove."""

    if backend == "nftables":
        in_namespace(namespace, "nft", "add", "table", "ip", "docker")
        return
    for program in (variant, f"ip6{variant[2:]}"):
        for rule in (
            ["-N", "DOCKER-USER"],
            ["-A", "DOCKER-USER", "-j", "RETURN"],
            ["-A", "FORWARD", "-j", "DOCKER-USER"],
            ["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"],
        ):
            assert in_namespace(namespace, program, *rule).returncode == 0


@pytest.mark.parametrize(("backend", "variant"), VARIANTS)
def test_apply_twice_leaves_one_copy_that_check_accepts(
    namespace: str, backend: str, variant: str
) -> None:
    first = firewall(namespace, "apply", backend, variant, *SPEC_ARGUMENTS)
    after_first = snapshot(namespace, backend, variant)
    second = firewall(namespace, "apply", backend, variant, *SPEC_ARGUMENTS)
    checked = firewall(namespace, "check", backend, variant, *SPEC_ARGUMENTS)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert snapshot(namespace, backend, variant) == after_first
    assert "10.9.0.0/24" in after_first
    assert checked.returncode == 0, checked.stdout
    assert f"sftpjail firewall check passed ({backend}, bridge {BRIDGE})" in (
        checked.stdout
    )


@pytest.mark.parametrize("docker_was_there", [True, False], ids=["docker", "bare"])
@pytest.mark.parametrize(("backend", "variant"), VARIANTS)
def test_remove_restores_exactly_the_previous_state(
    namespace: str, backend: str, variant: str, docker_was_there: bool
) -> None:
    if docker_was_there:
        add_docker_like_rules(namespace, backend, variant)
    else:
        # A rule of the admin's, so iptables-nft's table exists before too.
        for program in (variant, f"ip6{variant[2:]}"):
            in_namespace(namespace, program, "-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
    before = snapshot(namespace, backend, variant)

    applied = firewall(namespace, "apply", backend, variant, *SPEC_ARGUMENTS)
    during = snapshot(namespace, backend, variant)
    removed = firewall(namespace, "remove", backend, variant)

    assert applied.returncode == 0, applied.stderr
    assert during != before
    assert removed.returncode == 0, removed.stderr
    assert snapshot(namespace, backend, variant) == before


@pytest.mark.parametrize(("backend", "variant"), VARIANTS)
def test_remove_without_apply_changes_nothing(
    namespace: str, backend: str, variant: str
) -> None:
    add_docker_like_rules(namespace, backend, variant)
    before = snapshot(namespace, backend, variant)

    removed = firewall(namespace, "remove", backend, variant)

    assert removed.returncode == 0, removed.stderr
    assert snapshot(namespace, backend, variant) == before


@pytest.mark.parametrize(("backend", "variant"), VARIANTS)
def test_check_without_apply_fails(namespace: str, backend: str, variant: str) -> None:
    checked = firewall(namespace, "check", backend, variant, *SPEC_ARGUMENTS)

    assert checked.returncode == 1
    assert "sftpjail firewall check failed" in checked.stdout


def test_check_names_a_rule_deleted_from_the_nftables_table(namespace: str) -> None:
    firewall(namespace, "apply", "nftables", "iptables", *SPEC_ARGUMENTS)
    listing = in_namespace(
        namespace, "nft", "-a", "list", "chain", "inet", "sftpjail", "input"
    )
    handle = re.search(r'iifname "sjbr0" jump egress # handle (\d+)', listing.stdout)
    assert handle is not None, listing.stdout
    in_namespace(
        namespace, "nft", "delete", "rule", "inet", "sftpjail", "input",
        "handle", handle.group(1),
    )  # fmt: skip

    checked = firewall(namespace, "check", "nftables", "iptables", *SPEC_ARGUMENTS)

    assert checked.returncode == 1
    assert 'nftables: chain input lacks `iifname "sjbr0" jump egress`' in checked.stdout


@pytest.mark.parametrize("variant", ["iptables-nft", "iptables-legacy"])
def test_check_names_a_deleted_jump_and_a_shadowing_rule(
    namespace: str, variant: str
) -> None:
    firewall(namespace, "apply", "iptables", variant, *SPEC_ARGUMENTS)
    jump = ["INPUT", "-i", BRIDGE, "-m", "comment", "--comment", "sftpjail"]
    deleted = in_namespace(namespace, variant, "-D", *jump, "-j", "SFTPJAIL-EGRESS")
    assert deleted.returncode == 0, deleted.stderr
    in_namespace(namespace, variant, "-I", "DOCKER-USER", "1", "-j", "ACCEPT")

    checked = firewall(namespace, "check", "iptables", variant, *SPEC_ARGUMENTS)

    assert checked.returncode == 1
    assert (
        "IPv4: jump missing: -A INPUT -i sjbr0 -m comment --comment sftpjail "
        "-j SFTPJAIL-EGRESS"
    ) in checked.stdout
    assert "IPv4: `-A DOCKER-USER -j ACCEPT` comes before sftpjail's jump" in (
        checked.stdout
    )


@pytest.mark.parametrize(("backend", "variant"), VARIANTS)
def test_apply_with_a_new_spec_replaces_the_old_rules(
    namespace: str, backend: str, variant: str
) -> None:
    firewall(namespace, "apply", backend, variant, *SPEC_ARGUMENTS)

    narrower = ["--bridge", BRIDGE, "--subnet", "10.203.0.0/24"]
    applied = firewall(namespace, "apply", backend, variant, *narrower)
    checked = firewall(namespace, "check", backend, variant, *narrower)

    assert applied.returncode == 0, applied.stderr
    assert checked.returncode == 0, checked.stdout
    state = snapshot(namespace, backend, variant)
    assert "10.9.0.0" not in state
    assert "2222" not in state


def test_apply_reads_the_subnets_from_the_bridge_and_flushes_them(
    namespace: str,
) -> None:
    applied = firewall(namespace, "apply", "nftables", "iptables", "--bridge", BRIDGE)

    assert applied.returncode == 0, applied.stderr
    assert "10.203.0.0/24: 0 flows flushed" in applied.stdout
