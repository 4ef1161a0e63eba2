"""SFTP clients other than OpenSSH's against the real server.

Each client plays the same round in a fresh home: make a directory,
upload a file of 1 MiB and a few bytes (so requests and packets split
it), list it with its size, rename it, download it and compare, upload
a second file and remove it.  The server's side is then checked from
the file system.  Between them the clients take the paths where the
protocol lets them differ from OpenSSH's `sftp`:

- paramiko (Python): its own SSH stack; key login;
- libssh (C), under KDE's sftp:// and many tools, through ssh-python:
  password login, a symlink's link path sent first;
- curl, built on libssh2, the library of PHP's ssh2, git hosting tools
  and many scripts: password login, one command per connection, and
  `rename`/`rm` sent as quoted commands;
- PuTTY's `psftp`, whose SSH and SFTP code FileZilla (fzsftp) and WinSCP
  are built on: password login, the host key pinned by fingerprint;
- JSch (Java), which Jenkins plugins, Ant and Spring Integration embed:
  an ECDH NIST P-256 key exchange, an ECDSA host key, AES-CTR with
  HMAC-SHA2 (no AEAD cipher), password login;
- github.com/pkg/sftp over golang.org/x/crypto/ssh (Go: rclone, restic):
  key login, reads asked for many requests ahead.

paramiko and ssh-python come from PyPI (the `test` extra); the others
from Debian, installed by scripts/test.sh.  A missing one is a skip that
names the package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
import paramiko
import pytest
from ssh import options as libssh_options
from ssh.session import Session as LibsshSession

from serverlab import ClientKey, ServerLab

CLIENTS_DIR = Path(__file__).parent / "clients"
PASSWORD = "a password long enough for the round"
JSCH_JAR = Path("/usr/share/java/jsch.jar")
GO_PATH = Path("/usr/share/gocode")
CLIENT_TIMEOUT = 120
# What libssh's client reads and writes per call.
LIBSSH_CHUNK = 64 * 1024


@dataclass
class Round:
    """A started server, alice's login and the files of one round."""

    lab: ServerLab
    key: ClientKey
    original: Path
    copy: Path

    @property
    def home(self) -> Path:
        return self.lab.data_dir / "alice"

    def check(self) -> None:
        """What the round must leave behind, on both sides."""

        data = self.original.read_bytes()
        assert self.copy.read_bytes() == data
        assert sorted(os.listdir(self.home / "inbox")) == ["kept.bin"]
        assert (self.home / "inbox" / "kept.bin").read_bytes() == data


@pytest.fixture
def round_(lab: ServerLab, tmp_path: Path) -> Iterator[Round]:
    key = lab.add_user("alice", password=PASSWORD)
    lab.start()
    original = tmp_path / "original.bin"
    original.write_bytes(os.urandom(1024 * 1024 + 3))
    yield Round(lab, key, original, tmp_path / "copy.bin")


def _run(
    command: list[str], *, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, env=env
    )


def _need(program: str, package: str) -> str:
    found = shutil.which(program)
    if found is None:
        pytest.skip(f"{program} is missing (Debian package {package})")
    return found


# -- paramiko ---------------------------------------------------------------------


def test_paramiko(round_: Round) -> None:
    client = paramiko.SSHClient()
    # The test's own server on loopback, started a moment ago.
    client.set_missing_host_key_policy(paramiko.AutoAddPolicy())
    client.connect(
        "127.0.0.1",
        port=round_.lab.port,
        username="alice",
        key_filename=str(round_.key.private),
        allow_agent=False,
        look_for_keys=False,
        timeout=30,
    )
    try:
        sftp = client.open_sftp()
        _bound_waits(sftp)
        sftp.mkdir("inbox")
        sftp.put(str(round_.original), "inbox/upload.bin")
        listed = {entry.filename: entry.st_size for entry in sftp.listdir_attr("inbox")}
        sftp.rename("inbox/upload.bin", "inbox/kept.bin")
        sftp.get("inbox/kept.bin", str(round_.copy))
        with sftp.open("inbox/gone.bin", "w") as gone:
            gone.write(b"short-lived")
        sftp.remove("inbox/gone.bin")
        sftp.close()
    finally:
        client.close()

    assert listed == {"upload.bin": round_.original.stat().st_size}
    round_.check()


def test_paramiko_attributes_links_and_replacing_renames(round_: Round) -> None:
    """The requests behind "preserve times", permissions and safe replaces."""

    sftp, transport = _paramiko_sftp(round_)
    try:
        sftp.put(str(round_.original), "data.bin")
        sftp.truncate("data.bin", 1000)
        sftp.chmod("data.bin", 0o640)
        sftp.utime("data.bin", (1_600_000_000, 1_700_000_000))
        seen = sftp.stat("data.bin")
        sftp.symlink("data.bin", "link.bin")
        target = sftp.readlink("link.bin")
        # paramiko sends the target first, as OpenSSH's server expects:
        # a link over an existing entry fails, however the names look.
        with pytest.raises(OSError):
            sftp.symlink("elsewhere.bin", "data.bin")
        with sftp.open("new.bin", "w") as new:
            new.write(b"replacement")
        # posix-rename@openssh.com: replaces the target, as rename(2) does.
        sftp.posix_rename("new.bin", "kept.bin")
        sftp.posix_rename("kept.bin", "data.bin")
        sftp.close()
    finally:
        transport.close()

    on_disk = (round_.home / "data.bin").stat()
    assert seen.st_mode is not None  # paramiko leaves it None if not sent
    assert (seen.st_size, seen.st_mode & 0o777) == (1000, 0o640)
    assert (seen.st_atime, seen.st_mtime) == (1_600_000_000, 1_700_000_000)
    assert (target, os.readlink(round_.home / "link.bin")) == ("data.bin", "data.bin")
    assert (round_.home / "data.bin").read_bytes() == b"replacement"
    assert on_disk.st_mode & 0o777 == 0o644  # the new file's own mode
    assert sorted(os.listdir(round_.home)) == ["data.bin", "link.bin"]


def test_a_client_of_unknown_symlink_order_is_told_by_what_exists(
    round_: Round,
) -> None:
    """For a client in neither list, the file system says which is the link."""

    sftp, transport = _paramiko_sftp(round_, version="SSH-2.0-SomeClient_1.0")
    try:
        with sftp.open("report.csv", "w") as report:
            report.write(b"a,b")
        sftp.mkdir("inbox")
        with sftp.open("inbox/data.csv", "w") as data:
            data.write(b"c,d")
        # The draft's order, link first: only the second name exists.
        sftp.symlink("latest", "report.csv")
        # The target first, relative to the link's directory, as OpenSSH's
        # client sends `cd inbox; ln -s data.csv current`.
        sftp.symlink("data.csv", "inbox/current")
        # The same again: both names exist, seen from the link's
        # directory, so the order stays and the existing link is kept.
        with pytest.raises(OSError):
            sftp.symlink("data.csv", "inbox/current")
        sftp.close()
    finally:
        transport.close()

    assert os.readlink(round_.home / "latest") == "report.csv"
    assert os.readlink(round_.home / "inbox" / "current") == "data.csv"
    assert sorted(os.listdir(round_.home)) == ["inbox", "latest", "report.csv"]
    assert sorted(os.listdir(round_.home / "inbox")) == ["current", "data.csv"]


def _bound_waits(sftp: paramiko.SFTPClient) -> None:
    """Make every paramiko SFTP call give up after CLIENT_TIMEOUT."""

    channel = sftp.get_channel()
    assert channel is not None
    channel.settimeout(CLIENT_TIMEOUT)


def _paramiko_sftp(
    round_: Round, version: str | None = None
) -> tuple[paramiko.SFTPClient, paramiko.Transport]:
    """A password login of alice with paramiko, as `version` if given."""

    transport = paramiko.Transport(("127.0.0.1", round_.lab.port))
    if version is not None:
        transport.local_version = version
    try:
        transport.connect(username="alice", password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        _bound_waits(sftp)
    except BaseException:
        transport.close()
        raise
    return sftp, transport


# -- libssh ---------------------------------------------------------------------------


def test_libssh(round_: Round) -> None:
    session = LibsshSession()
    session.options_set(libssh_options.HOST, "127.0.0.1")
    session.options_set_port(round_.lab.port)
    session.options_set(libssh_options.USER, "alice")
    # No known_hosts is read or written: the test's own server on loopback.
    session.options_set(libssh_options.KNOWNHOSTS, os.devnull)
    session.options_set_int_val(libssh_options.TIMEOUT, CLIENT_TIMEOUT)
    session.connect()
    try:
        session.userauth_password("alice", PASSWORD)
        sftp = session.sftp_new()
        sftp.init()
        sftp.mkdir("inbox", 0o755)
        _libssh_write(sftp, "inbox/upload.bin", round_.original.read_bytes())
        listing = sftp.opendir("inbox")
        listed = {
            entry.name.decode(): entry.size
            for entry in iter(listing.readdir, None)
            if entry.name not in (b".", b"..")
        }
        listing.closedir()
        sftp.rename("inbox/upload.bin", "inbox/kept.bin")
        # libssh sends the link first to servers other than OpenSSH.
        sftp.symlink("kept.bin", "inbox/link.bin")
        linked = sftp.readlink("inbox/link.bin")
        sftp.unlink("inbox/link.bin")
        round_.copy.write_bytes(_libssh_read(sftp, "inbox/kept.bin"))
        _libssh_write(sftp, "inbox/gone.bin", b"short-lived")
        sftp.unlink("inbox/gone.bin")
    finally:
        session.disconnect()

    assert listed == {"upload.bin": round_.original.stat().st_size}
    assert linked == "kept.bin"
    round_.check()


def _libssh_write(sftp: Any, path: str, data: bytes) -> None:
    handle = sftp.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, len(data), LIBSSH_CHUNK):
            handle.write(data[start : start + LIBSSH_CHUNK])
    finally:
        handle.close()


def _libssh_read(sftp: Any, path: str) -> bytes:
    handle = sftp.open(path, os.O_RDONLY, 0)
    pieces = []
    try:
        while True:
            size, data = handle.read(LIBSSH_CHUNK)
            if size <= 0:
                break
            pieces.append(data)
    finally:
        handle.close()
    return b"".join(pieces)


# -- curl (libssh2) -------------------------------------------------------------------


def _curl(round_: Round, path: str, *options: str) -> str:
    curl = _need("curl", "curl")
    url = f"sftp://127.0.0.1:{round_.lab.port}/{path}"
    # -k: accept the host key of the test's own server on loopback.
    result = _run([curl, "-sS", "-k", "-u", f"alice:{PASSWORD}", *options, url])
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_curl_with_libssh2(round_: Round) -> None:
    version = _run([_need("curl", "curl"), "--version"]).stdout
    if "libssh2" not in version:
        pytest.skip("this curl is not built with libssh2")

    _curl(round_, "inbox/upload.bin", "--ftp-create-dirs", "-T", str(round_.original))
    listing = _curl(round_, "inbox/")
    _curl(round_, "", "-Q", "rename /inbox/upload.bin /inbox/kept.bin")
    # libssh2 sends the target first, as OpenSSH does.
    _curl(round_, "", "-Q", "symlink kept.bin /inbox/link.bin")
    linked = os.readlink(round_.home / "inbox" / "link.bin")
    _curl(round_, "", "-Q", "rm /inbox/link.bin")
    _curl(round_, "inbox/kept.bin", "-o", str(round_.copy))
    short = round_.copy.with_name("short.txt")
    short.write_text("short-lived")
    _curl(round_, "inbox/gone.bin", "-T", str(short))
    _curl(round_, "", "-Q", "rm /inbox/gone.bin")

    assert "upload.bin" in listing
    assert str(round_.original.stat().st_size) in listing
    assert linked == "kept.bin"
    round_.check()


# -- PuTTY's psftp (the engine of FileZilla and WinSCP) ---------------------------


def _host_key_fingerprint(round_: Round) -> str:
    """SHA256 fingerprint of the server's Ed25519 host key, as PuTTY shows it."""

    key = asyncssh.read_private_key(round_.lab.state_dir / "ssh_host_ed25519_key")
    return str(key.get_fingerprint("sha256"))


def _psftp(round_: Round, script: Path) -> subprocess.CompletedProcess[str]:
    psftp = _need("psftp", "putty-tools")
    return _run(
        [
            psftp,
            "-batch",
            "-P",
            str(round_.lab.port),
            "-hostkey",
            _host_key_fingerprint(round_),
            "-pw",
            PASSWORD,
            "-b",
            str(script),
            "alice@127.0.0.1",
        ]
    )


def test_putty_psftp(round_: Round) -> None:
    script = round_.copy.with_name("psftp.txt")
    script.write_text(
        "mkdir inbox\n"
        f"put {round_.original} inbox/upload.bin\n"
        "ls inbox\n"
        "mv inbox/upload.bin inbox/kept.bin\n"
        f"get inbox/kept.bin {round_.copy}\n"
        f"put {script} inbox/gone.bin\n"
        "rm inbox/gone.bin\n"
    )

    result = _psftp(round_, script)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "upload.bin" in result.stdout
    round_.check()


def test_putty_psftp_resumes_an_upload_and_a_download(round_: Round) -> None:
    """`reput` and `reget`: how FileZilla and WinSCP resume a transfer."""

    data = round_.original.read_bytes()
    partial_upload = round_.home / "upload.bin"
    partial_upload.write_bytes(data[:123_457])
    home_owner = round_.home.stat()
    os.chown(partial_upload, home_owner.st_uid, home_owner.st_gid)
    (round_.home / "download.bin").write_bytes(data)
    round_.copy.write_bytes(data[:77_777])
    script = round_.copy.with_name("psftp.txt")
    script.write_text(
        f"reput {round_.original} upload.bin\nreget download.bin {round_.copy}\n"
    )

    result = _psftp(round_, script)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "restarting at file position 123457" in result.stdout
    assert "restarting at file position 77777" in result.stdout
    assert partial_upload.read_bytes() == data
    assert round_.copy.read_bytes() == data


# -- JSch (Java) ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def jsch_round(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """The Java round compiled against Debian's JSch; the command to run it."""

    javac = _need("javac", "openjdk-17-jdk-headless")
    java = _need("java", "openjdk-17-jdk-headless")
    if not JSCH_JAR.exists():
        pytest.skip(f"{JSCH_JAR} is missing (Debian package libjsch-java)")
    build = tmp_path_factory.mktemp("jsch")
    source = CLIENTS_DIR / "SftpRound.java"
    result = _run([javac, "-cp", str(JSCH_JAR), "-d", str(build), str(source)])
    assert result.returncode == 0, result.stderr
    return [java, "-cp", f"{JSCH_JAR}:{build}", "SftpRound"]


def test_jsch(round_: Round, jsch_round: list[str]) -> None:
    arguments = ["127.0.0.1", str(round_.lab.port), "alice", PASSWORD]

    result = _run([*jsch_round, *arguments, str(round_.original), str(round_.copy)])

    assert result.returncode == 0, result.stderr
    round_.check()


# -- Go: github.com/pkg/sftp ------------------------------------------------------


@pytest.fixture(scope="module")
def go_round(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Go round built from Debian's Go sources, offline."""

    go = _need("go", "golang-go")
    if not (GO_PATH / "src" / "github.com" / "pkg" / "sftp").is_dir():
        pytest.skip("github.com/pkg/sftp is missing (golang-github-pkg-sftp-dev)")
    build = tmp_path_factory.mktemp("go")
    binary = build / "sftp_round"
    environment = {
        **os.environ,
        "GO111MODULE": "off",
        "GOPATH": str(GO_PATH),
        "GOCACHE": str(build / "cache"),
        "GOFLAGS": "-buildvcs=false",
    }
    source = CLIENTS_DIR / "sftp_round.go"
    result = _run([go, "build", "-o", str(binary), str(source)], env=environment)
    assert result.returncode == 0, result.stderr
    return binary


def test_go_pkg_sftp(round_: Round, go_round: Path) -> None:
    arguments = ["127.0.0.1", str(round_.lab.port), "alice", str(round_.key.private)]

    result = _run([str(go_round), *arguments, str(round_.original), str(round_.copy)])

    assert result.returncode == 0, result.stderr
    round_.check()
