"""Two output streams: human lifecycle logs and the JSON audit trail.

* Lifecycle and diagnostics go through `logging` to stderr, as fixed
  sentences ("Listening on 127.0.0.1:2222.") that tests assert verbatim.
* The audit trail is one JSON object per line on stdout, and optionally a
  file: connections, authentication results, refusals and every mutating
  file operation.  Each object has `time`, `event` and event fields.

Both are written by whichever process knows the fact: the supervisor for
connections and logins, the worker for file operations.  Workers inherit
the descriptors, and each line is written with one `write(2)`, so lines
from different processes never interleave.  Secrets never reach either
stream: callers pass user names, methods and paths, never passwords,
hashes or keys' private halves.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

# Long paths are cut so that one line stays one atomic write on a pipe.
_MAX_FIELD_CHARS = 1024
_LOG_FORMAT = "%(asctime)s sftpjail[%(process)d] %(levelname)s %(message)s"

_sinks: list[int] = [1]


def configure_logging(level: str) -> None:
    """Send lifecycle logs to stderr at `level` (debug, info, ...)."""

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(_LOG_FORMAT))
    root = logging.getLogger("sftpjail")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False

    # asyncssh explains every packet at INFO; its refusals are ours to log.
    logging.getLogger("asyncssh").setLevel(logging.WARNING)


def configure_audit(extra_file: Path | None) -> None:
    """Write audit lines to stdout and, if given, append them to a file."""

    _sinks[:] = [1]
    if extra_file is not None:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT
        _sinks.append(os.open(extra_file, flags, 0o600))


def audit_descriptors() -> Sequence[int]:
    """The descriptors a forked worker must keep open for auditing."""

    return tuple(_sinks)


def audit(event: str, **fields: object) -> None:
    """Write one audit event as a single JSON line to every sink."""

    record: dict[str, object] = {"time": _timestamp(), "event": event}
    for name, value in fields.items():
        record[name] = _clean(value)
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()

    for fd in _sinks:
        try:
            os.write(fd, line)
        except OSError:
            # A closed stdout must not take the server down with it.
            continue


def _timestamp() -> str:
    now = time.time()
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
    return f"{seconds}.{int(now % 1 * 1000):03d}Z"


def _clean(value: object) -> object:
    """Make a field JSON-safe: bytes paths become text, long text is cut."""

    if isinstance(value, bytes):
        value = value.decode("utf-8", "backslashreplace")
    if isinstance(value, str) and len(value) > _MAX_FIELD_CHARS:
        return value[:_MAX_FIELD_CHARS] + "..."
    return value


def configure_audit_descriptors(extra: Sequence[int]) -> None:
    """Audit to stdout and to descriptors inherited from the supervisor."""

    _sinks[:] = [1, *extra]
