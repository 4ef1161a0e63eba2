"""A replica behind the firewall reaches its database and nothing else.

The network lab (netlab.py) gets a PostgreSQL server in its "internet"
namespace.  The host firewall is applied with `--allow` for exactly that
address and port; sftpjail runs in the container namespace with its users
in that database.  Then: the server connects and serves SFTP through the
published port, while `sftpjail probe` from the container finds every
other destination blocked, the database's own address on another port
included.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from netlab import (
    HTTP_PORT,
    INTERNET_V4,
    NETNS_MARKS,
    PUBLISHED_PORT,
    NetLab,
    netlab,
)
from pglab import BIN, POSTGRES_MISSING, Cluster, postgres_cluster
from serverlab import ensure_service_user, make_lab_root
from test_netlab_egress import (
    ALL_TARGETS,
    SPEC,
    _start_server,
    firewall,
    probe,
    sftp_round_trip,
)

pytestmark = [
    *NETNS_MARKS,
    pytest.mark.skipif(BIN is None, reason=POSTGRES_MISSING),
]
BACKEND = ["--backend", "nftables"]


@pytest.fixture(scope="module")
def lab() -> Iterator[tuple[NetLab, Cluster]]:
    """The lab, with PostgreSQL listening in its internet namespace."""

    with netlab() as built:
        built.start_services(built.host)
        prefix = ["ip", "netns", "exec", built.internet]
        with postgres_cluster(INTERNET_V4, prefix) as cluster:
            yield built, cluster


def _config(root: Path, url: str) -> Path:
    config = root / "config.toml"
    config.write_text(
        "[server]\n"
        f'listen = ["0.0.0.0:{PUBLISHED_PORT}"]\n'
        f'data_dir = "{root / "data"}"\n'
        f'state_dir = "{root / "state"}"\n'
        f'users_file = "{root / "users.toml"}"\n'
        "[database]\n"
        f'url = "{url}"\n'
    )
    return config


def _in_container(lab: NetLab, *arguments: str) -> None:
    done = lab.sftpjail(lab.container, *arguments)
    assert done.returncode == 0, done.stdout + done.stderr


def test_with_the_database_allowed_a_replica_reaches_it_and_nothing_else(
    lab: tuple[NetLab, Cluster],
) -> None:
    net, cluster = lab
    allow = f"{INTERNET_V4}/32:{cluster.port}"
    database_target = f"tcp:{INTERNET_V4}:{cluster.port}"
    ensure_service_user()
    root = make_lab_root()
    firewall(net, "apply", *BACKEND, *SPEC, "--allow", allow)
    try:
        config = str(_config(root, cluster.url))
        _in_container(net, "db", "init", "--config", config)
        key = root / "id_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
            check=True,
            timeout=30,
        )
        _in_container(net, "user", "add", "alice", "--key-file", f"{key}.pub",
                      "--config", config)  # fmt: skip
        _start_server(net, root, config=Path(config))

        content = sftp_round_trip(net, key, "database")
        log = (root / "server.log").read_text()
        verdicts = probe(net, database_target, *ALL_TARGETS)
        checked = net.sftpjail(
            net.host, "firewall", "check", *BACKEND, *SPEC, "--allow", allow
        )
    finally:
        firewall(net, "remove", *BACKEND)
        shutil.rmtree(root, ignore_errors=True)

    assert "Connected to the user database postgresql://sftpjail@" in log
    assert "Supervisor sandboxed: landlock" in log
    assert content == "sftpjail through the firewall database\n"
    assert verdicts.pop(database_target) == "LEAK"  # reachable: the one allowed
    assert verdicts == dict.fromkeys(ALL_TARGETS, "blocked")
    assert f"tcp:{INTERNET_V4}:{HTTP_PORT}" in ALL_TARGETS
    assert checked.returncode == 0, checked.stdout


def test_the_lab_database_is_not_reachable_without_the_allowance(
    lab: tuple[NetLab, Cluster],
) -> None:
    net, cluster = lab
    target = f"tcp:{INTERNET_V4}:{cluster.port}"

    before = probe(net, target, timeout="3")
    firewall(net, "apply", *BACKEND, *SPEC)
    try:
        during = probe(net, target)
    finally:
        firewall(net, "remove", *BACKEND)

    assert before == {target: "LEAK"}
    assert during == {target: "blocked"}
