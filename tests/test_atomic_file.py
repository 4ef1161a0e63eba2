"""Tests for sftpjail.atomic_file on the real file system."""

from __future__ import annotations

import os
import stat
import threading
import time
from pathlib import Path

import pytest

from sftpjail.atomic_file import (
    LockTimeoutError,
    exclusive_lock,
    lock_path_of,
    replace_file,
)


def test_new_file_gets_the_requested_mode(tmp_path: Path) -> None:
    target = tmp_path / "file"

    replace_file(target, b"one", new_file_mode=0o600)

    assert target.read_bytes() == b"one"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_replaced_file_keeps_its_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")
    target.chmod(0o640)

    replace_file(target, b"new", new_file_mode=0o600)

    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert os.listdir(tmp_path) == ["file"]


def test_replacing_gives_a_new_inode_so_readers_see_old_or_new(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_bytes(b"old")

    with target.open("rb") as reader:
        replace_file(target, b"new", new_file_mode=0o600)
        assert reader.read() == b"old"

    assert target.read_bytes() == b"new"


def test_failure_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        replace_file(tmp_path / "missing" / "file", b"x", new_file_mode=0o600)

    assert os.listdir(tmp_path) == []


def test_the_lock_is_a_sidecar_file(tmp_path: Path) -> None:
    target = tmp_path / "users.toml"

    with exclusive_lock(target, timeout=1):
        assert lock_path_of(target).exists()

    assert lock_path_of(target) == tmp_path / "users.toml.lock"
    assert not target.exists()


def test_a_held_lock_makes_the_second_writer_time_out(tmp_path: Path) -> None:
    target = tmp_path / "users.toml"

    with exclusive_lock(target, timeout=1):
        with pytest.raises(LockTimeoutError):
            with exclusive_lock(target, timeout=0.2):
                pass


def test_a_released_lock_is_taken_by_the_waiting_writer(tmp_path: Path) -> None:
    target = tmp_path / "users.toml"
    holding = threading.Event()

    def hold_briefly() -> None:
        with exclusive_lock(target, timeout=1):
            holding.set()
            time.sleep(0.3)

    holder = threading.Thread(target=hold_briefly)
    holder.start()
    assert holding.wait(timeout=5)
    started = time.monotonic()
    with exclusive_lock(target, timeout=10):
        waited = time.monotonic() - started
    holder.join(timeout=5)

    assert 0.1 < waited < 10
