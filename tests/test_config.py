"""The configuration: TOML, environment overrides, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from sftpjail.config import ListenAddress, load_config, parse_listen_address
from sftpjail.errors import EXIT_USAGE, ConfigError

MINIMAL = """
[server]
listen = ["127.0.0.1:2222", "[::1]:2222"]
data_dir = "data"
state_dir = "/var/lib/sftpjail/state"
users_file = "users.toml"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def _error(path: Path | None, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ or {})
    assert raised.value.exit_code == EXIT_USAGE
    return str(raised.value)


def test_minimal_file_gets_defaults_and_relative_paths(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL), {})

    assert config.listen == (
        ListenAddress("127.0.0.1", 2222),
        ListenAddress("::1", 2222),
    )
    assert str(config.listen[1]) == "[::1]:2222"
    assert config.data_dir == tmp_path / "data"
    assert config.users_file == tmp_path / "users.toml"
    assert config.require_kernel_jail is True
    assert config.limits.max_auth_attempts == 6
    assert config.limits.idle_timeout == 900
    assert config.defense.enabled is True


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    environ = {
        "SFTPJAIL_LISTEN": "127.0.0.1:2022, [::1]:2022",
        "SFTPJAIL_MAX_SESSIONS": "7",
        "SFTPJAIL_REQUIRE_KERNEL_JAIL": "no",
        "SFTPJAIL_DEFENSE_BAN_TIME": "60",
    }

    config = load_config(_write(tmp_path, MINIMAL), environ)

    assert [address.port for address in config.listen] == [2022, 2022]
    assert config.limits.max_sessions == 7
    assert config.require_kernel_jail is False
    assert config.defense.ban_time == 60


def test_a_secret_can_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "database-url"
    secret.write_text("postgresql://sftpjail:s3cret@127.0.0.1/sftpjail\n")

    config = load_config(
        _write(tmp_path, MINIMAL), {"SFTPJAIL_DATABASE_URL_FILE": str(secret)}
    )

    assert config.database.url == "postgresql://sftpjail:s3cret@127.0.0.1/sftpjail"
    assert "s3cret" not in repr(config)


def test_the_whole_config_can_come_from_the_environment() -> None:
    environ = {
        "SFTPJAIL_LISTEN": "0.0.0.0:2222",
        "SFTPJAIL_DATA_DIR": "/data",
        "SFTPJAIL_STATE_DIR": "/state",
        "SFTPJAIL_USERS_FILE": "/etc/sftpjail/users.toml",
    }

    config = load_config(None, environ)

    assert config.data_dir == Path("/data")
    assert config.source is None


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (MINIMAL + "[limits]\nmax_sessions = 0\n", "limits.max_sessions"),
        (MINIMAL + "[limits]\nmax_sessions = true\n", "limits.max_sessions"),
        (MINIMAL + "[limits]\nlogin_grace_time = 'soon'\n", "limits.login_grace_time"),
        (MINIMAL + "[limits]\nmax_request_size = 100\n", "limits.max_request_size"),
        (MINIMAL + "[limits]\nidle_timeout = -1\n", "or 0 to turn it off"),
        (MINIMAL + "[limits]\nidle_timeout = nan\n", "limits.idle_timeout"),
        (MINIMAL + "[limits]\nidle_timeout = 1e-9\n", "at least 4 seconds"),
        (
            MINIMAL + "[limits]\nmax_sessions = inf\n",
            "limits.max_sessions must be a finite number",
        ),
        (MINIMAL + "[limits]\nlogin_grace_time = inf\n", "finite number"),
        (MINIMAL + "[limits]\nmax_sesions = 5\n", "limits.max_sesions"),
        (MINIMAL + "[serve]\n", "[serve]"),
        (MINIMAL.replace("127.0.0.1:2222", "127.0.0.1:99999"), "server.listen"),
        (MINIMAL.replace("127.0.0.1:2222", "example.com:22"), "server.listen"),
        (MINIMAL.replace('data_dir = "data"\n', ""), "server.data_dir"),
        (MINIMAL + 'log_level = "loud"\n', "server.log_level"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, named: str) -> None:
    assert named in _error(_write(tmp_path, text))


def test_an_idle_timeout_of_zero_turns_it_off(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MINIMAL + "[limits]\nidle_timeout = 0\n"), {})

    assert config.limits.idle_timeout == 0


def test_secrets_inside_data_dir_are_refused(tmp_path: Path) -> None:
    text = MINIMAL.replace("/var/lib/sftpjail/state", "data/state")

    message = _error(_write(tmp_path, text))

    assert "server.state_dir" in message
    assert "inside data_dir" in message


def test_a_missing_file_says_how_to_fix_it(tmp_path: Path) -> None:
    message = _error(tmp_path / "nowhere.toml")

    assert "does not exist" in message
    assert "--config" in message


def test_bad_environment_values_name_the_variable(tmp_path: Path) -> None:
    message = _error(
        _write(tmp_path, MINIMAL), {"SFTPJAIL_REQUIRE_KERNEL_JAIL": "perhaps"}
    )

    assert "SFTPJAIL_REQUIRE_KERNEL_JAIL" in message


def test_listen_addresses() -> None:
    assert parse_listen_address("*:22") == ListenAddress("0.0.0.0", 22)
    assert parse_listen_address("localhost:22") == ListenAddress("127.0.0.1", 22)
    assert parse_listen_address("[::]:2222") == ListenAddress("::", 2222)
    with pytest.raises(ConfigError):
        parse_listen_address("2222")
