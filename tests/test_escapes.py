"""Escape attempts against the jail, through the real clients.

Every case runs against a real server as the user alice.  Next to her live
bob, whose home holds a secret, a file in data_dir beside the homes, and
the host's /etc/passwd.  The files outside alice's home belong to the
service user the workers run as, so file permissions would not stop a
mistaken lookup: only the jail (jailpath and Landlock) does.

A case passes when no byte from outside alice's home reaches the client,
nothing outside her home changes (hashes, modes, times and link counts are
compared before and after), and no answer names a host path.  The OpenSSH
`sftp` client is used wherever it can say the request; asyncssh's SFTP
client sends what OpenSSH cannot (NUL bytes, raw over-long paths,
lsetstat, exact setstat attributes).
"""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import posixpath
import pwd
import stat
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import asyncssh
import pytest

from serverlab import SERVICE_USER, ClientKey, Result, ServerLab

T = TypeVar("T")

PASSWD = Path("/etc/passwd")
PASSWD_MARK = b"root:x:0:0"
SWAP_SECONDS = 3.0
SWAP_ITERATIONS = 500

# Snapshot of one file system object: content digest (files only), mode,
# owner, size, modification time, link count and inode.
Fingerprint = tuple[str, int, int, int, int, int, int]


@dataclass
class Scene:
    """A running server with alice, bob, and things alice must never reach."""

    lab: ServerLab
    alice: ClientKey
    secret: Path
    neighbour: Path
    tokens: tuple[bytes, ...]
    before: dict[str, Fingerprint]

    @property
    def home(self) -> Path:
        return self.lab.data_dir / "alice"

    @property
    def bob_home(self) -> Path:
        return self.lab.data_dir / "bob"

    def sftp(self, commands: str) -> Result:
        """Run OpenSSH `sftp` as alice; commands prefixed with - may fail."""

        return self.lab.sftp("alice", commands, key=self.alice)

    def leaks(self, data: bytes) -> bool:
        """Whether `data` holds anything that lives outside alice's home."""

        return PASSWD_MARK in data or any(token in data for token in self.tokens)

    def host_paths(self) -> tuple[str, ...]:
        return (str(self.lab.root), str(self.lab.data_dir))

    def assert_outside_untouched(self) -> None:
        assert outside_fingerprints(self.lab.data_dir, self.home) == self.before

    def own_as_service_user(self, path: Path) -> None:
        service = pwd.getpwnam(SERVICE_USER)
        os.chown(path, service.pw_uid, service.pw_gid, follow_symlinks=False)

    def put_in_home(self, relative: str, content: bytes) -> Path:
        """Place a file in alice's home as the server itself would own it."""

        path = self.home / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        self.own_as_service_user(path)
        return path


def fingerprint(path: Path) -> Fingerprint:
    info = os.lstat(path)
    digest = ""
    if stat.S_ISREG(info.st_mode):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return (
        digest,
        info.st_mode,
        info.st_uid,
        info.st_size,
        info.st_mtime_ns,
        info.st_nlink,
        info.st_ino,
    )


def outside_fingerprints(data_dir: Path, home: Path) -> dict[str, Fingerprint]:
    """Everything in data_dir except alice's home, and /etc/passwd's mode."""

    found = {str(data_dir): fingerprint(data_dir)}
    for directory, names, files in os.walk(data_dir):
        names[:] = [n for n in names if Path(directory, n) != home]
        for name in names + files:
            found[os.path.join(directory, name)] = fingerprint(Path(directory, name))
    passwd = os.stat(PASSWD)
    found[str(PASSWD)] = ("", passwd.st_mode, passwd.st_uid, 0, 0, 0, passwd.st_ino)
    return found


@pytest.fixture
def scene(lab: ServerLab) -> Scene:
    alice = lab.add_user("alice")
    lab.add_user("bob")
    lab.start()

    bob_token = f"BOB-SECRET-{uuid.uuid4()}".encode()
    neighbour_token = f"NEXT-TO-HOMES-{uuid.uuid4()}".encode()
    secret = lab.data_dir / "bob" / "secret.txt"
    secret.write_bytes(bob_token + b"\n")
    # A file of the same name as the one alice swaps in (see the race test).
    (lab.data_dir / "bob" / "file.txt").write_bytes(bob_token + b" file\n")
    (lab.data_dir / "bob" / "inner").mkdir()
    (lab.data_dir / "bob" / "inner" / "deep.txt").write_bytes(bob_token + b" deep\n")
    neighbour = lab.data_dir / "neighbour.txt"
    neighbour.write_bytes(neighbour_token + b"\n")
    service = pwd.getpwnam(SERVICE_USER)
    for directory, names, files in os.walk(lab.data_dir / "bob"):
        for name in [*names, *files]:
            os.chown(Path(directory, name), service.pw_uid, service.pw_gid)
    os.chown(neighbour, service.pw_uid, service.pw_gid)
    secret.chmod(0o644)

    home = lab.data_dir / "alice"
    placed = Scene(
        lab,
        alice,
        secret,
        neighbour,
        (bob_token, neighbour_token),
        {},
    )
    placed.put_in_home("own.txt", b"alice's own file\n")
    placed.before = outside_fingerprints(lab.data_dir, home)
    return placed


@dataclass(frozen=True)
class Local:
    """The client side: where downloads land and a file to upload."""

    out: Path
    upload: Path


@pytest.fixture
def local(tmp_path: Path) -> Local:
    out = tmp_path / "out"
    out.mkdir()
    upload = tmp_path / "upload.txt"
    upload.write_bytes(b"planted by alice\n")
    return Local(out, upload)


def with_client(
    scene: Scene,
    action: Callable[[asyncssh.SFTPClient], Awaitable[T]],
    sftp_version: int = 3,
) -> T:
    """Log in as alice with asyncssh and run `action` with its SFTP client."""

    async def run() -> T:
        async with asyncssh.connect(
            "127.0.0.1",
            scene.lab.port,
            username="alice",
            known_hosts=None,
            client_keys=[str(scene.alice.private)],
            agent_path=None,
            preferred_auth="publickey",
        ) as connection:
            async with connection.start_sftp_client(
                sftp_version=sftp_version
            ) as client:
                return await action(client)

    return asyncio.run(run())


async def read_or_error(client: asyncssh.SFTPClient, path: bytes) -> bytes | str:
    """The whole content of `path`, or the error the server answered."""

    try:
        async with client.open(path, "rb") as remote:
            data = await remote.read()
            assert isinstance(data, bytes)
            return data
    except asyncssh.SFTPError as error:
        return str(error.reason)


async def write_or_error(
    client: asyncssh.SFTPClient, path: bytes, data: bytes
) -> str | None:
    """Write `data` to `path`; the server's error, or None if it worked."""

    try:
        async with client.open(path, "wb") as remote:
            await remote.write(data)
    except asyncssh.SFTPError as error:
        return str(error.reason)
    return None


def downloads(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def answers(result: Result) -> str:
    """What `sftp` printed besides echoing the commands it was given."""

    lines = result.stdout.splitlines()
    return "\n".join(line for line in lines if not line.startswith("sftp>"))


def no_host_path(scene: Scene, text: str, asked: bytes = b"") -> bool:
    """Whether `text` names no host path, apart from one the client sent."""

    question = posixpath.normpath("/" + asked.decode(errors="replace"))
    return not any(host in text and host not in question for host in scene.host_paths())


# -- paths -------------------------------------------------------------------


def test_dotdot_slashes_and_absolute_paths_stay_home(
    scene: Scene, local: Local
) -> None:
    out, upload = local.out, local.upload
    secret_host = scene.secret
    attempts = [
        "../bob/secret.txt",
        "../../../../../../../bob/secret.txt",
        "/../bob/secret.txt",
        "/./../bob/./secret.txt",
        "//bob//secret.txt",
        "///../..//bob/secret.txt",
        "../neighbour.txt",
        "/../../neighbour.txt",
        str(secret_host),
        f"/{secret_host}",
        str(scene.neighbour),
        "/etc/passwd",
        "../../../../../../../../etc/passwd",
        "..\\bob\\secret.txt",
        "..\\..\\..\\etc\\passwd",
    ]
    commands = [f'-get "{path}" {out}/{n}' for n, path in enumerate(attempts)]
    writes = [
        "../bob/planted.txt",
        "/../bob/secret.txt",
        "//bob/planted.txt",
        f"{scene.bob_home}/planted.txt",
        "../planted.txt",
        "/etc/planted.txt",
    ]
    commands += [f'-put {upload} "{path}"' for path in writes]
    commands += [
        "-mkdir ../bob/made",
        f"-mkdir {scene.bob_home}/made",
        "-rm ../bob/secret.txt",
        f"-rm {secret_host}",
        "-rename own.txt ../bob/own.txt",
        "-rename ../bob/secret.txt stolen.txt",
        f"-rename {secret_host} stolen.txt",
        "-rmdir ../bob/inner",
        "-chmod 600 ../bob/secret.txt",
        "ls -la /",
        "ls -la ..",
        "ls -la ../..",
    ]

    result = scene.sftp("\n".join(commands) + "\n")

    assert result.returncode == 0, result.stderr
    assert downloads(out) == {}
    assert not scene.leaks((result.stdout + result.stderr).encode())
    assert "secret.txt" not in answers(result)
    assert "neighbour" not in answers(result)
    assert no_host_path(scene, answers(result))
    assert not (scene.home / "stolen.txt").exists()
    assert (scene.home / "own.txt").read_bytes() == b"alice's own file\n"
    scene.assert_outside_untouched()


def test_raw_paths_the_openssh_client_cannot_send(scene: Scene) -> None:
    secret = os.fsencode(scene.secret)
    raw_paths = [
        b"../bob/secret.txt",
        b"//bob/secret.txt",
        secret,
        b"/" + secret,
        b"/" + secret.replace(b"/", b"//"),
        b"own.txt\0/../../bob/secret.txt",
        b"../bob/secret.txt\0",
        b"\0" + secret,
        b"..\\bob\\secret.txt",
        b"a/" * 1500 + b"../" * 1501 + b"bob/secret.txt",
        b"../" * 2000 + b"etc/passwd",
        b"x" * 256,
        b"x" * 300 + b"/../../bob/secret.txt",
        b"a/" * 3000,
        b"/" * 5000 + b"bob/secret.txt",
        b"bob/../../bob/secret.txt",
        b"\xff\xfe/../bob/secret.txt",
    ]

    async def attempt(client: asyncssh.SFTPClient) -> list[tuple[bytes, object]]:
        outcomes: list[tuple[bytes, object]] = []
        for path in raw_paths:
            outcomes.append((path, await read_or_error(client, path)))
            written = await write_or_error(client, path, b"planted\n")
            outcomes.append((path, written))
            try:
                outcomes.append((path, await client.realpath(path)))
            except asyncssh.SFTPError as error:
                outcomes.append((path, str(error.reason)))
        return outcomes

    outcomes = with_client(scene, attempt)

    for path, outcome in outcomes:
        if isinstance(outcome, bytes):
            assert not scene.leaks(outcome), path[:80]
            answer = outcome.decode(errors="replace")
            assert no_host_path(scene, answer, asked=path), path[:80]
        elif isinstance(outcome, str):
            assert no_host_path(scene, outcome), path[:80]
    reads = dict(outcomes[0::3])
    assert all(isinstance(reads[path], str) for path in raw_paths)
    scene.assert_outside_untouched()


def test_only_sftp_version_3_is_spoken(scene: Scene) -> None:
    """asyncssh serves version 5 and 6 opens with a plain open() of the path
    (`SFTPServer.open56`), outside the jail; only version 3 may be agreed."""

    own = os.fsencode(scene.home / "own.txt")

    async def attempt(client: asyncssh.SFTPClient) -> tuple[int, bytes | str]:
        return client.version, await read_or_error(client, own)

    version, outcome = with_client(scene, attempt, sftp_version=6)

    assert version == 3
    assert isinstance(outcome, str)


# -- symbolic links ------------------------------------------------------------


def test_links_alice_makes_resolve_inside_her_home(scene: Scene, local: Local) -> None:
    out, upload = local.out, local.upload

    result = scene.sftp(
        "-ln -s /etc/passwd passwd\n"
        "-ln -s /etc etc\n"
        "-ln -s / top\n"
        f"-ln -s {scene.bob_home} bob-abs\n"
        f"-ln -s {scene.secret} secret-abs\n"
        "-ln -s ../bob bob-rel\n"
        "-ln -s ../../neighbour.txt neighbour-rel\n"
        f"-get passwd {out}/passwd\n"
        f"-get etc/passwd {out}/etc-passwd\n"
        f"-get top/own.txt {out}/top-own\n"
        f"-get top/../../bob/secret.txt {out}/top-bob\n"
        f"-get bob-abs/secret.txt {out}/bob-abs\n"
        f"-get secret-abs {out}/secret-abs\n"
        f"-get bob-rel/secret.txt {out}/bob-rel\n"
        f"-get neighbour-rel {out}/neighbour-rel\n"
        f"-put {upload} passwd\n"
        f"-put {upload} bob-abs/planted.txt\n"
        f"-put {upload} secret-abs\n"
        "-mkdir bob-abs/made\n"
        "-rm bob-abs/secret.txt\n"
        "-ls -la bob-abs/\n"
        "-ls -la etc/\n"
        "ls -la top/\n",
    )

    assert result.returncode == 0, result.stderr
    got = downloads(out)
    # A link to / is a link to the top of the home: it works, inside.
    assert got.pop("top-own") == b"alice's own file\n"
    assert got == {}
    assert "own.txt" in result.stdout
    assert "secret.txt" not in answers(result)
    assert not scene.leaks((result.stdout + result.stderr).encode())
    assert no_host_path(scene, answers(result))
    # The relative links that climb out are refused when made.
    assert not (scene.home / "bob-rel").is_symlink()
    assert not (scene.home / "neighbour-rel").is_symlink()
    scene.assert_outside_untouched()


@dataclass(frozen=True)
class MovedLink:
    """A link made deep in the tree, then moved up: asyncssh's chroot escape.

    `setup` makes the link where its relative target still points inside
    the home (so the server accepts it) and then moves it, or a directory
    holding it, closer to the top, where the same target leaves the home.
    """

    setup: str
    link: str
    host_target: str
    through: str


DEEP = "/".join(["d"] * 10)
MOVED_LINKS = [
    pytest.param(
        MovedLink(
            "mkdir a\nln -s ../bob/secret.txt a/link\nrename a/link link\n",
            "link",
            "bob/secret.txt",
            "link",
        ),
        id="file-link-to-top",
    ),
    pytest.param(
        MovedLink(
            "mkdir a\nmkdir a/b\nmkdir a/b/c\n"
            "ln -s ../../../bob a/b/c/link\nrename a/b/c/link a/b/link\n",
            "a/b/link",
            "bob",
            "a/b/link/secret.txt",
        ),
        id="directory-link-up-one",
    ),
    pytest.param(
        MovedLink(
            "mkdir x\nmkdir x/y\nln -s ../../bob/inner x/y/link\nrename x/y y\n",
            "y/link",
            "bob/inner",
            "y/link/deep.txt",
        ),
        id="parent-directory-moved-up",
    ),
    pytest.param(
        MovedLink(
            "".join(f"mkdir {DEEP[: 2 * n + 1]}\n" for n in range(10))
            + f"ln -s {'../' * 10}etc/passwd {DEEP}/link\n"
            + f"rename {DEEP}/link link\n",
            "link",
            "/etc/passwd",
            "link",
        ),
        id="deep-link-to-etc-passwd",
    ),
]


@pytest.mark.parametrize("case", MOVED_LINKS)
def test_link_moved_upward_still_resolves_inside(
    scene: Scene, local: Local, case: MovedLink
) -> None:
    out, upload = local.out, local.upload
    setup = scene.sftp(case.setup)
    assert setup.returncode == 0, setup.stderr

    # The trap is armed: followed by the host, the moved link leaves the home.
    outside = (scene.lab.data_dir / case.host_target).resolve()
    assert (scene.home / case.link).resolve() == outside

    result = scene.sftp(
        f"-get {case.through} {out}/through\n"
        f"-get {case.link} {out}/link\n"
        f"-put {upload} {case.through}\n"
        f"-put {upload} {case.link}/planted.txt\n"
        f"-ls -la {case.link}/\n"
        f"-chmod 600 {case.through}\n"
        f"-rm {case.link}/secret.txt\n"
    )

    assert result.returncode == 0, result.stderr
    assert downloads(out) == {}
    assert not scene.leaks((result.stdout + result.stderr).encode())
    assert "deep.txt" not in answers(result) and "secret.txt" not in answers(result)
    assert no_host_path(scene, answers(result) + result.stderr)
    scene.assert_outside_untouched()


OPERATOR_LINKS = {
    "op-bob-abs": "{bob}",
    "op-etc": "/etc",
    "op-bob-rel": "../bob",
    "op-secret-abs": "{secret}",
    "op-secret-rel": "../bob/secret.txt",
    "op-neighbour": "../neighbour.txt",
    "op-data": "{data}",
}


def test_links_the_operator_placed_resolve_inside(scene: Scene, local: Local) -> None:
    for name, target in OPERATOR_LINKS.items():
        (scene.home / name).symlink_to(
            target.format(
                bob=scene.bob_home, secret=scene.secret, data=scene.lab.data_dir
            )
        )
    out, upload = local.out, local.upload
    commands = []
    for name in OPERATOR_LINKS:
        commands += [
            f"-get {name} {out}/{name}",
            f"-get {name}/secret.txt {out}/{name}-secret",
            f"-get {name}/bob/secret.txt {out}/{name}-bob-secret",
            f"-get {name}/passwd {out}/{name}-passwd",
            f"-put {upload} {name}",
            f"-put {upload} {name}/planted.txt",
            f"-mkdir {name}/made",
            f"-rm {name}/secret.txt",
            f"-rename own.txt {name}/own.txt",
            f"-ls -la {name}/",
        ]

    result = scene.sftp("\n".join(commands) + "\nls -la\n")

    assert result.returncode == 0, result.stderr
    assert downloads(out) == {}
    assert not scene.leaks((result.stdout + result.stderr).encode())
    assert "secret.txt" not in answers(result)
    assert no_host_path(scene, answers(result) + result.stderr)
    assert (scene.home / "own.txt").read_bytes() == b"alice's own file\n"
    scene.assert_outside_untouched()


def test_hard_links_cannot_reach_outside(scene: Scene, local: Local) -> None:
    out = local.out
    (scene.home / "op-bob").symlink_to(scene.bob_home)
    outside_inodes = {scene.secret.stat().st_ino, PASSWD.stat().st_ino}
    outside_inodes |= {scene.neighbour.stat().st_ino}

    result = scene.sftp(
        "-ln ../bob/secret.txt h1\n"
        f"-ln {scene.secret} h2\n"
        "-ln /etc/passwd h3\n"
        "-ln ../neighbour.txt h4\n"
        "-ln op-bob/secret.txt h5\n"
        "-ln //bob/secret.txt h6\n"
        # A link that points outside only when followed by the host...
        "mkdir a\n"
        "ln -s ../bob/secret.txt a/link\n"
        "rename a/link moved\n"
        # ...hard-linked: the new name is the link itself, not the secret.
        "-ln moved h7\n"
        f"-get h7 {out}/h7\n"
        f"-get moved {out}/moved\n"
        "ls -la\n"
    )

    assert result.returncode == 0, result.stderr
    assert downloads(out) == {}
    assert not scene.leaks((result.stdout + result.stderr).encode())
    home_inodes = {
        os.lstat(Path(directory, name)).st_ino
        for directory, names, files in os.walk(scene.home)
        for name in [*names, *files]
    }
    assert not home_inodes & outside_inodes
    assert scene.secret.stat().st_nlink == 1
    scene.assert_outside_untouched()


# -- races ---------------------------------------------------------------------

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)


def exchange(first: Path, second: Path) -> None:
    """Swap two names atomically (renameat2 with RENAME_EXCHANGE)."""

    result = _libc.renameat2(
        _AT_FDCWD,
        os.fsencode(first),
        _AT_FDCWD,
        os.fsencode(second),
        _RENAME_EXCHANGE,
    )
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


@pytest.mark.parametrize("target_kind", ["absolute", "relative"])
def test_directory_swapped_for_a_link_while_alice_reads(
    scene: Scene, target_kind: str
) -> None:
    real = scene.put_in_home("dir/file.txt", b"alice's decoy\n").parent
    scene.own_as_service_user(real)
    swap = scene.home / "swap"
    swap.symlink_to(scene.bob_home if target_kind == "absolute" else "../bob")
    stop = threading.Event()
    swaps = 0

    def swapper() -> None:
        nonlocal swaps
        deadline = time.monotonic() + SWAP_SECONDS + 10
        while not stop.is_set() and time.monotonic() < deadline:
            exchange(real, swap)
            swaps += 1

    async def reads(client: asyncssh.SFTPClient) -> list[bytes | str]:
        outcomes: list[bytes | str] = []
        deadline = time.monotonic() + SWAP_SECONDS
        for number in range(SWAP_ITERATIONS):
            if time.monotonic() > deadline:
                break
            outcomes.append(await read_or_error(client, b"dir/file.txt"))
            name = f"dir/planted-{number}.txt".encode()
            await write_or_error(client, name, b"planted\n")
            try:
                await client.chmod(b"dir/file.txt", 0o600)
            except asyncssh.SFTPError:
                pass
        return outcomes

    thread = threading.Thread(target=swapper)
    thread.start()
    try:
        outcomes = with_client(scene, reads)
    finally:
        stop.set()
        thread.join(15)

    assert swaps > 0
    contents = [outcome for outcome in outcomes if isinstance(outcome, bytes)]
    assert contents, "no read succeeded, so the race was never run"
    assert set(contents) == {b"alice's decoy\n"}
    errors = {outcome for outcome in outcomes if isinstance(outcome, str)}
    assert all(no_host_path(scene, error) for error in errors)
    scene.assert_outside_untouched()


# -- metadata ------------------------------------------------------------------


def test_setstat_through_links_never_changes_outside(scene: Scene) -> None:
    (scene.home / "op-secret").symlink_to(scene.secret)
    (scene.home / "op-bob").symlink_to("../bob")
    (scene.home / "op-neighbour").symlink_to(scene.neighbour)
    setup = scene.sftp(
        f"ln -s {scene.secret} my-secret\n"
        "ln -s own.txt inside\n"
        "mkdir a\n"
        "ln -s ../bob/secret.txt a/moved\n"
        "rename a/moved moved\n"
        "ln -s ../neighbour.txt a/next\n"
        "rename a/next next\n"
    )
    assert setup.returncode == 0, setup.stderr
    assert (scene.home / "moved").resolve() == scene.secret
    links = [b"op-secret", b"op-bob/secret.txt", b"op-neighbour", b"my-secret"]
    links += [b"moved", b"next"]

    # The operator's links and alice's: OpenSSH's chmod follows them.
    chmod = scene.sftp("".join(f"-chmod 600 {link.decode()}\n" for link in links))
    assert chmod.returncode == 0, chmod.stderr

    async def change(client: asyncssh.SFTPClient) -> list[str]:
        refusals = []
        calls: list[Callable[[bytes], Awaitable[None]]] = [
            lambda path: client.chmod(path, 0o777),
            lambda path: client.utime(path, (1, 1)),
            lambda path: client.truncate(path, 0),
            lambda path: client.setstat(path, asyncssh.SFTPAttrs(permissions=0o600)),
            lambda path: client.chmod(path, 0o777, follow_symlinks=False),
            lambda path: client.utime(path, (1, 1), follow_symlinks=False),
        ]
        for link in links:
            for call in calls:
                try:
                    await call(link)
                except asyncssh.SFTPError as error:
                    refusals.append(str(error.reason))
        # Control: through a link inside the home, setstat does work.
        await client.chmod(b"inside", 0o600)
        await client.utime(b"inside", (1_000_000, 1_000_000))
        return refusals

    refusals = with_client(scene, change)

    assert all(no_host_path(scene, reason) for reason in refusals)
    own = (scene.home / "own.txt").stat()
    assert stat.S_IMODE(own.st_mode) == 0o600
    assert own.st_mtime == 1_000_000
    assert stat.S_IMODE(scene.secret.stat().st_mode) == 0o644
    scene.assert_outside_untouched()


def test_answers_never_name_a_host_path(scene: Scene) -> None:
    (scene.home / "op-bob").symlink_to(scene.bob_home)
    (scene.home / "op-home").symlink_to(scene.home)
    (scene.home / "sub").mkdir()
    scene.own_as_service_user(scene.home / "sub")
    made = {
        b"to-passwd": b"/etc/passwd",
        b"to-top": b"/",
        b"sub/up": b"../own.txt",
    }

    async def ask(client: asyncssh.SFTPClient) -> tuple[list[bytes], list[bytes]]:
        for name, target in made.items():
            await client.symlink(target, name)
        answers: list[bytes] = []
        for path in [
            b".",
            b"..",
            b"/..",
            b"../../..",
            b"sub/../..",
            b"own.txt",
            b"to-passwd",
            b"to-top",
            b"to-top/..",
            b"sub/up",
            b"op-bob",
            b"op-bob/secret.txt",
            b"op-home",
            b"op-home/own.txt",
            b"missing/../../x",
        ]:
            try:
                answers.append(await client.realpath(path))
            except asyncssh.SFTPError as error:
                answers.append(str(error.reason).encode())
        for name in made:
            answers.append(await client.readlink(name))
        for directory in (b"/", b"sub", b"to-top"):
            for entry in await client.readdir(directory):
                answers.append(os.fsencode(entry.filename))
                answers.append(os.fsencode(entry.longname))
        return answers, [await client.readlink(b"op-bob")]

    answers, operator_targets = with_client(scene, ask)
    listing = scene.sftp("ls -la\nls -la sub\npwd\n")

    for answer in answers:
        assert no_host_path(scene, answer.decode(errors="replace")), answer
    assert b"/etc/passwd" in answers and b"../own.txt" in answers
    assert no_host_path(scene, listing.stdout + listing.stderr)
    assert "Remote working directory: /" in listing.stdout
    # A link the operator wrote is shown as written, as under a chroot; it
    # names what the operator chose and resolves inside the home anyway.
    assert operator_targets == [os.fsencode(scene.bob_home)]


def test_realpath_of_a_deep_missing_path_is_an_ordinary_error(scene: Scene) -> None:
    async def ask(client: asyncssh.SFTPClient) -> str:
        try:
            return (await client.realpath(b"a/" * 1500)).decode()
        except asyncssh.SFTPError as error:
            return str(error.reason)

    answer = with_client(scene, ask)

    assert "Uncaught exception" not in answer
