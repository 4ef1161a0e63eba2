"""Cheaper SSH transport for the workers: asyncssh tunings, installed once.

Theory of operation.  Most of the CPU a worker spends on a bulk transfer
goes below the SFTP layer, into asyncssh's SSH transport: framing,
encrypting and writing packets.  The tunings here remove work there that
buys sftpjail nothing: the client gets the same data in the same order,
in fewer packets and fewer TCP segments.

asyncssh builds its connection objects itself, so there is no subclass to
hand it: each tuning wraps or replaces one private piece of asyncssh's
code, in the zygote, before the first worker is forked (every worker then
inherits it).  Private pieces change without notice, so each tuning names
what it needs and was written against one minor version (`WRITTEN_FOR`,
the cap in pyproject.toml).  When the version differs or a piece is
missing, the tuning is left out with a warning and asyncssh's own code
runs: slower, still correct.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import asyncssh
import asyncssh.encryption
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import MSG_IGNORE, MSG_USERAUTH_LAST
from asyncssh.encryption import Encryption
from asyncssh.logging import SSHLogger
from asyncssh.packet import SSHPacketLogger, UInt32
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

from sftpjail import sftp_pipeline

logger = logging.getLogger("sftpjail.transport")

# The asyncssh minor version these tunings were written and tested for.
WRITTEN_FOR = (2, 24)

# SSHConnection.send_packet(connection, pkttype, *args, handler=None).
SendPacket = Callable[..., None]

# An SSH string of length zero: the payload of asyncssh's padding packets.
_EMPTY_STRING = bytes(4)


class TuningUnavailableError(Exception):
    """asyncssh is not as a tuning expects; nothing was changed."""


@dataclass(frozen=True)
class Tuning:
    """One change to asyncssh: what it relies on there, and how to make it."""

    name: str
    # "module:Class.attribute" paths that must exist, each with the names
    # its code must still use for the tuning's reasoning to hold.
    needs: dict[str, tuple[str, ...]]
    install: Callable[[], None]
    # Tunings this one builds on, which must be installed before it.
    after: tuple[str, ...] = ()

    def unavailable(self, version: str) -> str | None:
        """Why this tuning cannot be installed on `version`, or None."""

        found = re.match(r"(\d+)\.(\d+)", version)
        if found is None or (int(found[1]), int(found[2])) != WRITTEN_FOR:
            written_for = ".".join(map(str, WRITTEN_FOR))
            return f"asyncssh {version} is not {written_for}.x"
        for path, names in self.needs.items():
            target = _find(path)
            if target is None:
                return f"asyncssh has no {path}"
            missing = sorted(set(names) - _names_used_by(target))
            if missing:
                return f"{path} no longer uses {', '.join(missing)}"
        return None


def _find(path: str) -> object | None:
    module_name, _, attributes = path.partition(":")
    try:
        target: object = importlib.import_module(module_name)
    except ImportError:
        return None
    for name in attributes.split("."):
        target = getattr(target, name, None)
        if target is None:
            return None
    return target


def _names_used_by(target: object) -> set[str]:
    """The global and attribute names a function's code refers to.

    For a tuning's wrapper (`__wrapped__`), those of asyncssh's function
    inside it.
    """

    if callable(target):
        target = inspect.unwrap(target)
    code = getattr(target, "__code__", None)
    return set(code.co_names) if code is not None else set()


def _replace(owner: type, name: str, replacement: object) -> None:
    setattr(owner, name, replacement)
    logger.debug("Replaced %s.%s.", owner.__name__, name)


# -- no empty SSH_MSG_IGNORE before every packet ----------------------------


def without_empty_ignore(send_packet: SendPacket) -> SendPacket:
    """`SSHConnection.send_packet` without the empty SSH_MSG_IGNORE.

    Once encryption is on, asyncssh 2.24's `SSHConnection.send_packet`
    sends an empty ignore packet ahead of every packet past the key
    exchange: twice the packets, encryptions and system calls on both
    sides.  Ignore packets were the defence against the chained-IV attack
    on CBC modes (RFC 4251, section 9.3.1); sftpjail offers no CBC mode,
    only AEAD and CTR ones, where they protect nothing.  Ignore packets
    with a payload, which asyncssh never sends itself, still go out.
    """

    def send_packet_without_empty_ignore(
        connection: SSHConnection, pkttype: int, *args: bytes, **options: Any
    ) -> None:
        if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,):
            return
        send_packet(connection, pkttype, *args, **options)

    send_packet_without_empty_ignore.__wrapped__ = send_packet  # type: ignore[attr-defined]
    return send_packet_without_empty_ignore


def _drop_empty_ignore() -> None:
    send_packet = without_empty_ignore(SSHConnection.send_packet)
    _replace(SSHConnection, "send_packet", send_packet)


# -- one socket write per turn of the event loop ----------------------------


class Outbox:
    """Packets sent during one turn of the event loop, written as one.

    asyncssh 2.24's `SSHConnection._send` calls `transport.write()` for
    each packet, and on a socket whose buffer is empty each call is one
    send() system call: a download of 32 KiB packets, or a batch of small
    SFTP replies, pays a system call per packet.  Packets go into the
    outbox instead, and a callback scheduled with the first of them hands
    them all to the transport, in order, in one write.

    The order against everything else on the connection stays the same:
    asyncssh closes a connection with `loop.call_soon(transport.abort)`,
    which is scheduled after the flush of any packet sent before it (such
    as a disconnect message) and so runs after it, and asyncssh sends
    nothing once it has let go of the transport.  Flow control is the
    transport's, as before: it buffers what the socket does not take and
    tells the protocol to pause, which asyncssh ignores either way (the
    SSH channel windows bound what is in flight).

    A turn that sends a lot (a batch of 64 read replies is 2 MiB) writes
    each `EARLY_WRITE_BYTES` as soon as they are queued: the kernel and
    the client then work on the start of the batch while the rest is
    still being encrypted, instead of waiting for all of it.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self.transport = transport
        self._loop = loop
        self._packets: list[bytes] = []
        self._queued_bytes = 0

    def add(self, packet: bytes) -> None:
        """Queue a packet; it is written at the end of this loop turn."""

        if not self._packets:
            self._loop.call_soon(self.flush)
        self._packets.append(packet)
        self._queued_bytes += len(packet)
        if self._queued_bytes >= EARLY_WRITE_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write the queued packets to the transport in one call."""

        if not self._packets:
            return
        data = b"".join(self._packets)
        self._packets.clear()
        self._queued_bytes = 0
        try:
            self.transport.write(data)
        except ConnectionError:
            # As asyncssh does: the lost connection is reported by
            # connection_lost, not by a failed write.
            pass


# Eight full channel packets: a 2 MiB turn reaches the client in eight
# pieces, and a turn of small replies still goes out in one write.
EARLY_WRITE_BYTES = 256 * 1024

# The attribute of an asyncssh connection that holds its Outbox.
_OUTBOX = "_sftpjail_outbox"


def send_queued(connection: object) -> None:
    """Write what the connection's Outbox holds now, not at the end of the turn.

    For a caller that knows it has queued everything it will send this
    turn, such as the SFTP loop once a batch is answered: its replies
    leave one loop turn sooner.
    """

    outbox: Outbox | None = getattr(connection, _OUTBOX, None)
    if outbox is not None:
        outbox.flush()


def _coalesce_writes() -> None:
    """Route every packet asyncssh sends through its connection's Outbox."""

    def send_through_outbox(connection: SSHConnection, data: bytes) -> None:
        transport = connection._transport
        if not transport:
            return
        outbox: Outbox | None = getattr(connection, _OUTBOX, None)
        if outbox is None or outbox.transport is not transport:
            outbox = Outbox(transport, connection._loop)
            setattr(connection, _OUTBOX, outbox)
        outbox.add(data)

    _replace(SSHConnection, "_send", send_through_outbox)


# -- a socket the client does not empty ------------------------------------

# The attribute of an asyncssh connection that holds, while its transport
# has paused writing, the future that resuming resolves.
_SOCKET_FULL = "_sftpjail_socket_full"


def socket_full(connection: object) -> asyncio.Future[None] | None:
    """A future done once the connection's socket takes data again, or None.

    None unless the transport has more than its high-water mark (64 KiB)
    waiting in user space because the client does not read what the
    kernel already holds for it.
    """

    return getattr(connection, _SOCKET_FULL, None)


def _pause_on_a_full_socket() -> None:
    """Keep track of the transport's pause and resume, which asyncssh ignores.

    asyncio tells its protocol when a transport's write buffer passes the
    high-water mark and when it has drained again; asyncssh 2.24 does
    nothing with either, so a client that opens its channel window wide
    and then stops reading could have a worker keep every reply in memory.
    Here the connection keeps a future while paused, which the SFTP loop
    waits for before it answers more; a lost connection resolves it too.
    """

    def pause_writing(connection: SSHConnection) -> None:
        if socket_full(connection) is None:
            setattr(connection, _SOCKET_FULL, connection._loop.create_future())

    def resume_writing(connection: SSHConnection) -> None:
        waiter = socket_full(connection)
        setattr(connection, _SOCKET_FULL, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    connection_lost = SSHConnection.connection_lost

    def connection_lost_resuming(
        connection: SSHConnection, exc: Exception | None = None
    ) -> None:
        resume_writing(connection)
        connection_lost(connection, exc)

    connection_lost_resuming.__wrapped__ = connection_lost  # type: ignore[attr-defined]
    _replace(SSHConnection, "pause_writing", pause_writing)
    _replace(SSHConnection, "resume_writing", resume_writing)
    _replace(SSHConnection, "connection_lost", connection_lost_resuming)


# -- parse received data one packet's worth at a time ----------------------

# About one full channel packet: small enough to bound each copy, large
# enough that a piece rarely leaves a sliver of a packet behind.
_PIECE_BYTES = 32 * 1024


def _parse_in_pieces() -> None:
    """Hand asyncssh's parser what arrives one packet's worth at a time.

    asyncssh 2.24 keeps received bytes in an immutable `bytes` and, for
    every packet, slices off the header and then the packet, copying all
    that is left each time.  asyncio reads up to 256 KiB at once, so on an
    upload each 32 KiB packet could copy up to 256 KiB, twice.  Handing
    the parser 32 KiB at a time bounds every copy to about a packet (on an
    upload, about a sixth less CPU per GiB here).  The parser already
    takes data split anywhere, as TCP may split it; what changes is only
    that parsing stops between pieces once the connection has closed.
    """

    def data_received_in_pieces(
        connection: SSHConnection, data: bytes, datatype: Any = None
    ) -> None:
        view = memoryview(data)
        for start in range(0, len(view), _PIECE_BYTES):
            connection._inpbuf += view[start : start + _PIECE_BYTES]
            connection._recv_data()
            if not connection._transport:
                return

    _replace(SSHConnection, "data_received", data_received_in_pieces)


# -- ChaCha20-Poly1305 with fewer cipher objects ---------------------------
#
# The same bytes as asyncssh's own class; tests/test_transport.py compares
# the two on many random packets and sequence numbers, both ways.

CHACHA_NAME = b"chacha20-poly1305@openssh.com"
TAG_BYTES = 16
_POLY1305_KEY_BYTES = 32
# ChaCha20 works in 64-byte blocks; block 0 of a packet's payload stream
# makes the Poly1305 key, the payload is encrypted from block 1 on.
_ONE_BLOCK_OF_ZEROS = bytes(64)
# cryptography's ChaCha20 nonce is the 64-bit block counter (little-endian),
# then the 64-bit nonce proper, here the packet's sequence number.
_COUNTER_ZERO = bytes(8)


class AeadEncryption(Encryption):
    """A cipher mode that authenticates each packet itself, with a 16-byte tag.

    What asyncssh asks of the class before a connection uses it: no MAC
    algorithm is negotiated with it, and the tag follows the packet
    ("encrypt then MAC" order, in asyncssh's terms).
    """

    def __init__(self, key: bytes, iv: bytes) -> None:
        raise NotImplementedError

    @classmethod
    def new(
        cls,
        cipher_name: str,
        key: bytes,
        iv: bytes,
        mac_alg: bytes = b"",
        mac_key: bytes = b"",
        etm: bool = False,
    ) -> Self:
        """An encryption for one direction of a connection."""

        return cls(key, iv)

    @classmethod
    def needs_mac(cls) -> bool:
        """The cipher authenticates packets itself."""

        return False

    @classmethod
    def get_mac_params(cls, mac_alg: bytes) -> tuple[int, int, bool]:
        """No MAC key, a 16-byte tag, after the encrypted packet."""

        return 0, TAG_BYTES, True

    def seal(self, seq: int, header: bytes, packet: bytes) -> tuple[bytes, ...]:
        """Encrypt and authenticate a packet: the pieces to send, in order.

        Sent one after the other, the pieces are the packet on the wire
        (for ChaCha20-Poly1305 the encrypted length, the encrypted packet
        and the tag; for AES-GCM the plain length, then the encrypted
        packet and tag in one); they are left apart because the Outbox
        joins a turn's pieces anyway.  The last piece is what asyncssh
        calls the MAC.
        """

        raise NotImplementedError

    def encrypt_packet(
        self, seq: int, header: bytes, packet: bytes
    ) -> tuple[bytes, bytes]:
        """The sealed packet as asyncssh's connection sends it: `packet + mac`."""

        *sealed, last = self.seal(seq, header, packet)
        return b"".join(sealed), last


class ChachaPoly1305Encryption(AeadEncryption):
    """chacha20-poly1305@openssh.com with two ChaCha20 streams per direction.

    asyncssh's `ChachaCipher` builds three ChaCha20 streams per packet (the
    length, the Poly1305 key, the payload) and joins header and payload
    before computing the tag.  Here each direction keeps one stream per
    key for the whole connection and points it at the packet's nonce with
    `reset_nonce`, which costs a small fraction of building a cipher
    through `cryptography`'s checks.  The Poly1305 key is block 0 of the
    payload key's stream and the payload starts at block 1 of that same
    stream, so one stream serves both; the tag takes header and payload
    in two updates.
    """

    def __init__(self, key: bytes, iv: bytes) -> None:
        # No IV: the packet's sequence number is the nonce.
        self._payload = _chacha_stream(key[:32])
        self._length = _chacha_stream(key[32:])

    def seal(self, seq: int, header: bytes, packet: bytes) -> tuple[bytes, ...]:
        """The encrypted length, the encrypted packet and the tag."""

        nonce = _nonce_of(seq)
        self._length.reset_nonce(nonce)
        length = self._length.update(header)
        self._payload.reset_nonce(nonce)
        key = self._payload.update(_ONE_BLOCK_OF_ZEROS)[:_POLY1305_KEY_BYTES]
        body = self._payload.update(packet)
        tag = Poly1305(key)
        tag.update(length)
        tag.update(body)
        return length, body, tag.finalize()

    def decrypt_header(
        self, seq: int, first_block: bytes, header_len: int
    ) -> tuple[bytes, bytes]:
        """Decrypt the packet length, which has a key of its own."""

        self._length.reset_nonce(_nonce_of(seq))
        return first_block, self._length.update(first_block[:header_len])

    def decrypt_packet(
        self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        """Check the tag, then decrypt the packet; None if the tag is wrong."""

        self._payload.reset_nonce(_nonce_of(seq))
        key = self._payload.update(_ONE_BLOCK_OF_ZEROS)[:_POLY1305_KEY_BYTES]
        tag = Poly1305(key)
        tag.update(first)
        tag.update(rest)
        try:
            tag.verify(mac)
        except InvalidSignature:
            return None
        return self._payload.update(first[header_len:]) + self._payload.update(rest)


def _chacha_stream(key: bytes) -> CipherContext:
    """A ChaCha20 key stream; `reset_nonce` starts each packet at block 0."""

    return Cipher(ChaCha20(key, _nonce_of(0)), mode=None).encryptor()


def _nonce_of(seq: int) -> bytes:
    """cryptography's 16-byte ChaCha20 nonce for packet `seq`, at block 0."""

    return _COUNTER_ZERO + seq.to_bytes(8, "big")


def _use_lean_chacha() -> None:
    """Make asyncssh build ChachaPoly1305Encryption for ChaCha20-Poly1305.

    asyncssh finds the class for a negotiated cipher in its registry
    `asyncssh.encryption._enc_params` (name -> class, cipher name); the
    cipher name, and so the key size, stay asyncssh's.
    """

    registry = asyncssh.encryption._enc_params
    if CHACHA_NAME not in registry:
        raise TuningUnavailableError(f"asyncssh offers no {CHACHA_NAME.decode()}")
    if not hasattr(CipherContext, "reset_nonce"):
        raise TuningUnavailableError(
            "cryptography is older than 43 and cannot reset a ChaCha20 nonce"
        )
    _asyncssh_class, cipher_name = registry[CHACHA_NAME]
    registry[CHACHA_NAME] = (ChachaPoly1305Encryption, cipher_name)
    logger.debug("Replaced the encryption of %s.", CHACHA_NAME.decode())


# -- no log formatting for messages nobody logs ------------------------------


def _log_only_what_is_logged() -> None:
    """Skip asyncssh's log formatting when the message would be dropped.

    asyncssh 2.24's `SSHLogger.log` turns every argument into text before
    the logging module checks the level, and `_log_packet` names the
    packet type and counts its bytes for every packet sent or received,
    at every level: per SFTP request, several string formats for nothing.
    Both now return first when the message would not be logged; at a
    level where it would be, asyncssh's own code runs.
    """

    log = SSHLogger.log
    log_packet = SSHPacketLogger._log_packet

    def log_if_enabled(
        adapter: SSHLogger, level: int, msg: object, *args: Any, **kwargs: Any
    ) -> None:
        if adapter.isEnabledFor(level):
            log(adapter, level, msg, *args, **kwargs)

    def log_packet_if_enabled(packet_logger: SSHPacketLogger, *args: Any) -> None:
        if SSHLogger._debug_level >= _PACKET_DEBUG_LEVEL and (
            packet_logger.logger.isEnabledFor(logging.DEBUG)
        ):
            log_packet(packet_logger, *args)

    _replace(SSHLogger, "log", log_if_enabled)
    _replace(SSHPacketLogger, "_log_packet", log_packet_if_enabled)


# asyncssh logs packets only at its debug level 3 (`set_debug_level`).
_PACKET_DEBUG_LEVEL = 3


# -- SFTP requests and replies in batches -----------------------------------


def _batch_sftp_requests() -> None:
    """Serve SFTP sessions with `sftp_pipeline.PipelinedSFTPHandler`.

    The handler subclasses asyncssh's `SFTPServerHandler` and replaces its
    request loop and its `send_packet`; the worker's session builds it in
    place of asyncssh's `run_sftp_server`.
    """

    sftp_pipeline.enable(send_queued, hand_over, socket_full)


# -- AES-GCM with one cipher per direction and fewer copies ------------------

GCM_NAMES = (b"aes128-gcm@openssh.com", b"aes256-gcm@openssh.com")
# RFC 5647: a 12-byte nonce, a fixed 4-byte field and an 8-byte invocation
# counter that grows by one per packet, wrapping at 2^64.
_GCM_FIXED_BYTES = 4
_GCM_COUNTER_MASK = (1 << 64) - 1


class AesGcmEncryption(AeadEncryption):
    """aes128-gcm and aes256-gcm@openssh.com, the same bytes as asyncssh's.

    asyncssh 2.24 builds an AESGCM object (a key schedule) per packet, cuts
    the tag off the sealed packet and lets the connection join it on
    again, and joins a received packet's parts twice before opening it.
    Here each direction keeps one AESGCM and the invocation counter of the
    nonce; a sealed packet goes out as the length and the encrypted packet
    with its tag, and a received one is joined once.
    """

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:_GCM_FIXED_BYTES]
        self._invocation = int.from_bytes(iv[_GCM_FIXED_BYTES:], "big")

    def _next_nonce(self) -> bytes:
        nonce = self._fixed + self._invocation.to_bytes(8, "big")
        self._invocation = (self._invocation + 1) & _GCM_COUNTER_MASK
        return nonce

    def seal(self, seq: int, header: bytes, packet: bytes) -> tuple[bytes, ...]:
        """The length in the clear, then the encrypted packet and its tag."""

        return header, self._aead.encrypt(self._next_nonce(), packet, header)

    def decrypt_header(
        self, seq: int, first_block: bytes, header_len: int
    ) -> tuple[bytes, bytes]:
        """The length is in the clear, authenticated with the packet."""

        return first_block, first_block[:header_len]

    def decrypt_packet(
        self, seq: int, first: bytes, rest: bytes, header_len: int, mac: bytes
    ) -> bytes | None:
        """Check the tag and open the packet; None if the tag is wrong."""

        nonce = self._next_nonce()
        sealed = b"".join((first[header_len:], rest, mac))
        try:
            return self._aead.decrypt(nonce, sealed, first[:header_len])
        except InvalidTag:
            return None


def _use_lean_gcm() -> None:
    """Make asyncssh build AesGcmEncryption for the AES-GCM ciphers."""

    registry = asyncssh.encryption._enc_params
    missing = [name.decode() for name in GCM_NAMES if name not in registry]
    if missing:
        raise TuningUnavailableError(f"asyncssh offers no {', '.join(missing)}")
    for name in GCM_NAMES:
        _asyncssh_class, cipher_name = registry[name]
        registry[name] = (AesGcmEncryption, cipher_name)
        logger.debug("Replaced the encryption of %s.", name.decode())


# -- packets framed and sealed with fewer copies -----------------------------


def framed_in_one_join(send_packet: SendPacket) -> SendPacket:
    """`SSHConnection.send_packet` framing and sealing with one copy, not five.

    asyncssh 2.24's `SSHConnection.send_packet` joins the packet type and
    payload, then the padding length, payload and padding, and the
    encrypted packet and its MAC, and the channel layer has joined the
    channel number onto the payload before: a 32 KiB read reply is copied
    four times on its way to the cipher and once after it.  Here a
    session's packet (a type past user authentication, on a connection
    whose key exchange and authentication are done) is joined once,
    sealed by one of the AEAD classes above, and its pieces go to the
    connection's Outbox, which joins the turn's packets anyway.

    Every other packet, and every packet while a key exchange is due or
    running, with compression on or with packet logging at asyncssh's
    debug level 3, goes to `send_packet`, asyncssh's own path, which
    checks and handles each of those cases.  Like `without_empty_ignore`,
    this path sends no empty ignore packet.
    """

    def send_packet_framed_in_one_join(
        connection: SSHConnection,
        pkttype: int,
        *args: bytes,
        handler: SSHPacketLogger | None = None,
    ) -> None:
        encryption = connection._send_encryption
        if (
            pkttype <= MSG_USERAUTH_LAST
            or not isinstance(encryption, AeadEncryption)
            or not (connection._kex_complete and connection._auth_complete)
            or connection._compressor is not None
            or _rekey_due(connection)
            or SSHLogger._debug_level >= _PACKET_DEBUG_LEVEL
        ):
            send_packet(connection, pkttype, *args, handler=handler)
            return

        payload_bytes = 1 + sum(len(arg) for arg in args)
        block = connection._send_blocksize
        padding = -(connection._send_enchdrlen + payload_bytes) % block
        if padding < _MIN_PADDING:
            padding += block
        packet_bytes = 1 + payload_bytes + padding
        packet = b"".join((bytes((padding, pkttype)), *args, os.urandom(padding)))

        seq = connection._send_seq
        for piece in encryption.seal(seq, packet_bytes.to_bytes(4, "big"), packet):
            connection._send(piece)
        connection._send_seq = (seq + 1) & _SEQ_MASK
        connection._rekey_bytes_sent += packet_bytes

    send_packet_framed_in_one_join.__wrapped__ = send_packet  # type: ignore[attr-defined]
    return send_packet_framed_in_one_join


def _frame_in_one_join() -> None:
    send_packet = framed_in_one_join(SSHConnection.send_packet)
    _replace(SSHConnection, "send_packet", send_packet)


def _rekey_due(connection: SSHConnection) -> bool:
    """Whether asyncssh would start a key exchange before this packet."""

    return connection._rekey_bytes_sent >= connection._rekey_bytes or bool(
        connection._rekey_seconds and time.monotonic() >= connection._rekey_time
    )


# RFC 4253, section 6: at least four bytes of padding; sequence numbers
# wrap at 2^32.
_MIN_PADDING = 4
_SEQ_MASK = 0xFFFFFFFF


def send_packet_unjoined(channel: SSHChannel[Any], pkttype: int, *args: bytes) -> None:
    """`SSHChannel.send_packet` leaving the join to the connection.

    asyncssh 2.24's `SSHChannel.send_packet` joins the recipient channel
    number onto the rest of the payload, and the connection joins the
    payload again; the connection's join is the one that is needed.
    """

    if channel._send_chan is None:
        return
    assert channel._conn is not None
    channel._conn.send_packet(
        pkttype, UInt32(channel._send_chan), *args, handler=channel
    )


def _channel_payload_unjoined() -> None:
    _replace(SSHChannel, "send_packet", send_packet_unjoined)


def hand_over(channel: SSHChannel[Any], data: bytearray) -> None:
    """`channel.write(data)` for a buffer the caller gives up: not copied.

    asyncssh 2.24's `SSHChannel.write` copies what it is given into a
    bytearray of its send buffer, which it then cuts into packets.  A
    caller that built a bytearray for this alone hands it over instead.
    """

    if channel._send_state != "open":
        raise BrokenPipeError("Channel not open for sending")
    # SFTP channels carry bytes: asyncssh gives them no encoding.
    assert not channel._encoding
    if not data:
        return
    channel._send_buf.append((data, None))
    channel._send_buf_len += len(data)
    channel._flush_send_buf()


TUNINGS = (
    Tuning(
        "no empty ignore packets",
        needs={"asyncssh.connection:SSHConnection.send_packet": ("MSG_IGNORE",)},
        install=_drop_empty_ignore,
    ),
    Tuning(
        "one write per loop turn",
        # What Outbox relies on: _send writes to the connection's transport,
        # and _force_close lets go of it with loop.call_soon(abort).
        needs={
            "asyncssh.connection:SSHConnection._send": ("_transport", "write"),
            "asyncssh.connection:SSHConnection._force_close": (
                "_loop",
                "call_soon",
                "_transport",
                "abort",
            ),
        },
        install=_coalesce_writes,
    ),
    Tuning(
        "lean ChaCha20-Poly1305",
        # get_encryption builds the class its registry names, and the class
        # replaced has the interface ours implements.
        needs={
            "asyncssh.encryption:get_encryption": ("_enc_params", "new"),
            "asyncssh.encryption:ChachaEncryption.decrypt_packet": (),
        },
        install=_use_lean_chacha,
    ),
    Tuning(
        "lean AES-GCM",
        needs={
            "asyncssh.encryption:get_encryption": ("_enc_params", "new"),
            "asyncssh.encryption:GCMEncryption.decrypt_packet": (),
            # The connection opens what it read with decrypt_header, then
            # decrypt_packet (it sends `packet + mac` from encrypt_packet).
            "asyncssh.connection:SSHConnection._recv_packet": ("decrypt_packet",),
        },
        install=_use_lean_gcm,
    ),
    Tuning(
        "packets framed in one join",
        # The branches send_packet_framed_in_one_join takes asyncssh's path
        # for, and what its own path keeps up to date.
        needs={
            "asyncssh.connection:SSHConnection.send_packet": (
                "_kex_complete",
                "_auth_complete",
                "_rekey_bytes_sent",
                "_rekey_bytes",
                "_rekey_seconds",
                "_rekey_time",
                "_compressor",
                "_send_enchdrlen",
                "_send_blocksize",
                "_send_encryption",
                "encrypt_packet",
                "_send_seq",
                "_send",
            ),
        },
        install=_frame_in_one_join,
        after=("no empty ignore packets", "one write per loop turn"),
    ),
    Tuning(
        "pause on a full socket",
        # The protocol callbacks replaced do nothing in asyncssh 2.24, and
        # connection_lost is what asyncio calls instead of resuming.
        needs={
            "asyncssh.connection:SSHConnection.pause_writing": (),
            "asyncssh.connection:SSHConnection.resume_writing": (),
            "asyncssh.connection:SSHConnection.connection_lost": ("_force_close",),
        },
        install=_pause_on_a_full_socket,
    ),
    Tuning(
        "channel payloads unjoined",
        needs={"asyncssh.channel:SSHChannel.send_packet": ("_send_chan", "_conn")},
        install=_channel_payload_unjoined,
    ),
    Tuning(
        "parse in packet-sized pieces",
        needs={
            "asyncssh.connection:SSHConnection.data_received": (
                "_inpbuf",
                "_recv_data",
            ),
        },
        install=_parse_in_pieces,
    ),
    Tuning(
        "log formatting only when logged",
        needs={
            "asyncssh.logging:SSHLogger.log": ("log",),
            "asyncssh.packet:SSHPacketLogger._log_packet": ("logger", "packet"),
            "asyncssh.logging:SSHLogger.packet": ("_debug_level",),
        },
        install=_log_only_what_is_logged,
    ),
    Tuning(
        "batched SFTP requests",
        # What PipelinedSFTPHandler relies on: the loop it replaces reads
        # with recv_packet and answers with _process_packet, which replies
        # through send_packet; the stream session starts the handler with
        # run_sftp_server, which the worker's session does instead.
        needs={
            "asyncssh.sftp:SFTPHandler.recv_packets": (
                "recv_packet",
                "_process_packet",
                "_cleanup",
            ),
            "asyncssh.sftp:SFTPHandler.recv_packet": ("readexactly",),
            "asyncssh.sftp:SFTPHandler.send_packet": ("_writer", "write"),
            # What hand_over does in place of SSHChannel.write.
            "asyncssh.channel:SSHChannel.write": (
                "_send_state",
                "_encoding",
                "_send_buf",
                "_send_buf_len",
                "_flush_send_buf",
            ),
            "asyncssh.sftp:SFTPServerHandler._process_packet": ("send_packet",),
            "asyncssh.stream:SSHServerStreamSession.session_started": (
                "run_sftp_server",
                "_init_sftp_server",
            ),
        },
        install=_batch_sftp_requests,
    ),
)

_installed: list[str] = []


def install_tunings(version: str = asyncssh.__version__) -> list[str]:
    """Install each tuning `version` of asyncssh allows, once per process.

    Returns the names of the tunings in place.  Call it before forking the
    workers: a check may import a module, which a sandboxed worker cannot.
    """

    for tuning in TUNINGS:
        if tuning.name in _installed:
            continue
        try:
            _install(tuning, version)
        except TuningUnavailableError as error:
            logger.warning(
                "Left out the %s tuning: %s; asyncssh's own code runs instead.",
                tuning.name,
                error,
            )
            continue
        _installed.append(tuning.name)
    return list(_installed)


def _install(tuning: Tuning, version: str) -> None:
    reason = tuning.unavailable(version)
    if reason is not None:
        raise TuningUnavailableError(reason)
    for name in tuning.after:
        if name not in _installed:
            raise TuningUnavailableError(f"it builds on the {name} tuning")
    tuning.install()
