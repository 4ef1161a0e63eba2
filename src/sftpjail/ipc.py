"""Messages between the supervisor, the zygote and the workers.

Every pair of processes talks over an `AF_UNIX` `SOCK_SEQPACKET` socket
pair: the kernel keeps message boundaries, so one `send` is one message and
no framing code is needed.  A message is a small JSON object with a `type`.

The supervisor trusts no worker: `parse_worker_message` checks every field
of every message it receives, and anything unexpected raises
`ProtocolError`, which ends that worker (never the supervisor).
"""

from __future__ import annotations

import array
import base64
import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

MAX_MESSAGE_BYTES = 16 * 1024
MAX_USER_NAME_BYTES = 64
MAX_PASSWORD_BYTES = 1024
MAX_PUBLIC_KEY_BYTES = 8 * 1024
AUTH_METHODS = ("password", "publickey")
MAX_OPERATION_KINDS = 64
MAX_OPERATION_KEY_CHARS = 40
MAX_SANDBOX_TEXT_BYTES = 512
MAX_QUOTA_DELTA = 2**62
MAX_ALGORITHM_BYTES = 64
# An SSH exchange hash is at most 64 bytes (SHA-512).
MAX_SIGNED_BYTES = 64
# How often, at most, a worker reports its transfer counters and activity:
# the supervisor's idle timers can be no finer than this.
TRANSFER_REPORT_INTERVAL = 2.0


class ProtocolError(Exception):
    """A peer sent a message that breaks the protocol."""


@dataclass(frozen=True)
class AuthRequest:
    """A worker asks whether `user` may log in with this credential."""

    user: str
    method: str
    credential: str


@dataclass(frozen=True)
class LoginNotice:
    """A worker reports that the SSH layer completed login for `user`."""

    user: str


@dataclass(frozen=True)
class TransferNotice:
    """A worker reports its running byte counters (for status and metrics).

    Every count is cumulative for the session; `operations` maps
    "operation:result" (e.g. "open_write:ok") to how many happened, and
    `client_packets` counts the SSH packets of SFTP data the client sent.
    """

    bytes_in: int
    bytes_out: int
    operations: Mapping[str, int] = field(default_factory=dict)
    client_packets: int = 0


@dataclass(frozen=True)
class SandboxNotice:
    """A worker reports the sandbox layers it enforced, in words."""

    layers: str


@dataclass(frozen=True)
class QuotaRequest:
    """A worker reserves (both >= 0) or releases (both <= 0) quota.

    A reservation is answered with a `quota_reply`; a release is not.
    """

    bytes: int
    files: int

    @property
    def is_release(self) -> bool:
        return self.bytes <= 0 and self.files <= 0 and (self.bytes or self.files) != 0


@dataclass(frozen=True)
class SignRequest:
    """A worker asks for a host key's signature of a key exchange hash.

    `key` is the public key's SSH encoding, `data` what to sign; both
    travel base64-encoded.  Answered with a `signature` message holding
    either `signature` or `error`.
    """

    key: bytes
    algorithm: str
    data: bytes


WorkerMessage = (
    AuthRequest
    | LoginNotice
    | TransferNotice
    | QuotaRequest
    | SandboxNotice
    | SignRequest
)


def socket_pair() -> tuple[socket.socket, socket.socket]:
    """A connected message-preserving pair; both ends close on exec."""

    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def encode(message: dict[str, Any]) -> bytes:
    """Serialize one message, refusing anything over the size limit."""

    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(data)} bytes is too large")
    return data


def decode(data: bytes) -> dict[str, Any]:
    """Parse one message into a dict with a string `type`."""

    if not data:
        raise ProtocolError("empty message")
    if len(data) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message is larger than {MAX_MESSAGE_BYTES} bytes")
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as error:
        # ValueError: bad UTF-8, bad JSON, or a number too long to convert;
        # RecursionError: arrays or objects nested too deep.
        raise ProtocolError(f"message is not JSON: {error}") from None
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("message is not an object with a type")
    return message


def parse_worker_message(data: bytes) -> WorkerMessage:
    """Validate a message from a worker, field by field."""

    message = decode(data)
    kind = message["type"]

    if kind == "auth":
        _expect_keys(message, {"type", "user", "method", "credential"})
        method = _text(message, "method", 16)
        if method not in AUTH_METHODS:
            raise ProtocolError(f"unknown authentication method {method!r}")
        limit = MAX_PASSWORD_BYTES if method == "password" else MAX_PUBLIC_KEY_BYTES
        return AuthRequest(
            user=_text(message, "user", MAX_USER_NAME_BYTES),
            method=method,
            credential=_text(message, "credential", limit),
        )
    if kind == "login":
        _expect_keys(message, {"type", "user"})
        return LoginNotice(user=_text(message, "user", MAX_USER_NAME_BYTES))
    if kind == "transfer":
        optional = {"operations", "client_packets"} & set(message)
        _expect_keys(message, {"type", "bytes_in", "bytes_out"} | optional)
        return TransferNotice(
            bytes_in=_count(message, "bytes_in"),
            bytes_out=_count(message, "bytes_out"),
            operations=_operations(message) if "operations" in message else {},
            client_packets=(
                _count(message, "client_packets") if "client_packets" in message else 0
            ),
        )
    if kind == "sandbox":
        _expect_keys(message, {"type", "layers"})
        return SandboxNotice(_text(message, "layers", MAX_SANDBOX_TEXT_BYTES))
    if kind == "quota":
        _expect_keys(message, {"type", "bytes", "files"})
        request = QuotaRequest(
            bytes=_delta(message, "bytes"), files=_delta(message, "files")
        )
        if min(request.bytes, request.files) < 0 < max(request.bytes, request.files):
            raise ProtocolError("quota message both reserves and releases")
        return request
    if kind == "sign":
        _expect_keys(message, {"type", "key", "algorithm", "data"})
        return SignRequest(
            key=_base64(message, "key", MAX_PUBLIC_KEY_BYTES),
            algorithm=_text(message, "algorithm", MAX_ALGORITHM_BYTES),
            data=_base64(message, "data", MAX_SIGNED_BYTES),
        )
    raise ProtocolError(f"unknown message type {kind!r}")


def _expect_keys(message: dict[str, Any], keys: set[str]) -> None:
    if set(message) != keys:
        raise ProtocolError(f"{message['type']} message has fields {sorted(message)}")


def _text(message: dict[str, Any], key: str, limit: int) -> str:
    value = message[key]
    if not isinstance(value, str) or _utf8_size(value) > limit or "\0" in value:
        raise ProtocolError(f"field {key} is not a string of at most {limit} bytes")
    return value


def _utf8_size(text: str) -> int:
    """Bytes of `text` in UTF-8; JSON can carry lone surrogates, UTF-8 cannot."""

    try:
        return len(text.encode())
    except UnicodeEncodeError:
        raise ProtocolError("text holds a lone surrogate") from None


def _base64(message: dict[str, Any], key: str, limit: int) -> bytes:
    text = _text(message, key, limit * 2)
    try:
        value = base64.b64decode(text, validate=True)
    except ValueError:
        raise ProtocolError(f"field {key} is not base64") from None
    if len(value) > limit:
        raise ProtocolError(f"field {key} holds more than {limit} bytes")
    return value


def to_base64(data: bytes) -> str:
    """Bytes as a message field carries them."""

    return base64.b64encode(data).decode("ascii")


def _count(message: dict[str, Any], key: str) -> int:
    value = message[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ProtocolError(f"field {key} is not a non-negative integer")
    return value


def _delta(message: dict[str, Any], key: str) -> int:
    value = message[key]
    if (
        not isinstance(value, int)
        or isinstance(value, bool)
        or abs(value) > MAX_QUOTA_DELTA
    ):
        raise ProtocolError(f"field {key} is not an integer of at most 2**62")
    return value


def _operations(message: dict[str, Any]) -> dict[str, int]:
    value = message["operations"]
    if not isinstance(value, dict) or len(value) > MAX_OPERATION_KINDS:
        raise ProtocolError(
            f"field operations is not an object of at most {MAX_OPERATION_KINDS} keys"
        )
    for key in value:
        if len(key) > MAX_OPERATION_KEY_CHARS or not key.isprintable():
            raise ProtocolError(f"operation name {key[:50]!r} is too long or odd")
    return {key: _count(value, key) for key in value}


def send_with_fds(sock: socket.socket, message: dict[str, Any], fds: list[int]) -> None:
    """Send a message and pass open descriptors along with it."""

    rights = array.array("i", fds).tobytes()
    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, rights)] if fds else []
    sock.sendmsg([encode(message)], ancillary)


def receive_with_fds(
    sock: socket.socket, max_fds: int
) -> tuple[dict[str, Any], list[int]]:
    """Receive one message and the descriptors that came with it.

    Raises EOFError when the peer has closed its end.
    """

    item_size = array.array("i").itemsize
    data, ancillary, flags, _address = sock.recvmsg(
        MAX_MESSAGE_BYTES, socket.CMSG_SPACE(max_fds * item_size)
    )
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(payload) - len(payload) % item_size
            fds.extend(array.array("i", payload[:usable]))
    if not data and not fds:
        raise EOFError("peer closed the connection")
    if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        _close_all(fds)
        raise ProtocolError("message or descriptors were truncated")
    return decode(data), fds


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
