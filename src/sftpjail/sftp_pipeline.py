"""The SFTP request loop: requests taken in batches, replies sent in batches.

Theory of operation.  An SFTP client keeps many requests in flight (the
OpenSSH client up to 64 reads or writes of 32 KiB), and asyncssh 2.24's
server handler takes them one at a time: two waits on the channel's
stream per request (the length, then the body), and each reply written
to the channel on its own.  Each reply then becomes SSH packets of its
own: a 32 KiB read reply is 13 bytes too big for the client's 32 KiB
channel packets, so it goes out as a full packet and a 13-byte one, and
each status reply to a write is one more small packet.  Every SSH packet
costs an encryption and framing in Python.

`PipelinedSFTPHandler` reads whatever the channel holds at once, answers
every complete request in it in order, and writes the replies together.
The channel cuts the joined replies into full packets: a batch of 64 read
replies goes out as 65 packets instead of 128, and the status replies to
a batch of writes share one packet.

Two kinds of reply are built here instead of by asyncssh's handler: the
data of a read, queued as it came from the file instead of copied into
a reply, and, for SFTP v3, a readdir's entries, encoded straight from
their stat results (`sftpjail.sftp_names`).  Everything else, and every
error, takes asyncssh's own path.

Requests are still answered one after the other, in the order they
arrived, so the server code keeps the guarantee it relies on (nothing
else runs between the parts of a request that do not wait).  Replies
wait only until the requests that arrived with them are answered; a
batch that grows past `FLUSH_BYTES` is written at once.  Replies beyond
the client's channel window wait in the channel, and once
`BACKLOG_BYTES` of them wait, answering waits too; so it does while the
client's socket is full and the transport has to hold what it cannot
send.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import struct
from collections.abc import Callable
from typing import Any

from asyncssh.constants import FXP_DATA, FXP_READ, FXP_READDIR
from asyncssh.misc import Error
from asyncssh.packet import Byte, PacketDecodeError, SSHPacket, UInt32
from asyncssh.sftp import (
    MAX_SFTP_PACKET_LEN,
    SFTPBadMessage,
    SFTPNoConnection,
    SFTPServerHandler,
)

from sftpjail import sftp_names
from sftpjail.sftp_server import DirectoryListing

logger = logging.getLogger("sftpjail.sftp_pipeline")

# The most a single read from the channel's stream takes: the channel
# window of an OpenSSH client is 2 MiB, so this is what a busy client can
# have in flight, and no more is copied at once.
READ_BYTES = 2 * 1024 * 1024

# Write the replies gathered so far once they reach this size, so a batch
# of large read replies does not wait for the last of them.
FLUSH_BYTES = 512 * 1024

# Replies the client's channel window has no room for wait in the channel.
# Past this much, no further request is answered until the client takes
# some: a client that asks and never reads cannot make the worker hold
# every reply (a batch of 2 MiB of read requests asks for gigabytes).
BACKLOG_BYTES = 4 * 1024 * 1024

# The length prefix of an SFTP packet.
_LENGTH_BYTES = 4

# SSH_FXP_READ after its length: type, request id, handle (a string),
# offset (uint64), length (uint32).
_READ_TYPE = bytes([FXP_READ])
_READ_HEAD = struct.Struct(">BII")
_READ_TAIL = struct.Struct(">QI")

# SSH_FXP_READDIR after its length: type, request id, handle (a string).
_READDIR_TYPE = bytes([FXP_READDIR])
_READDIR_HEAD = struct.Struct(">BII")

# The most entries one readdir reply holds, as in asyncssh's handler.
READDIR_ENTRIES = 128

# SSH_FXP_DATA up to its data: length, type, request id, data length.
_DATA_HEAD = struct.Struct(">IBII")
# What the length of an SSH_FXP_DATA packet counts besides the data.
_DATA_OVERHEAD = _DATA_HEAD.size - _LENGTH_BYTES

# Set by `enable`, which sftpjail.transport calls once it has checked that
# asyncssh is the version this handler was written against.
_enabled = False


def _send_nothing_early(connection: object) -> None:
    """Leave a connection's packets to go out at the end of the turn."""


def _write_copy(channel: Any, data: bytearray) -> None:
    """Write to a channel the way asyncssh does: it copies the data."""

    channel.write(bytes(data))


def _never_full(connection: object) -> asyncio.Future[None] | None:
    """Without the transport's help, a full socket goes unnoticed."""

    return None


# Writes what a connection has queued for the socket at once; sessions
# call it after a batch, when their replies are all queued.
_send_queued: Callable[[object], None] = _send_nothing_early

# Writes a batch's replies, a bytearray nobody else holds, to a channel.
_hand_over: Callable[[Any, bytearray], None] = _write_copy

# While a connection's socket is full, a future done once it takes data.
_socket_full: Callable[[object], asyncio.Future[None] | None] = _never_full


def enable(
    send_queued: Callable[[object], None] = _send_nothing_early,
    hand_over: Callable[[Any, bytearray], None] = _write_copy,
    socket_full: Callable[[object], asyncio.Future[None] | None] = _never_full,
) -> None:
    """Serve SFTP sessions with PipelinedSFTPHandler from now on.

    `send_queued(connection)` writes the packets the connection holds back
    until the end of the loop turn (sftpjail.transport's Outbox), so the
    replies to a batch leave as soon as the batch is answered.
    `hand_over(channel, data)` writes a batch's replies to the channel
    without copying them again (sftpjail.transport.hand_over).
    `socket_full(connection)` is a future to wait for while the socket
    holds all the client has not read (sftpjail.transport.socket_full).
    """

    global _enabled, _send_queued, _hand_over, _socket_full
    _enabled = True
    _send_queued = send_queued
    _hand_over = hand_over
    _socket_full = socket_full


def enabled() -> bool:
    """Whether sessions use PipelinedSFTPHandler (else asyncssh's handler)."""

    return _enabled


class PipelinedSFTPHandler(SFTPServerHandler):
    """asyncssh's SFTP server handler, taking requests and replies in batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Kept from the start: a channel lets go of its connection when the
        # connection drops, which can happen while a batch waits.
        assert self._writer is not None
        self._connection = self._writer.channel.get_connection()
        self._writer.channel.set_write_buffer_limits(high=BACKLOG_BYTES)
        self._replies: list[bytes] = []
        self._reply_bytes = 0
        self._batching = False

    def send_packet(self, pkttype: int, pktid: int | None, *args: bytes) -> None:
        """Queue a reply while a batch is answered; otherwise send it now."""

        if not self._batching:
            super().send_packet(pkttype, pktid, *args)
            return
        if not self._writer:
            raise SFTPNoConnection("Connection not open")
        if self._writer.channel.is_closing():
            return

        if self.logger.isEnabledFor(logging.DEBUG):
            self.log_sent_packet(pkttype, pktid, Byte(pkttype) + b"".join(args))
        body_bytes = 1 + sum(len(arg) for arg in args)
        self._queue_reply(UInt32(body_bytes) + Byte(pkttype), *args)

    def _flush_replies(self) -> None:
        """Write the queued replies to the channel in one piece."""

        if not self._replies:
            return
        replies = bytearray().join(self._replies)
        self._replies.clear()
        self._reply_bytes = 0
        if self._writer and not self._writer.channel.is_closing():
            _hand_over(self._writer.channel, replies)

    async def recv_packets(self) -> None:
        """Answer requests until the client closes the channel."""

        received = bytearray()
        try:
            while self._reader:
                data = await self._reader.read(READ_BYTES)
                if not data:
                    raise EOFError
                received += data
                await self._answer_batch(received)
        except PacketDecodeError as exc:
            await self._cleanup(SFTPBadMessage(str(exc)))
        except EOFError:
            await self._cleanup(None)
        except (OSError, Error) as exc:
            await self._cleanup(exc)

    async def _answer_batch(self, received: bytearray) -> None:
        """Answer every complete request in `received`, then drop them."""

        self._batching = True
        try:
            for request in _complete_packets(received):
                await self._answer(request)
                await self._wait_for_the_client()
        finally:
            self._batching = False
            self._flush_replies()
            _send_queued(self._connection)

    async def _wait_for_the_client(self) -> None:
        """Wait while the client leaves too much of what it asked for unread.

        At once, unless the replies waiting for its channel window are
        over BACKLOG_BYTES, or its socket is full and the transport holds
        more than its high-water mark.
        """

        if self._writer:
            await self._writer.drain()
        socket_full = _socket_full(self._connection)
        if socket_full is not None:
            # Written first: what is queued cannot drain while it waits.
            self._flush_replies()
            _send_queued(self._connection)
            await socket_full

    async def _answer(self, request: bytes) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            # asyncssh's path logs every request and reply.
            await self._process_request(request)
        elif request[:1] == _READ_TYPE and self._version <= 3:
            await self._answer_read(request)
        elif request[:1] == _READDIR_TYPE and self._version == 3:
            await self._answer_readdir(request)
        else:
            await self._process_request(request)

    async def _process_request(self, request: bytes) -> None:
        """Answer a request the way asyncssh's handler does."""

        packet = SSHPacket(request)
        pkttype = packet.get_byte()
        pktid = packet.get_uint32()
        self.log_received_packet(pkttype, pktid, packet)
        await self._process_packet(pkttype, pktid, packet)

    async def _answer_read(self, request: bytes) -> None:
        """Answer a read, queueing the data without copying it into a reply.

        Only a read that returns data is answered here.  A malformed
        request, an unknown handle, end of file and every error go to
        asyncssh's path, which reads again and encodes the answer: a read
        changes nothing, so reading twice is harmless.
        """

        read = _parse_read(request)
        file_obj = self._file_handles.get(read[1]) if read is not None else None
        if read is None or file_obj is None:
            await self._process_request(request)
            return
        pktid, _handle, offset, length = read

        try:
            data = self._server.read(file_obj, offset, length)
            if inspect.isawaitable(data):
                data = await data
        except Exception:
            # asyncssh's path reads again and reports the error as it does.
            data = b""
        if not data:
            await self._process_request(request)
            return

        self._queue_reply(
            _DATA_HEAD.pack(_DATA_OVERHEAD + len(data), FXP_DATA, pktid, len(data)),
            data,
        )

    async def _answer_readdir(self, request: bytes) -> None:
        """Answer a readdir of SFTP v3 with entries encoded on the spot.

        A malformed request, an unknown handle, the end of the listing and
        a failure to read the directory go to asyncssh's path, which
        reports each as it does; a listing that ended stays ended, so
        asyncssh finds no more entries either.
        """

        readdir = _parse_readdir(request)
        if readdir is None:
            await self._process_request(request)
            return
        request_id, handle = readdir
        listing = self._dir_handles.get(handle)
        if not isinstance(listing, DirectoryListing):
            await self._process_request(request)
            return
        entries = listing.take(READDIR_ENTRIES)
        if not entries:
            # The end, or a failure the listing keeps for asyncssh to report.
            await self._process_request(request)
            return

        long_names = listing.long_names()
        self._queue_reply(sftp_names.encode_names(request_id, entries, long_names))

    def _queue_reply(self, *pieces: bytes) -> None:
        self._replies.extend(pieces)
        self._reply_bytes += sum(len(piece) for piece in pieces)
        if self._reply_bytes >= FLUSH_BYTES:
            self._flush_replies()


def _parse_read(request: bytes) -> tuple[int, bytes, int, int] | None:
    """Request id, handle, offset and length of a read; None if malformed."""

    if len(request) < _READ_HEAD.size:
        return None
    _pkttype, pktid, handle_length = _READ_HEAD.unpack_from(request)
    handle_end = _READ_HEAD.size + handle_length
    if len(request) != handle_end + _READ_TAIL.size:
        return None
    offset, length = _READ_TAIL.unpack_from(request, handle_end)
    return pktid, request[_READ_HEAD.size : handle_end], offset, length


def _parse_readdir(request: bytes) -> tuple[int, bytes] | None:
    """Request id and handle of a readdir; None if malformed."""

    if len(request) < _READDIR_HEAD.size:
        return None
    _pkttype, pktid, handle_length = _READDIR_HEAD.unpack_from(request)
    if len(request) != _READDIR_HEAD.size + handle_length:
        return None
    return pktid, request[_READDIR_HEAD.size :]


def _complete_packets(received: bytearray) -> list[bytes]:
    """Take the complete SFTP packets off the front of `received`, unframed.

    What is left is the start of a packet whose rest has not arrived.
    Raises SFTPBadMessage for a length over the protocol's limit, as
    asyncssh does: the session ends, since nothing after it can be framed.
    """

    packets = []
    start = 0
    with memoryview(received) as view:
        while len(view) - start >= _LENGTH_BYTES:
            length = int.from_bytes(view[start : start + _LENGTH_BYTES], "big")
            if length > MAX_SFTP_PACKET_LEN:
                raise SFTPBadMessage("Max packet size exceeded")
            end = start + _LENGTH_BYTES + length
            if end > len(view):
                break
            packets.append(bytes(view[start + _LENGTH_BYTES : end]))
            start = end
    del received[:start]
    return packets
