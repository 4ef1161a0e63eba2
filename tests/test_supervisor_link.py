"""The worker's side of its link to the supervisor, on a real socket pair.

`SupervisorLink.sign` blocks the event loop for the supervisor's
signature, because asyncssh signs in the middle of handling a packet.
Whatever else arrives meanwhile must still reach whoever waits for it,
and the socket must be left as the loop's reader needs it.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator

import asyncssh
import pytest

from sftpjail import ipc, worker
from sftpjail.worker import SupervisorLink

SIGNATURE = b"a signature, as the supervisor's key made it"


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(the worker's end, the supervisor's end)."""

    workers, supervisors = ipc.socket_pair()
    supervisors.settimeout(10)
    try:
        yield workers, supervisors
    finally:
        workers.close()
        supervisors.close()


def _sign_in_a_loop(link: SupervisorLink) -> bytes:
    """Ask for a signature from inside a running loop, as asyncssh does."""

    async def sign() -> bytes:
        return link.sign(b"key", "ssh-ed25519", bytes(32))

    return asyncio.run(sign())


def _send(sock: socket.socket, message: dict[str, object]) -> None:
    sock.send(ipc.encode(message))


def _received(sock: socket.socket) -> dict[str, object]:
    return ipc.decode(sock.recv(ipc.MAX_MESSAGE_BYTES))


def test_a_reply_that_arrives_before_the_signature_reaches_its_asker(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    workers, supervisors = pair

    async def run() -> tuple[bytes, dict[str, object], list[str]]:
        link = SupervisorLink(workers)
        link.start()
        asking = asyncio.create_task(
            link.ask({"type": "quota", "bytes": 1, "files": 0}, "quota_reply")
        )
        await asyncio.sleep(0.05)  # the question is on its way
        asked = _received(supervisors)["type"]
        # Both answers wait in the socket before the worker signs.
        _send(supervisors, {"type": "quota_reply", "ok": True, "bytes": 1})
        _send(supervisors, {"type": "signature", "signature": ipc.to_base64(SIGNATURE)})
        signature = link.sign(b"key", "ssh-ed25519", bytes(32))
        sign_request = _received(supervisors)
        reply = await asyncio.wait_for(asking, 10)
        return signature, reply, [str(asked), str(sign_request["type"])]

    signature, reply, requests = asyncio.run(run())

    assert signature == SIGNATURE
    assert reply == {"type": "quota_reply", "ok": True, "bytes": 1}
    assert requests == ["quota", "sign"]
    assert workers.getblocking() is False  # as the loop's reader needs it


def test_a_refused_signature_fails_the_key_exchange(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    workers, supervisors = pair
    link = SupervisorLink(workers)
    _send(supervisors, {"type": "signature", "error": "not an exchange hash"})

    with pytest.raises(asyncssh.KeyExchangeFailed, match="not an exchange hash"):
        _sign_in_a_loop(link)
    assert workers.getblocking() is False


def test_a_supervisor_that_does_not_answer_fails_the_key_exchange_in_time(
    pair: tuple[socket.socket, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    workers, _supervisors = pair
    monkeypatch.setattr(worker, "SIGN_TIMEOUT", 0.2)
    link = SupervisorLink(workers)

    with pytest.raises(asyncssh.KeyExchangeFailed, match="no host key signature"):
        _sign_in_a_loop(link)
    assert workers.getblocking() is False


def test_a_supervisor_gone_fails_the_key_exchange(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    workers, supervisors = pair
    link = SupervisorLink(workers)
    supervisors.close()

    with pytest.raises(asyncssh.KeyExchangeFailed, match="no host key signature"):
        _sign_in_a_loop(link)
