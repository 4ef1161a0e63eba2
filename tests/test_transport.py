"""The asyncssh transport tunings: what they need, and what the wire shows.

The tunings change asyncssh only inside the server's zygote and workers;
this test process keeps asyncssh as it is, so the tests here either call
the pieces directly or look at a real server from a real client.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import random
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncssh
import asyncssh.encryption
import pytest
from asyncssh.connection import SSHConnection
from asyncssh.encryption import Encryption
from cryptography.hazmat.primitives.ciphers import CipherContext

from serverlab import ClientKey, ServerLab
from sftpjail import transport
from sftpjail.transport import EARLY_WRITE_BYTES, Outbox


def test_every_tuning_fits_the_pinned_asyncssh() -> None:
    for tuning in transport.TUNINGS:
        assert tuning.unavailable(asyncssh.__version__) is None, tuning.name


def test_another_minor_version_gets_no_tuning_and_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    send_packet = SSHConnection.send_packet

    with caplog.at_level(logging.WARNING, logger="sftpjail.transport"):
        installed = transport.install_tunings(version="2.25.0")

    assert installed == []
    assert SSHConnection.send_packet is send_packet
    assert len(caplog.records) == len(transport.TUNINGS)
    assert "asyncssh 2.25.0 is not 2.24.x" in caplog.records[0].getMessage()


def test_a_missing_internal_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(SSHConnection, "send_packet")

    reasons = [tuning.unavailable(asyncssh.__version__) for tuning in transport.TUNINGS]

    assert "asyncssh has no asyncssh.connection:SSHConnection.send_packet" in reasons


def test_an_internal_that_changed_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def send_elsewhere(connection: SSHConnection, data: bytes) -> None:
        del connection, data

    monkeypatch.setattr(SSHConnection, "_send", send_elsewhere)

    reasons = [tuning.unavailable(asyncssh.__version__) for tuning in transport.TUNINGS]

    assert (
        "asyncssh.connection:SSHConnection._send no longer uses _transport, write"
        in reasons
    )


def _sftp_debug_log(lab: ServerLab, user: str, commands: str) -> str:
    """Run `sftp` with the client's packet-level debug log; return that log."""

    key = lab.client_key(user)
    options = [
        "LogLevel=DEBUG3" if option == "LogLevel=ERROR" else option
        for option in lab.ssh_options(key)
    ]
    completed = subprocess.run(
        ["sftp", *options, "-P", str(lab.port), "-b", "-", f"{user}@127.0.0.1"],
        input=commands.encode(),
        capture_output=True,
        timeout=60,
    )
    log = completed.stderr.decode(errors="replace")
    assert completed.returncode == 0, log
    return log


def test_the_server_sends_no_empty_ignore_packets(
    lab: ServerLab, tmp_path: Path
) -> None:
    lab.add_user("alice")
    lab.start()
    sample = tmp_path / "sample.bin"
    sample.write_bytes(bytes(300_000))

    log = _sftp_debug_log(lab, "alice", f"put {sample} sample.bin\nls -l\n")

    # Packets past the key exchange arrived (91: channel open confirmed),
    # and not one ignore packet with them.
    assert "receive packet: type 91" in log
    assert "Received SSH2_MSG_IGNORE" not in log


# -- Outbox, on a real event loop and a real socket ---------------------------


class Recorder(asyncio.Protocol):
    """The protocol side of a transport: remembers the flow-control calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_writing(self) -> None:
        self.calls.append("pause")

    def resume_writing(self) -> None:
        self.calls.append("resume")


async def _transport_and_peer() -> tuple[asyncio.Transport, Recorder, socket.socket]:
    ours, peer = socket.socketpair()
    peer.setblocking(False)
    loop = asyncio.get_running_loop()
    writer, recorder = await loop.connect_accepted_socket(Recorder, ours)
    return writer, recorder, peer


@asynccontextmanager
async def _outbox_to_peer() -> AsyncIterator[tuple[Outbox, socket.socket]]:
    """An Outbox on a real transport, and the socket at the other end."""

    writer, _recorder, peer = await _transport_and_peer()
    try:
        yield Outbox(writer, asyncio.get_running_loop()), peer
    finally:
        writer.close()
        peer.close()


def _received(peer: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        try:
            chunk = peer.recv(1 << 20)
        except BlockingIOError:
            return b"".join(chunks)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_an_outbox_writes_a_turns_packets_in_order_at_the_end_of_the_turn() -> None:
    async def run() -> tuple[bytes, bytes]:
        async with _outbox_to_peer() as (outbox, peer):
            for number in range(100):
                outbox.add(b"packet %d;" % number)
            during_the_turn = _received(peer)
            await asyncio.sleep(0)
            return during_the_turn, _received(peer)

    during_the_turn, after_the_turn = asyncio.run(run())

    assert during_the_turn == b""
    assert after_the_turn == b"".join(b"packet %d;" % n for n in range(100))


def test_a_large_turn_is_written_in_pieces_as_it_is_queued() -> None:
    """A batch of read replies reaches the client while the rest is encrypted."""

    packet = b"p" * 32768
    count = EARLY_WRITE_BYTES // len(packet)

    async def run() -> tuple[bytes, bytes]:
        async with _outbox_to_peer() as (outbox, peer):
            for _ in range(count):
                outbox.add(packet)
            during_the_turn = _received(peer)
            outbox.add(b"the rest")
            received = bytearray(during_the_turn)
            for _round in range(200):
                await asyncio.sleep(0.005)
                received += _received(peer)
                if received.endswith(b"the rest"):
                    break
            return during_the_turn, bytes(received)

    during_the_turn, received = asyncio.run(run())

    # What the socket took at once is already there; the transport buffers
    # the rest and sends it when the socket has room.
    assert during_the_turn and during_the_turn == b"p" * len(during_the_turn)
    assert received == packet * count + b"the rest"


def test_send_queued_writes_a_connections_outbox_before_the_turn_ends() -> None:
    """What the SFTP loop calls once it has queued the replies to a batch."""

    class Connection:
        """Stands for an asyncssh connection: only the Outbox is read."""

    async def run() -> tuple[bytes, bytes]:
        async with _outbox_to_peer() as (outbox, peer):
            connection = Connection()
            setattr(connection, transport._OUTBOX, outbox)
            outbox.add(b"reply 1;")
            outbox.add(b"reply 2;")
            transport.send_queued(connection)
            for _round in range(100):
                received = _received(peer)
                if received:
                    break
                time.sleep(0.001)
            await asyncio.sleep(0)
            return received, _received(peer)

    received, later = asyncio.run(run())

    assert received == b"reply 1;reply 2;"
    assert later == b""


def test_send_queued_leaves_a_connection_without_an_outbox_alone() -> None:
    class Connection:
        """A connection that has sent nothing yet: no Outbox."""

    connection = Connection()

    transport.send_queued(connection)

    assert not hasattr(connection, transport._OUTBOX)


def test_packets_queued_before_an_abort_are_written_before_it() -> None:
    """asyncssh disconnects by sending MSG_DISCONNECT, then scheduling abort."""

    async def run() -> bytes:
        writer, _recorder, peer = await _transport_and_peer()
        loop = asyncio.get_running_loop()
        outbox = Outbox(writer, loop)
        outbox.add(b"disconnect: too many authentication failures")
        loop.call_soon(writer.abort)
        await asyncio.sleep(0.05)
        outbox.add(b"too late")
        await asyncio.sleep(0)
        received = _received(peer)
        peer.close()
        return received

    assert asyncio.run(run()) == b"disconnect: too many authentication failures"


def test_flow_control_still_reaches_the_protocol() -> None:
    async def run() -> tuple[list[str], bytes, bytes]:
        writer, recorder, peer = await _transport_and_peer()
        outbox = Outbox(writer, asyncio.get_running_loop())
        sent = os.urandom(4 << 20)
        for offset in range(0, len(sent), 32768):
            outbox.add(sent[offset : offset + 32768])
        await asyncio.sleep(0)
        received = bytearray()
        for _round in range(1000):
            received += _received(peer)
            if len(received) == len(sent):
                break
            await asyncio.sleep(0.005)
        writer.close()
        peer.close()
        return recorder.calls, sent, bytes(received)

    calls, sent, received = asyncio.run(run())

    assert calls[0] == "pause" and "resume" in calls
    assert received == sent


def test_a_flush_after_the_peer_left_raises_nothing() -> None:
    async def run() -> None:
        writer, _recorder, peer = await _transport_and_peer()
        outbox = Outbox(writer, asyncio.get_running_loop())
        peer.close()
        for _ in range(10):
            outbox.add(b"x" * 65536)
            await asyncio.sleep(0)
        writer.abort()

    asyncio.run(run())


# -- real transfers through every kind of cipher ------------------------------


@pytest.mark.parametrize(
    "cipher",
    [
        "chacha20-poly1305@openssh.com",
        "aes128-gcm@openssh.com",
        "aes256-gcm@openssh.com",
        "aes128-ctr",
    ],
)
def test_large_transfers_are_byte_identical(
    lab: ServerLab, tmp_path: Path, cipher: str
) -> None:
    key = lab.add_user("alice")
    lab.start()
    original = tmp_path / "original.bin"
    with original.open("wb") as stream:
        for _ in range(100):
            stream.write(os.urandom(1 << 20))
    back = tmp_path / "back.bin"

    completed = _put_and_get(lab, key, original, back, "-c", cipher)

    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    assert _digest(lab.data_dir / "alice" / "big.bin") == _digest(original)
    assert _digest(back) == _digest(original)


def _put_and_get(
    lab: ServerLab, key: ClientKey, original: Path, back: Path, *options: str
) -> subprocess.CompletedProcess[bytes]:
    """Upload `original` as alice's big.bin, then download it to `back`."""

    return subprocess.run(
        [
            "sftp",
            *options,
            *lab.ssh_options(key),
            "-P",
            str(lab.port),
            "-b",
            "-",
            "alice@127.0.0.1",
        ],
        input=f"put {original} big.bin\nget big.bin {back}\n".encode(),
        capture_output=True,
        timeout=120,
    )


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the lean ChaCha20-Poly1305 against asyncssh's own, byte for byte --------

PACKETS = 300


def _random_packets(block_size: int) -> list[tuple[int, bytes]]:
    """(sequence number, packet) pairs as a connection would encrypt them.

    A packet is a whole number of cipher blocks, at least two; sizes run
    from the smallest to beyond a full 32 KiB channel packet.
    """

    generator = random.Random(20261203)
    sequences = [0, 1, 0xFFFFFFFF] + [
        generator.getrandbits(32) for _ in range(PACKETS - 3)
    ]
    sizes = [2 * block_size, 32 * 1024 + block_size] + [
        generator.randrange(2, 36 * 1024 // block_size) * block_size
        for _ in range(PACKETS - 2)
    ]
    return [(seq, os.urandom(size)) for seq, size in zip(sequences, sizes)]


def _seal(encryption: Encryption, seq: int, packet: bytes) -> tuple[bytes, bytes]:
    return encryption.encrypt_packet(seq, len(packet).to_bytes(4, "big"), packet)


def _open(
    encryption: Encryption, seq: int, sealed: bytes, mac: bytes, block_size: int
) -> tuple[bytes, bytes | None]:
    """As asyncssh's connection reads a packet: the length first, then the rest."""

    first, length = encryption.decrypt_header(seq, sealed[:block_size], 4)
    payload = encryption.decrypt_packet(seq, first, sealed[block_size:], 4, mac)
    return length, payload


def _flip_a_bit(data: bytes, index: int) -> bytes:
    changed = bytearray(data)
    changed[index] ^= 0x01
    return bytes(changed)


# asyncssh reads a ChaCha20-Poly1305 packet's length from its first 8 bytes.
CHACHA_FIRST_BLOCK = 8


class Keys:
    """One direction's key, and ChaCha20-Poly1305 encryptions made from it."""

    def __init__(self) -> None:
        self.key = os.urandom(64)
        self.block = CHACHA_FIRST_BLOCK

    def asyncssh(self) -> Encryption:
        return asyncssh.encryption.ChachaEncryption.new(
            "chacha20-poly1305", self.key, b""
        )

    def lean(self) -> Encryption:
        return transport.ChachaPoly1305Encryption.new(
            "chacha20-poly1305", self.key, b""
        )


def test_lean_chacha_is_byte_identical_to_asyncssh() -> None:
    keys = Keys()
    theirs_seal, theirs_open = keys.asyncssh(), keys.asyncssh()
    ours_seal, ours_open = keys.lean(), keys.lean()

    for seq, packet in _random_packets(keys.block):
        header = len(packet).to_bytes(4, "big")
        expected = _seal(theirs_seal, seq, packet)
        sealed = _seal(ours_seal, seq, packet)
        assert sealed == expected, (seq, len(packet))

        # asyncssh opens ours, and ours opens asyncssh's.
        assert _open(theirs_open, seq, *sealed, keys.block) == (header, packet)
        assert _open(ours_open, seq, *expected, keys.block) == (header, packet)


def test_lean_chacha_rejects_a_changed_tag_length_or_payload() -> None:
    """One opener throughout: a refused packet leaves its streams usable."""

    keys = Keys()
    opener = keys.lean()
    for seq, packet in _random_packets(keys.block)[:50]:
        sealed, mac = _seal(keys.asyncssh(), seq, packet)
        payload_index = keys.block + seq % (len(sealed) - keys.block)
        header = len(packet).to_bytes(4, "big")

        # Unchanged, it opens: the failures below are the changes' doing.
        assert _open(opener, seq, sealed, mac, keys.block) == (header, packet)
        for changed_sealed, changed_mac in [
            (sealed, _flip_a_bit(mac, seq % len(mac))),
            (_flip_a_bit(sealed, payload_index), mac),
            (_flip_a_bit(sealed, seq % 4), mac),
        ]:
            _length, payload = _open(
                opener, seq, changed_sealed, changed_mac, keys.block
            )
            assert payload is None
            assert _open(opener, seq, sealed, mac, keys.block) == (header, packet)


# -- the lean AES-GCM against asyncssh's own, byte for byte -----------------

GCM_BLOCK = 16
TAG_BYTES = transport.TAG_BYTES
GCM_KEY_BYTES = {"aes128-gcm": 16, "aes256-gcm": 32}


def _gcm_key(cipher_name: str) -> tuple[bytes, bytes]:
    """A key and IV; the nonce's counter wraps to zero at the second packet."""

    key = os.urandom(GCM_KEY_BYTES[cipher_name])
    return key, os.urandom(4) + (2**64 - 1).to_bytes(8, "big")


def _asyncssh_gcm(cipher_name: str, key: bytes, iv: bytes) -> Encryption:
    return asyncssh.encryption.GCMEncryption.new(cipher_name, key, iv)


def _lean_gcm(cipher_name: str, key: bytes, iv: bytes) -> Encryption:
    return transport.AesGcmEncryption.new(cipher_name, key, iv)


@pytest.mark.parametrize("cipher_name", sorted(GCM_KEY_BYTES))
def test_lean_gcm_is_byte_identical_to_asyncssh(cipher_name: str) -> None:
    key, iv = _gcm_key(cipher_name)
    theirs_seal, theirs_open = (_asyncssh_gcm(cipher_name, key, iv) for _ in "ab")
    ours_seal, ours_open = (_lean_gcm(cipher_name, key, iv) for _ in "ab")

    for seq, packet in _random_packets(GCM_BLOCK):
        header = len(packet).to_bytes(4, "big")
        expected = b"".join(_seal(theirs_seal, seq, packet))
        sealed = b"".join(_seal(ours_seal, seq, packet))
        assert sealed == expected, (seq, len(packet))

        # Each opens what the other sealed, split where the connection splits.
        body, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
        assert _open(theirs_open, seq, body, tag, GCM_BLOCK) == (header, packet)
        assert _open(ours_open, seq, body, tag, GCM_BLOCK) == (header, packet)


def test_lean_gcm_rejects_a_changed_tag_length_or_payload() -> None:
    key, iv = _gcm_key("aes128-gcm")
    for seq, packet in _random_packets(GCM_BLOCK)[:50]:
        sealed = b"".join(_seal(_asyncssh_gcm("aes128-gcm", key, iv), seq, packet))
        body, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
        header = len(packet).to_bytes(4, "big")
        payload_index = 4 + seq % (len(body) - 4)

        # Unchanged, it opens: the failures below are the changes' doing.
        opened = _open(_lean_gcm("aes128-gcm", key, iv), seq, body, tag, GCM_BLOCK)
        assert opened == (header, packet)
        for changed_body, changed_tag in [
            (body, _flip_a_bit(tag, seq % len(tag))),
            (_flip_a_bit(body, payload_index), tag),
            (_flip_a_bit(body, seq % 4), tag),
        ]:
            opener = _lean_gcm("aes128-gcm", key, iv)
            _length, payload = _open(opener, seq, changed_body, changed_tag, GCM_BLOCK)
            assert payload is None


def test_a_fresh_interpreter_installs_every_tuning() -> None:
    """What the zygote does at start, in a process of its own."""

    script = (
        "import asyncssh.encryption, json\n"
        "from asyncssh.channel import SSHChannel\n"
        "from asyncssh.connection import SSHConnection\n"
        "from sftpjail import sftp_pipeline, transport\n"
        "installed = transport.install_tunings()\n"
        "again = transport.install_tunings()\n"
        "registry = asyncssh.encryption._enc_params\n"
        "print(json.dumps({\n"
        "    'installed': installed,\n"
        "    'again': again,\n"
        "    'send': SSHConnection._send.__name__,\n"
        "    'send_packet': SSHConnection.send_packet.__name__,\n"
        "    'inside_it': SSHConnection.send_packet.__wrapped__.__name__,\n"
        "    'channel_send_packet': SSHChannel.send_packet.__name__,\n"
        "    'hands_over': sftp_pipeline._hand_over.__name__,\n"
        "    'data_received': SSHConnection.data_received.__name__,\n"
        "    'chacha': registry[b'chacha20-poly1305@openssh.com'][0].__name__,\n"
        "    'gcm': registry[b'aes128-gcm@openssh.com'][0].__name__,\n"
        "    'pipeline': sftp_pipeline.enabled(),\n"
        "    'sends_batches_at_once': sftp_pipeline._send_queued.__name__,\n"
        "}))\n"
    )

    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )

    assert completed.returncode == 0, completed.stderr
    state = json.loads(completed.stdout)
    assert state["installed"] == [tuning.name for tuning in transport.TUNINGS]
    assert state["again"] == state["installed"]
    assert state["send"] == "send_through_outbox"
    assert state["send_packet"] == "send_packet_framed_in_one_join"
    assert state["inside_it"] == "send_packet_without_empty_ignore"
    assert state["channel_send_packet"] == "send_packet_unjoined"
    assert state["hands_over"] == "hand_over"
    assert state["data_received"] == "data_received_in_pieces"
    assert state["chacha"] == "ChachaPoly1305Encryption"
    assert state["gcm"] == "AesGcmEncryption"
    assert state["pipeline"] is True
    assert state["sends_batches_at_once"] == "send_queued"


def test_lean_chacha_is_left_out_when_asyncssh_lacks_chacha(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    registry = asyncssh.encryption._enc_params
    monkeypatch.delitem(registry, transport.CHACHA_NAME)
    before = dict(registry)
    lean_chacha = next(t for t in transport.TUNINGS if "ChaCha20" in t.name)

    with pytest.raises(transport.TuningUnavailableError, match="offers no chacha"):
        lean_chacha.install()

    assert registry == before


def test_lean_chacha_is_left_out_on_a_cryptography_without_reset_nonce(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delattr(CipherContext, "reset_nonce")
    registry = asyncssh.encryption._enc_params
    before = dict(registry)
    lean_chacha = next(t for t in transport.TUNINGS if "ChaCha20" in t.name)

    with pytest.raises(transport.TuningUnavailableError, match="older than 43"):
        lean_chacha.install()

    assert registry == before


@pytest.mark.parametrize(
    "cipher", ["chacha20-poly1305@openssh.com", "aes128-gcm@openssh.com"]
)
def test_transfers_survive_a_key_exchange_every_megabyte(
    lab: ServerLab, tmp_path: Path, cipher: str
) -> None:
    """Packets sent while a new key exchange runs wait for its keys."""

    key = lab.add_user("alice")
    lab.start()
    original = tmp_path / "original.bin"
    original.write_bytes(os.urandom(12 << 20))
    back = tmp_path / "back.bin"

    completed = _put_and_get(
        lab, key, original, back, "-v", "-c", cipher, "-o", "RekeyLimit=1M"
    )

    log = completed.stderr.decode(errors="replace")
    assert completed.returncode == 0, log
    # The first key exchange, then one per megabyte each way.
    assert log.count("SSH2_MSG_KEXINIT sent") > 10, log
    assert _digest(lab.data_dir / "alice" / "big.bin") == _digest(original)
    assert _digest(back) == _digest(original)
