"""Variant: chacha20-poly1305@openssh.com with two cipher objects a packet.

asyncssh builds three ChaCha20 cipher objects per packet and copies the
header and payload together for the MAC.  The Poly1305 key is block 0 of
the payload key's stream and the payload starts at block 1, so one stream
object serves both, and Poly1305 can take header and payload in two
updates.  Same bytes on the wire (see bench/packets.py, which checks it).
"""

from __future__ import annotations

import asyncssh.crypto.chacha
import asyncssh.encryption
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext
from cryptography.hazmat.primitives.ciphers.algorithms import ChaCha20
from cryptography.hazmat.primitives.poly1305 import Poly1305

_BLOCK_ZERO = bytes(8)
_ONE_BLOCK = bytes(64)


def _stream(key: bytes, nonce: bytes) -> CipherContext:
    return Cipher(ChaCha20(key, _BLOCK_ZERO + nonce), mode=None).encryptor()


def _encrypt_and_sign(
    self: asyncssh.crypto.chacha.ChachaCipher, header: bytes, data: bytes, nonce: bytes
) -> tuple[bytes, bytes]:
    header = _stream(self._adkey, nonce).update(header)
    stream = _stream(self._key, nonce)
    mac = Poly1305(stream.update(_ONE_BLOCK)[:32])
    data = stream.update(data)
    mac.update(header)
    mac.update(data)
    return header + data, mac.finalize()


def _decrypt_packet(
    self: asyncssh.encryption.ChachaEncryption,
    seq: int,
    first: bytes,
    rest: bytes,
    header_len: int,
    mac: bytes,
) -> bytes | None:
    stream = _stream(self._cipher._key, seq.to_bytes(8, "big"))
    poly = Poly1305(stream.update(_ONE_BLOCK)[:32])
    poly.update(first)
    poly.update(rest)
    try:
        poly.verify(mac)
    except InvalidSignature:
        return None
    return stream.update(first[header_len:]) + stream.update(rest)


asyncssh.crypto.chacha.ChachaCipher.encrypt_and_sign = _encrypt_and_sign  # type: ignore[method-assign]
asyncssh.encryption.ChachaEncryption.decrypt_packet = _decrypt_packet  # type: ignore[method-assign]
