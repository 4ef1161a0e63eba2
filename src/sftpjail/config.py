"""One typed configuration, read from a TOML file and the environment.

The file has sections (`[server]`, `[limits]`); every key name is unique
across sections, so each setting can also come from an environment variable
`SFTPJAIL_<KEY>` in upper case (`SFTPJAIL_DATA_DIR`, `SFTPJAIL_MAX_SESSIONS`).
Keys of the later sections (`[defense]`, `[metrics]`, `[database]`) have
short names, so their variables carry the section too:
`SFTPJAIL_DEFENSE_BAN_TIME`, `SFTPJAIL_DATABASE_URL`.
A secret can instead come from a file named by `SFTPJAIL_<KEY>_FILE`, so it
never has to stand in the environment itself.

Validation happens once, here: the rest of the program receives a `Config`
whose fields are already the right type and within range.  The first
problem found is reported as a `ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sftpjail.errors import ConfigError
from sftpjail.ipc import TRANSFER_REPORT_INTERVAL

ENV_PREFIX = "SFTPJAIL_"


@dataclass(frozen=True)
class ListenAddress:
    """One address the supervisor listens on."""

    host: str
    port: int

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Limits:
    """Bounds that keep one client from exhausting the server."""

    max_sessions: int = 100
    max_sessions_per_source: int = 10
    login_grace_time: float = 30.0
    max_auth_attempts: int = 6
    auth_failure_delay: float = 0.5
    max_open_handles: int = 64
    max_request_size: int = 256 * 1024
    shutdown_grace_time: float = 30.0
    # Seconds a logged-in session may go without moving a byte or making
    # an SFTP request before the server ends it; 0 never ends one.
    idle_timeout: float = 900.0


@dataclass(frozen=True)
class DefenseSettings:
    """How the supervisor answers password guessing (`sftpjail.defense`)."""

    enabled: bool = True
    max_failures: int = 5
    max_failures_per_user: int = 20
    window: float = 600.0
    ban_time: float = 300.0
    max_ban_time: float = 86400.0
    max_unauthenticated_per_source: int = 5
    allowlist: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class MetricsSettings:
    """The optional Prometheus endpoint; off unless `listen` is set."""

    listen: ListenAddress | None = None


@dataclass(frozen=True)
class DatabaseSettings:
    """The shared PostgreSQL store of replicas; unused unless `url` is set.

    `url` is a libpq connection string or URI (it may hold a password, so
    it is never logged; see `sftpjail.store.postgres.redacted`).
    """

    url: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Config:
    """Everything the server needs to know before it starts."""

    listen: tuple[ListenAddress, ...]
    data_dir: Path
    state_dir: Path
    users_file: Path
    service_user: str = "sftpjail"
    require_kernel_jail: bool = True
    audit_log: Path | None = None
    log_level: str = "info"
    control_socket: Path | None = None
    watch_users_file: bool = True
    replica: bool = False
    limits: Limits = field(default_factory=Limits)
    defense: DefenseSettings = field(default_factory=DefenseSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    source: Path | None = None


# Which section each key lives in, and how to convert it.  The table drives
# parsing, environment overrides and the error messages alike.
_SERVER_KEYS: dict[str, type] = {
    "listen": list,
    "data_dir": Path,
    "state_dir": Path,
    "users_file": Path,
    "service_user": str,
    "require_kernel_jail": bool,
    "audit_log": Path,
    "log_level": str,
    "control_socket": Path,
    "watch_users_file": bool,
    "replica": bool,
}
_LIMIT_KEYS: dict[str, type] = {
    "max_sessions": int,
    "max_sessions_per_source": int,
    "login_grace_time": float,
    "max_auth_attempts": int,
    "auth_failure_delay": float,
    "max_open_handles": int,
    "max_request_size": int,
    "shutdown_grace_time": float,
    "idle_timeout": float,
}
# Limits for which 0 means "no limit".
_LIMITS_ZERO_TURNS_OFF = ("idle_timeout",)
# Shorter idle timeouts would end sessions between two activity reports.
MIN_IDLE_TIMEOUT = 2 * TRANSFER_REPORT_INTERVAL
_DEFENSE_KEYS: dict[str, type] = {
    "enabled": bool,
    "max_failures": int,
    "max_failures_per_user": int,
    "window": float,
    "ban_time": float,
    "max_ban_time": float,
    "max_unauthenticated_per_source": int,
    "allowlist": list,
}
_METRICS_KEYS: dict[str, type] = {"listen": str}
_DATABASE_KEYS: dict[str, type] = {"url": str}
_SECTIONS: dict[str, dict[str, type]] = {
    "server": _SERVER_KEYS,
    "limits": _LIMIT_KEYS,
    "defense": _DEFENSE_KEYS,
    "metrics": _METRICS_KEYS,
    "database": _DATABASE_KEYS,
}
# Sections whose keys are known as "<section>_<key>" outside the file.
_PREFIXED_SECTIONS = ("defense", "metrics", "database")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_MIN_REQUEST_SIZE = 32 * 1024
_MAX_REQUEST_SIZE = 4 * 1024 * 1024


def load_config(path: Path | None, environ: Mapping[str, str] | None = None) -> Config:
    """Read the TOML file at `path` (if any), apply the environment, validate."""

    environ = os.environ if environ is None else environ
    raw = _read_toml(path) if path is not None else {}
    values = _flatten_sections(raw)
    values.update(_environment_overrides(environ))

    config = _build(values, path)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except FileNotFoundError:
        raise ConfigError(
            f"config file {path} does not exist; pass --config with the path "
            "of a TOML file (see README.md, 'Configuration')"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {path} is not valid TOML: {error}") from None


def _flatten_sections(raw: dict[str, Any]) -> dict[str, Any]:
    """Check section and key names and merge all sections into one mapping."""

    values: dict[str, Any] = {}
    for section, content in raw.items():
        if section not in _SECTIONS:
            known = ", ".join(f"[{name}]" for name in _SECTIONS)
            raise ConfigError(f"unknown section [{section}]; known sections: {known}")
        if not isinstance(content, dict):
            raise ConfigError(f"[{section}] must be a table of settings")
        for key, value in content.items():
            if key not in _SECTIONS[section]:
                raise ConfigError(f"unknown key {section}.{key}")
            values[_flat_key(section, key)] = value
    return values


def _flat_key(section: str, key: str) -> str:
    return f"{section}_{key}" if section in _PREFIXED_SECTIONS else key


def _environment_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """Settings from SFTPJAIL_<KEY> or, for secrets, SFTPJAIL_<KEY>_FILE."""

    overrides: dict[str, Any] = {}
    for section, keys in _SECTIONS.items():
        for key, kind in keys.items():
            flat = _flat_key(section, key)
            name = ENV_PREFIX + flat.upper()
            if name in environ:
                overrides[flat] = _from_environment(flat, kind, environ[name])
            elif name + "_FILE" in environ:
                text = _read_secret_file(name + "_FILE", environ[name + "_FILE"])
                overrides[flat] = _from_environment(flat, kind, text)
    return overrides


def _read_secret_file(variable: str, path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"{variable}: cannot read {path}: {error.strerror}") from None


def _from_environment(key: str, kind: type, text: str) -> Any:
    """Environment values are strings; turn them into what TOML would give."""

    if kind is list:
        return [item.strip() for item in text.split(",") if item.strip()]
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{ENV_PREFIX}{key.upper()}: expected true or false")
    return text


def _build(values: dict[str, Any], source: Path | None) -> Config:
    for required in ("listen", "data_dir", "state_dir", "users_file"):
        if required not in values:
            raise ConfigError(f"server.{required} is required but not set")

    base = source.parent if source is not None else Path.cwd()
    audit = values.get("audit_log")
    control = values.get("control_socket")
    log_level = _string(values.get("log_level", "info"), "log_level").lower()
    if log_level not in _LOG_LEVELS:
        raise ConfigError(f"server.log_level must be one of {', '.join(_LOG_LEVELS)}")

    config = Config(
        listen=_listen_addresses(values["listen"]),
        data_dir=_path(values["data_dir"], "data_dir", base),
        state_dir=_path(values["state_dir"], "state_dir", base),
        users_file=_path(values["users_file"], "users_file", base),
        service_user=_string(values.get("service_user", "sftpjail"), "service_user"),
        require_kernel_jail=_boolean(
            values.get("require_kernel_jail", True), "require_kernel_jail"
        ),
        audit_log=_path(audit, "audit_log", base) if audit else None,
        log_level=log_level,
        control_socket=_path(control, "control_socket", base) if control else None,
        watch_users_file=_boolean(
            values.get("watch_users_file", True), "watch_users_file"
        ),
        replica=_boolean(values.get("replica", False), "replica"),
        limits=_limits(values),
        defense=_defense(values),
        metrics=_metrics(values),
        database=_database(values),
        source=source,
    )
    _check_secrets_outside_homes(config)
    return config


def _check_secrets_outside_homes(config: Config) -> None:
    """Every worker can read data_dir until login: no secret may live there."""

    data_dir = config.data_dir.resolve()
    for key, path in (
        ("state_dir", config.state_dir),
        ("users_file", config.users_file),
    ):
        resolved = path.resolve()
        if resolved == data_dir or resolved.is_relative_to(data_dir):
            raise ConfigError(
                f"server.{key} {path} is inside data_dir {config.data_dir}, where "
                f"workers can read it; move it out of data_dir"
            )


def _listen_addresses(value: Any) -> tuple[ListenAddress, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ConfigError('server.listen must be "HOST:PORT" or a list of them')
    return tuple(parse_listen_address(_string(item, "listen")) for item in items)


def parse_listen_address(text: str, setting: str = "server.listen") -> ListenAddress:
    """Parse `HOST:PORT`, `[V6HOST]:PORT` or `*:PORT` (all IPv4 addresses)."""

    host, separator, port_text = text.rpartition(":")
    if not separator or not host:
        raise ConfigError(f'{setting}: "{text}" is not HOST:PORT')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "*":
        host = "0.0.0.0"  # noqa: S104 - the operator asked for every address
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(
                f'{setting}: "{host}" is not an IP address; use a literal '
                "IPv4 or [IPv6] address"
            ) from None
        host = "127.0.0.1"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(f'{setting}: port "{port_text}" is not 1-65535')
    return ListenAddress(host, int(port_text))


def _limits(values: dict[str, Any]) -> Limits:
    converted: dict[str, Any] = {}
    for key, kind in _LIMIT_KEYS.items():
        if key in values:
            converted[key] = _number(
                values[key], key, kind, zero_allowed=key in _LIMITS_ZERO_TURNS_OFF
            )

    limits = dataclasses.replace(Limits(), **converted)
    if 0 < limits.idle_timeout < MIN_IDLE_TIMEOUT:
        raise ConfigError(
            f"limits.idle_timeout must be 0 (never) or at least "
            f"{MIN_IDLE_TIMEOUT:g} seconds: sessions report their activity "
            f"every {TRANSFER_REPORT_INTERVAL:g} seconds"
        )
    if not _MIN_REQUEST_SIZE <= limits.max_request_size <= _MAX_REQUEST_SIZE:
        raise ConfigError(
            f"limits.max_request_size must be between {_MIN_REQUEST_SIZE} "
            f"and {_MAX_REQUEST_SIZE} bytes"
        )
    return limits


def _defense(values: dict[str, Any]) -> DefenseSettings:
    converted: dict[str, Any] = {}
    for key, kind in _DEFENSE_KEYS.items():
        value = values.get(_flat_key("defense", key))
        if value is None:
            continue
        if kind is bool:
            converted[key] = _boolean(value, key, "defense")
        elif kind is list:
            converted[key] = _networks(value, f"defense.{key}")
        else:
            converted[key] = _number(value, key, kind, "defense")

    settings = dataclasses.replace(DefenseSettings(), **converted)
    if settings.max_ban_time < settings.ban_time:
        raise ConfigError("defense.max_ban_time must not be shorter than ban_time")
    return settings


def _networks(
    value: Any, setting: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise ConfigError(f'{setting} must be a list of networks like "10.0.0.0/8"')
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(_string(item, setting)))
        except ValueError as error:
            raise ConfigError(f"{setting}: {error}") from None
    return tuple(networks)


def _metrics(values: dict[str, Any]) -> MetricsSettings:
    listen = values.get(_flat_key("metrics", "listen"))
    if not listen:
        return MetricsSettings()
    return MetricsSettings(
        parse_listen_address(_string(listen, "metrics.listen"), "metrics.listen")
    )


def _database(values: dict[str, Any]) -> DatabaseSettings:
    url = values.get(_flat_key("database", "url"))
    if not url:
        return DatabaseSettings()
    return DatabaseSettings(_string(url, "database.url").strip())


def _number(
    value: Any,
    key: str,
    kind: type,
    section: str = "limits",
    *,
    zero_allowed: bool = False,
) -> int | float:
    name = f"{section}.{key}"
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be a number, not true/false")
    try:
        number = int(value) if kind is int else float(value)
    except OverflowError:  # int(inf)
        raise ConfigError(f"{name} must be a finite number, got {value!r}") from None
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if kind is int and isinstance(value, float):
        raise ConfigError(f"{name} must be a whole number")
    if not math.isfinite(number):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if zero_allowed and number == 0:
        return number
    if number <= 0:
        qualifier = " (or 0 to turn it off)" if zero_allowed else ""
        raise ConfigError(f"{name} must be greater than zero{qualifier}")
    return number


def _path(value: Any, key: str, base: Path) -> Path:
    text = _string(value, key)
    if not text:
        raise ConfigError(f"server.{key} must not be empty")
    path = Path(text)
    return path if path.is_absolute() else (base / path).resolve()


def _string(value: Any, key: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {type(value).__name__}")
    if "\0" in value:
        raise ConfigError(f"{key} must not contain a NUL byte")
    return value


def _boolean(value: Any, key: str, section: str = "server") -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{section}.{key} must be true or false")
    return value
