"""`sftpjail demo`: a working server on 127.0.0.1 in one command."""

from __future__ import annotations

import os
import secrets
from importlib import resources
from pathlib import Path

import click

from sftpjail.audit import configure_audit, configure_logging
from sftpjail.config import load_config
from sftpjail.errors import ConfigError
from sftpjail.homes import ensure_home
from sftpjail.passwords import hash_password
from sftpjail.users import User, UsersFile

DEMO_USER = "demo"
# As root, the workers run as the service user, who must be able to reach
# the data; a root-owned directory outside any home keeps that simple.
DEFAULT_ROOT_AS_ROOT = Path("/var/lib/sftpjail-demo")


@click.command()
@click.option(
    "--dir",
    "root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the demo keeps its config, users and data "
    "[default: /var/lib/sftpjail-demo as root, else ./run/demo].",
)
@click.option("--port", type=click.IntRange(1, 65535), default=2222, show_default=True)
def demo(root: Path | None, port: int) -> None:
    """Write a demo config, create user `demo` with a new password, serve.

    The server listens on 127.0.0.1 only.  Run it again to start the same
    demo; the password is printed only when the user is first created.
    """

    if root is None:
        root = DEFAULT_ROOT_AS_ROOT if os.geteuid() == 0 else Path("run/demo")
    root = root.resolve()
    config_path = _write_config(root, port)
    config = load_config(config_path)
    password = _create_demo_user(config.users_file, config.data_dir)

    click.echo(f"Demo config: {config_path}")
    if password is not None:
        click.echo(f"Demo user:   {DEMO_USER}   password: {password}")
    else:
        click.echo(f"Demo user:   {DEMO_USER}   (password as printed on the first run)")
    click.echo(f"Connect:     sftp -P {port} {DEMO_USER}@127.0.0.1")
    click.echo("Stop with Ctrl-C.\n")

    from sftpjail.supervisor import serve

    configure_logging(config.log_level)
    configure_audit(config.audit_log)
    serve(config)


def _write_config(root: Path, port: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    # Workers run as the service user when started as root: they must be
    # able to reach data_dir below this directory.
    root.chmod(0o711)
    config_path = root / "config.toml"
    if not config_path.exists():
        template = resources.files("sftpjail.demo").joinpath("config.toml").read_text()
        config_path.write_text(
            template.replace("{root}", str(root)).replace("{port}", str(port))
        )
    return config_path


def _create_demo_user(users_file: Path, data_dir: Path) -> str | None:
    """Add the demo user on the first run; return its new password."""

    store = UsersFile(users_file)
    if DEMO_USER in store.load():
        return None
    password = secrets.token_urlsafe(12)
    store.add(
        User(
            name=DEMO_USER,
            password_hash=hash_password(password),
            authorized_keys=(),
            home=DEMO_USER,
        )
    )
    owner = _service_owner()
    ensure_home(data_dir, DEMO_USER, owner)
    return password


def _service_owner() -> tuple[int, int] | None:
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("sftpjail")
    except KeyError:
        raise ConfigError(
            "the service user sftpjail does not exist; run scripts/setup.sh "
            "or: useradd --system --no-create-home sftpjail"
        ) from None
    return entry.pw_uid, entry.pw_gid
