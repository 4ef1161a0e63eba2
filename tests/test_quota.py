"""Quotas: the books, the walk, the messages, then the real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import asyncssh
import pytest

from grants import add_restricted_user
from serverlab import ClientKey, ServerLab
from sftpjail import ipc
from sftpjail.quota import (
    RESERVATION_CHUNK,
    HomeWalk,
    QuotaAccount,
    QuotaExceededError,
    QuotaLedger,
    QuotaLimits,
    Usage,
    UserLedger,
    describe_size,
    measure_home,
)
from sftpjail.timers import Timers

MiB = 1024 * 1024
TARGET = "quoted@127.0.0.1"

# -- the books ---------------------------------------------------------------


def test_a_grant_never_exceeds_what_is_left() -> None:
    ledger = UserLedger(QuotaLimits(bytes=10 * MiB), Usage(bytes=4 * MiB))

    first = ledger.reserve(1 * MiB, 0)
    assert first is not None and 1 * MiB <= first <= 1 * MiB + RESERVATION_CHUNK
    # Never more than half of what remains beyond the need.
    assert first - 1 * MiB <= (6 * MiB - 1 * MiB) // 2
    assert ledger.used.bytes == 4 * MiB + first

    left = 10 * MiB - ledger.used.bytes
    assert ledger.reserve(left + 1, 0) is None
    assert ledger.reserve(left, 0) == left
    assert ledger.used.bytes == 10 * MiB
    assert ledger.reserve(1, 0) is None


def test_many_sessions_together_stay_within_the_quota() -> None:
    ledger = UserLedger(QuotaLimits(bytes=1 * MiB), Usage())
    pools = [0, 0, 0]

    for _round in range(200):
        for index in range(len(pools)):
            granted = ledger.reserve(32 * 1024, 0)
            if granted is not None:
                pools[index] += granted

    assert sum(pools) == ledger.used.bytes <= 1 * MiB
    # Chunks halve as the quota fills, so almost all of it gets handed out.
    assert sum(pools) > 1 * MiB - 32 * 1024


def test_files_are_reserved_one_by_one_and_released() -> None:
    ledger = UserLedger(QuotaLimits(files=2), Usage(files=1))

    assert ledger.reserve(0, 1) == 0
    assert ledger.reserve(0, 1) is None
    ledger.release(0, 1)
    assert ledger.reserve(0, 1) == 0
    ledger.release(10 * MiB, 10)
    assert ledger.used == Usage(0, 0)


def test_books_live_as_long_as_the_users_sessions(tmp_path: Path) -> None:
    (tmp_path / "old.bin").write_bytes(b"x" * 1000)
    books = QuotaLedger()
    limits = QuotaLimits(bytes=5000)

    books.join(1, "alice", limits, tmp_path)
    (tmp_path / "new.bin").write_bytes(b"y" * 3000)  # unseen: books are kept
    books.join(2, "alice", limits, tmp_path)
    assert books.users["alice"].used.bytes == 1000

    reply = books.handle(2, ipc.QuotaRequest(bytes=500, files=0))
    assert reply is not None and reply["ok"] and reply["type"] == "quota_reply"
    assert books.handle(1, ipc.QuotaRequest(bytes=-500, files=0)) is None

    books.leave(1)
    books.leave(2)
    assert "alice" not in books.users
    books.join(3, "alice", limits, tmp_path)
    assert books.users["alice"].used.bytes == 4000
    with pytest.raises(ipc.ProtocolError):
        books.handle(99, ipc.QuotaRequest(bytes=1, files=0))


def test_users_without_a_quota_keep_no_books(tmp_path: Path) -> None:
    books = QuotaLedger()

    books.join(1, "bob", QuotaLimits(), tmp_path)

    assert books.users == {}
    with pytest.raises(ipc.ProtocolError):
        books.handle(1, ipc.QuotaRequest(bytes=1, files=0))


# -- the walk ------------------------------------------------------------------


def test_measure_counts_regular_files_once_and_follows_no_link(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    (home / "a" / "b").mkdir(parents=True)
    (home / "one.bin").write_bytes(b"1" * 100)
    (home / "a" / "b" / "two.bin").write_bytes(b"2" * 200)
    os.link(home / "one.bin", home / "a" / "same.bin")
    with (home / "sparse.bin").open("wb") as sparse:
        sparse.truncate(10_000)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big.bin").write_bytes(b"o" * 5000)
    (home / "escape").symlink_to(outside)
    (home / "escape-file").symlink_to(outside / "big.bin")

    measured = measure_home(home)

    assert measured.complete
    assert measured.usage == Usage(bytes=100 + 200 + 10_000, files=3)


def test_measure_stops_at_its_bounds(tmp_path: Path) -> None:
    for index in range(50):
        (tmp_path / f"f{index}").write_bytes(b"x")
    deep = tmp_path
    for _level in range(5):
        deep = deep / "d"
    deep.mkdir(parents=True)
    (deep / "bottom.bin").write_bytes(b"x" * 7)

    assert not measure_home(tmp_path, max_entries=10).complete
    assert measure_home(tmp_path, max_entries=10).entries == 11
    shallow = measure_home(tmp_path, max_depth=3)
    assert not shallow.complete and shallow.usage.files == 50
    assert measure_home(tmp_path).usage == Usage(bytes=57, files=51)


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def _tree(root: Path, directories: int, files_each: int) -> Usage:
    """Directories of files, one of them nested; returns what they hold."""

    for number in range(directories):
        directory = (
            root / f"dir-{number}" / "inner" if number == 0 else root / f"dir-{number}"
        )
        directory.mkdir(parents=True)
        for index in range(files_each):
            (directory / f"file-{index}").write_bytes(b"x" * (index % 7))
    return Usage(
        bytes=directories * sum(i % 7 for i in range(files_each)),
        files=directories * files_each,
    )


def test_a_walk_in_small_steps_counts_what_one_in_a_go_counts(tmp_path: Path) -> None:
    expected = _tree(tmp_path, directories=4, files_each=30)
    descriptors = _open_descriptors()
    walk = HomeWalk(tmp_path)

    steps = 1
    while not walk.step(7):  # stops in the middle of directories too
        steps += 1

    assert steps >= (4 * 30) // 7
    assert walk.measurement == measure_home(tmp_path)
    assert walk.measurement.usage == expected and walk.measurement.complete
    assert _open_descriptors() == descriptors


def test_a_walk_left_unfinished_lets_go_of_its_descriptors(tmp_path: Path) -> None:
    _tree(tmp_path, directories=3, files_each=10)
    descriptors = _open_descriptors()
    walk = HomeWalk(tmp_path)
    walk.step(5)
    assert _open_descriptors() > descriptors

    walk.close()

    assert walk.done
    assert _open_descriptors() == descriptors


def test_a_file_removed_during_the_walk_leaves_the_rest_counted(
    tmp_path: Path,
) -> None:
    for index in range(100):
        (tmp_path / f"f{index}").write_bytes(b"xy")
    # os.listdir reads a directory in the order os.scandir does.
    order = os.listdir(tmp_path)
    walk = HomeWalk(tmp_path)
    walk.step(10)  # the first ten seen and counted

    for name in order[50:55]:  # five further on, not yet seen
        (tmp_path / name).unlink()
    while not walk.step(1000):
        pass

    assert walk.measurement.usage == Usage(bytes=2 * 95, files=95)
    assert walk.measurement.complete


class Loop:
    """Stands in for the supervisor's loop: actions run when the test says."""

    def __init__(self) -> None:
        self.actions: list[Callable[[], None]] = []
        self.answers: list[tuple[int, dict[str, Any]]] = []

    def later(self, action: Callable[[], None]) -> None:
        self.actions.append(action)

    def answer(self, connection_id: int, reply: dict[str, Any]) -> None:
        self.answers.append((connection_id, reply))

    def turn(self) -> None:
        actions, self.actions = self.actions, []
        for action in actions:
            action()


def test_reservations_wait_for_a_home_measured_in_steps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sftpjail.quota.ENTRIES_PER_STEP", 10)
    used = _tree(tmp_path, directories=3, files_each=20)
    loop = Loop()
    books = QuotaLedger(later=loop.later, answer=loop.answer)
    limits = QuotaLimits(files=used.files + 1)

    books.join(1, "dana", limits, tmp_path)
    books.join(2, "dana", limits, tmp_path)
    first = books.handle(1, ipc.QuotaRequest(bytes=0, files=1))
    second = books.handle(2, ipc.QuotaRequest(bytes=0, files=1))
    released = books.handle(1, ipc.QuotaRequest(bytes=0, files=-5))
    turns = 0
    while loop.actions:
        loop.turn()
        turns += 1

    assert (first, second, released) == (None, None, None)
    assert turns > 3  # measured over several turns, not in one
    # Measured first, then the waiting in order: one file was left.
    assert loop.answers == [
        (1, {"type": "quota_reply", "ok": True, "bytes": 0}),
        (2, {"type": "quota_reply", "ok": False, "bytes": 0}),
    ]
    # The release that came while measuring was dropped: the walk counted.
    assert books.users["dana"].used == Usage(bytes=used.bytes, files=used.files + 1)


def test_a_second_reservation_before_the_first_reply_is_a_violation(
    tmp_path: Path,
) -> None:
    loop = Loop()
    books = QuotaLedger(later=loop.later, answer=loop.answer)
    books.join(1, "erin", QuotaLimits(files=10), tmp_path)
    books.handle(1, ipc.QuotaRequest(bytes=0, files=1))

    with pytest.raises(ipc.ProtocolError, match="second quota reservation"):
        books.handle(1, ipc.QuotaRequest(bytes=0, files=1))


def test_a_measurement_ends_with_the_users_last_session(tmp_path: Path) -> None:
    _tree(tmp_path, directories=2, files_each=5)
    descriptors = _open_descriptors()
    loop = Loop()
    books = QuotaLedger(later=loop.later, answer=loop.answer)
    books.join(1, "finn", QuotaLimits(files=10), tmp_path)
    books.handle(1, ipc.QuotaRequest(bytes=0, files=1))

    books.leave(1)
    loop.turn()

    assert "finn" not in books.users
    assert loop.answers == []
    assert _open_descriptors() == descriptors


def test_a_session_that_left_is_not_charged_for_its_waiting_reservation(
    tmp_path: Path,
) -> None:
    used = _tree(tmp_path, directories=2, files_each=5)
    loop = Loop()
    books = QuotaLedger(later=loop.later, answer=loop.answer)
    limits = QuotaLimits(files=100)
    books.join(1, "gale", limits, tmp_path)
    books.join(2, "gale", limits, tmp_path)
    books.handle(1, ipc.QuotaRequest(bytes=0, files=1))
    books.handle(2, ipc.QuotaRequest(bytes=0, files=1))

    books.leave(1)
    while loop.actions:
        loop.turn()

    assert loop.answers == [(2, {"type": "quota_reply", "ok": True, "bytes": 0})]
    assert books.users["gale"].used.files == used.files + 1


def test_homes_wait_their_turn_to_be_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sftpjail.quota.ENTRIES_PER_STEP", 5)
    homes = {name: tmp_path / name for name in ("hal", "ivy", "jo")}
    expected = {}
    for name, home in homes.items():
        home.mkdir()
        expected[name] = _tree(home, directories=2, files_each=10)
    loop = Loop()
    books = QuotaLedger(later=loop.later, answer=loop.answer, max_walks=2)
    for number, (name, home) in enumerate(homes.items()):
        books.join(number, name, QuotaLimits(files=1000), home)

    def walking() -> set[str]:
        return {
            name
            for name, ledger in books.users.items()
            if ledger.walk is not None and ledger.walk.entries > 0
        }

    loop.turn()
    first_turn = walking()
    turns = 1
    while loop.actions and turns < 1000:
        loop.turn()
        turns += 1

    assert first_turn == {"hal", "ivy"}  # jo waits for one of them
    assert {name: ledger.used for name, ledger in books.users.items()} == expected
    assert all(ledger.walk is None for ledger in books.users.values())


def test_the_supervisors_timers_measure_a_home_over_several_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sftpjail.quota.ENTRIES_PER_STEP", 10)
    used = _tree(tmp_path, directories=3, files_each=20)
    timers = Timers()
    answers: list[tuple[int, dict[str, Any]]] = []
    books = QuotaLedger(
        later=lambda action: timers.schedule(0, action),
        answer=lambda connection, reply: answers.append((connection, reply)),
    )
    books.join(1, "kim", QuotaLimits(files=1000), tmp_path)
    books.handle(1, ipc.QuotaRequest(bytes=0, files=1))

    timers.run_due()
    after_one_turn = books.users["kim"].walk is not None
    turns = 1
    while books.users["kim"].walk is not None and turns < 1000:
        timers.run_due()
        turns += 1

    assert after_one_turn and turns > 3
    assert answers == [(1, {"type": "quota_reply", "ok": True, "bytes": 0})]
    assert books.users["kim"].used.files == used.files + 1


def test_sizes_read_like_ls_h() -> None:
    assert describe_size(512) == "512 bytes"
    assert describe_size(MiB) == "1.0 MiB"
    assert describe_size(1536 * MiB) == "1.5 GiB"


# -- the messages ----------------------------------------------------------------


def test_quota_messages_are_validated() -> None:
    def parse(message: dict[str, Any]) -> ipc.WorkerMessage:
        return ipc.parse_worker_message(ipc.encode(message))

    assert parse({"type": "quota", "bytes": 5, "files": 1}) == ipc.QuotaRequest(5, 1)
    release = parse({"type": "quota", "bytes": -5, "files": 0})
    assert isinstance(release, ipc.QuotaRequest) and release.is_release
    for bad in (
        {"type": "quota", "bytes": -5, "files": 1},
        {"type": "quota", "bytes": True, "files": 0},
        {"type": "quota", "bytes": 2**63, "files": 0},
        {"type": "quota", "bytes": 1.5, "files": 0},
        {"type": "quota", "bytes": 1},
    ):
        with pytest.raises(ipc.ProtocolError):
            parse(bad)


class LedgerPipe:
    """A worker account talking to real books through encoded messages."""

    def __init__(self, books: QuotaLedger, connection_id: int) -> None:
        self.books = books
        self.connection_id = connection_id
        self.sent: list[dict[str, Any]] = []

    def _deliver(self, message: dict[str, Any]) -> dict[str, Any] | None:
        self.sent.append(message)
        request = ipc.parse_worker_message(ipc.encode(message))
        assert isinstance(request, ipc.QuotaRequest)
        return self.books.handle(self.connection_id, request)

    async def ask(self, message: dict[str, Any]) -> dict[str, Any]:
        reply = self._deliver(message)
        assert reply is not None
        return ipc.decode(ipc.encode(reply))

    def tell(self, message: dict[str, Any]) -> None:
        assert self._deliver(message) is None


def test_an_account_spends_its_pool_and_gives_it_back(tmp_path: Path) -> None:
    books = QuotaLedger()
    limits = QuotaLimits(bytes=10 * MiB, files=1)
    books.join(1, "carol", limits, tmp_path)
    pipe = LedgerPipe(books, 1)
    account = QuotaAccount(limits, pipe.ask, pipe.tell)

    async def scenario() -> None:
        await account.reserve_bytes(32 * 1024)
        assert account.pool > 32 * 1024
        asked = len(pipe.sent)
        for _write in range(4):
            assert account.covers(32 * 1024)
            account.spend(32 * 1024)
        assert len(pipe.sent) == asked  # spent from the pool, no messages
        await account.reserve_file()
        with pytest.raises(QuotaExceededError, match="at most 1 files"):
            await account.reserve_file()
        with pytest.raises(QuotaExceededError, match=r"at most 10\.0 MiB"):
            await account.reserve_bytes(20 * MiB)

    asyncio.run(scenario())

    # The refusal gave the pool back: only the 128 KiB written stay counted.
    assert account.pool == 0
    assert books.users["carol"].used == Usage(bytes=128 * 1024, files=1)
    account.freed(nbytes=128 * 1024, files=1)
    assert books.users["carol"].used == Usage(0, 0)


def test_an_unlimited_account_sends_nothing() -> None:
    sent: list[dict[str, Any]] = []

    async def ask(message: dict[str, Any]) -> dict[str, Any]:
        sent.append(message)
        return {"type": "quota_reply", "ok": False, "bytes": 0}

    account = QuotaAccount(QuotaLimits(), ask, sent.append)

    async def scenario() -> None:
        await account.reserve_bytes(100 * MiB)
        await account.reserve_file()

    asyncio.run(scenario())
    account.spend(100 * MiB)
    account.freed(nbytes=5, files=1)
    account.settle()
    assert sent == []


# -- the real server ---------------------------------------------------------------


def _file(directory: Path, name: str, size: int) -> Path:
    path = directory / name
    path.write_bytes(os.urandom(size))
    return path


def _used_on_disk(home: Path) -> int:
    return sum(path.stat().st_size for path in home.rglob("*") if path.is_file())


class Quoted(NamedTuple):
    lab: ServerLab
    key: ClientKey
    home: Path


@pytest.fixture
def one_mib(lab: ServerLab) -> Quoted:
    """User "quoted" may keep 1 MiB and 3 files (the server is not started)."""

    key = add_restricted_user(lab, "quoted", quota_bytes=MiB, quota_files=3)
    return Quoted(lab, key, lab.data_dir / "quoted")


def test_uploads_fill_the_quota_and_the_next_byte_fails_clearly(
    one_mib: Quoted, tmp_path: Path
) -> None:
    lab, key, home = one_mib
    lab.start()
    exact = _file(tmp_path, "exact.bin", MiB)
    one_byte = _file(tmp_path, "byte.bin", 1)

    filled = lab.sftp("quoted", f"put {exact} exact.bin\n", key=key)
    over = lab.sftp("quoted", f"put {one_byte} byte.bin\n", key=key)

    assert filled.returncode == 0, filled.stderr
    assert (home / "exact.bin").read_bytes() == exact.read_bytes()
    # OpenSSH's sftp shows only the status name of an SFTP v3 error.
    assert over.returncode != 0
    assert 'write remote "/byte.bin": Failure' in over.stderr
    # The file was created before the first write failed; it stays, empty.
    assert (home / "byte.bin").stat().st_size == 0
    refusals = lab.audit_events("sftp.quota_exceeded")
    assert refusals and refusals[-1]["path"] == "/byte.bin"
    assert "at most 1.0 MiB" in str(refusals[-1]["reason"])
    closes = [e for e in lab.audit_events("sftp.close") if e["path"] == "/byte.bin"]
    assert closes[-1]["outcome"] == "quota exceeded"


def test_a_partial_upload_keeps_what_was_written_before_the_limit(
    one_mib: Quoted, tmp_path: Path
) -> None:
    lab, key, _home = one_mib
    lab.start()
    too_big = _file(tmp_path, "big.bin", MiB + MiB // 2)

    result = lab.sftp("quoted", f"put {too_big} big.bin\n", key=key)

    assert result.returncode != 0
    kept = (lab.data_dir / "quoted" / "big.bin").read_bytes()
    assert MiB - 262144 < len(kept) <= MiB
    assert kept == too_big.read_bytes()[: len(kept)]


def test_clients_that_show_messages_get_the_reason(
    one_mib: Quoted, tmp_path: Path
) -> None:
    lab, key, _home = one_mib
    lab.start()

    async def run() -> tuple[str, str, int]:
        async with asyncssh.connect(
            "127.0.0.1",
            lab.port,
            username="quoted",
            client_keys=[str(key.private)],
            known_hosts=None,
        ) as connection:
            async with connection.start_sftp_client() as sftp:
                async with sftp.open("grow.bin", "wb") as file:
                    await file.write(b"a" * 1000)
                with pytest.raises(asyncssh.SFTPError) as grown:
                    await sftp.truncate("grow.bin", 2 * MiB)
                await sftp.truncate("grow.bin", 10)
                async with sftp.open("fill.bin", "wb") as file:
                    await file.write(b"b" * (MiB - 10))
                with pytest.raises(asyncssh.SFTPError) as written:
                    async with sftp.open("fill.bin", "ab") as file:
                        await file.write(b"c")
                size = (await sftp.stat("fill.bin")).size
                return str(grown.value.reason), str(written.value.reason), size or 0

    grown, written, size = asyncio.run(run())

    assert "quota exceeded" in grown and "delete some to free space" in grown
    assert "quota exceeded" in written
    # Shrinking grow.bin to 10 bytes freed the rest: exactly 1 MiB fits.
    assert size == MiB - 10
    assert (lab.data_dir / "quoted" / "grow.bin").stat().st_size == 10


def test_deleting_overwriting_and_renaming_over_free_space(
    one_mib: Quoted, tmp_path: Path
) -> None:
    lab, key, home = one_mib
    lab.start()
    six = _file(tmp_path, "six.bin", 600 * 1024)
    three = _file(tmp_path, "three.bin", 300 * 1024)

    steps = [
        f"put {six} a.bin",  # 600 KiB used
        f"put {six} a.bin",  # overwritten in place: still 600 KiB
        "rm a.bin",  # 0
        f"put {six} a.bin",  # 600 KiB
        f"put {three} b.bin",  # 900 KiB
        "rename b.bin a.bin",  # replaces a.bin: 300 KiB
        f"put {six} c.bin",  # 900 KiB
    ]
    result = lab.sftp("quoted", "".join(step + "\n" for step in steps), key=key)

    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(home)) == ["a.bin", "c.bin"]
    assert _used_on_disk(home) == 900 * 1024
    over = lab.sftp("quoted", f"put {three} d.bin\n", key=key)
    assert over.returncode != 0
    assert _used_on_disk(home) <= MiB


def test_the_number_of_files_is_limited_at_open(
    one_mib: Quoted, tmp_path: Path
) -> None:
    lab, key, home = one_mib
    lab.start()
    small = _file(tmp_path, "small.bin", 10)

    filled = lab.sftp(
        "quoted", "".join(f"put {small} f{i}\n" for i in range(3)), key=key
    )
    fourth = lab.sftp("quoted", f"mkdir dir\nln -s f0 link\nput {small} f3\n", key=key)
    again = lab.sftp("quoted", f"rm f0\nput {small} f3\n", key=key)

    assert filled.returncode == 0, filled.stderr
    # Directories and links cost nothing; a fourth file fails at open.
    assert fourth.returncode != 0
    assert 'dest open "/f3": Failure' in fourth.stderr
    assert (home / "dir").is_dir() and (home / "link").is_symlink()
    assert again.returncode == 0, again.stderr
    assert sorted(p.name for p in home.iterdir() if p.is_file()) == [
        "f1",
        "f2",
        "f3",
    ]


def test_files_already_in_the_home_count_from_login(
    one_mib: Quoted, tmp_path: Path
) -> None:
    lab, key, home = one_mib
    placed = _file(home, "placed.bin", 900 * 1024)
    owner = home.stat()
    os.chown(placed, owner.st_uid, owner.st_gid)
    lab.start()
    two = _file(tmp_path, "two.bin", 200 * 1024)

    result = lab.sftp("quoted", f"put {two} two.bin\n", key=key)

    assert result.returncode != 0
    assert _used_on_disk(home) <= MiB


def test_concurrent_sessions_share_one_quota(one_mib: Quoted, tmp_path: Path) -> None:
    lab, key, home = one_mib
    lab.start()
    sources = [_file(tmp_path, f"s{i}.bin", 400 * 1024) for i in range(2)]

    sessions = [
        subprocess.Popen(
            ["sftp", *lab.ssh_options(key), "-P", str(lab.port), "-b", "-", TARGET],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for _source in sources
    ]
    for index, (session, source) in enumerate(zip(sessions, sources, strict=True)):
        # Each session uploads the same 400 KiB twice under new names, so
        # both together want 1.6 MiB of a 1 MiB quota.
        assert session.stdin is not None
        session.stdin.write(f"put {source} {index}-a.bin\n".encode())
        session.stdin.write(f"put {source} {index}-b.bin\n".encode())
        session.stdin.close()
    for session in sessions:
        session.wait(timeout=120)

    failures = [session for session in sessions if session.returncode != 0]
    assert failures, "1.6 MiB fit into a 1 MiB quota"
    assert _used_on_disk(home) <= MiB
    assert _used_on_disk(home) > MiB - 2 * 262144


def test_a_full_disk_fails_cleanly_and_the_server_keeps_serving(
    lab: ServerLab, tmp_path: Path
) -> None:
    lab.data_dir.mkdir(mode=0o711)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0711", "tmpfs", lab.data_dir],
        check=True,
    )
    try:
        key = lab.add_user("filler")
        lab.start()
        home = lab.data_dir / "filler"
        too_big = _file(tmp_path, "big.bin", 3 * MiB)
        small = _file(tmp_path, "small.bin", 1000)

        full = lab.sftp("filler", f"put {too_big} big.bin\n", key=key)
        kept = (home / "big.bin").read_bytes()
        after = lab.sftp("filler", f"rm big.bin\nput {small} small.bin\nls\n", key=key)

        assert full.returncode != 0
        assert 'write remote "/big.bin": Failure' in full.stderr
        assert 0 < len(kept) < 3 * MiB
        assert kept == too_big.read_bytes()[: len(kept)]
        lab.wait_for_log("failed: the server's disk is full.", 5)
        assert after.returncode == 0, after.stderr
        assert (home / "small.bin").read_bytes() == small.read_bytes()
        closes = [e for e in lab.audit_events("sftp.close") if e["path"] == "/big.bin"]
        assert closes[-1]["outcome"] == "the server's disk is full"
    finally:
        lab.stop()
        subprocess.run(["umount", "-l", lab.data_dir], check=False)
