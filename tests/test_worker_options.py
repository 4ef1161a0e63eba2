"""The options the worker hands asyncssh: what a session may ask for at all."""

from __future__ import annotations

from typing import Any

import asyncssh

from sftpjail import worker
from sftpjail.config import Config, load_config
from sftpjail.hostkeys import DelegatedHostKey

ENVIRONMENT = {
    "SFTPJAIL_LISTEN": "127.0.0.1:2222",
    "SFTPJAIL_DATA_DIR": "/data",
    "SFTPJAIL_STATE_DIR": "/state",
    "SFTPJAIL_USERS_FILE": "/etc/sftpjail/users.toml",
}


def _context(
    config: Config, host_keys: tuple[asyncssh.SSHKey, ...] = ()
) -> worker.WorkerContext:
    return worker.WorkerContext(
        config=config,
        host_keys=host_keys,
        policy=None,  # type: ignore[arg-type]  # not read for the options
        service_owner=None,
    )


def _options(config: Config) -> dict[str, Any]:
    return worker._ssh_options(_context(config), _no_signatures)


def _no_signatures(key: bytes, algorithm: str, data: bytes) -> bytes:
    raise AssertionError("building the options signs nothing")


def test_no_terminal_forwarding_or_line_editing_is_offered() -> None:
    options = _options(load_config(None, ENVIRONMENT))

    assert options["allow_pty"] is False
    assert options["agent_forwarding"] is False
    assert options["x11_forwarding"] is False
    # Terminals are refused, so asyncssh's line editor would only be a
    # layer every request and reply passes through.
    assert options["line_editor"] is False


def test_only_modern_algorithms_are_offered_and_logins_are_timed() -> None:
    config = load_config(None, ENVIRONMENT)

    options = _options(config)

    assert options["compression_algs"] == ["none"]
    assert not any("sha1" in name for name in options["kex_algs"])
    assert not any("cbc" in name for name in options["encryption_algs"])
    assert options["login_timeout"] == config.limits.login_grace_time


def test_host_keys_are_offered_without_their_private_halves() -> None:
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    public = asyncssh.import_public_key(host_key.export_public_key())
    context = _context(load_config(None, ENVIRONMENT), (public,))
    asked: list[tuple[bytes, str, bytes]] = []

    def signer(key: bytes, algorithm: str, data: bytes) -> bytes:
        asked.append((key, algorithm, data))
        return bytes(host_key.sign(data, algorithm.encode()))

    (offered,) = worker._ssh_options(context, signer)["server_host_keys"]
    signature = offered.sign(bytes(32))

    assert isinstance(offered, DelegatedHostKey)
    assert offered.public_data == host_key.public_data
    assert asked == [(host_key.public_data, "ssh-ed25519", bytes(32))]
    assert public.verify(bytes(32), signature)
