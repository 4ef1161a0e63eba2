"""`sftpjail healthcheck`: does the server answer SSH where it listens?

The container image runs this as its HEALTHCHECK, so it must be cheap and
must not log in.  An SSH server speaks first: right after the TCP handshake
it sends its identification line, `SSH-2.0-...`, optionally preceded by a
few other lines (RFC 4253, section 4.2).  Reading that line proves the
listener is bound and the event loop is serving, without a key or password.

Each configured listen address is checked; a wildcard address is reached
through the loopback address of its family.  A family the network namespace
lacks altogether (Docker disables IPv6 on networks without it, leaving no
`::1`) is skipped rather than failed, since no client can use it either.
The check passes when at least one address answered and none failed.
"""

from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import click

from sftpjail.cli.options import config_option, load
from sftpjail.config import ListenAddress
from sftpjail.errors import HealthCheckError

IDENTIFICATION_PREFIX = b"SSH-"
SUPPORTED_PREFIX = b"SSH-2.0-"

# RFC 4253 caps a line at 255 bytes; a server may send other lines first,
# but a healthy one does not send many.
_MAX_LINE_LENGTH = 255
_MAX_LINES = 20

# connect() fails with these when the address family has no usable
# loopback address here, as opposed to nobody listening.
_FAMILY_MISSING = {errno.EADDRNOTAVAIL, errno.ENETUNREACH, errno.EAFNOSUPPORT}

_LOOPBACK_FOR_WILDCARD = {"0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104

# What one address did, as printed.
ANSWERED = "answered"
SKIPPED = "skipped"
FAILED = "failed"


@dataclass(frozen=True)
class AddressCheck:
    """What one listen address did when asked for its identification."""

    target: ListenAddress
    outcome: str  # ANSWERED, SKIPPED or FAILED
    detail: str


@click.command()
@config_option
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=60.0),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each address.",
)
def healthcheck(config_path: Path | None, timeout: float) -> None:
    """Check that the server sends its SSH identification on every address.

    Exits 0 when healthy; otherwise prints why and exits non-zero.
    """

    config = load(config_path)
    results = [check_listen_address(address, timeout) for address in config.listen]
    for result in results:
        click.echo(f"{result.target} {result.outcome}: {result.detail}")

    failed = [result for result in results if result.outcome == FAILED]
    if failed:
        raise HealthCheckError(
            f"the server does not answer on {failed[0].target}: {failed[0].detail}"
        )
    if not any(result.outcome == ANSWERED for result in results):
        raise HealthCheckError(
            "no listen address could be checked from inside this network "
            "namespace; listen on a wildcard or loopback address"
        )


def check_listen_address(address: ListenAddress, timeout: float) -> AddressCheck:
    """Connect to `address` (wildcards via loopback) and read its banner."""

    target = ListenAddress(
        _LOOPBACK_FOR_WILDCARD.get(address.host, address.host), address.port
    )
    try:
        line = _read_identification(target, timeout)
    except TimeoutError:
        return AddressCheck(target, FAILED, f"no identification in {timeout:g} s")
    except OSError as error:
        if error.errno in _FAMILY_MISSING:
            return AddressCheck(target, SKIPPED, "no such address here")
        return AddressCheck(target, FAILED, error.strerror or str(error))

    if not line.startswith(SUPPORTED_PREFIX):
        shown = line[:40].decode("ascii", "replace")
        return AddressCheck(target, FAILED, f"unexpected identification {shown!r}")
    return AddressCheck(target, ANSWERED, line.decode("ascii", "replace"))


def _read_identification(target: ListenAddress, timeout: float) -> bytes:
    """Return the server's `SSH-` line, stripped of its line ending."""

    deadline = time.monotonic() + timeout
    connection = socket.create_connection((target.host, target.port), timeout)
    with connection, connection.makefile("rb") as stream:
        for _ in range(_MAX_LINES):
            connection.settimeout(max(deadline - time.monotonic(), 0.001))
            line = stream.readline(_MAX_LINE_LENGTH + 1)
            if not line:
                raise ConnectionResetError(
                    errno.ECONNRESET, "closed before identification"
                )
            if line.startswith(IDENTIFICATION_PREFIX):
                return line.rstrip(b"\r\n")
    raise ConnectionAbortedError(
        errno.ECONNABORTED, f"no identification in the first {_MAX_LINES} lines"
    )
