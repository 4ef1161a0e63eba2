"""Prometheus metrics of the supervisor, and the HTTP endpoint serving them.

The supervisor counts what it sees itself (connections, logins, bans,
worker crashes) and what workers report in their `transfer` messages
(bytes and SFTP operations).  Workers report cumulative counters for their
own session, so `Metrics.transfer` adds only the growth since the session's
previous report: a worker can neither count twice nor make a counter go
backwards.

The endpoint is off unless `[metrics] listen` is set.  It answers `GET
/metrics` and nothing else, one request per connection, through
`sftpjail.exchange` in the supervisor's loop; no thread, no framework.  It
has no authentication: bind it to loopback or a management network only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge

# A compromised worker may invent operation names; only this many distinct
# (operation, result) pairs get series of their own, the rest add up under
# "other", so a worker cannot blow up the scraper's memory.
MAX_OPERATION_SERIES = 256
MAX_HTTP_REQUEST_BYTES = 8192
OTHER = "other"


class Metrics:
    """Every counter and gauge the supervisor exports, in its own registry."""

    def __init__(self) -> None:
        # The *_created series double every counter for no use here.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.connections = Counter(
            "sftpjail_connections",
            "Client connections, by result and refusal reason.",
            ["result", "reason"],
            registry=registry,
        )
        self.authentications = Counter(
            "sftpjail_authentications",
            "Logins and refused credentials, by method and result.",
            ["method", "result"],
            registry=registry,
        )
        self.bans = Counter(
            "sftpjail_bans", "Source addresses banned.", registry=registry
        )
        self.worker_crashes = Counter(
            "sftpjail_worker_crashes",
            "Workers that ended with a failure status or a signal.",
            registry=registry,
        )
        self.bytes_received = Counter(
            "sftpjail_received_bytes",
            "File bytes uploaded by clients.",
            registry=registry,
        )
        self.bytes_sent = Counter(
            "sftpjail_sent_bytes",
            "File bytes downloaded by clients.",
            registry=registry,
        )
        self.operations = Counter(
            "sftpjail_operations",
            "SFTP operations, by operation and result.",
            ["operation", "result"],
            registry=registry,
        )
        self.user_reloads = Counter(
            "sftpjail_users_reloads",
            "Reloads of the users file, by result.",
            ["result"],
            registry=registry,
        )
        self._operation_series: set[tuple[str, str]] = set()

    def watch(self, name: str, description: str, read: Callable[[], float]) -> None:
        """Export a gauge whose value is read at every scrape."""

        gauge = Gauge(name, description, registry=self.registry)
        gauge.set_function(read)

    def connection_accepted(self) -> None:
        """Count a connection handed to a worker."""

        self.connections.labels("accepted", "").inc()

    def connection_refused(self, reason: str) -> None:
        """Count a connection closed before the SSH handshake."""

        self.connections.labels("refused", reason).inc()

    def authentication(self, method: str, *, accepted: bool) -> None:
        """Count a login, or a refused credential."""

        self.authentications.labels(method, "ok" if accepted else "failed").inc()

    def transfer(
        self, bytes_in: int, bytes_out: int, operations: Mapping[str, int]
    ) -> None:
        """Add growth reported by a worker (already made non-negative)."""

        self.bytes_received.inc(bytes_in)
        self.bytes_sent.inc(bytes_out)
        for key, count in operations.items():
            if count > 0:
                self.operations.labels(*self._series(key)).inc(count)

    def _series(self, key: str) -> tuple[str, str]:
        operation, _colon, result = key.rpartition(":")
        series = (operation, result) if operation else (result, "")
        if series in self._operation_series:
            return series
        if len(self._operation_series) >= MAX_OPERATION_SERIES:
            return (OTHER, OTHER)
        self._operation_series.add(series)
        return series

    def exposition(self) -> bytes:
        """The current values in the Prometheus text format."""

        return prometheus_client.generate_latest(self.registry)


class MetricsResponder:
    """Answers one HTTP/1.x request: `GET /metrics`, or an error."""

    terminator = b"\r\n\r\n"
    max_request_bytes = MAX_HTTP_REQUEST_BYTES

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def answer(self, request: bytes) -> bytes:
        """Parse the request line; reply with the metrics or an error."""

        words = request.split(b"\r\n", 1)[0].split(b" ")
        if len(words) != 3 or not words[2].startswith(b"HTTP/1."):
            return _response(400, "Bad Request", b"bad request\n")
        method, target, _version = words
        if method != b"GET":
            return _response(
                405, "Method Not Allowed", b"only GET\n", extra="Allow: GET\r\n"
            )
        if target.split(b"?", 1)[0] != b"/metrics":
            return _response(404, "Not Found", b"try /metrics\n")
        return _response(
            200,
            "OK",
            self.metrics.exposition(),
            content_type=prometheus_client.CONTENT_TYPE_LATEST,
        )

    def too_large(self) -> bytes:
        """Refuse a request whose head does not fit the bound."""

        return _response(431, "Request Header Fields Too Large", b"too large\n")


def _response(
    status: int,
    reason: str,
    body: bytes,
    *,
    content_type: str = "text/plain; charset=utf-8",
    extra: str = "",
) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"{extra}"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body
