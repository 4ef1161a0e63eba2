"""The container image, built and run the way docs/docker.md says.

The image is built without a registry (scripts/build-image.sh), then run
read-only, with every capability dropped, no-new-privileges, the seccomp
profile in deploy/seccomp.json and its own bridge, and driven with the real
OpenSSH `sftp` client through a port published on 127.0.0.1 only.

The egress tests build a stand-in for the Internet: a listener container
with no Docker network at all, wired to the host by a veth pair of our own
(the "uplink").  Traffic from the sftpjail bridge to it leaves the way real
egress does: forwarded by the host and masqueraded by Docker.  Containers,
networks, links and host firewall rules made here carry a random suffix and
are removed in `finally`; nothing is sent anywhere else.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SRC_DIR = ROOT / "src"
SECCOMP_PROFILE = ROOT / "deploy" / "seccomp.json"

IMAGE = "sftpjail:test"
SERVICE_UID = 10001
BUILD_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 120.0
HEALTHY_TIMEOUT = 90.0


def hardening(seccomp: str) -> list[str]:
    """The security settings of deploy/docker-compose.yml, as `docker run` flags."""

    return [
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges:true",
        "--security-opt",
        f"seccomp={seccomp}",
        "--tmpfs",
        "/tmp:size=16m,mode=1777,noexec,nosuid,nodev",
        "--pids-limit",
        "512",
    ]


HARDENING = hardening(str(SECCOMP_PROFILE))

# What firewall mode adds (docs/docker.md, "In-container firewall").
FIREWALL_MODE = [
    "--user",
    "0:0",
    "--cap-add",
    "NET_ADMIN",
    "--cap-add",
    "SETUID",
    "--cap-add",
    "SETGID",
    "--cap-add",
    "SETPCAP",
    "--env",
    "SFTPJAIL_CONTAINER_FIREWALL=1",
]

# Candidate /24s for the test bridge; the next /24 up is the uplink.
SUBNET_CANDIDATES = [f"172.30.{third}.0/24" for third in range(77, 97, 2)]

# The stand-in Internet's listeners: whatever answers is a leak for the probe.
HTTP_PORT = 80
ECHO_PORT = 7
DNS_PORT = 53
_INTERNET_LISTENERS = f"""
import asyncio

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport
    def datagram_received(self, data, address):
        self.transport.sendto(self.reply(data), address)
    def reply(self, data):
        return data

class Dns(Echo):
    def reply(self, data):
        # The query itself with the "response" bit set: the ID matches.
        return data[:2] + bytes([data[2] | 0x80]) + data[3:]

async def echo_stream(reader, writer):
    while data := await reader.read(4096):
        writer.write(data)
    writer.close()

async def http(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    writer.write(b"HTTP/1.0 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n")
    writer.close()

async def main():
    loop = asyncio.get_running_loop()
    await asyncio.start_server(echo_stream, "0.0.0.0", {ECHO_PORT})
    await asyncio.start_server(http, "0.0.0.0", {HTTP_PORT})
    await loop.create_datagram_endpoint(Echo, local_addr=("0.0.0.0", {ECHO_PORT}))
    await loop.create_datagram_endpoint(Dns, local_addr=("0.0.0.0", {DNS_PORT}))
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "the docker command is not installed (scripts/start-docker.sh)"
    try:
        info = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "docker info did not answer within 60 s"
    if info.returncode != 0:
        return f"no Docker engine answers (scripts/start-docker.sh): {info.stderr}"
    return None


_UNAVAILABLE = _docker_unavailable()
pytestmark = [
    pytest.mark.docker,
    pytest.mark.skipif(_UNAVAILABLE is not None, reason=_UNAVAILABLE or ""),
]
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="veth links and host firewall rules need root"
)


def docker(
    *arguments: str, check: bool = True, timeout: float = COMMAND_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run one docker command and capture its output."""

    result = subprocess.run(
        ["docker", *arguments], capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"docker {' '.join(arguments)} failed ({result.returncode}): "
            f"{result.stderr}{result.stdout}"
        )
    return result


def run(
    *argv: str, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a host command (ip, nsenter, sftp) and capture its output."""

    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, cwd=cwd
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr}")
    return result


def sftpjail_cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    """Run this checkout's `python -m sftpjail` on the host."""

    env = dict(os.environ, PYTHONPATH=str(SRC_DIR))
    return subprocess.run(
        [sys.executable, "-m", "sftpjail", *arguments],
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        env=env,
    )


def inspect(container: str, template: str) -> str:
    return docker("inspect", "--format", template, container).stdout.strip()


def remove_container(name: str) -> None:
    docker("rm", "--force", "--volumes", name, check=False)


# -- fixtures -------------------------------------------------------------


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built the no-registry way; the script prints its tag."""

    env = dict(os.environ, SFTPJAIL_IMAGE=IMAGE)
    build = subprocess.run(
        [str(ROOT / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=env,
        cwd=ROOT,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    assert build.stdout.strip().splitlines()[-1] == IMAGE
    return IMAGE


@dataclass(frozen=True)
class Network:
    """A user-defined bridge network made for this module."""

    name: str
    bridge: str
    subnet: ipaddress.IPv4Network

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)


@pytest.fixture(scope="module")
def network() -> Iterator[Network]:
    """A bridge with a fixed name, as deploy/docker-compose.yml makes one."""

    suffix = secrets.token_hex(3)
    name, bridge = f"sftpjail-test-{suffix}", f"sjt{suffix}"
    for candidate in SUBNET_CANDIDATES:
        created = docker(
            "network",
            "create",
            "--driver",
            "bridge",
            "--subnet",
            candidate,
            "--opt",
            f"com.docker.network.bridge.name={bridge}",
            name,
            check=False,
        )
        if created.returncode == 0:
            break
    else:
        pytest.fail(f"no free subnet among {SUBNET_CANDIDATES}: {created.stderr}")
    try:
        yield Network(name, bridge, ipaddress.IPv4Network(candidate))
    finally:
        docker("network", "rm", name, check=False)


@dataclass(frozen=True)
class UsersDirectory:
    """The directory mounted at /etc/sftpjail/users, and alice's key."""

    path: Path
    key: Path


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> UsersDirectory:
    """A users file made with the CLI on the host, readable by the image user."""

    root = tmp_path_factory.mktemp("docker-users")
    key = root / "alice_key"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice", "-f", str(key))
    directory = root / "users"
    directory.mkdir()

    added = sftpjail_cli(
        "user",
        "add",
        "alice",
        "--key-file",
        f"{key}.pub",
        "--users-file",
        str(directory / "users.toml"),
    )
    assert added.returncode == 0, added.stderr
    for path in (directory, *directory.iterdir()):
        os.chown(path, SERVICE_UID, SERVICE_UID)
    return UsersDirectory(directory, key)


@dataclass(frozen=True)
class Server:
    """A running sftpjail container and its port on 127.0.0.1."""

    name: str
    port: int


def start_server(
    image: str, network: Network, users: UsersDirectory, extra: list[str]
) -> Server:
    """Start the server as docs/docker.md shows and wait until it is healthy."""

    name = f"sftpjail-test-{secrets.token_hex(3)}"
    docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        network.name,
        *HARDENING,
        *extra,
        "--publish",
        "127.0.0.1::2222",
        "--volume",
        f"{users.path}:/etc/sftpjail/users:ro",
        # The image's HEALTHCHECK command, polled faster than in production.
        "--health-interval",
        "1s",
        image,
    )
    try:
        _wait_until_healthy(name)
        published = docker("port", name, "2222/tcp").stdout.splitlines()[0]
        return Server(name, int(published.rpartition(":")[2]))
    except BaseException:
        remove_container(name)
        raise


def _wait_until_healthy(name: str) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    status = ""
    while time.monotonic() < deadline:
        status = inspect(name, "{{.State.Status}} {{.State.Health.Status}}")
        if status == "running healthy" or not status.startswith("running"):
            break
        time.sleep(1)
    if status != "running healthy":
        logs = docker("logs", "--tail", "40", name, check=False)
        pytest.fail(f"container {name} is {status!r}: {logs.stderr}{logs.stdout}")


@pytest.fixture(scope="module")
def server(image: str, network: Network, users: UsersDirectory) -> Iterator[Server]:
    running = start_server(image, network, users, [])
    try:
        yield running
    finally:
        remove_container(running.name)


@dataclass(frozen=True)
class Internet:
    """The stand-in for the Internet, reached only through our uplink."""

    address: str


@pytest.fixture(scope="module")
def internet(image: str, network: Network) -> Iterator[Internet]:
    """A listener container with no Docker network, wired to the host by a veth.

    Docker keeps its bridges apart, so a container on another Docker
    network could never be reached anyway; a routed link is what the
    Internet looks like from a container.
    """

    suffix = secrets.token_hex(3)
    name, host_link, inner_link = (
        f"sftpjail-inet-{suffix}",
        f"sju{suffix}",
        f"sji{suffix}",
    )
    uplink = ipaddress.IPv4Network((int(network.subnet.network_address) + 256, 24))
    if _routed_here(uplink):
        pytest.fail(f"{uplink} is already routed on this host; edit SUBNET_CANDIDATES")
    host_address, inner_address = uplink.network_address + 1, uplink.network_address + 2
    docker(
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "none",
        "--user",
        "0:0",
        "--entrypoint",
        "python",
        image,
        "-c",
        _INTERNET_LISTENERS,
    )
    try:
        pid = inspect(name, "{{.State.Pid}}")
        namespace = ["nsenter", f"--net=/proc/{pid}/ns/net", "ip"]
        run("ip", "link", "add", host_link, "type", "veth", "peer", "name", inner_link)
        run("ip", "link", "set", inner_link, "netns", pid)
        run(*namespace, "address", "add", f"{inner_address}/24", "dev", inner_link)
        run(*namespace, "link", "set", inner_link, "up")
        run(*namespace, "route", "add", "default", "via", str(host_address))
        run("ip", "address", "add", f"{host_address}/24", "dev", host_link)
        run("ip", "link", "set", host_link, "up")
        _wait_for_listener(name)
        yield Internet(str(inner_address))
    finally:
        run("ip", "link", "del", host_link, check=False)
        remove_container(name)


def _routed_here(subnet: ipaddress.IPv4Network) -> bool:
    """Does any route of the host's main table overlap `subnet`?"""

    routes = json.loads(run("ip", "-json", "-4", "route", "show").stdout)
    for route in routes:
        if route["dst"] != "default" and subnet.overlaps(
            ipaddress.IPv4Network(route["dst"], strict=False)
        ):
            return True
    return False


def _wait_for_listener(name: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if docker("logs", name, check=False).stdout.strip() == "ready":
            return
        time.sleep(0.5)
    pytest.fail(f"the internet container {name} never said ready")


# -- helpers --------------------------------------------------------------


def sftp_round_trip(server: Server, users: UsersDirectory, tmp_path: Path) -> bytes:
    """Upload random bytes, download them again; return what came back."""

    upload, download = tmp_path / "upload.bin", tmp_path / "download.bin"
    upload.write_bytes(secrets.token_bytes(300_000))
    batch = tmp_path / "batch"
    batch.write_text(f"put {upload} sample.bin\nget sample.bin {download}\n")

    result = run(
        "sftp",
        "-b",
        str(batch),
        "-P",
        str(server.port),
        "-i",
        str(users.key),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "ConnectTimeout=20",
        "alice@127.0.0.1",
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert download.read_bytes() == upload.read_bytes()
    return download.read_bytes()


def process_status(container: str) -> list[dict[str, str]]:
    """/proc/PID/status of every process in the container, read on the host."""

    listing = docker("top", container, "-eo", "pid").stdout.split()[1:]
    statuses = []
    for pid in listing:
        # The healthcheck is `docker exec`'d with the container's settings,
        # not a child of the server; it is not what these tests are about.
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            continue  # it exited since `docker top` listed it
        if b"healthcheck" in command:
            continue
        fields = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.split()[0] if value.split() else ""
            if key in ("Uid", "Gid"):
                fields[key] = " ".join(value.split())
        statuses.append(fields)
    return statuses


# A snippet run inside the container: which sockets and syscalls work.
_SYSCALL_PROBE = r"""
import ctypes, errno, json, socket
results = {}
def attempt(name, *arguments):
    try:
        socket.socket(*arguments).close()
        results[name] = "ok"
    except OSError as error:
        results[name] = errno.errorcode.get(error.errno, str(error.errno))
attempt("tcp", socket.AF_INET, socket.SOCK_STREAM)
attempt("tcp6", socket.AF_INET6, socket.SOCK_STREAM)
attempt("udp", socket.AF_INET, socket.SOCK_DGRAM)
attempt("unix", socket.AF_UNIX, socket.SOCK_STREAM)
attempt("mptcp", socket.AF_INET, socket.SOCK_STREAM, 262)
attempt("mptcp6", socket.AF_INET6, socket.SOCK_STREAM, 262)
attempt("raw", socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
attempt("ping", socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
attempt("packet", socket.AF_PACKET, socket.SOCK_RAW, 0)
attempt("netlink", socket.AF_NETLINK, socket.SOCK_RAW, 0)
libc = ctypes.CDLL(None, use_errno=True)
def syscall(name, number, *arguments):
    returned = libc.syscall(number, *arguments)
    code = ctypes.get_errno()
    results[name] = "ok" if returned >= 0 else errno.errorcode.get(code, str(code))
syscall("io_uring_setup", 425, 8, ctypes.create_string_buffer(120))
syscall("ptrace", 101, 0, 0, 0, 0)
syscall("unshare", 272, 0x10000000)
print(json.dumps(results))
"""


def syscall_probe(image: str, seccomp: str) -> dict[str, str]:
    result = docker(
        "run",
        "--rm",
        *hardening(seccomp),
        "--entrypoint",
        "python",
        image,
        "-c",
        _SYSCALL_PROBE,
    )
    probed: dict[str, str] = json.loads(result.stdout)
    return probed


@dataclass
class HostListener:
    """A TCP listener on the bridge's host address: the host as a target."""

    address: str
    port: int
    accepted: int = 0


@pytest.fixture
def host_listener(network: Network) -> Iterator[HostListener]:
    listener = socket.create_server((network.gateway, 0))
    listener.settimeout(0.5)
    state = HostListener(network.gateway, listener.getsockname()[1])
    stop = threading.Event()

    def accept_until_stopped() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            state.accepted += 1
            connection.close()

    thread = threading.Thread(target=accept_until_stopped, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        thread.join(timeout=5)
        listener.close()


def egress_targets(internet: Internet, host: HostListener) -> list[str]:
    """Every way out the probe knows, aimed only at our own listeners."""

    return [
        f"tcp:{internet.address}:{ECHO_PORT}",
        f"udp:{internet.address}:{ECHO_PORT}",
        f"dns:{internet.address}:{DNS_PORT}",
        f"http://{internet.address}:{HTTP_PORT}/",
        f"icmp:{internet.address}",
        f"mptcp:{internet.address}:{HTTP_PORT}",
        f"tcp:{host.address}:{host.port}",
    ]


def probe_inside(container: str, targets: list[str]) -> dict[str, bool]:
    """Run `sftpjail probe` inside the container: target -> leaked."""

    result = docker(
        "exec",
        container,
        "sftpjail",
        "probe",
        "--json",
        "--timeout",
        "2",
        *targets,
        check=False,
    )
    assert result.returncode in (0, 1), result.stderr
    rows = json.loads(result.stdout)["results"]
    return {row["target"]: row["leaked"] for row in rows}


# -- the image ------------------------------------------------------------


def test_image_runs_as_the_service_user_with_a_healthcheck(image: str) -> None:
    config = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]

    assert config["User"] == f"{SERVICE_UID}:{SERVICE_UID}"
    assert "2222/tcp" in config["ExposedPorts"]
    assert set(config["Volumes"]) == {"/data", "/state"}
    assert config["Healthcheck"]["Test"] == ["CMD", "sftpjail", "healthcheck"]


def test_image_holds_no_package_manager_or_compiler(image: str) -> None:
    snippet = (
        "import importlib.util, json, shutil\n"
        "tools = ('apt', 'apt-get', 'dpkg', 'pip', 'pip3', 'perl', 'gcc', 'cc', "
        "'make')\n"
        "print(json.dumps({'found': [t for t in tools if shutil.which(t)],"
        " 'pip': importlib.util.find_spec('pip') is not None}))\n"
    )
    result = docker(
        "run", "--rm", *HARDENING, "--entrypoint", "python", image, "-c", snippet
    )

    assert json.loads(result.stdout) == {"found": [], "pip": False}


def test_version_runs_under_the_hardened_settings(image: str) -> None:
    result = docker("run", "--rm", *HARDENING, image, "sftpjail", "version")

    assert result.stdout.startswith("sftpjail ")


# -- the seccomp profile --------------------------------------------------


def test_seccomp_profile_refuses_what_sftpjail_never_needs(image: str) -> None:
    probed = syscall_probe(image, str(SECCOMP_PROFILE))

    for allowed in ("tcp", "tcp6", "udp", "unix"):
        assert probed[allowed] == "ok", probed
    for refused in (
        "mptcp",
        "mptcp6",
        "raw",
        "ping",
        "packet",
        "netlink",
        "io_uring_setup",
        "ptrace",
        "unshare",
    ):
        assert probed[refused] == "EPERM", (refused, probed)


def test_seccomp_probe_sees_sockets_the_profile_removes(image: str) -> None:
    # Control: without a profile the same snippet can open a netlink socket,
    # so the refusals above come from deploy/seccomp.json.
    probed = syscall_probe(image, "unconfined")

    assert probed["netlink"] == "ok"


# -- the running server ---------------------------------------------------


def test_sftp_upload_and_download_are_byte_identical(
    server: Server, users: UsersDirectory, tmp_path: Path
) -> None:
    assert len(sftp_round_trip(server, users, tmp_path)) == 300_000


def test_every_server_process_is_unprivileged(server: Server) -> None:
    statuses = process_status(server.name)

    assert statuses
    for status in statuses:
        assert status["Uid"] == " ".join([str(SERVICE_UID)] * 4), status
        assert status["Gid"] == " ".join([str(SERVICE_UID)] * 4), status
        assert int(status["CapEff"], 16) == 0
        assert int(status["CapBnd"], 16) == 0
        assert status["NoNewPrivs"] == "1"
        assert status["Seccomp"] == "2"


def test_root_filesystem_is_read_only(server: Server) -> None:
    assert inspect(server.name, "{{.HostConfig.ReadonlyRootfs}}") == "true"

    # As uid 0, who owns these files, so only the mount can say no.
    for path in ("/etc/sftpjail/config.toml", "/opt/sftpjail/bin/injected"):
        write = f"open({path!r}, 'a')"
        attempt = docker(
            "exec", "--user", "0:0", server.name, "python", "-c", write, check=False
        )
        assert attempt.returncode != 0
        assert "Read-only file system" in attempt.stderr


def test_healthcheck_reads_the_ssh_identification(server: Server) -> None:
    log = json.loads(inspect(server.name, "{{json .State.Health.Log}}"))

    # The image listens on both families; a network without IPv6 leaves the
    # container no ::1, and the check skips that family instead of failing.
    assert log[-1]["ExitCode"] == 0
    lines = log[-1]["Output"].splitlines()
    assert lines[0].startswith("127.0.0.1:2222 answered: SSH-2.0-"), lines
    assert lines[1].startswith(("[::1]:2222 answered", "[::1]:2222 skipped")), lines


# -- keeping the container off the Internet -------------------------------


@needs_root
@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_host_firewall_closes_every_way_out(
    backend: str,
    server: Server,
    network: Network,
    internet: Internet,
    host_listener: HostListener,
    users: UsersDirectory,
    tmp_path: Path,
) -> None:
    targets = egress_targets(internet, host_listener)
    before = probe_inside(server.name, targets)

    # Without host rules the container reaches anything Docker routes to:
    # the stand-in Internet and the host itself.  ICMP and MPTCP fail
    # already, refused by the seccomp profile.
    leaks = {target for target, leaked in before.items() if leaked}
    assert leaks == set(targets) - {targets[4], targets[5]}, before

    firewall = ["firewall", "apply", "--backend", backend, "--bridge", network.bridge]
    try:
        applied = sftpjail_cli(*firewall, "--sftp-port", "2222")
        assert applied.returncode == 0, applied.stderr
        after = probe_inside(server.name, targets)
        sftp_round_trip(server, users, tmp_path)
    finally:
        removed = sftpjail_cli(
            "firewall", "remove", "--backend", backend, "--bridge", network.bridge
        )
    assert removed.returncode == 0, removed.stderr

    assert not any(after.values()), after


@needs_root
def test_container_firewall_mode_drops_capabilities_and_egress(
    image: str,
    network: Network,
    users: UsersDirectory,
    internet: Internet,
    tmp_path: Path,
) -> None:
    firewalled = start_server(image, network, users, FIREWALL_MODE)
    try:
        statuses = process_status(firewalled.name)
        sftp_round_trip(firewalled, users, tmp_path)
        probed = probe_inside(
            firewalled.name,
            [
                f"tcp:{internet.address}:{ECHO_PORT}",
                f"udp:{internet.address}:{ECHO_PORT}",
            ],
        )
    finally:
        remove_container(firewalled.name)

    # The server itself: no uid 0 and no capability left anywhere.
    assert statuses
    for status in statuses:
        assert status["Uid"] == " ".join([str(SERVICE_UID)] * 4), status
        assert int(status["CapBnd"], 16) == 0
    assert not any(probed.values()), probed


# -- the compose file -----------------------------------------------------

COMPOSE_FILE = ROOT / "deploy" / "docker-compose.yml"
COMPOSE_SUBNETS = [f"172.30.{third}.0/24" for third in range(101, 121)]


def compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if docker("compose", "version", check=False).returncode == 0:
        return ["docker", "compose"]
    return None


def local_compose_file(directory: Path, bridge: str, subnet: str) -> Path:
    """deploy/docker-compose.yml with only what must differ on a test host.

    The published port moves to 127.0.0.1 and a random host port, the
    bridge name and subnet to ones this test owns, the image to the one
    built above.  Each replaced line must exist, so the test notices when
    the file changes shape.
    """

    text = COMPOSE_FILE.read_text()
    replacements = {
        '      - "2222:2222"': '      - "127.0.0.1::2222"',
        "com.docker.network.bridge.name: sftpjail0": (
            f"com.docker.network.bridge.name: {bridge}"
        ),
        "- subnet: 172.31.250.0/24": f"- subnet: {subnet}",
        "image: sftpjail:latest": f"image: {IMAGE}",
        "context: ..": f"context: {ROOT}",
    }
    for old, new in replacements.items():
        assert old in text, f"{COMPOSE_FILE} no longer has {old!r}"
        text = text.replace(old, new)

    shutil.copy(SECCOMP_PROFILE, directory / "seccomp.json")
    compose_file = directory / "docker-compose.yml"
    compose_file.write_text(text)
    return compose_file


def _wait_until_serving(container: str) -> None:
    deadline = time.monotonic() + HEALTHY_TIMEOUT
    while time.monotonic() < deadline:
        if (
            docker("exec", container, "sftpjail", "healthcheck", check=False).returncode
            == 0
        ):
            return
        time.sleep(1)
    logs = docker("logs", "--tail", "40", container, check=False)
    pytest.fail(f"compose container never became healthy: {logs.stderr}")


def test_compose_file_runs_the_hardened_server(
    image: str, users: UsersDirectory, tmp_path: Path
) -> None:
    compose = compose_command()
    if compose is None:
        pytest.skip("neither docker-compose nor the docker compose plugin is installed")
    subnet = next(
        (
            text
            for text in COMPOSE_SUBNETS
            if not _routed_here(ipaddress.IPv4Network(text))
        ),
        None,
    )
    assert subnet is not None, f"every subnet of {COMPOSE_SUBNETS} is in use"

    suffix = secrets.token_hex(3)
    project, bridge = f"sjc{suffix}", f"sjc{suffix}"
    directory = tmp_path / "deploy"
    directory.mkdir()
    compose_file = local_compose_file(directory, bridge, subnet)
    shutil.copytree(users.path, directory / "users")
    for path in (directory / "users", *(directory / "users").iterdir()):
        os.chown(path, SERVICE_UID, SERVICE_UID)
    base = [*compose, "--project-name", project, "--file", str(compose_file)]

    # From the file's directory, as its header says: docker-compose reads
    # seccomp=./seccomp.json relative to where it runs.
    try:
        up = run(*base, "up", "--detach", "--no-build", check=False, cwd=directory)
        assert up.returncode == 0, up.stderr
        container = run(
            *base, "ps", "--quiet", "sftpjail", cwd=directory
        ).stdout.strip()
        _wait_until_serving(container)
        published = docker("port", container, "2222/tcp").stdout.splitlines()[0]
        server = Server(container, int(published.rpartition(":")[2]))
        sftp_round_trip(server, users, tmp_path)
        host_config = json.loads(inspect(container, "{{json .HostConfig}}"))
        (network,) = json.loads(
            inspect(container, "{{json .NetworkSettings.Networks}}")
        )
        bridge_option = '{{index .Options "com.docker.network.bridge.name"}}'
        attached_bridge = docker(
            "network", "inspect", "--format", bridge_option, network
        )
    finally:
        run(*base, "down", "--volumes", "--remove-orphans", check=False, cwd=directory)

    assert host_config["ReadonlyRootfs"] is True
    assert host_config["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host_config["SecurityOpt"]
    seccomp = [opt for opt in host_config["SecurityOpt"] if opt.startswith("seccomp=")]
    assert len(seccomp) == 1
    profile = json.loads(seccomp[0].removeprefix("seccomp="))
    assert profile == json.loads(SECCOMP_PROFILE.read_text())
    assert attached_bridge.stdout.strip() == bridge
