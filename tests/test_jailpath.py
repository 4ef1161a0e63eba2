"""Path resolution inside a home, with openat2 and with the fallback walk."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from sftpjail.jailpath import Jail, client_form, kernel_has_openat2, normalize

MODES = [pytest.param(True, id="openat2"), pytest.param(False, id="walk")]


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A home with a file, and a secret next to it (outside the home)."""

    home = tmp_path / "home"
    (home / "dir" / "sub").mkdir(parents=True)
    (home / "file.txt").write_text("inside")
    (home / "dir" / "sub" / "deep.txt").write_text("deep")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    return home, secret


def _read(jail: Jail, path: bytes) -> bytes:
    fd = jail.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 100)
    finally:
        os.close(fd)


def _client_path(jail: Jail, path: bytes) -> bytes:
    """Where `path` leads, in the client's view."""

    fd = jail.open_path(path)
    try:
        return jail.client_path_of(fd)
    finally:
        os.close(fd)


def test_this_kernel_has_openat2() -> None:
    assert kernel_has_openat2()


def test_normalize_keeps_paths_below_the_top() -> None:
    assert normalize(b"/") == b"."
    assert normalize(b"") == b"."
    assert normalize(b"../../a") == b"a"
    assert normalize(b"//a//b/../c") == b"a/c"
    assert normalize(b"a\\..\\b") == b"a\\..\\b"
    assert client_form(b".") == b"/"
    assert client_form(b"a/c") == b"/a/c"
    with pytest.raises(OSError) as raised:
        normalize(b"a\0b")
    assert raised.value.errno == errno.EINVAL


@pytest.mark.parametrize("use_openat2", MODES)
def test_dotdot_stays_at_the_top(tree: tuple[Path, Path], use_openat2: bool) -> None:
    home, _secret = tree
    jail = Jail(home, use_openat2=use_openat2)

    assert _read(jail, b"../../../file.txt") == b"inside"
    assert _read(jail, b"/dir/../../file.txt") == b"inside"
    with pytest.raises(FileNotFoundError):
        _read(jail, b"../secret.txt")


@pytest.mark.parametrize("use_openat2", MODES)
def test_absolute_symlinks_resolve_inside(
    tree: tuple[Path, Path], use_openat2: bool
) -> None:
    home, secret = tree
    (home / "abs").symlink_to("/file.txt")
    (home / "to-secret").symlink_to(secret)
    (home / "to-root").symlink_to("/")
    jail = Jail(home, use_openat2=use_openat2)

    assert _read(jail, b"abs") == b"inside"
    with pytest.raises(FileNotFoundError):
        _read(jail, b"to-secret")
    assert _read(jail, b"to-root/file.txt") == b"inside"


@pytest.mark.parametrize("use_openat2", MODES)
def test_relative_symlinks_cannot_climb_out(
    tree: tuple[Path, Path], use_openat2: bool
) -> None:
    home, _secret = tree
    # Created deep, where ../../ stays inside, then moved to the top: the
    # escape asyncssh's chroot= allows.
    (home / "dir" / "sub" / "link").symlink_to("../../secret.txt")
    os.rename(home / "dir" / "sub" / "link", home / "link")
    (home / "up").symlink_to("../../../../")
    jail = Jail(home, use_openat2=use_openat2)

    with pytest.raises(FileNotFoundError):
        _read(jail, b"link")
    assert _read(jail, b"up/file.txt") == b"inside"


@pytest.mark.parametrize("use_openat2", MODES)
def test_creation_through_a_dangling_link_lands_inside(
    tree: tuple[Path, Path], use_openat2: bool
) -> None:
    home, secret = tree
    (home / "dangling").symlink_to("/created.txt")
    (home / "escaping").symlink_to(str(secret.parent / "created-outside.txt"))
    jail = Jail(home, use_openat2=use_openat2)

    fd = jail.open(b"dangling", os.O_WRONLY | os.O_CREAT, 0o600)
    os.close(fd)
    with pytest.raises(FileNotFoundError):
        jail.open(b"escaping", os.O_WRONLY | os.O_CREAT, 0o600)

    assert (home / "created.txt").exists()
    assert not (secret.parent / "created-outside.txt").exists()


@pytest.mark.parametrize("use_openat2", MODES)
def test_link_loops_fail_with_eloop(tree: tuple[Path, Path], use_openat2: bool) -> None:
    home, _secret = tree
    (home / "a").symlink_to("b")
    (home / "b").symlink_to("a")
    jail = Jail(home, use_openat2=use_openat2)

    with pytest.raises(OSError) as raised:
        _read(jail, b"a")
    assert raised.value.errno == errno.ELOOP


@pytest.mark.parametrize("use_openat2", MODES)
def test_parent_gives_a_directory_and_a_plain_name(
    tree: tuple[Path, Path], use_openat2: bool
) -> None:
    home, _secret = tree
    jail = Jail(home, use_openat2=use_openat2)

    with jail.parent(b"/dir/sub/../sub/deep.txt") as (dir_fd, name):
        assert name == b"deep.txt"
        assert os.stat(name, dir_fd=dir_fd).st_size == 4
    with pytest.raises(OSError) as raised, jail.parent(b"/"):
        pass
    assert raised.value.errno == errno.EPERM


@pytest.mark.parametrize("use_openat2", MODES)
def test_client_path_of_hides_the_home(
    tree: tuple[Path, Path], use_openat2: bool
) -> None:
    home, _secret = tree
    (home / "shortcut").symlink_to("/dir/sub")
    jail = Jail(home, use_openat2=use_openat2)

    assert _client_path(jail, b"shortcut") == b"/dir/sub"
    assert jail.client_path_of(jail.root_fd) == b"/"


def test_client_path_of_follows_a_home_moved_while_open(tmp_path: Path) -> None:
    """After the operator moves the home, paths are told relative to where
    it is now, also when the move put it below a new directory at its old
    place (where a kept old path would still match, with the wrong prefix)."""

    home = tmp_path / "home"
    (home / "dir").mkdir(parents=True)
    jail = Jail(home)
    _client_path(jail, b"dir")  # looked up once before the moves

    home.rename(tmp_path / "moved")
    moved_away = _client_path(jail, b"dir")
    (tmp_path / "moved").rename(home)
    _client_path(jail, b"dir")  # back where it was
    home.rename(tmp_path / "moved")
    home.mkdir()
    (tmp_path / "moved").rename(home / "old")
    moved_below = _client_path(jail, b"dir")

    assert (moved_away, moved_below) == (b"/dir", b"/dir")
    assert jail.client_path_of(jail.root_fd) == b"/"


def test_client_path_of_refuses_a_descriptor_outside_the_home(
    tree: tuple[Path, Path],
) -> None:
    home, secret = tree
    jail = Jail(home)

    fd = os.open(secret, os.O_PATH)
    try:
        with pytest.raises(OSError) as raised:
            jail.client_path_of(fd)
    finally:
        os.close(fd)
    assert raised.value.errno == errno.ENOENT


@pytest.mark.parametrize("use_openat2", MODES)
def test_swapping_a_directory_for_a_symlink_never_escapes(
    tree: tuple[Path, Path], use_openat2: bool
) -> None:
    home, secret = tree
    (secret.parent / "outside").mkdir()
    (secret.parent / "outside" / "deep.txt").write_text("outside deep")
    real = home / "dir" / "sub"
    parked = home / "dir" / "parked"
    jail = Jail(home, use_openat2=use_openat2)
    stop = threading.Event()

    def swap() -> None:
        # Bounded: at most 20,000 swaps or until the reader is done.
        for _ in range(20_000):
            if stop.is_set():
                return
            os.rename(real, parked)
            os.symlink(str(secret.parent / "outside"), real)
            os.unlink(real)
            os.rename(parked, real)

    swapper = threading.Thread(target=swap)
    swapper.start()
    seen: set[bytes] = set()
    deadline = time.monotonic() + 3
    try:
        while time.monotonic() < deadline:
            try:
                seen.add(_read(jail, b"dir/sub/deep.txt"))
            except OSError:
                continue
    finally:
        stop.set()
        swapper.join()

    assert b"outside deep" not in seen
    assert seen <= {b"deep"}
