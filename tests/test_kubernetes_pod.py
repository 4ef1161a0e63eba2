"""What deploy/kubernetes describes, run for real without a cluster.

Two halves.  The pod firewall's nft table is loaded into network namespaces
this test builds, and real connections show that loopback and replies pass
while nothing new leaves, over IPv4 and IPv6.  Then the rendered pod is run
the way a kubelet would, with Docker standing in for the container runtime:
a sandbox container holds the network namespace, each container of the
pod spec becomes `docker run` with the same user, capabilities, read-only
root, seccomp profile, command and mounts, and the volumes are directories
laid out as the kubelet lays out Secrets, ConfigMaps and emptyDirs (owned
by root, group fsGroup, Secrets behind the `..data` symlink).  A user then
logs in with the real sftp client.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kubelab import (
    FIREWALL_CONTAINER,
    FIREWALL_RULES,
    KUSTOMIZATION,
    REPOSITORY,
    SERVER_CONTAINER,
    SFTP_PORT,
    Manifest,
    Objects,
    all_containers,
    container,
    effective,
    pod_spec,
    render,
    volume_named,
    write_overlay,
)

# Built by scripts/build-image.sh under the tag tests/test_docker.py uses,
# so that whichever module runs second finds every layer cached.
IMAGE = "sftpjail:test"
BUILD_TIMEOUT = 1800.0
COMMAND_TIMEOUT = 120.0
READY_TIMEOUT = 60.0
# Where components/seccomp-localhost tells operators to copy this file.
LOCALHOST_PROFILES = {"profiles/sftpjail.json": REPOSITORY / "deploy" / "seccomp.json"}
HOST_KEY_FILES = ("ssh_host_ecdsa_key", "ssh_host_ed25519_key")


def _run(command: list[str], timeout: float = COMMAND_TIMEOUT) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return result.stdout.strip()


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and kubelet-style volume owners need root")


# --- the pod firewall's table, measured -----------------------------------

# Addresses inside the two namespaces the test makes, nowhere else.
_POD_ADDRESSES = {4: "10.200.91.1", 6: "fd00:200:91::1"}
_PEER_ADDRESSES = {4: "10.200.91.2", 6: "fd00:200:91::2"}
_PREFIX_LENGTHS = {4: 24, 6: 64}

_ECHO_SERVER = """
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
address, family = ("", int(sys.argv[1])), socket.AF_INET6
with socket.create_server(address, family=family, dualstack_ipv6=True) as server:
    print("listening", flush=True)
    while (left := deadline - time.monotonic()) > 0:
        server.settimeout(left)
        try:
            connection, _ = server.accept()
        except TimeoutError:
            break
        with connection:
            connection.settimeout(2)
            connection.sendall(connection.recv(64))
"""

_ECHO_CLIENT = """
import socket, sys
try:
    address = (sys.argv[1], int(sys.argv[2]))
    with socket.create_connection(address, timeout=2) as connection:
        connection.sendall(b"ping")
        print(connection.recv(64).decode() or "closed")
except OSError as error:
    print(type(error).__name__)
"""

_UDP_SENDER = """
import socket, sys
family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
with socket.socket(family, socket.SOCK_DGRAM) as sender:
    try:
        sender.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
        print("sent")
    except OSError as error:
        print(type(error).__name__)
"""


def _in_namespace(namespace: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", namespace, *command]


def _python_in(namespace: str, script: str, *arguments: object) -> list[str]:
    text = [str(argument) for argument in arguments]
    return _in_namespace(namespace, sys.executable, "-c", script, *text)


@pytest.fixture
def pod_and_peer() -> Iterator[tuple[str, str]]:
    """Two namespaces on one veth link: the pod, and a host it should not reach."""

    _needs_root()
    if shutil.which("nft") is None or shutil.which("ip") is None:
        pytest.skip("nft and ip (nftables, iproute2) are needed")
    pod, peer = f"sjk8s-pod-{os.getpid()}", f"sjk8s-peer-{os.getpid()}"
    try:
        _run(["ip", "netns", "add", pod])
        _run(["ip", "netns", "add", peer])
        veth_pair = ["type", "veth", "peer", "name", "eth0", "netns", peer]
        _run(["ip", "-n", pod, "link", "add", "eth0", *veth_pair])
        for namespace, addresses in ((pod, _POD_ADDRESSES), (peer, _PEER_ADDRESSES)):
            for version, address in addresses.items():
                prefix = f"{address}/{_PREFIX_LENGTHS[version]}"
                # nodad: the address is usable at once, not after a probe.
                flags = ["nodad"] if version == 6 else []
                add = ["addr", "add", prefix, "dev", "eth0", *flags]
                _run(["ip", "-n", namespace, *add])
            _run(["ip", "-n", namespace, "link", "set", "eth0", "up"])
            _run(["ip", "-n", namespace, "link", "set", "lo", "up"])
        yield pod, peer
    finally:
        for namespace in (pod, peer):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True)


def _echo_server(namespace: str, port: int) -> subprocess.Popen[str]:
    server = subprocess.Popen(
        _python_in(namespace, _ECHO_SERVER, port, 20),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None
    assert server.stdout.readline().strip() == "listening"
    return server


def _connect(namespace: str, address: str, port: int) -> str:
    return _run(_python_in(namespace, _ECHO_CLIENT, address, port))


def _send_udp(namespace: str, address: str, port: int) -> str:
    return _run(_python_in(namespace, _UDP_SENDER, address, port))


@pytest.mark.netns
@pytest.mark.parametrize("version", [4, 6])
def test_pod_firewall_allows_loopback_and_replies_only(
    pod_and_peer: tuple[str, str], version: int
) -> None:
    pod, peer = pod_and_peer
    pod_address, peer_address = _POD_ADDRESSES[version], _PEER_ADDRESSES[version]
    loopback = "127.0.0.1" if version == 4 else "::1"
    pod_server = _echo_server(pod, SFTP_PORT)
    peer_server = _echo_server(peer, 8080)
    try:
        # Without the table, the pod reaches its peer: the setup works.
        assert _connect(pod, peer_address, 8080) == "ping"
        assert _send_udp(pod, peer_address, 53) == "sent"

        # Loaded twice, as a restarted init container would.
        for _ in range(2):
            _run(_in_namespace(pod, "nft", "-f", str(FIREWALL_RULES)))
        # Forget the link addresses learnt above, so that the pod has to
        # answer neighbour discovery again with the table in place.
        for namespace in (pod, peer):
            _run(["ip", "-n", namespace, "neigh", "flush", "all"])

        # A dropped SYN is retransmitted until the client gives up; a dropped
        # datagram fails at once.
        assert _connect(pod, peer_address, 8080) == "TimeoutError"
        assert _send_udp(pod, peer_address, 53) == "PermissionError"
        assert _connect(pod, loopback, SFTP_PORT) == "ping"
        assert _connect(pod, pod_address, SFTP_PORT) == "ping"
        # Replies leave, over IPv6 only if neighbour discovery may.
        assert _connect(peer, pod_address, SFTP_PORT) == "ping"
        tables = _run(_in_namespace(pod, "nft", "list", "tables"))
        assert tables.splitlines() == ["table inet sftpjail_pod_egress"]
    finally:
        for server in (pod_server, peer_server):
            server.kill()
            server.wait(timeout=10)


# --- the pod, run as a kubelet would --------------------------------------


def _docker_unavailable() -> str | None:
    if shutil.which("docker") is None:
        return "the docker command is not installed"
    info = subprocess.run(["docker", "info"], capture_output=True, timeout=60)
    if info.returncode != 0:
        return "no Docker engine answers (docker info failed)"
    return None


@pytest.fixture(scope="module")
def image() -> str:
    """The image, built the no-registry way."""

    reason = _docker_unavailable()
    if reason is not None:
        pytest.skip(reason)
    _needs_root()
    build = subprocess.run(
        [str(REPOSITORY / "scripts" / "build-image.sh")],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        env=dict(os.environ, SFTPJAIL_IMAGE=IMAGE),
        cwd=REPOSITORY,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    return IMAGE


@dataclass
class Client:
    """The user who logs in, and where the operator keeps their files."""

    name: str
    key: Path
    users_file: Path


def _ssh_keygen(path: Path, key_type: str) -> None:
    bits = ["-b", "256"] if key_type == "ecdsa" else []
    command = ["ssh-keygen", "-q", "-t", key_type, *bits, "-N", "", "-C", ""]
    _run([*command, "-f", str(path)])


def _add_user(users_file: Path, name: str, public_key: Path) -> None:
    """The operator's step: `sftpjail user add` on their own machine."""

    env = dict(os.environ, PYTHONPATH=str(REPOSITORY / "src"))
    command = [sys.executable, "-m", "sftpjail", "user", "add", name]
    location = ["--users-file", str(users_file), "--key-file", str(public_key)]
    result = subprocess.run(
        [*command, *location], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr


class Kubelet:
    """Volumes and containers of one pod spec, made with Docker.

    Each volume is a directory below `root`, prepared as the kubelet
    prepares that kind of volume for a pod with `fsGroup`; each container
    is a `docker run` in the network namespace of one sandbox container.
    """

    def __init__(self, spec: Manifest, root: Path, image: str) -> None:
        self.spec = spec
        self.root = root
        self.image = image
        self.fs_group = int(spec["securityContext"]["fsGroup"])
        self.prefix = f"sjk8s-{secrets.token_hex(3)}"
        self.started: list[str] = []

    def volume_path(self, name: str) -> Path:
        return self.root / "volumes" / name

    def make_directory_volume(self, name: str, mode: int) -> None:
        """An emptyDir or a fresh PersistentVolume: group fsGroup, setgid."""

        path = self.volume_path(name)
        path.mkdir(parents=True)
        os.chown(path, 0, self.fs_group)
        path.chmod(mode | 0o2000)

    def make_projected_volume(
        self, name: str, files: dict[str, str], mode: int
    ) -> None:
        """A Secret or ConfigMap volume, in the kubelet's atomic layout.

        The files live in a timestamped directory, `..data` points at it,
        and each visible name is a symlink through `..data`; replacing the
        content swaps `..data` in one rename.
        """

        path = self.volume_path(name)
        path.mkdir(parents=True, exist_ok=True)
        version = path / f"..{time.time_ns()}"
        version.mkdir()
        for file_name, text in files.items():
            target = version / file_name
            target.write_text(text)
            os.chown(target, 0, self.fs_group)
            # The kubelet adds group read for fsGroup to whatever mode asked.
            target.chmod(mode | 0o440)
            link = path / file_name
            if not link.is_symlink():
                link.symlink_to(f"..data/{file_name}")
        swap = path / "..data_tmp"
        swap.symlink_to(version.name)
        swap.rename(path / "..data")

    def start_sandbox(self) -> str:
        """The pod's network namespace, published on 127.0.0.1 like a Service."""

        name = f"{self.prefix}-sandbox"
        publish = ["--publish", f"127.0.0.1::{SFTP_PORT}"]
        confined = ["--user", "65534:65534", "--read-only", "--cap-drop", "ALL"]
        options = ["--detach", *publish, *confined, "--entrypoint", "sleep"]
        self._docker_run(name, options, [self.image, "infinity"])
        return name

    def run(self, item: Manifest, sandbox: str, detach: bool) -> str:
        """Run one container of the pod in the sandbox's network namespace.

        An init container is waited for and must exit 0; the name of the
        container is returned.
        """

        name = f"{self.prefix}-{item['name']}"
        command = item.get("command", [])
        options = ["--network", f"container:{sandbox}"]
        options += ["--detach"] if detach else []
        options += self.container_options(item)
        options += ["--entrypoint", command[0]] if command else []
        arguments = [*command[1:], *item.get("args", [])]
        self._docker_run(name, options, [self.image, *arguments])
        return name

    def container_options(self, item: Manifest) -> list[str]:
        """`docker run` options equal to one container's settings."""

        context = item.get("securityContext", {})
        user = effective(self.spec, item, "runAsUser")
        group = effective(self.spec, item, "runAsGroup")
        options = ["--user", f"{user}:{group}", "--group-add", str(self.fs_group)]
        if context.get("readOnlyRootFilesystem"):
            options.append("--read-only")
        if context.get("allowPrivilegeEscalation") is False:
            options += ["--security-opt", "no-new-privileges"]
        capabilities = context.get("capabilities", {})
        options += [f"--cap-drop={name}" for name in capabilities.get("drop", [])]
        options += [f"--cap-add={name}" for name in capabilities.get("add", [])]
        return [
            *options,
            *self._seccomp_options(item),
            *self._limit_options(item),
            *self._mount_options(item),
        ]

    def _seccomp_options(self, item: Manifest) -> list[str]:
        profile = effective(self.spec, item, "seccompProfile") or {}
        if profile.get("type") == "Localhost":
            path = LOCALHOST_PROFILES[profile["localhostProfile"]]
            return ["--security-opt", f"seccomp={path}"]
        # RuntimeDefault: Docker's own default profile, as containerd's is.
        assert profile.get("type") == "RuntimeDefault", profile
        return []

    def _limit_options(self, item: Manifest) -> list[str]:
        limits = item["resources"]["limits"]
        memory = limits["memory"].replace("Gi", "g").replace("Mi", "m")
        return ["--memory", memory, "--cpus", str(_cpus(limits["cpu"]))]

    def _mount_options(self, item: Manifest) -> list[str]:
        options = []
        for mount in item.get("volumeMounts", []):
            source = self.volume_path(mount["name"])
            if "subPath" in mount:
                source = source / mount["subPath"]
            read_only = ",readonly" if mount.get("readOnly") else ""
            target = mount["mountPath"]
            bind = f"type=bind,source={source},target={target}{read_only}"
            options += ["--mount", bind]
        return options

    def _docker_run(self, name: str, options: list[str], command: list[str]) -> None:
        self.started.append(name)
        # The kubelet has its own probes; the image's HEALTHCHECK stays off.
        docker_run = ["docker", "run", "--name", name, "--no-healthcheck"]
        _run([*docker_run, *options, *command])

    def remove_all(self) -> None:
        for name in reversed(self.started):
            subprocess.run(["docker", "rm", "--force", name], capture_output=True)


def _cpus(quantity: str) -> float:
    if quantity.endswith("m"):
        return int(quantity[:-1]) / 1000
    return float(quantity)


def _prepare_volumes(
    kubelet: Kubelet, objects: Objects, secrets_dir: Path, client: Client
) -> None:
    """Every volume of the pod spec, filled as the cluster would fill it."""

    config_maps = {
        item["metadata"]["name"]: item["data"]
        for item in objects
        if item["kind"] == "ConfigMap"
    }
    operator_secrets = {
        "sftpjail-host-keys": {
            name: (secrets_dir / name).read_text() for name in HOST_KEY_FILES
        },
        "sftpjail-users": {"users.toml": client.users_file.read_text()},
    }
    for source in kubelet.spec["volumes"]:
        name = source["name"]
        if "configMap" in source:
            data = config_maps[source["configMap"]["name"]]
            kubelet.make_projected_volume(name, data, 0o644)
        elif "secret" in source:
            data = operator_secrets[source["secret"]["secretName"]]
            mode = source["secret"].get("defaultMode", 0o644)
            kubelet.make_projected_volume(name, data, mode)
        elif "emptyDir" in source:
            kubelet.make_directory_volume(name, 0o777)
        else:
            assert "persistentVolumeClaim" in source, name
            kubelet.make_directory_volume(name, 0o775)


@pytest.fixture
def client(tmp_path: Path) -> Client:
    key = tmp_path / "alice"
    _ssh_keygen(key, "ed25519")
    users_file = tmp_path / "users.toml"
    _add_user(users_file, "alice", key.with_suffix(".pub"))
    return Client("alice", key, users_file)


@pytest.fixture
def host_keys(tmp_path: Path) -> Path:
    """The operator's key files, as docs/kubernetes.md makes them."""

    directory = tmp_path / "sftpjail-secrets"
    directory.mkdir()
    _ssh_keygen(directory / "ssh_host_ed25519_key", "ed25519")
    _ssh_keygen(directory / "ssh_host_ecdsa_key", "ecdsa")
    return directory


def _wait_until_ready(name: str, probe: Manifest) -> None:
    """Run the readiness probe's command until it passes, as the kubelet does."""

    command = probe["exec"]["command"]
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        running = _run(["docker", "inspect", "--format", "{{.State.Running}}", name])
        if running != "true":
            break
        check = subprocess.run(
            ["docker", "exec", name, *command], capture_output=True, timeout=30
        )
        if check.returncode == 0:
            return
        time.sleep(1)
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    pytest.fail(f"{name} never became ready: {logs.stderr[-3000:]}")


def _sftp_put(port: int, client: Client, local: Path) -> str:
    batch = local.with_name("batch")
    batch.write_text(f"put {local} upload.txt\nls -1\n")
    options = ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    command = ["sftp", "-P", str(port), "-i", str(client.key), *options]
    return _run([*command, "-b", str(batch), f"{client.name}@127.0.0.1"])


@pytest.fixture(params=["base", "with_components"])
def objects(request: pytest.FixtureRequest, tmp_path: Path) -> Objects:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (its built-in kustomize renders the manifests) is missing")
    if request.param == "base":
        return render(KUSTOMIZATION)
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    write_overlay(overlay)
    return render(overlay)


def _nft_tables(sandbox: str) -> list[str]:
    """The nft tables of the pod's network namespace, read from the host."""

    pid = _run(["docker", "inspect", "--format", "{{.State.Pid}}", sandbox])
    return _run(["nsenter", "-t", pid, "-n", "nft", "list", "tables"]).splitlines()


def _wait_for_log(name: str, line: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    logs = ""
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["docker", "logs", name], capture_output=True, text=True, timeout=30
        )
        logs = result.stdout + result.stderr
        if line in logs:
            return
        time.sleep(0.5)
    pytest.fail(f"{name} never logged {line!r}: {logs[-3000:]}")


@pytest.mark.docker
def test_rendered_pod_serves_sftp(
    image: str, objects: Objects, client: Client, host_keys: Path, tmp_path: Path
) -> None:
    spec = pod_spec(objects)
    server = container(spec, SERVER_CONTAINER)
    kubelet = Kubelet(spec, tmp_path, image)
    _prepare_volumes(kubelet, objects, host_keys, client)
    try:
        sandbox = kubelet.start_sandbox()
        for item in spec.get("initContainers", []):
            kubelet.run(item, sandbox, detach=False)
        name = kubelet.run(server, sandbox, detach=True)
        _wait_until_ready(name, server["readinessProbe"])

        published = _run(["docker", "port", sandbox, f"{SFTP_PORT}/tcp"])
        port = int(published.splitlines()[0].rpartition(":")[2])
        upload = tmp_path / "hello.txt"
        upload.write_text("hello from the pod test\n")

        assert "upload.txt" in _sftp_put(port, client, upload)
        home = kubelet.volume_path(volume_named(spec, claimName="sftpjail-data"))
        assert (home / client.name / "upload.txt").read_text() == upload.read_text()
        state = sorted(kubelet.volume_path("state").iterdir())
        assert [path.name for path in state] == list(HOST_KEY_FILES)
        assert all(path.stat().st_mode & 0o777 == 0o600 for path in state)
        firewall = FIREWALL_CONTAINER in {item["name"] for item in all_containers(spec)}
        has_table = "table inet sftpjail_pod_egress" in _nft_tables(sandbox)
        assert has_table == firewall

        # docs/kubernetes.md, "Users": replace the Secret, then SIGHUP.
        _add_user(client.users_file, "bob", client.key.with_suffix(".pub"))
        users = {"users.toml": client.users_file.read_text()}
        kubelet.make_projected_volume("users", users, 0o440)
        _run(["docker", "exec", name, "sh", "-c", "kill -HUP 1"])
        _wait_for_log(name, "Reloaded 2 users from /etc/sftpjail/users/users.toml.")

        # SIGTERM, then SIGKILL after the pod's grace period, as on delete.
        grace = str(spec["terminationGracePeriodSeconds"])
        _run(["docker", "stop", "--time", grace, name], timeout=float(grace) + 60)
        exit_code = _run(["docker", "inspect", "--format", "{{.State.ExitCode}}", name])
        assert exit_code == "0"
    finally:
        kubelet.remove_all()
