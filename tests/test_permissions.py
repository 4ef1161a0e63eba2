"""Per-directory permissions: the map itself, then the real server and client."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import pytest

from grants import add_restricted_user
from serverlab import ClientKey, ServerLab
from sftpjail.permissions import (
    ALL_PERMISSIONS,
    NO_PERMISSION,
    READ_ONLY_PERMISSIONS,
    Permission,
    PermissionGrantError,
    PermissionMap,
    Rule,
    Scope,
    parent_of,
)

UPLOAD_ONLY = {"/": ["list", "download"], "/incoming": ["upload", "mkdir"]}

# -- the map ---------------------------------------------------------------


def test_longest_configured_prefix_wins_component_by_component() -> None:
    permissions = PermissionMap.from_grant(
        {
            "/": ["list"],
            "/incoming": ["upload"],
            "/incoming/checked": ["download"],
        }
    )

    assert permissions.at(b"/") == Permission.LIST
    assert permissions.at(b"/report.txt") == Permission.LIST
    assert permissions.at(b"/incoming") == Permission.UPLOAD
    assert permissions.at(b"/incoming/a/b/c.bin") == Permission.UPLOAD
    assert permissions.at(b"/incoming/checked/x") == Permission.DOWNLOAD
    assert permissions.at(b"/incomingX/file") == Permission.LIST
    assert permissions.at(b"/incoming/checkedX") == Permission.UPLOAD


def test_client_paths_are_normalized_before_matching() -> None:
    permissions = PermissionMap.from_grant({"/": [], "/incoming": ["upload"]})

    assert permissions.at(b"incoming/a") == Permission.UPLOAD
    assert permissions.at(b"//incoming//a") == Permission.UPLOAD
    assert permissions.at(b"/incoming/../secret") == NO_PERMISSION
    assert permissions.at(b"/../../incoming") == Permission.UPLOAD


def test_a_deeper_directory_replaces_rather_than_adds() -> None:
    permissions = PermissionMap.from_grant(
        {"/": ["list", "download", "delete"], "/drop": ["upload"]}
    )

    assert permissions.at(b"/drop/x") == Permission.UPLOAD
    assert Permission.DELETE not in permissions.at(b"/drop/x")


def test_without_an_entry_for_the_home_nothing_is_granted_there() -> None:
    permissions = PermissionMap.from_grant({"/incoming": ["upload"]})

    assert permissions.at(b"/") == NO_PERMISSION
    assert permissions.at(b"/elsewhere/file") == NO_PERMISSION


def test_read_only_caps_every_directory() -> None:
    permissions = PermissionMap.from_grant(
        {"/": ["list", "download", "delete"], "/incoming": ["upload", "list"]},
        read_only=True,
    )

    assert permissions.at(b"/") == READ_ONLY_PERMISSIONS
    assert permissions.at(b"/incoming") == Permission.LIST
    assert not permissions.anywhere() & ~READ_ONLY_PERMISSIONS


def test_a_grant_with_unknown_names_or_relative_paths_is_refused() -> None:
    with pytest.raises(PermissionGrantError, match="unknown permission 'execute'"):
        PermissionMap.from_grant({"/": ["list", "execute"]})
    with pytest.raises(PermissionGrantError, match="not an absolute path"):
        PermissionMap.from_grant({"incoming": ["upload"]})
    with pytest.raises(PermissionGrantError, match="must be a list"):
        PermissionMap.from_grant({"/": "list"})


def test_rules_are_checked_at_the_path_or_at_its_directory() -> None:
    permissions = PermissionMap.from_grant(
        {"/": ["list", "download"], "/incoming": ["upload"]}
    )
    download = Rule(Permission.DOWNLOAD, Scope.PARENT)
    listing = Rule(Permission.LIST, Scope.PATH)
    lookup = Rule(ALL_PERMISSIONS, Scope.PATH, any_of=True)

    # /incoming itself sits in "/", where downloads are allowed...
    assert permissions.allows(download, b"/incoming")
    # ...but a file inside it sits in /incoming, where they are not.
    assert not permissions.allows(download, b"/incoming/file")
    assert not permissions.allows(listing, b"/incoming")
    assert permissions.allows(listing, b"/")
    # One permission is enough to look around in a directory.
    assert permissions.allows(lookup, b"/incoming")
    assert not PermissionMap.from_grant({"/": []}).allows(lookup, b"/")


def test_parent_of_stays_inside_the_home() -> None:
    assert parent_of(b"/a/b/c") == b"/a/b"
    assert parent_of(b"/a") == b"/"
    assert parent_of(b"/") == b"/"
    assert parent_of(b"a/../../b") == b"/"


# -- the real server -----------------------------------------------------------


def _home_directory(lab: ServerLab, user: str, *parts: str) -> Path:
    """A directory the operator made in the user's home, owned by them."""

    home = lab.data_dir / user
    path = home.joinpath(*parts)
    path.mkdir(parents=True)
    owner = home.stat()
    os.chown(path, owner.st_uid, owner.st_gid)
    return path


class DropBox(NamedTuple):
    lab: ServerLab
    key: ClientKey
    payload: Path


def _refusals(lab: ServerLab) -> set[tuple[object, object]]:
    """(operation, path) of every refusal the server audited."""

    return {
        (event["operation"], event["path"])
        for event in lab.audit_events("sftp.refused")
    }


@pytest.fixture
def drop_box(lab: ServerLab, tmp_path: Path) -> DropBox:
    """User "dropper": downloads in "/", uploads only into /incoming."""

    key = add_restricted_user(lab, "dropper", permissions=UPLOAD_ONLY)
    _home_directory(lab, "dropper", "incoming")
    lab.start()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(os.urandom(50_000))
    return DropBox(lab, key, payload)


def test_upload_only_folder_takes_files_and_gives_nothing_back(
    drop_box: DropBox, tmp_path: Path
) -> None:
    lab, key, payload = drop_box
    incoming = lab.data_dir / "dropper" / "incoming"
    back = tmp_path / "back.bin"

    upload = lab.sftp(
        "dropper",
        f"cd incoming\nput {payload} report.bin\n"
        f"mkdir sub\nput {payload} sub/deep.bin\n",
        key=key,
    )
    assert upload.returncode == 0, upload.stderr
    assert (incoming / "report.bin").read_bytes() == payload.read_bytes()
    assert (incoming / "sub" / "deep.bin").read_bytes() == payload.read_bytes()

    refusals = {
        f"get incoming/report.bin {back}": "remote open",
        f"get incoming/sub/deep.bin {back}": "remote open",
        "ls incoming": "remote readdir",
        "ls incoming/sub": "remote readdir",
        "rm incoming/report.bin": "remote delete",
        f"put {payload} incoming/report.bin": "dest open",
        f"put {payload} top.bin": "dest open",
    }
    for command, shown in refusals.items():
        result = lab.sftp("dropper", command + "\n", key=key)
        assert result.returncode != 0, command
        assert shown in result.stderr and "Permission denied" in result.stderr, (
            command,
            result.stderr,
        )

    assert not back.exists()
    assert sorted(os.listdir(incoming)) == ["report.bin", "sub"]
    assert not (lab.data_dir / "dropper" / "top.bin").exists()
    assert {
        ("open_read", "/incoming/sub/deep.bin"),
        ("opendir", "/incoming/sub"),
        ("remove", "/incoming/report.bin"),
        ("open_overwrite", "/incoming/report.bin"),
        ("open_write", "/top.bin"),
    } <= _refusals(lab)


def test_links_placed_by_the_operator_grant_nothing(
    drop_box: DropBox, tmp_path: Path
) -> None:
    lab, key, payload = drop_box
    home = lab.data_dir / "dropper"
    (home / "incoming" / "upload.bin").write_bytes(b"uploaded by someone\n")
    (home / "incoming" / "to-root").symlink_to("/")
    (home / "peek").symlink_to("/incoming")
    stolen = tmp_path / "stolen"

    # "/" allows downloads and listings, but "/peek" really is /incoming.
    for command in (f"get peek/upload.bin {stolen}", "ls peek"):
        result = lab.sftp("dropper", command + "\n", key=key)
        assert result.returncode != 0, command
        assert "Permission denied" in result.stderr
    assert not stolen.exists()

    # /incoming allows uploads, but "/incoming/to-root" really is "/".
    planted = lab.sftp("dropper", f"put {payload} incoming/to-root/planted\n", key=key)
    assert planted.returncode != 0
    assert not (home / "planted").exists()

    # And the user cannot make such links in /incoming.
    link = lab.sftp("dropper", "symlink /incoming incoming/mine\n", key=key)
    assert link.returncode != 0
    assert not (home / "incoming" / "mine").is_symlink()
    # Each refusal names where the object really is.
    assert {
        ("open_read", "/incoming/upload.bin"),
        ("opendir", "/incoming"),
        ("open_write", "/planted"),
        ("symlink", "/incoming/mine"),
    } <= _refusals(lab)


def test_read_only_user_writes_nowhere_whatever_the_directories_say(
    lab: ServerLab, tmp_path: Path
) -> None:
    key = add_restricted_user(
        lab,
        "viewer",
        read_only=True,
        permissions={"/": ["list", "download"], "/incoming": ["upload", "mkdir"]},
    )
    incoming = _home_directory(lab, "viewer", "incoming")
    lab.start()
    payload = tmp_path / "payload.bin"
    payload.write_bytes(b"x" * 1000)

    for command in (f"put {payload} incoming/x.bin", "mkdir incoming/d"):
        result = lab.sftp("viewer", command + "\n", key=key)
        assert result.returncode != 0, command
    assert os.listdir(incoming) == []


def test_rename_needs_rename_at_the_source_and_upload_at_the_target(
    lab: ServerLab, tmp_path: Path
) -> None:
    key = add_restricted_user(
        lab,
        "mover",
        permissions={
            "/": ["list", "download", "upload", "rename"],
            "/archive": ["list", "download"],
            "/replaceable": ["list", "upload", "rename", "overwrite"],
        },
    )
    home = lab.data_dir / "mover"
    _home_directory(lab, "mover", "archive")
    _home_directory(lab, "mover", "replaceable")
    for name in ("a.txt", "keep.txt", "replaceable/old.txt", "replaceable/new.txt"):
        (home / name).write_text(name)
    lab.start()

    into_archive = lab.sftp("mover", "rename a.txt archive/a.txt\n", key=key)
    over_file = lab.sftp("mover", "rename a.txt keep.txt\n", key=key)
    assert into_archive.returncode != 0 and over_file.returncode != 0
    assert (home / "a.txt").read_text() == "a.txt"
    assert (home / "keep.txt").read_text() == "keep.txt"

    allowed = lab.sftp(
        "mover",
        "rename a.txt b.txt\nrename replaceable/new.txt replaceable/old.txt\n",
        key=key,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert (home / "b.txt").read_text() == "a.txt"
    assert (home / "replaceable" / "old.txt").read_text() == "replaceable/new.txt"
    refused = {event["operation"] for event in lab.audit_events("sftp.refused")}
    assert refused == {"rename_into", "rename_over"}


def test_a_hard_link_cannot_lift_a_file_out_of_an_upload_only_folder(
    lab: ServerLab, tmp_path: Path
) -> None:
    key = add_restricted_user(
        lab,
        "linker",
        permissions={
            "/": ["list", "download", "upload", "symlink", "delete"],
            "/incoming": ["upload"],
        },
    )
    incoming = _home_directory(lab, "linker", "incoming")
    (incoming / "secret.bin").write_bytes(b"operator only\n")
    lab.start()

    result = lab.sftp("linker", "ln incoming/secret.bin visible.bin\n", key=key)

    assert result.returncode != 0
    assert not (lab.data_dir / "linker" / "visible.bin").exists()
    assert {event["operation"] for event in lab.audit_events("sftp.refused")} == {
        "link_source"
    }
