"""What one SSH packet costs in asyncssh's ciphers, on one CPU.

`python -m bench.packets` encrypts and decrypts 32 KiB packets (the
channel's maximum packet size, so what a bulk transfer sends) and tiny
ones (what a status reply or an SSH_MSG_IGNORE is) with the encryption
objects asyncssh builds for a connection, and with leaner arrangements of
the same primitives from `cryptography`:

* chacha20-poly1305@openssh.com as asyncssh does it builds three ChaCha20
  cipher objects per packet (length, Poly1305 key, payload) and copies
  header and payload together before computing the tag.  The lean variant
  takes the Poly1305 key from block 0 of the payload's own key stream and
  feeds the tag in two updates: two cipher objects, no copy.
* aes128-gcm@openssh.com as asyncssh does it builds an AESGCM object per
  packet.  The lean variant keeps one per direction.

Both variants produce the same bytes as asyncssh (checked before timing),
so the difference is pure overhead that a server could shed.  Results are
microseconds per packet and the single-CPU throughput they allow.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

from asyncssh.encryption import get_encryption
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

# A full channel packet, as in bulk transfers, and a tiny one such as the
# empty SSH_MSG_IGNORE asyncssh sends before every packet, or an SFTP status.
PACKET_SIZES = (32 * 1024, 16)
HEADER_BYTES = 4
_BLOCK_ZERO = (0).to_bytes(8, "little")
_ZEROS = bytes(64)
CHACHA_NAME = b"chacha20-poly1305@openssh.com"
GCM_NAME = b"aes128-gcm@openssh.com"
_BATCH = 100


class LeanChacha:
    """chacha20-poly1305@openssh.com with two cipher objects per packet."""

    def __init__(self, key: bytes) -> None:
        self._key = key[:32]
        self._length_key = key[32:]

    def encrypt(self, seq: int, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        nonce = _BLOCK_ZERO + seq.to_bytes(8, "big")
        length = self._stream(self._length_key, nonce).update(header)
        stream = self._stream(self._key, nonce)
        # Block 0 of the payload key's stream is the Poly1305 key; the
        # payload is encrypted from block 1 on, which is where it continues.
        mac = Poly1305(stream.update(_ZEROS)[:32])
        body = stream.update(payload)
        mac.update(length)
        mac.update(body)
        return length + body, mac.finalize()

    def decrypt(self, seq: int, sealed: bytes, tag: bytes) -> bytes:
        nonce = _BLOCK_ZERO + seq.to_bytes(8, "big")
        # The length is decrypted on its own first, as a server must.
        self._stream(self._length_key, nonce).update(sealed[:HEADER_BYTES])
        stream = self._stream(self._key, nonce)
        mac = Poly1305(stream.update(_ZEROS)[:32])
        body = memoryview(sealed)[HEADER_BYTES:]
        mac.update(sealed[:HEADER_BYTES])
        mac.update(body)
        mac.verify(tag)
        return stream.update(body)

    @staticmethod
    def _stream(key: bytes, nonce: bytes) -> CipherContext:
        return Cipher(ChaCha20(key, nonce), mode=None).encryptor()


class LeanGcm:
    """aes128-gcm@openssh.com with one AESGCM object per direction."""

    def __init__(self, key: bytes, iv: bytes) -> None:
        self._aead = AESGCM(key)
        self._fixed = iv[:4]
        self._counter = int.from_bytes(iv[4:], "big")

    def encrypt(self, seq: int, header: bytes, payload: bytes) -> tuple[bytes, bytes]:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        sealed = self._aead.encrypt(nonce, payload, header)
        return header + sealed[:-16], sealed[-16:]

    def decrypt(self, seq: int, sealed: bytes, tag: bytes) -> bytes:
        nonce = self._fixed + self._counter.to_bytes(8, "big")
        self._counter = (self._counter + 1) & 0xFFFFFFFFFFFFFFFF
        body = memoryview(sealed)[HEADER_BYTES:]
        return self._aead.decrypt(nonce, bytes(body) + tag, sealed[:HEADER_BYTES])


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
    """(name, microseconds per packet) for each arrangement and direction."""

    payload = os.urandom(size)
    header = len(payload).to_bytes(HEADER_BYTES, "big")
    chacha_key = os.urandom(64)
    gcm_key, gcm_iv = os.urandom(16), os.urandom(12)
    rows = []
    for name, ours, lean in (
        (
            "chacha20-poly1305",
            lambda: get_encryption(CHACHA_NAME, chacha_key, b""),
            lambda: LeanChacha(chacha_key),
        ),
        (
            "aes128-gcm",
            lambda: get_encryption(GCM_NAME, gcm_key, gcm_iv),
            lambda: LeanGcm(gcm_key, gcm_iv),
        ),
    ):
        rows += _measure_cipher(name, ours, lean, header, payload, seconds)
    return rows


def _measure_cipher(
    name: str,
    make_asyncssh: Callable[[], Any],
    make_lean: Callable[[], Any],
    header: bytes,
    payload: bytes,
    seconds: float,
) -> list[tuple[str, float]]:
    sealer = make_asyncssh()
    packets = [sealer.encrypt_packet(seq, header, payload) for seq in range(_BATCH)]
    checker = make_lean()
    assert [checker.encrypt(seq, header, payload) for seq in range(_BATCH)] == packets
    assert make_lean().decrypt(0, *packets[0]) == payload

    timed: dict[str, Callable[[int], object]] = {
        "encrypt, asyncssh": _bind(make_asyncssh(), "encrypt_packet", header, payload),
        "encrypt, lean": _bind(make_lean(), "encrypt", header, payload),
        "decrypt, asyncssh": _in_order(make_asyncssh, _asyncssh_decrypt, packets),
        "decrypt, lean": _in_order(make_lean, _lean_decrypt, packets),
    }
    return [
        (f"{name} {label}", _time_per_call(action, seconds))
        for label, action in timed.items()
    ]


def _asyncssh_decrypt(encryption: Any, seq: int, sealed: bytes, tag: bytes) -> object:
    """As asyncssh's connection does it: the length first, then the rest."""

    first, rest = sealed[:HEADER_BYTES], sealed[HEADER_BYTES:]
    encryption.decrypt_header(seq, first, HEADER_BYTES)
    return encryption.decrypt_packet(seq, first, rest, HEADER_BYTES, tag)


def _lean_decrypt(cipher: Any, seq: int, sealed: bytes, tag: bytes) -> object:
    return cipher.decrypt(seq, sealed, tag)


def _in_order(
    make: Callable[[], Any],
    decrypt_one: Callable[[Any, int, bytes, bytes], object],
    packets: list[tuple[bytes, bytes]],
) -> Callable[[int], object]:
    """Decrypt the packets in order, with a fresh object for each batch."""

    state = [make()]

    def decrypt(seq: int) -> object:
        if seq == 0:
            # GCM's nonce advances with each packet: start over every batch.
            state[0] = make()
        return decrypt_one(state[0], seq, *packets[seq])

    return decrypt


def _bind(target: Any, method: str, *arguments: bytes) -> Callable[[int], object]:
    bound = getattr(target, method)
    return lambda sequence: bound(sequence, *arguments)


def main() -> None:
    """Print microseconds per packet, for full and for tiny packets."""

    parser = argparse.ArgumentParser(prog="python -m bench.packets")
    parser.add_argument("--seconds", type=float, default=2.0, help="per arrangement")
    arguments = parser.parse_args()
    for size in PACKET_SIZES:
        print(f"{size}-byte packets on one CPU")
        for name, micros in measure(arguments.seconds, size):
            rate = size / (micros / 1e6) / (1024 * 1024)
            print(f"  {name:32s} {micros:6.1f} us/packet  {rate:6.0f} MiB/s")


if __name__ == "__main__":
    main()
