"""`sftpjail probe TARGET...`: prove from inside the container that egress fails."""

from __future__ import annotations

import json
import sys

import click

from sftpjail.errors import EXIT_FAILURE, EXIT_OK, ProbeTargetError
from sftpjail.probe import DEFAULT_TIMEOUT, ProbeResult, parse_target, probe_all


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1, max=60),
    default=DEFAULT_TIMEOUT,
    show_default=True,
    metavar="S",
    help="Seconds to wait for each target.",
)
@click.argument("targets", nargs=-1, required=True, metavar="TARGET...")
def probe(as_json: bool, timeout: float, targets: tuple[str, ...]) -> None:
    """Try to reach each TARGET; exit 0 if all are blocked, 1 on any leak.

    Run it inside the container.  A target is a LEAK only when something
    at it answered (handshake, datagram, DNS answer, echo reply, HTTP
    bytes); a timeout, refusal or error is `blocked`, with the reason.
    Bad target syntax exits 2.  Forms:

    \b
      tcp:HOST:PORT  tcp6:[HOST]:PORT  udp:HOST:PORT  dns:RESOLVER[:PORT]
      icmp:HOST  icmp6:HOST  mptcp:HOST:PORT  http://HOST[:PORT]/PATH
      https://HOST/ (tests only the TCP handshake to port 443)
    """

    try:
        parsed = [parse_target(text) for text in targets]
    except ProbeTargetError as error:
        raise click.UsageError(str(error)) from error

    results = probe_all(parsed, timeout)
    click.echo(_as_json(results) if as_json else _as_table(results))
    sys.exit(EXIT_FAILURE if any(result.leaked for result in results) else EXIT_OK)


def _as_table(results: list[ProbeResult]) -> str:
    """One aligned row per target: verdict, target, reason."""

    width = max(len(result.target) for result in results)
    return "\n".join(
        f"{result.verdict:<8} {result.target:<{width}}  {result.detail}"
        for result in results
    )


def _as_json(results: list[ProbeResult]) -> str:
    """The results as one JSON document."""

    rows = [
        {
            "target": result.target,
            "verdict": result.verdict,
            "leaked": result.leaked,
            "detail": result.detail,
        }
        for result in results
    ]
    leaks = sum(result.leaked for result in results)
    return json.dumps({"results": rows, "leaks": leaks}, indent=2)
