"""`sftpjail firewall render|apply|remove|check`: the Docker host's egress rules.

Every verb takes the same options, so an operator can render, read, apply
and later check with one command line, changing only the verb.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass

import click

from sftpjail.errors import EXIT_FAILURE, FirewallError
from sftpjail.firewall import (
    BACKENDS,
    Backend,
    FirewallSpec,
    make_backend,
    parse_allowed,
    parse_network,
)


@dataclass(frozen=True)
class _Request:
    """The options every verb shares, parsed once."""

    backend: Backend
    bridge: str | None
    subnets: tuple[str, ...]
    sftp_port: int | None
    allowed: tuple[str, ...]

    def spec(self) -> FirewallSpec:
        """Build the spec, or explain as a usage error what is wrong."""

        if self.bridge is None:
            raise click.UsageError(
                "--bridge NAME is required (see `docker network inspect`)"
            )
        try:
            return FirewallSpec(
                bridge=self.bridge,
                subnets=tuple(parse_network(subnet) for subnet in self.subnets),
                allowed=tuple(parse_allowed(text) for text in self.allowed),
                sftp_port=self.sftp_port,
            )
        except FirewallError as error:
            raise click.UsageError(str(error)) from error


_OPTIONS = [
    click.option(
        "--backend",
        type=click.Choice(BACKENDS),
        default="nftables",
        show_default=True,
        help="nftables works whatever Docker uses; iptables edits DOCKER-USER.",
    ),
    click.option(
        "--iptables",
        "iptables_program",
        type=click.Choice(["iptables", "iptables-nft", "iptables-legacy"]),
        default="iptables",
        show_default=True,
        help="The iptables variant Docker uses: iptables, iptables-nft or "
        "iptables-legacy (ip6tables is derived from it).",
    ),
    click.option(
        "--bridge",
        metavar="NAME",
        help="The Docker bridge the sftpjail container is attached to.",
    ),
    click.option(
        "--subnet",
        "subnets",
        metavar="CIDR",
        multiple=True,
        help="A subnet of the bridge, for flushing old flows (repeatable; "
        "default: read from the bridge).",
    ),
    click.option(
        "--sftp-port",
        type=int,
        metavar="N",
        help="Also limit new inbound connections into the bridge to this "
        "container-side TCP port.",
    ),
    click.option(
        "--allow",
        "allowed",
        metavar="CIDR[:PORT]",
        multiple=True,
        help="A destination the container may still reach; with a port "
        "only TCP to it ([v6-cidr]:PORT for IPv6). Repeatable.",
    ),
]


def _verb(function: Callable[[_Request], None]) -> Callable[..., None]:
    """Give a verb the shared options and hand it one parsed `_Request`."""

    @functools.wraps(function)
    def verb(
        backend: str,
        iptables_program: str,
        bridge: str | None,
        subnets: tuple[str, ...],
        sftp_port: int | None,
        allowed: tuple[str, ...],
    ) -> None:
        selected = make_backend(backend, iptables_program)
        function(_Request(selected, bridge, subnets, sftp_port, allowed))

    for option in reversed(_OPTIONS):
        verb = option(verb)
    return verb


def _show(notes: list[str]) -> None:
    """Print one note per line."""

    for note in notes:
        click.echo(note)


@click.group()
def firewall() -> None:
    """Keep a container on a Docker bridge off the Internet (host side).

    Drops every new connection from the bridge to anything off it, IPv4
    and IPv6, forwarded or to the host itself, while replies of inbound
    SFTP sessions pass.  Start with `render` to read the rules, then
    `apply`; `check` tells whether they are still in place; `remove`
    takes them away.  Run as root on the Docker host.
    """


@firewall.command()
@_verb
def render(request: _Request) -> None:
    """Print the rules without changing anything."""

    click.echo(request.backend.render(request.spec()), nl=False)


@firewall.command()
@_verb
def apply(request: _Request) -> None:
    """Install the rules (again: running twice leaves one copy)."""

    spec = request.spec()
    _show(request.backend.apply(spec))
    click.echo(
        f"sftpjail firewall applied ({request.backend.name}, bridge {spec.bridge})"
    )


@firewall.command()
@_verb
def remove(request: _Request) -> None:
    """Take away everything apply added, and nothing else (--bridge optional)."""

    _show(request.backend.remove())
    click.echo(f"sftpjail firewall removed ({request.backend.name})")


@firewall.command()
@_verb
def check(request: _Request) -> None:
    """Exit non-zero, naming each difference, unless the live rules match."""

    spec = request.spec()
    problems = request.backend.check(spec)
    if problems:
        _show(problems)
        click.echo(f"sftpjail firewall check failed: {len(problems)} problems")
        sys.exit(EXIT_FAILURE)
    click.echo(
        f"sftpjail firewall check passed ({request.backend.name}, bridge {spec.bridge})"
    )
