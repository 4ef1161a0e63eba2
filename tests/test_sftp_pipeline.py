"""The batching SFTP request loop (sftpjail.sftp_pipeline), over the wire.

A raw SFTP client on an asyncssh channel writes several requests at once,
as pipelining clients do, and reads the replies as the channel delivers
them: what comes back, in which order, and in how many channel packets.
"""

from __future__ import annotations

import asyncio
import os
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import cast

import asyncssh
import pytest

from serverlab import ClientKey, ServerLab

FXP_INIT, FXP_VERSION, FXP_OPEN, FXP_CLOSE, FXP_READ, FXP_WRITE = 1, 2, 3, 4, 5, 6
FXP_STATUS, FXP_HANDLE, FXP_DATA = 101, 102, 103
FX_OK, FX_EOF, FX_BAD_MESSAGE = 0, 1, 5
FXF_READ = 0x01
CHUNK = 32 * 1024
WAIT_SECONDS = 20


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _packet(pkttype: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, pkttype) + body


def _read(request_id: int, handle: bytes, offset: int, length: int) -> bytes:
    body = struct.pack(">I", request_id) + _string(handle)
    return _packet(FXP_READ, body + struct.pack(">QI", offset, length))


class RawSftp(asyncssh.SSHClientSession[bytes]):
    """Collects what the server sends, one entry per channel data packet."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.buffer = bytearray()
        self.arrived = asyncio.Event()
        self.closed = asyncio.Event()

    def data_received(self, data: bytes, datatype: asyncssh.DataType) -> None:
        self.chunks.append(data)
        self.buffer += data
        self.arrived.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed.set()
        self.arrived.set()

    async def replies(self, count: int) -> list[tuple[int, int, bytes]]:
        """The next `count` replies as (type, request id, rest of the body)."""

        found: list[tuple[int, int, bytes]] = []
        async with asyncio.timeout(WAIT_SECONDS):
            while len(found) < count:
                if len(self.buffer) >= 4:
                    (length,) = struct.unpack_from(">I", self.buffer)
                    if len(self.buffer) >= 4 + length:
                        body = bytes(self.buffer[4 : 4 + length])
                        del self.buffer[: 4 + length]
                        (request_id,) = struct.unpack_from(">I", body, 1)
                        found.append((body[0], request_id, body[5:]))
                        continue
                if self.closed.is_set():
                    raise ConnectionError("the server closed the channel")
                self.arrived.clear()
                await self.arrived.wait()
        return found


def _connect(
    lab: ServerLab, user: str, key: ClientKey
) -> AbstractAsyncContextManager[asyncssh.SSHClientConnection]:
    """An asyncssh client connection to the lab, with only this key."""

    return asyncssh.connect(
        "127.0.0.1",
        lab.port,
        username=user,
        known_hosts=None,
        client_keys=[str(key.private)],
        agent_path=None,
        preferred_auth="publickey",
    )


@asynccontextmanager
async def raw_sftp(
    lab: ServerLab, user: str, key: ClientKey, window: int = 2 * 1024 * 1024
) -> AsyncIterator[tuple[asyncssh.SSHClientChannel[bytes], RawSftp]]:
    """A connected SFTP channel past the version exchange.

    `window` is the channel window the client opens (asyncssh's default).
    """

    async with _connect(lab, user, key) as connection:
        channel, base_session = await connection.create_session(
            RawSftp, subsystem="sftp", encoding=None, window=window
        )
        # asyncssh annotates the session as its base class; it is the RawSftp
        # that the factory above made.
        session = cast(RawSftp, base_session)
        channel.write(struct.pack(">IBI", 5, FXP_INIT, 3))
        async with asyncio.timeout(WAIT_SECONDS):
            while len(session.buffer) < 9:
                session.arrived.clear()
                await session.arrived.wait()
        assert session.buffer[4] == FXP_VERSION
        (length,) = struct.unpack_from(">I", session.buffer)
        del session.buffer[: 4 + length]
        session.chunks.clear()
        yield channel, session


async def _open_for_reading(
    channel: asyncssh.SSHClientChannel[bytes], session: RawSftp, name: bytes
) -> bytes:
    no_attributes = struct.pack(">I", 0)
    body = struct.pack(">I", 1) + _string(name) + struct.pack(">I", FXF_READ)
    channel.write(_packet(FXP_OPEN, body + no_attributes))
    [(reply_type, _id, rest)] = await session.replies(1)
    assert reply_type == FXP_HANDLE, rest
    (handle_length,) = struct.unpack_from(">I", rest)
    return rest[4 : 4 + handle_length]


def _status(rest: bytes) -> int:
    return int(struct.unpack_from(">I", rest)[0])


def _data(rest: bytes) -> bytes:
    (length,) = struct.unpack_from(">I", rest)
    return rest[4 : 4 + length]


@pytest.fixture
def blob(lab: ServerLab) -> tuple[ClientKey, bytes]:
    """User alice, with a file of eight 32 KiB chunks in her home."""

    key = lab.add_user("alice")
    lab.start()
    content = os.urandom(8 * CHUNK)
    path: Path = lab.data_dir / "alice" / "blob.bin"
    path.write_bytes(content)
    path.chmod(0o644)
    return key, content


def test_requests_written_together_are_answered_in_order(
    lab: ServerLab, blob: tuple[ClientKey, bytes]
) -> None:
    key, content = blob

    async def run() -> list[tuple[int, int, bytes]]:
        async with raw_sftp(lab, "alice", key) as (channel, session):
            handle = await _open_for_reading(channel, session, b"blob.bin")
            truncated = _packet(FXP_READ, struct.pack(">I", 13) + b"\x00\x00")
            channel.write(
                _read(10, handle, 0, CHUNK)
                + _read(11, b"no such handle", 0, CHUNK)
                + _read(12, handle, len(content), CHUNK)
                + truncated
                + _read(14, handle, CHUNK + 100, 50)
                + _read(15, handle, len(content) - 10, CHUNK)
            )
            return await session.replies(6)

    replies = asyncio.run(run())

    assert [request_id for _type, request_id, _rest in replies] == [
        10,
        11,
        12,
        13,
        14,
        15,
    ]
    types = [reply_type for reply_type, _id, _rest in replies]
    assert types == [FXP_DATA, FXP_STATUS, FXP_STATUS, FXP_STATUS, FXP_DATA, FXP_DATA]
    assert _data(replies[0][2]) == content[:CHUNK]
    assert _status(replies[1][2]) not in (FX_OK, FX_EOF)
    assert _status(replies[2][2]) == FX_EOF
    assert _status(replies[3][2]) == FX_BAD_MESSAGE
    assert _data(replies[4][2]) == content[CHUNK + 100 : CHUNK + 150]
    # A read past the end returns what there is.
    assert _data(replies[5][2]) == content[-10:]


def test_read_replies_written_together_fill_whole_channel_packets(
    lab: ServerLab, blob: tuple[ClientKey, bytes]
) -> None:
    """Eight 32 KiB replies: 8 x (32 KiB + 13 bytes) fit in nine packets.

    Sent one by one, each reply would take a full packet and a 13-byte
    one: sixteen packets.
    """

    key, content = blob

    async def run() -> tuple[list[tuple[int, int, bytes]], list[bytes]]:
        async with raw_sftp(lab, "alice", key) as (channel, session):
            handle = await _open_for_reading(channel, session, b"blob.bin")
            session.chunks.clear()
            channel.write(
                b"".join(_read(20 + i, handle, i * CHUNK, CHUNK) for i in range(8))
            )
            return await session.replies(8), session.chunks

    replies, chunks = asyncio.run(run())

    assert b"".join(_data(rest) for _type, _id, rest in replies) == content
    assert len(chunks) <= 9, [len(chunk) for chunk in chunks]


def test_a_client_that_asks_and_does_not_read_is_not_buffered_for(
    lab: ServerLab, blob: tuple[ClientKey, bytes]
) -> None:
    """96 MiB asked for while the client reads nothing: the worker holds a
    few MiB beyond the channel window, then every reply arrives in order."""

    key, content = blob

    async def run() -> tuple[int, list[tuple[int, int, bytes]]]:
        async with raw_sftp(lab, "alice", key) as (channel, session):
            # No window adjust goes back either.
            return await _ask_without_reading(
                lab, channel, session, channel.pause_reading, channel.resume_reading
            )

    _check_held_little_then_answered_all(*asyncio.run(run()), content)


def test_a_client_that_opens_its_window_and_stops_reading_is_not_buffered_for(
    lab: ServerLab, blob: tuple[ClientKey, bytes]
) -> None:
    """The same 96 MiB, with a channel window that admits all of it and
    the client's socket left unread: the worker stops at a full socket."""

    key, content = blob

    async def run() -> tuple[int, list[tuple[int, int, bytes]]]:
        async with raw_sftp(lab, "alice", key, window=1 << 30) as (channel, session):
            # asyncssh's transport: the client stops reading its socket.
            transport = channel.get_connection()._transport
            assert transport is not None
            return await _ask_without_reading(
                lab, channel, session, transport.pause_reading, transport.resume_reading
            )

    _check_held_little_then_answered_all(*asyncio.run(run()), content)


# 3,000 reads of 32 KiB: 96 MiB asked for at once.
_READS_NOT_READ = 3000


async def _ask_without_reading(
    lab: ServerLab,
    channel: asyncssh.SSHClientChannel[bytes],
    session: RawSftp,
    stop_reading: Callable[[], None],
    read_again: Callable[[], None],
) -> tuple[int, list[tuple[int, int, bytes]]]:
    """How much the worker grew while the client did not read, then the replies."""

    handle = await _open_for_reading(channel, session, b"blob.bin")
    worker = lab.wait_for_worker("alice")
    before = _resident_bytes(worker)
    stop_reading()
    channel.write(
        b"".join(_read(100 + i, handle, 0, CHUNK) for i in range(_READS_NOT_READ))
    )
    await asyncio.sleep(2)
    grown = _resident_bytes(worker) - before
    read_again()
    return grown, await session.replies(_READS_NOT_READ)


def _check_held_little_then_answered_all(
    grown: int, replies: list[tuple[int, int, bytes]], content: bytes
) -> None:
    assert grown < 32 * 1024 * 1024, grown
    assert [request_id for _type, request_id, _rest in replies] == [
        100 + i for i in range(_READS_NOT_READ)
    ]
    assert all(_data(rest) == content[:CHUNK] for _type, _id, rest in replies)


def _resident_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_request_split_across_writes_is_answered_once_whole(
    lab: ServerLab, blob: tuple[ClientKey, bytes]
) -> None:
    key, content = blob

    async def run() -> list[tuple[int, int, bytes]]:
        async with raw_sftp(lab, "alice", key) as (channel, session):
            handle = await _open_for_reading(channel, session, b"blob.bin")
            request = _read(30, handle, 5, 7) + _read(31, handle, 0, 3)
            for start in range(0, len(request), 5):
                channel.write(request[start : start + 5])
                await asyncio.sleep(0.01)
            return await session.replies(2)

    replies = asyncio.run(run())

    assert [(t, i, _data(rest)) for t, i, rest in replies] == [
        (FXP_DATA, 30, content[5:12]),
        (FXP_DATA, 31, content[:3]),
    ]


def test_a_request_longer_than_the_protocol_allows_ends_the_session(
    lab: ServerLab, blob: tuple[ClientKey, bytes]
) -> None:
    key, _content = blob

    async def run() -> bool:
        async with raw_sftp(lab, "alice", key) as (channel, session):
            channel.write(struct.pack(">IB", 0x7FFFFFFF, FXP_WRITE))
            async with asyncio.timeout(WAIT_SECONDS):
                await session.closed.wait()
            return session.closed.is_set()

    assert asyncio.run(run())


def test_a_long_listing_arrives_whole_with_asyncssh_long_names(
    lab: ServerLab,
) -> None:
    """300 entries take three readdir replies; each entry is as on disk."""

    key = lab.add_user("alice")
    lab.start()
    listed = lab.data_dir / "alice" / "many"
    listed.mkdir()
    for number in range(300):
        (listed / f"file-{number:03}").write_bytes(b"x" * number)

    async def run() -> Sequence[asyncssh.SFTPName]:
        async with _connect(lab, "alice", key) as connection:
            async with connection.start_sftp_client() as sftp:
                return await sftp.readdir("many")

    entries = {entry.filename: entry for entry in asyncio.run(run())}

    assert set(entries) == {".", ".."} | {f"file-{n:03}" for n in range(300)}
    entry = entries["file-042"]
    on_disk = os.lstat(listed / "file-042")
    assert entry.attrs.size == 42
    assert entry.attrs.permissions == on_disk.st_mode
    assert entry.attrs.mtime == int(on_disk.st_mtime)
    assert isinstance(entry.longname, str)
    assert entry.longname.startswith("-rw-r--r--    1 ")
    assert entry.longname.endswith(" file-042")
    # A str like the entry's above: the client decodes names as UTF-8.
    assert cast(str, entries["."].longname).startswith("drwx")


def test_openssh_lists_every_entry_of_a_large_directory(lab: ServerLab) -> None:
    key = lab.add_user("alice")
    lab.start()
    listed = lab.data_dir / "alice" / "many"
    listed.mkdir()
    for number in range(300):
        (listed / f"f{number}").write_bytes(b"")

    result = lab.sftp("alice", "ls -l many\n", key=key)

    lines = [line for line in result.stdout.splitlines() if line.startswith("-rw")]
    assert len(lines) == 300
    assert {line.split()[-1] for line in lines} == {f"f{n}" for n in range(300)}
