"""Variant: no SSH_MSG_IGNORE before every packet.

asyncssh 2.24's `SSHConnection.send_packet` sends an empty MSG_IGNORE
before each packet once encryption is on.  Ignore packets countered the
chained-IV attack on CBC modes; sftpjail offers only AEAD and CTR modes.
Dropping them halves the packets, encryptions and send() calls.
"""

from __future__ import annotations

from typing import Any

import asyncssh.connection
from asyncssh.constants import MSG_IGNORE

_EMPTY_STRING = b"\0\0\0\0"
_send_packet = asyncssh.connection.SSHConnection.send_packet


def _send_packet_without_ignore(
    self: asyncssh.connection.SSHConnection,
    pkttype: int,
    *args: bytes,
    handler: Any = None,
) -> None:
    if pkttype == MSG_IGNORE and args == (_EMPTY_STRING,):
        return
    _send_packet(self, pkttype, *args, handler=handler)


asyncssh.connection.SSHConnection.send_packet = _send_packet_without_ignore  # type: ignore[method-assign]
