"""Packets framed in one join: the same bytes on the wire as asyncssh's path."""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from typing import Any

import pytest
from asyncssh.channel import SSHChannel
from asyncssh.connection import SSHConnection
from asyncssh.constants import (
    MSG_CHANNEL_DATA,
    MSG_CHANNEL_REQUEST,
    MSG_CHANNEL_WINDOW_ADJUST,
    MSG_KEXINIT,
)
from asyncssh.logging import logger as asyncssh_logger
from asyncssh.packet import String, UInt32

from sftpjail import transport

# What asyncssh's connection sets for each AEAD cipher once keys are in
# use: the header length it pads against, and the block size.
CIPHERS: dict[str, Callable[[], transport.AeadEncryption]] = {
    "aes128-gcm": lambda: transport.AesGcmEncryption(bytes(range(16)), bytes(12)),
    "chacha20-poly1305": lambda: transport.ChachaPoly1305Encryption(
        bytes(range(64)), b""
    ),
}
BLOCK_SIZE = {"aes128-gcm": 16, "chacha20-poly1305": 8}


def _predictable_padding(size: int) -> bytes:
    return bytes(itertools.islice(itertools.cycle(b"pad"), size))


class Wire:
    """A connection's packets as they would go to its Outbox."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.pieces.append(data)

    def bytes(self) -> bytes:
        return b"".join(self.pieces)


def _connection(cipher: str, wire: Wire) -> Any:
    """An SSHConnection past key exchange and login, as far as sending goes."""

    connection: Any = SSHConnection.__new__(SSHConnection)
    connection._send_encryption = CIPHERS[cipher]()
    connection._send_enchdrlen = 1  # the AEAD modes authenticate the length
    connection._send_blocksize = BLOCK_SIZE[cipher]
    connection._compressor = None
    connection._kex_complete = True
    connection._auth_complete = True
    connection._rekey_bytes = 1 << 30
    connection._rekey_bytes_sent = 0
    connection._rekey_seconds = 0
    connection._rekey_time = 0
    connection._send_seq = 41
    connection._strict_kex = True
    connection._deferred_packets = []
    connection._logger = asyncssh_logger
    connection._send = wire.send
    return connection


def _with_send_packet(connection: Any, send_packet: Callable[..., None]) -> Any:
    # asyncssh sends its ignore packets through `self.send_packet`.
    connection.send_packet = functools.partial(send_packet, connection)
    return connection


PACKETS = [
    (MSG_CHANNEL_DATA, UInt32(0), String(os.urandom(32768))),
    (MSG_CHANNEL_DATA, UInt32(7), String(b"")),
    (MSG_CHANNEL_DATA, UInt32(7), String(os.urandom(13))),
    (MSG_CHANNEL_WINDOW_ADJUST, UInt32(7), UInt32(2 * 1024 * 1024)),
    (MSG_CHANNEL_REQUEST, UInt32(7), String(b"exit-status"), b"\0", UInt32(0)),
] + [(MSG_CHANNEL_DATA, UInt32(1), String(os.urandom(n))) for n in range(1, 40)]


@pytest.mark.parametrize("cipher", sorted(CIPHERS))
def test_framed_packets_are_those_asyncssh_sends(
    cipher: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "urandom", _predictable_padding)
    # asyncssh's own method, not a tuning installed in this process: the
    # comparison would then be of the tuned code with itself.
    assert not hasattr(SSHConnection.send_packet, "__wrapped__")
    reference = transport.without_empty_ignore(SSHConnection.send_packet)
    framed = transport.framed_in_one_join(reference)
    theirs_wire, ours_wire = Wire(), Wire()
    theirs = _with_send_packet(_connection(cipher, theirs_wire), reference)
    ours = _with_send_packet(_connection(cipher, ours_wire), framed)

    for pkttype, *args in PACKETS:
        theirs.send_packet(pkttype, *args)
        ours.send_packet(pkttype, *args)

    assert ours_wire.bytes() == theirs_wire.bytes()
    assert ours._send_seq == theirs._send_seq == 41 + len(PACKETS)
    assert ours._rekey_bytes_sent == theirs._rekey_bytes_sent > 32768


class Fallback:
    """Stands in for asyncssh's send_packet: records what reached it."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(
        self, connection: Any, pkttype: int, *args: bytes, **options: Any
    ) -> None:
        self.calls.append(pkttype)


@pytest.mark.parametrize(
    "change",
    [
        {"_kex_complete": False},
        {"_auth_complete": False},
        {"_rekey_bytes_sent": 1 << 30},
        {"_rekey_seconds": 3600, "_rekey_time": 0},
        {"_compressor": object()},
        {"_send_encryption": None},
    ],
    ids=str,
)
def test_a_packet_asyncssh_must_check_takes_its_path(change: dict[str, object]) -> None:
    wire = Wire()
    fallback = Fallback()
    connection = _connection("aes128-gcm", wire)
    for name, value in change.items():
        setattr(connection, name, value)

    transport.framed_in_one_join(fallback)(
        connection, MSG_CHANNEL_DATA, UInt32(0), String(b"x")
    )

    assert fallback.calls == [MSG_CHANNEL_DATA]
    assert wire.pieces == []
    assert connection._send_seq == 41


def test_key_exchange_packets_take_asyncssh_path() -> None:
    wire = Wire()
    fallback = Fallback()
    connection = _connection("aes128-gcm", wire)

    transport.framed_in_one_join(fallback)(connection, MSG_KEXINIT, b"cookie")

    assert fallback.calls == [MSG_KEXINIT]
    assert wire.pieces == []


class ChannelPeer:
    """What a channel hands its connection."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def send_packet(self, pkttype: int, *args: bytes, handler: object = None) -> None:
        self.sent.append((pkttype, b"".join(args)))


def _channel(peer: ChannelPeer) -> Any:
    """An open SSHChannel whose client takes 32 KiB packets, 1 MiB window."""

    channel: Any = SSHChannel.__new__(SSHChannel)
    channel._conn = peer
    channel._send_chan = 9
    channel._send_state = "open"
    channel._encoding = None
    channel._send_buf = []
    channel._send_buf_len = 0
    channel._send_window = 1024 * 1024
    channel._send_pktsize = 32768
    channel._send_paused = False
    channel._send_high_water = 1 << 40
    channel._send_low_water = 0
    channel._logger = asyncssh_logger
    return channel


def test_a_channel_sends_the_same_packets_unjoined_and_handed_over() -> None:
    data = os.urandom(200_000)
    theirs_peer, ours_peer = ChannelPeer(), ChannelPeer()
    theirs, ours = _channel(theirs_peer), _channel(ours_peer)
    ours.send_packet = functools.partial(transport.send_packet_unjoined, ours)

    theirs.write(data)
    transport.hand_over(ours, bytearray(data))

    assert ours_peer.sent == theirs_peer.sent
    assert len(ours_peer.sent) == 7  # 200,000 bytes in 32 KiB packets
    assert ours._send_window == theirs._send_window == 1024 * 1024 - 200_000


def test_hand_over_leaves_what_the_window_refuses_for_later_in_order() -> None:
    """With a window smaller than the data, the rest waits in the channel's
    buffer, behind it a second hand-over, and leaves as the window opens:
    the same packets as asyncssh's own writes."""

    first, second = os.urandom(100_000), os.urandom(50_000)
    theirs_peer, ours_peer = ChannelPeer(), ChannelPeer()
    theirs, ours = _channel(theirs_peer), _channel(ours_peer)
    ours.send_packet = functools.partial(transport.send_packet_unjoined, ours)
    for channel in (theirs, ours):
        channel._send_window = 70_000

    theirs.write(first)
    theirs.write(second)
    transport.hand_over(ours, bytearray(first))
    transport.hand_over(ours, bytearray(second))
    assert ours_peer.sent == theirs_peer.sent
    assert ours._send_buf_len == theirs._send_buf_len == 80_000

    for channel in (theirs, ours):
        channel._send_window += 1024 * 1024
        channel._flush_send_buf()
    assert ours_peer.sent == theirs_peer.sent
    # Each payload: the channel number, the data's length, the data.
    assert b"".join(data[8:] for _type, data in ours_peer.sent) == first + second
    assert ours._send_buf == theirs._send_buf == []


def test_hand_over_refuses_a_closed_channel() -> None:
    channel = _channel(ChannelPeer())
    channel._send_state = "close_pending"

    with pytest.raises(BrokenPipeError):
        transport.hand_over(channel, bytearray(b"late"))
