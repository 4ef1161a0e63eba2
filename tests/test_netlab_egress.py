"""The whole story in a lab: the container leaks, apply, it does not, SFTP works.

One lab (see netlab.py) serves the module: a container on a Docker-like
bridge, a host that NATs and publishes port 2222, an "internet" with
listeners, and a client outside.  Every probe runs inside the container
namespace with `python -m sftpjail probe`, every firewall command inside
the host namespace, so the machine's own firewall is never touched.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import (
    BRIDGE,
    BRIDGE_SUBNET_V4,
    BRIDGE_SUBNET_V6,
    ECHO_PORT,
    HOST_BRIDGE_V4,
    HOST_BRIDGE_V6,
    HOST_PUBLIC_V4,
    HTTP_PORT,
    INTERNET_V4,
    INTERNET_V6,
    NETNS_MARKS,
    PUBLISHED_PORT,
    NetLab,
    netlab,
    python_env,
)
from serverlab import READY_LINE, ensure_service_user, make_lab_root

pytestmark = NETNS_MARKS

# One target of every kind toward the "internet" namespace...
INTERNET_TARGETS = [
    f"tcp:{INTERNET_V4}:{HTTP_PORT}",
    f"tcp6:[{INTERNET_V6}]:{HTTP_PORT}",
    f"udp:{INTERNET_V4}:{ECHO_PORT}",
    f"udp:[{INTERNET_V6}]:{ECHO_PORT}",
    f"dns:{INTERNET_V4}",
    f"dns:[{INTERNET_V6}]",
    f"icmp:{INTERNET_V4}",
    f"icmp6:{INTERNET_V6}",
    f"mptcp:{INTERNET_V4}:{HTTP_PORT}",
    f"http://{INTERNET_V4}/",
]
# ...and toward the host's own addresses, which only the input path covers.
HOST_TARGETS = [
    f"tcp:{HOST_BRIDGE_V4}:{HTTP_PORT}",
    f"tcp6:[{HOST_BRIDGE_V6}]:{HTTP_PORT}",
    f"udp:{HOST_BRIDGE_V4}:{ECHO_PORT}",
    f"icmp:{HOST_BRIDGE_V4}",
    f"tcp:{HOST_PUBLIC_V4}:{HTTP_PORT}",
]
ALL_TARGETS = INTERNET_TARGETS + HOST_TARGETS

BACKENDS = [
    pytest.param(["--backend", "nftables"], id="nftables"),
    pytest.param(["--backend", "iptables"], id="iptables"),
    pytest.param(
        ["--backend", "iptables", "--iptables", "iptables-legacy"], id="legacy"
    ),
]
SPEC = [
    "--bridge",
    BRIDGE,
    "--subnet",
    BRIDGE_SUBNET_V4,
    "--subnet",
    BRIDGE_SUBNET_V6,
    "--sftp-port",
    str(PUBLISHED_PORT),
]

# A client of the internet's TCP echo service that keeps one connection
# open: it prints "connected", then for every line on stdin sends a line
# and prints "echo" or why it got none.
LONG_LIVED_CLIENT = f"""
import socket, sys
connection = socket.create_connection(({INTERNET_V4!r}, {ECHO_PORT}), timeout=5)
connection.sendall(b"hello\\n")
connection.recv(64)
print("connected", flush=True)
for _ in sys.stdin:
    try:
        connection.settimeout(2)
        connection.sendall(b"again\\n")
        print("echo" if connection.recv(64) else "closed", flush=True)
    except OSError as error:
        print("cut", type(error).__name__, flush=True)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[NetLab]:
    """The lab, with listeners in the internet and on the host."""

    with netlab() as built:
        built.start_services(built.host)
        yield built


def probe(lab: NetLab, *targets: str, timeout: str = "1") -> dict[str, str]:
    """Probe from the container; return target -> verdict."""

    result = lab.sftpjail(lab.container, "probe", "--timeout", timeout, *targets)
    assert result.returncode in (0, 1), result.stderr
    verdicts = {}
    for row in result.stdout.splitlines():
        verdict, target, _ = row.split(maxsplit=2)
        verdicts[target] = verdict
    return verdicts


def firewall(
    lab: NetLab, verb: str, *arguments: str
) -> subprocess.CompletedProcess[str]:
    """Run `sftpjail firewall VERB` in the host namespace; it must succeed."""

    result = lab.sftpjail(lab.host, "firewall", verb, *arguments)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture
def applied(lab: NetLab, request: pytest.FixtureRequest) -> Iterator[list[str]]:
    """Apply the firewall with the test's backend options; always remove it."""

    backend: list[str] = request.param
    firewall(lab, "apply", *backend, *SPEC)
    try:
        yield backend
    finally:
        firewall(lab, "remove", *backend)


def test_without_the_firewall_every_probe_kind_leaks(lab: NetLab) -> None:
    verdicts = probe(lab, *ALL_TARGETS, timeout="3")

    assert verdicts == dict.fromkeys(ALL_TARGETS, "LEAK")


@pytest.mark.parametrize("applied", BACKENDS, indirect=True)
def test_apply_blocks_every_probe_kind_and_remove_restores(
    lab: NetLab, applied: list[str]
) -> None:
    during = probe(lab, *ALL_TARGETS)
    checked = lab.sftpjail(lab.host, "firewall", "check", *applied, *SPEC)
    firewall(lab, "remove", *applied)
    after = probe(lab, *ALL_TARGETS, timeout="3")
    firewall(lab, "apply", *applied, *SPEC)  # for the fixture to remove

    assert during == dict.fromkeys(ALL_TARGETS, "blocked")
    assert checked.returncode == 0, checked.stdout
    assert after == dict.fromkeys(ALL_TARGETS, "LEAK")


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_cuts_a_connection_opened_before_it(
    lab: NetLab, backend: list[str]
) -> None:
    client = subprocess.Popen(
        ["ip", "netns", "exec", lab.container, sys.executable, "-c", LONG_LIVED_CLIENT],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    lab.processes.append(client)
    # Named once, so that exchange() below sees them as not None.
    stdin, stdout = client.stdin, client.stdout
    assert stdin is not None and stdout is not None
    assert stdout.readline().strip() == "connected"

    def exchange() -> str:
        stdin.write("go\n")
        stdin.flush()
        return stdout.readline().strip()

    before = exchange()
    firewall(lab, "apply", *backend, *SPEC)
    try:
        after = exchange()
    finally:
        firewall(lab, "remove", *backend)
        client.kill()

    assert before == "echo"
    assert after.startswith("cut")


@pytest.mark.parametrize("applied", BACKENDS, indirect=True)
def test_check_notices_a_rule_deleted_by_hand(lab: NetLab, applied: list[str]) -> None:
    if "nftables" in applied:
        deletion = ["nft", "flush", "chain", "inet", "sftpjail", "input"]
    else:
        program = applied[-1] if "--iptables" in applied else "iptables"
        deletion = [program, "-D", "INPUT", "-i", BRIDGE, "-m", "comment"]
        deletion += ["--comment", "sftpjail", "-j", "SFTPJAIL-EGRESS"]
    lab.run(lab.host, deletion)

    checked = lab.sftpjail(lab.host, "firewall", "check", *applied, *SPEC)
    leaked = probe(lab, HOST_TARGETS[0], timeout="3")

    assert checked.returncode == 1
    assert "lacks" in checked.stdout or "missing" in checked.stdout
    assert leaked == {HOST_TARGETS[0]: "LEAK"}  # the check was right to complain


# SFTP through the published port -------------------------------------------


@pytest.fixture(scope="module")
def sftp_server(lab: NetLab) -> Iterator[Path]:
    """sftpjail serving 0.0.0.0:2222 in the container; yields the client key."""

    ensure_service_user()
    root = make_lab_root()
    try:
        config = _write_server_config(root)
        key = root / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            timeout=30,
        )
        added = lab.sftpjail(
            lab.host, "user", "add", "alice", "--key-file", f"{key}.pub",
            "--config", str(config),
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        _start_server(lab, root, config)
        yield key
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _write_server_config(root: Path) -> Path:
    """A config for a server listening on every address of the container."""

    config = root / "config.toml"
    config.write_text(
        "[server]\n"
        f'listen = ["0.0.0.0:{PUBLISHED_PORT}"]\n'
        f'data_dir = "{root / "data"}"\n'
        f'state_dir = "{root / "state"}"\n'
        f'users_file = "{root / "users.toml"}"\n'
    )
    return config


def _start_server(lab: NetLab, root: Path, config: Path) -> None:
    """Start `sftpjail serve` in the container and wait for its ready line."""

    with (
        (root / "audit.jsonl").open("w") as audit,
        (root / "server.log").open("w") as log,
    ):
        server = subprocess.Popen(
            ["ip", "netns", "exec", lab.container,
             sys.executable, "-m", "sftpjail", "serve", "--config", str(config)],
            stdout=audit,
            stderr=log,
            env=python_env(),
        )  # fmt: skip
    lab.processes.append(server)

    deadline = time.monotonic() + 30
    while READY_LINE not in (root / "server.log").read_text():
        assert server.poll() is None, (root / "server.log").read_text()
        assert time.monotonic() < deadline, (root / "server.log").read_text()
        time.sleep(0.1)


def sftp_round_trip(lab: NetLab, key: Path, tag: str) -> str:
    """Upload a file from the client and download it again; return it."""

    local = key.parent / f"upload-{tag}.txt"
    local.write_text(f"sftpjail through the firewall {tag}\n")
    fetched = key.parent / f"download-{tag}.txt"
    batch = f"put {local} {tag}.txt\nget {tag}.txt {fetched}\n"
    result = lab.run(
        lab.client,
        ["sftp", "-F", "/dev/null", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "ConnectTimeout=10",
         "-i", str(key), "-P", str(PUBLISHED_PORT), "-b", "-",
         f"alice@{HOST_PUBLIC_V4}"],
        stdin=batch,
        check=False,
        timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return fetched.read_text()


@pytest.mark.parametrize("applied", BACKENDS, indirect=True)
def test_sftp_through_the_published_port_still_works(
    lab: NetLab, sftp_server: Path, applied: list[str]
) -> None:
    tag = applied[-1]

    content = sftp_round_trip(lab, sftp_server, tag)
    container_egress = probe(lab, f"tcp:{INTERNET_V4}:{HTTP_PORT}")

    assert content == f"sftpjail through the firewall {tag}\n"
    assert container_egress == {f"tcp:{INTERNET_V4}:{HTTP_PORT}": "blocked"}
