"""What one SSH packet costs in asyncssh's ciphers and in sftpjail's, on one CPU.

`python -m bench.packets` encrypts and decrypts 32 KiB packets (the
channel's maximum packet size, so what a bulk transfer sends) and tiny
ones (what a status reply is) with two implementations of each AEAD
cipher sftpjail offers:

* asyncssh's own classes, `ChachaEncryption` and `GCMEncryption`, taken
  from `asyncssh.encryption` by name.  They are not looked up through
  `get_encryption`: its registry is where `install_tunings()` puts
  sftpjail's classes, so the "asyncssh" rows stay asyncssh's whatever
  this process has installed.
* sftpjail's `ChachaPoly1305Encryption` and `AesGcmEncryption` from
  `sftpjail.transport`, which the zygote installs in that registry.
  ChaCha20-Poly1305 keeps one ChaCha20 stream per key and moves it to each
  packet's nonce with `reset_nonce`, where asyncssh builds three cipher
  objects per packet and joins header and payload for the tag; AES-GCM
  keeps one AESGCM per direction, where asyncssh builds one per packet and
  cuts the tag off the sealed packet for the connection to join again.

Both go through the same `Encryption` interface, used as asyncssh's
connection uses it: a packet is sealed with `encrypt_packet` and sent as
`packet + mac`, and read back with `decrypt_header` on its first block,
then `decrypt_packet` on the rest.  Before timing, both must send the same
bytes and each must read what the other sent, so the difference is pure
overhead.  Run it again after upgrading asyncssh or `cryptography`: it
shows whether sftpjail's classes still pay for themselves.  Results are
microseconds per packet and the single-CPU throughput they allow.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from asyncssh.encryption import (
    ChachaEncryption,
    Encryption,
    GCMEncryption,
    get_encryption_params,
)

from sftpjail.transport import AesGcmEncryption, ChachaPoly1305Encryption

# A full channel packet, as in bulk transfers, and a tiny one such as an
# SFTP status reply.
PACKET_SIZES = (32 * 1024, 16)
HEADER_BYTES = 4
# asyncssh's connection reads a packet's first block, never under 8 bytes,
# to learn its length.
_SMALLEST_FIRST_BLOCK = 8
_BATCH = 100

# A packet as the connection reads it: first block, the rest, the MAC.
Received = tuple[bytes, bytes, bytes]


class MismatchError(RuntimeError):
    """asyncssh's and sftpjail's classes disagree: the timings would be void."""


@dataclass(frozen=True)
class Contest:
    """One SSH cipher, as asyncssh implements it and as sftpjail does."""

    cipher_name: str
    ssh_name: bytes
    asyncssh: type[Encryption]
    sftpjail: type[Encryption]


CONTESTS = (
    Contest(
        "chacha20-poly1305",
        b"chacha20-poly1305@openssh.com",
        ChachaEncryption,
        ChachaPoly1305Encryption,
    ),
    Contest("aes128-gcm", b"aes128-gcm@openssh.com", GCMEncryption, AesGcmEncryption),
)


def _seal(encryption: Encryption, seq: int, header: bytes, payload: bytes) -> bytes:
    """The bytes the connection sends for one packet."""

    packet, mac = encryption.encrypt_packet(seq, header, payload)
    return packet + mac


def _open(encryption: Encryption, seq: int, received: Received) -> bytes | None:
    """As the connection reads a packet: the length first, then the rest."""

    first, rest, mac = received
    first, _length = encryption.decrypt_header(seq, first, HEADER_BYTES)
    return encryption.decrypt_packet(seq, first, rest, HEADER_BYTES, mac)


def _time_per_call(action: Callable[[int], object], seconds: float) -> float:
    """Microseconds per call, repeated for about `seconds`."""

    calls = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for sequence in range(_BATCH):
            action(sequence)
        calls += _BATCH
    return (time.perf_counter() - started) / calls * 1e6


def measure(seconds: float, size: int) -> list[tuple[str, float]]:
    """(name, microseconds per packet) for each cipher, side and direction."""

    payload = os.urandom(size)
    header = len(payload).to_bytes(HEADER_BYTES, "big")
    rows = []
    for contest in CONTESTS:
        rows += _measure_contest(contest, header, payload, seconds)
    return rows


def _measure_contest(
    contest: Contest, header: bytes, payload: bytes, seconds: float
) -> list[tuple[str, float]]:
    key_bytes, iv_bytes, block_bytes, _mac_key, mac_bytes, _etm = get_encryption_params(
        contest.ssh_name
    )
    key, iv = os.urandom(key_bytes), os.urandom(iv_bytes)
    first_block = max(_SMALLEST_FIRST_BLOCK, block_bytes)

    def maker(side: type[Encryption]) -> Callable[[], Encryption]:
        return lambda: side.new(contest.cipher_name, key, iv)

    sides = {"asyncssh": maker(contest.asyncssh), "sftpjail": maker(contest.sftpjail)}
    sent = _check_identical(sides, header, payload)
    received = [_split(wire, first_block, mac_bytes) for wire in sent]
    _check_each_reads(sides, received, payload)

    timed: dict[str, Callable[[int], object]] = {
        f"encrypt, {side}": _sealing(make(), header, payload)
        for side, make in sides.items()
    }
    timed |= {
        f"decrypt, {side}": _opening_in_order(make, received)
        for side, make in sides.items()
    }
    return [
        (f"{contest.cipher_name} {label}", _time_per_call(action, seconds))
        for label, action in timed.items()
    ]


def _check_identical(
    sides: dict[str, Callable[[], Encryption]], header: bytes, payload: bytes
) -> list[bytes]:
    """The packets both sides send, which must be the same bytes."""

    sent = [_seal_batch(make(), header, payload) for make in sides.values()]
    first, *others = sent
    if any(packets != first for packets in others):
        raise MismatchError(
            "asyncssh and sftpjail sealed a packet differently; "
            "see tests/test_transport.py before trusting any timing"
        )
    return first


def _check_each_reads(
    sides: dict[str, Callable[[], Encryption]],
    received: list[Received],
    payload: bytes,
) -> None:
    """Each side opens the packets sent, which both sides sent alike."""

    for side, make in sides.items():
        opener = make()
        for seq, packet in enumerate(received):
            if _open(opener, seq, packet) != payload:
                raise MismatchError(f"{side} could not read packet {seq} back")


def _seal_batch(encryption: Encryption, header: bytes, payload: bytes) -> list[bytes]:
    return [_seal(encryption, seq, header, payload) for seq in range(_BATCH)]


def _split(wire: bytes, first_block: int, mac_bytes: int) -> Received:
    return wire[:first_block], wire[first_block:-mac_bytes], wire[-mac_bytes:]


def _sealing(
    encryption: Encryption, header: bytes, payload: bytes
) -> Callable[[int], object]:
    return lambda seq: _seal(encryption, seq, header, payload)


def _opening_in_order(
    make: Callable[[], Encryption], received: list[Received]
) -> Callable[[int], object]:
    """Open the packets in order, with a fresh object for each batch."""

    state = [make()]

    def open_one(seq: int) -> object:
        if seq == 0:
            # GCM's nonce advances with each packet: start over every batch.
            state[0] = make()
        return _open(state[0], seq, received[seq])

    return open_one


def main() -> None:
    """Print microseconds per packet, for full and for tiny packets."""

    parser = argparse.ArgumentParser(prog="python -m bench.packets")
    parser.add_argument("--seconds", type=float, default=2.0, help="per arrangement")
    arguments = parser.parse_args()
    for size in PACKET_SIZES:
        print(f"{size}-byte packets on one CPU")
        for name, micros in measure(arguments.seconds, size):
            rate = size / (micros / 1e6) / (1024 * 1024)
            print(f"  {name:35s} {micros:6.1f} us/packet  {rate:6.0f} MiB/s")


if __name__ == "__main__":
    main()
