"""The `sftpjail` command: one click group, one module per area.

Each area's commands live in their own module and are added here, so this
file shows the whole command surface at a glance.  An `SftpjailError`
raised by any command becomes one line on stderr and its exit code.
"""

from __future__ import annotations

import sys

import click

from sftpjail import __version__
from sftpjail.errors import SftpjailError


class _Group(click.Group):
    """A group that turns operator errors into a message and an exit code."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except SftpjailError as error:
            click.echo(f"sftpjail: {error}", err=True)
            sys.exit(error.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """An SFTP-only server that jails every user with the kernel.

    Start with `sftpjail serve --config PATH`; manage users with
    `sftpjail user`.  Every command has its own --help.
    """


@cli.command()
def version() -> None:
    """Print the sftpjail version and exit."""

    click.echo(f"sftpjail {__version__}")


def _register() -> None:
    """Add every area's commands to the group."""

    # Imported here so that `sftpjail version` stays cheap and so each area
    # module can import `cli` helpers without a cycle.
    from sftpjail.cli import (
        check,
        db,
        demo,
        firewall,
        health,
        probe,
        serve,
        status,
        users,
    )

    cli.add_command(serve.serve)
    cli.add_command(serve.hostkeys)
    cli.add_command(demo.demo)
    cli.add_command(health.healthcheck)
    cli.add_command(firewall.firewall)
    cli.add_command(probe.probe)
    cli.add_command(users.user)
    cli.add_command(users.hash_password_command)
    cli.add_command(check.check)
    cli.add_command(status.status)
    cli.add_command(db.db)


_register()


def main() -> None:
    """Console-script entry point."""

    cli(prog_name="sftpjail")
