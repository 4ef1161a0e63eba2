"""`sftpjail serve` and `sftpjail hostkeys`."""

from __future__ import annotations

from pathlib import Path

import click

from sftpjail.audit import configure_audit, configure_logging
from sftpjail.cli.options import config_option, load
from sftpjail.hostkeys import load_host_keys


@click.command()
@config_option
def serve(config_path: Path | None) -> None:
    """Run the SFTP server until SIGTERM or SIGINT.

    Lifecycle messages go to stderr, the JSON audit log to stdout.  SIGHUP
    reloads the users file.  Invalid configuration exits with status 2
    before anything starts.
    """

    from sftpjail.supervisor import serve as run_supervisor

    config = load(config_path)
    configure_logging(config.log_level)
    configure_audit(config.audit_log)
    run_supervisor(config)


@click.command()
@config_option
def hostkeys(config_path: Path | None) -> None:
    """Show the host key fingerprints, as `ssh-keygen -l` does.

    Creates the keys if they do not exist yet, exactly as the server's
    first start would.
    """

    config = load(config_path)
    for host_key in load_host_keys(config.state_dir):
        click.echo(host_key.describe())
