"""The options the worker hands asyncssh: what a session may ask for at all."""

from __future__ import annotations

from typing import Any

from sftpjail import worker
from sftpjail.config import Config, load_config

ENVIRONMENT = {
    "SFTPJAIL_LISTEN": "127.0.0.1:2222",
    "SFTPJAIL_DATA_DIR": "/data",
    "SFTPJAIL_STATE_DIR": "/state",
    "SFTPJAIL_USERS_FILE": "/etc/sftpjail/users.toml",
}


def _options(config: Config) -> dict[str, Any]:
    context = worker.WorkerContext(
        config=config,
        host_keys=(),
        policy=None,  # type: ignore[arg-type]  # not read for the options
        service_owner=None,
    )
    return worker._ssh_options(context)


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
