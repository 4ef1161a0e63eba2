"""Variant: one transport write per event-loop turn instead of per packet.

asyncssh's `SSHConnection._send` calls `transport.write()` for every
packet, one send() system call each.  This queues the packets of one turn
of the loop and writes them together from a `call_soon` callback, which
runs before any close the connection schedules after them.
"""

from __future__ import annotations

import asyncio

import asyncssh.connection


def _flush(transport: asyncio.BaseTransport, queued: list[bytes]) -> None:
    data = b"".join(queued)
    queued.clear()
    try:
        transport.write(data)  # type: ignore[attr-defined]
    except ConnectionError:
        pass


def _send_batched(self: asyncssh.connection.SSHConnection, data: bytes) -> None:
    transport = self._transport
    if not transport:
        return
    state = self.__dict__.get("_bench_queue")
    if state is None or state[0] is not transport:
        state = self.__dict__["_bench_queue"] = (transport, [])
    queued: list[bytes] = state[1]
    if not queued:
        self._loop.call_soon(_flush, transport, queued)
    queued.append(data)


asyncssh.connection.SSHConnection._send = _send_batched  # type: ignore[method-assign]
