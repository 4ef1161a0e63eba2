"""The control socket: local commands for a running server.

A Unix stream socket, by default `state_dir/control.sock`, mode 0600 and
owned by the account the supervisor runs as.  The kernel tells the
supervisor who connected (`SO_PEERCRED`); only root and that account are
answered, whatever the file mode says.  Workers cannot reach it at all:
their seccomp filter refuses `connect`.

The protocol is one JSON object per line, one request per connection:
`{"request": "status"}` or `{"request": "reload"}` in, one JSON object
out, then the server closes.  Requests are answered from the supervisor's
loop (`sftpjail.exchange`), so they see a consistent state.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from sftpjail.config import Config
from sftpjail.errors import ControlSocketError

SOCKET_NAME = "control.sock"
SOCKET_MODE = 0o600
MAX_REQUEST_BYTES = 4096
CLIENT_TIMEOUT = 10.0
_MAX_REPLY_BYTES = 16 * 1024 * 1024
_UNIX_PATH_MAX = 107

Handler = Callable[[], dict[str, Any]]


def control_socket_path(config: Config) -> Path:
    """Where the control socket of the server configured by `config` lives."""

    return config.control_socket or config.state_dir / SOCKET_NAME


def bind_control_socket(path: Path) -> socket.socket:
    """Listen on `path`, replacing a stale socket a crashed server left."""

    if len(os.fsencode(path)) > _UNIX_PATH_MAX:
        raise ControlSocketError(
            f"control socket path {path} is longer than {_UNIX_PATH_MAX} bytes; "
            "set server.control_socket to a shorter path"
        )
    _remove_stale(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        listener.bind(os.fsencode(path))
    except OSError as error:
        listener.close()
        raise ControlSocketError(
            f"cannot create control socket {path}: {error.strerror}"
        ) from None
    finally:
        os.umask(old_umask)
    os.chmod(path, SOCKET_MODE)
    listener.listen(8)
    return listener


def _remove_stale(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise ControlSocketError(
            f"{path} exists and is not a socket; remove it or set "
            "server.control_socket to another path"
        )
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(os.fsencode(path))
        except OSError:
            os.unlink(path)
            return
    raise ControlSocketError(
        f"another sftpjail server answers on {path}; stop it first or give "
        "this one its own state_dir"
    )


def peer_is_trusted(client: socket.socket) -> bool:
    """True if the kernel says root or this process's account connected."""

    credentials = client.getsockopt(
        socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
    )
    _pid, uid, _gid = struct.unpack("3i", credentials)
    return uid in (0, os.geteuid())


class ControlResponder:
    """Answers one JSON request line by calling the matching handler."""

    terminator = b"\n"
    max_request_bytes = MAX_REQUEST_BYTES

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self.handlers = handlers

    def answer(self, request: bytes) -> bytes:
        """Decode the request, run its handler, encode the reply."""

        try:
            message = json.loads(request)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return _encode({"ok": False, "error": "the request is not JSON"})
        name = message.get("request") if isinstance(message, dict) else None
        handler = self.handlers.get(name) if isinstance(name, str) else None
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            return _encode({"ok": False, "error": f"unknown request; known: {known}"})
        return _encode({"ok": True, **handler()})

    def too_large(self) -> bytes:
        """Refuse an oversized request."""

        return _encode({"ok": False, "error": "the request is too large"})


def _encode(reply: dict[str, Any]) -> bytes:
    return json.dumps(reply, separators=(",", ":")).encode() + b"\n"


def ask(path: Path, request: str, timeout: float = CLIENT_TIMEOUT) -> dict[str, Any]:
    """Send one request to the server listening on `path`; return its reply."""

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(timeout)
        try:
            client.connect(os.fsencode(path))
            client.sendall(_encode({"request": request}))
            reply = _read_reply(client)
        except FileNotFoundError:
            raise ControlSocketError(
                f"no control socket at {path}: is the server running with this "
                "configuration?"
            ) from None
        except PermissionError:
            raise ControlSocketError(
                f"not allowed to use {path}: run as root or as the server's account"
            ) from None
        except OSError as error:
            raise ControlSocketError(
                f"the server did not answer on {path}: {error.strerror or error}"
            ) from None

    try:
        decoded = json.loads(reply)
    except (UnicodeDecodeError, json.JSONDecodeError):
        decoded = None
    if not isinstance(decoded, dict):
        raise ControlSocketError(f"the server's reply on {path} is not JSON")
    if not decoded.get("ok"):
        raise ControlSocketError(f"the server refused: {decoded.get('error')}")
    return decoded


def _read_reply(client: socket.socket) -> bytes:
    chunks = []
    total = 0
    while total <= _MAX_REPLY_BYTES:
        chunk = client.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
