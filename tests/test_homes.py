"""Tests for sftpjail.homes on the real file system."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sftpjail.errors import HomeError
from sftpjail.homes import ensure_home, relative_home_problem


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_creates_data_dir_0711_and_home_0700(tmp_path: Path) -> None:
    data_dir = tmp_path / "state" / "data"

    home = ensure_home(data_dir, "alice", owner=None)

    assert home == data_dir / "alice"
    assert home.is_dir()
    assert _mode(data_dir) == 0o711
    assert _mode(home) == 0o700


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        ensure_home(tmp_path / "data", "alice", owner=None)
    finally:
        os.umask(previous)

    assert _mode(tmp_path / "data") == 0o711
    assert _mode(tmp_path / "data" / "alice") == 0o700


def test_nested_home_passes_through_0711_directories(tmp_path: Path) -> None:
    home = ensure_home(tmp_path, "team/alice", owner=None)

    assert _mode(tmp_path / "team") == 0o711
    assert _mode(home) == 0o700


def test_existing_home_is_kept_as_it_is(tmp_path: Path) -> None:
    (tmp_path / "alice").mkdir(mode=0o750)
    (tmp_path / "alice").chmod(0o750)
    (tmp_path / "alice" / "report.txt").write_text("kept")

    home = ensure_home(tmp_path, "alice", owner=None)

    assert (home / "report.txt").read_text() == "kept"
    assert _mode(home) == 0o750


@pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")
def test_home_is_given_to_the_owner(tmp_path: Path) -> None:
    home = ensure_home(tmp_path, "alice", owner=(65534, 65534))

    assert (home.stat().st_uid, home.stat().st_gid) == (65534, 65534)
    assert tmp_path.stat().st_uid == 0


def _data_dir_with_link(tmp_path: Path, link_name: str) -> tuple[Path, Path]:
    """A data_dir whose entry `link_name` links to a directory outside it."""

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / link_name).symlink_to(elsewhere)
    return data_dir, elsewhere


def test_symlinked_home_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    data_dir, elsewhere = _data_dir_with_link(tmp_path, "alice")
    before = os.stat(elsewhere)

    with pytest.raises(HomeError, match=r"data/alice is a symbolic link"):
        ensure_home(data_dir, "alice", owner=(65534, 65534))

    after = os.stat(elsewhere)
    assert (after.st_mode, after.st_uid) == (before.st_mode, before.st_uid)


def test_symlinked_middle_component_is_refused(tmp_path: Path) -> None:
    data_dir, elsewhere = _data_dir_with_link(tmp_path, "team")

    with pytest.raises(HomeError, match=r"data/team is a symbolic link"):
        ensure_home(data_dir, "team/alice", owner=None)

    assert list(elsewhere.iterdir()) == []


def test_dangling_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "alice").symlink_to(tmp_path / "nowhere")

    with pytest.raises(HomeError, match="symbolic link"):
        ensure_home(tmp_path, "alice", owner=None)

    assert not (tmp_path / "nowhere").exists()


def test_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "alice").write_text("not a directory")

    with pytest.raises(HomeError, match=r"alice is not a directory"):
        ensure_home(tmp_path, "alice", owner=None)


@pytest.mark.parametrize(
    ("home", "problem"),
    [
        ("", "is empty"),
        ("/etc", "must be relative"),
        ("../alice", 'must not contain ".."'),
        ("alice/../bob", 'must not contain ".."'),
        (".", "not data_dir itself"),
        ("alice/", 'write it as "alice"'),
        ("a//b", 'write it as "a/b"'),
        ("./alice", 'write it as "alice"'),
        ("al\0ice", "NUL"),
        ("al\nice", "control character"),
        ("a" * 256, "longer than 255 bytes"),
    ],
)
def test_bad_relative_homes(tmp_path: Path, home: str, problem: str) -> None:
    described = relative_home_problem(home)

    assert described is not None and problem in described
    with pytest.raises(HomeError, match="home"):
        ensure_home(tmp_path / "data", home, owner=None)
    assert not (tmp_path / "data").exists()
