"""One request in, one reply out: tiny servers inside the supervisor's loop.

The metrics endpoint and the control socket both take a short request,
answer it and close.  They run in the supervisor's `selectors` loop, like
everything else there, so no thread ever exists in the supervisor.  Every
resource a client can hold is bounded: the request size, the number of
exchanges open at once, and the time one may take.  A client that breaks a
bound is answered (if it can be) and dropped; it can never stall the loop,
because every socket is non-blocking.
"""

from __future__ import annotations

import logging
import selectors
import socket
from collections.abc import Callable
from typing import Protocol

logger = logging.getLogger("sftpjail.exchange")

MAX_OPEN_EXCHANGES = 16
EXCHANGE_TIMEOUT = 5.0
_RECEIVE_CHUNK = 4096

Scheduler = Callable[[float, Callable[[], None]], None]


class Responder(Protocol):
    """Turns one complete request into the bytes of its reply."""

    terminator: bytes
    max_request_bytes: int

    def answer(self, request: bytes) -> bytes:
        """The reply to a request that ended with `terminator`."""

    def too_large(self) -> bytes:
        """The reply to a request longer than `max_request_bytes`."""


class ExchangeListener:
    """Accepts clients on a listening socket and runs one exchange each."""

    def __init__(
        self,
        listener: socket.socket,
        selector: selectors.BaseSelector,
        schedule: Scheduler,
        responder: Responder,
        admit: Callable[[socket.socket], bool] | None = None,
    ) -> None:
        listener.setblocking(False)
        self.listener = listener
        self.selector = selector
        self.schedule = schedule
        self.responder = responder
        self.admit = admit
        self.open: set[_Exchange] = set()
        selector.register(listener, selectors.EVENT_READ, self._accept)

    def close(self) -> None:
        """Stop listening and drop every exchange still open."""

        for exchange in list(self.open):
            exchange.finish()
        self.selector.unregister(self.listener)
        self.listener.close()

    def _accept(self) -> None:
        try:
            client, _address = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        except OSError as error:
            logger.warning("Accepting a local request failed: %s", error.strerror)
            return
        if len(self.open) >= MAX_OPEN_EXCHANGES or (
            self.admit is not None and not self.admit(client)
        ):
            client.close()
            return

        exchange = _Exchange(client, self)
        self.open.add(exchange)
        self.schedule(EXCHANGE_TIMEOUT, exchange.finish)


class _Exchange:
    """One client: read until the terminator, write the reply, close."""

    def __init__(self, client: socket.socket, owner: ExchangeListener) -> None:
        client.setblocking(False)
        self.client = client
        self.owner = owner
        self.received = b""
        self.reply = b""
        self.done = False
        owner.selector.register(client, selectors.EVENT_READ, self._on_readable)

    def finish(self) -> None:
        """Close the client; safe to call more than once."""

        if self.done:
            return
        self.done = True
        self.owner.open.discard(self)
        self.owner.selector.unregister(self.client)
        self.client.close()

    def _on_readable(self) -> None:
        try:
            chunk = self.client.recv(_RECEIVE_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        responder = self.owner.responder
        self.received += chunk

        if len(self.received) > responder.max_request_bytes:
            self._send(responder.too_large())
        elif responder.terminator in self.received:
            request = self.received.split(responder.terminator, 1)[0]
            self._send(responder.answer(request))
        elif not chunk:
            self.finish()

    def _send(self, reply: bytes) -> None:
        self.reply = reply
        self.owner.selector.modify(
            self.client, selectors.EVENT_WRITE, self._on_writable
        )
        self._on_writable()

    def _on_writable(self) -> None:
        try:
            sent = self.client.send(self.reply)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.finish()
            return
        self.reply = self.reply[sent:]
        if not self.reply:
            self.finish()
