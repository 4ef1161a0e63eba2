"""The SFTP server's replies, checked against asyncssh and real clients.

Stat replies are built without looking up user and group names (the
sandbox would make those lookups fail anyway), so each test compares them
with what asyncssh itself sends from inside the sandbox.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import asyncssh
import pytest

from serverlab import ServerLab
from sftpjail.sftp_server import DirectoryListing, attributes_of


def _inodes_of_every_kind(directory: Path) -> list[Path]:
    regular = directory / "regular"
    regular.write_bytes(b"x" * 1234)
    regular.chmod(0o640)
    (directory / "folder").mkdir()
    (directory / "link").symlink_to("regular")
    os.mkfifo(directory / "fifo")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(directory / "socket"))
    return sorted(directory.iterdir())


@pytest.mark.parametrize("sftp_version", [3, 4, 5, 6])
def test_attributes_encode_as_asyncssh_encodes_them_in_the_sandbox(
    tmp_path: Path, sftp_version: int
) -> None:
    for path in _inodes_of_every_kind(tmp_path):
        info = os.lstat(path)
        expected = asyncssh.SFTPAttrs.from_local(info)
        # In the sandbox asyncssh's name lookups fail: it sends the numbers.
        expected.owner = expected.group = None

        ours = attributes_of(info)

        assert ours.encode(sftp_version) == expected.encode(sftp_version), path.name
        assert ours.nlink == info.st_nlink


def test_stat_replies_carry_numbers_and_listings_the_owners_name(
    lab: ServerLab, tmp_path: Path
) -> None:
    key = lab.add_user("alice")
    lab.start()
    sample = tmp_path / "sample.bin"
    sample.write_bytes(os.urandom(4321))

    listed = lab.sftp(
        "alice",
        f"put {sample} sample.bin\nchmod 640 sample.bin\nls -l\nls -ln\n",
        key=key,
    )
    host = os.stat(lab.data_dir / "alice" / "sample.bin")

    async def remote_stat() -> asyncssh.SFTPAttrs:
        async with asyncssh.connect(
            "127.0.0.1",
            lab.port,
            username="alice",
            known_hosts=None,
            client_keys=[str(key.private)],
            agent_path=None,
            preferred_auth="publickey",
        ) as connection:
            async with connection.start_sftp_client() as client:
                return await client.stat("sample.bin")

    attrs = asyncio.run(remote_stat())

    assert listed.returncode == 0, listed.stderr
    long_line, numeric_line = [
        line.split() for line in listed.stdout.splitlines() if "sample.bin" in line
    ][-2:]
    assert long_line[:5] == ["-rw-r-----", "1", "alice", "alice", "4321"]
    # SFTP v3 carries no link count: the client prints "?" for it.
    assert numeric_line[:5] == [
        "-rw-r-----",
        "?",
        *map(str, (host.st_uid, host.st_gid)),
        "4321",
    ]
    assert (attrs.uid, attrs.gid, attrs.size) == (host.st_uid, host.st_gid, 4321)
    assert attrs.permissions == host.st_mode
    assert (attrs.atime, attrs.mtime) == (int(host.st_atime), int(host.st_mtime))


class ListingOwner:
    """The two things a DirectoryListing asks of its server."""

    open_handles = 1

    def stat_result_quietly(self, path: bytes) -> os.stat_result | None:
        return None


def test_an_entry_removed_while_it_is_listed_is_left_out(tmp_path: Path) -> None:
    for number in range(5):
        (tmp_path / f"file-{number}").write_bytes(b"")
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    listing = DirectoryListing(ListingOwner(), fd, b"/")  # type: ignore[arg-type]

    first = listing.take(3)  # ".", ".." and one file: the kernel gave all names
    for path in tmp_path.iterdir():
        if os.fsencode(path.name) != first[2][0]:
            path.unlink()
    rest = listing.take(100)

    assert [name for name, _info in first[:2]] == [b".", b".."]
    assert first[1][1] is None  # ".." could not be read: no attributes
    assert rest == []
    assert listing.take(100) == []
