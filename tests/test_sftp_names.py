"""sftp_names: v3 listings encoded from stat results, as asyncssh encodes them."""

from __future__ import annotations

import os
import time
from pathlib import Path

import asyncssh
import pytest
from asyncssh.packet import SSHPacket

from sftpjail import sftp_names
from sftpjail.sftp_server import attributes_of

MY_UID = os.getuid()


def user_of(uid: int | None) -> str:
    return "alice" if uid == MY_UID else str(uid or "")


def group_of(gid: int | None) -> str:
    return "alice" if gid == os.getgid() else str(gid or "")


class NamingServer(asyncssh.SFTPServer):
    """asyncssh's own long names, with the owner and group shown as above."""

    def __init__(self) -> None:
        pass

    def format_user(self, uid: int | None) -> str:
        return user_of(uid)

    def format_group(self, gid: int | None) -> str:
        return group_of(gid)


def asyncssh_entry(name: bytes, info: os.stat_result | None) -> bytes:
    attrs = asyncssh.SFTPAttrs() if info is None else attributes_of(info)
    entry = asyncssh.SFTPName(name, attrs=attrs)
    NamingServer().format_longname(entry)
    return entry.encode(3)


def entries_of(directory: Path) -> list[sftp_names.Entry]:
    found: list[sftp_names.Entry] = [(b".", os.lstat(directory)), (b"..", None)]
    for path in sorted(directory.iterdir()):
        found.append((os.fsencode(path.name), os.lstat(path)))
    return found


@pytest.fixture
def varied_directory(tmp_path: Path) -> Path:
    """Entries of every kind and age a listing meets."""

    now = time.time()
    (tmp_path / "recent.txt").write_bytes(b"x" * 12345)
    old = tmp_path / "old.bin"
    old.write_bytes(b"")
    os.utime(old, (now - 3 * 365 * 86400, now - 3 * 365 * 86400))
    future = tmp_path / "future"
    future.write_bytes(b"f")
    os.utime(future, (now + 86400, now + 86400))
    (tmp_path / "sub dir").mkdir(mode=0o750)
    (tmp_path / "link").symlink_to("recent.txt")
    os.mkfifo(tmp_path / "pipe")
    os.link(tmp_path / "recent.txt", tmp_path / "hard")
    setuid = tmp_path / "setuid"
    setuid.write_bytes(b"")
    setuid.chmod(0o4755)
    (tmp_path / "caf\xe9-\u65e5\u672c").write_text("u")
    big = tmp_path / "sparse"
    with big.open("wb") as handle:
        handle.truncate(5 * 2**40)
    if os.getuid() == 0:
        other = tmp_path / "other-owner"
        other.write_bytes(b"o")
        os.chown(other, 4242, 4343)
    return tmp_path


def test_each_entry_is_encoded_as_asyncssh_encodes_it(varied_directory: Path) -> None:
    long_names = sftp_names.LongNames(user_of, group_of)

    for name, info in entries_of(varied_directory):
        reply = sftp_names.encode_names(7, [(name, info)], long_names)

        assert reply[13:] == asyncssh_entry(name, info), name


def test_a_reply_frames_its_entries_as_ssh_fxp_name(varied_directory: Path) -> None:
    entries = entries_of(varied_directory)

    reply = sftp_names.encode_names(
        99, entries, sftp_names.LongNames(user_of, group_of)
    )

    assert int.from_bytes(reply[:4], "big") == len(reply) - 4
    packet = SSHPacket(reply[4:])
    assert packet.get_byte() == asyncssh.constants.FXP_NAME
    assert packet.get_uint32() == 99
    assert packet.get_uint32() == len(entries)
    for name, _info in entries:
        decoded = asyncssh.SFTPName.decode(packet, 3)
        assert decoded.filename == name
    packet.check_end()


def test_owner_and_group_are_named_once_per_number(varied_directory: Path) -> None:
    asked: list[int | None] = []

    def counting_user_of(uid: int | None) -> str:
        asked.append(uid)
        return user_of(uid)

    long_names = sftp_names.LongNames(counting_user_of, group_of)
    entries = entries_of(varied_directory)
    sftp_names.encode_names(1, entries, long_names)

    distinct = {None if info is None else info.st_uid for _name, info in entries}
    assert sorted(asked, key=str) == sorted(distinct, key=str)


def test_a_time_past_32_bits_wraps_instead_of_failing(tmp_path: Path) -> None:
    late = tmp_path / "late"
    late.write_bytes(b"")
    os.utime(late, ns=((2**32 + 7) * 10**9, (2**32 + 9) * 10**9 + 5))

    attributes = sftp_names.encode_attributes(os.lstat(late))

    assert attributes[-8:-4] == (7).to_bytes(4, "big")  # atime modulo 2**32
    assert attributes[-4:] == (9).to_bytes(4, "big")  # mtime modulo 2**32
