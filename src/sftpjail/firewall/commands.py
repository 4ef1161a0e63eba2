"""The one place where the firewall code runs host commands.

Every nft, iptables, conntrack and ip invocation goes through `run`, so a
missing tool or a refused change always turns into the same kind of
`FirewallError` that names the command and repeats what it said.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

from sftpjail.errors import FirewallError

log = logging.getLogger(__name__)

# Long enough for a large ruleset commit, short enough that a wedged
# netlink socket does not hang an operator's shell forever.
COMMAND_TIMEOUT = 60.0


@dataclass(frozen=True)
class CommandResult:
    """What a finished command printed and how it exited."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def is_installed(program: str) -> bool:
    """Tell whether `program` can be found on PATH."""

    return shutil.which(program) is not None


def run(
    argv: Sequence[str],
    *,
    stdin: str | None = None,
    accept_failure: bool = False,
) -> CommandResult:
    """Run `argv`; raise FirewallError if it fails, unless told to accept that."""

    shown = shlex.join(argv)
    log.debug("running %s", shown)
    try:
        completed = subprocess.run(
            list(argv),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError as error:
        raise FirewallError(
            f"{argv[0]} is not installed; install it or choose the other --backend"
        ) from error
    except subprocess.TimeoutExpired as error:
        raise FirewallError(
            f"`{shown}` did not finish within {COMMAND_TIMEOUT:.0f} s"
        ) from error

    result = CommandResult(
        tuple(argv), completed.returncode, completed.stdout, completed.stderr
    )
    if result.returncode != 0 and not accept_failure:
        said = result.stderr.strip() or result.stdout.strip() or "no message"
        raise FirewallError(
            f"`{shown}` failed with exit code {result.returncode}: {said}"
        )
    return result
