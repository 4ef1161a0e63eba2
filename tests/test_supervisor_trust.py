"""The supervisor trusts no worker: a real supervisor against an impostor.

The test runs a real `Supervisor` in this process, with its real zygote,
listening on 127.0.0.1, and steps its loop by hand.  When the test wants to
play a worker it connects a TCP client as any client would; the supervisor
admits the connection, makes the session and its socket pair, and at the
one point where it would hand the worker's end to the zygote, the test
keeps that end instead.  Everything the supervisor does with what arrives
on it (`ipc.parse_worker_message`, `Supervisor._handle`,
`Logins.authenticate`, `Logins.confirm`) is the real code.  A `sleep`
process stands in for the worker's process: the supervisor gets its pidfd
exactly as the zygote's `spawned` message would give it, so the test can
see it killed.

Each broken message must end that session only ("protocol violation" in
the audit log, the stand-in killed), leave a bystander session alone and
leave the supervisor serving a real `sftp` login.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypedDict

import asyncssh
import pytest

from serverlab import ClientKey, ServerLab, ensure_service_user, make_lab_root
from sftpjail import ipc
from sftpjail.audit import configure_audit
from sftpjail.config import load_config
from sftpjail.sessions import Session
from sftpjail.supervisor import Supervisor

MAX_AUTH_ATTEMPTS = 3
FAILURE_DELAY = 0.4
PUMP_TIMEOUT = 10.0
LOGIN_TIMEOUT = 60.0
_HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD)


@dataclass
class Impostor:
    """The test, standing where a worker would on one session's link."""

    session: Session
    link: socket.socket
    stand_in: subprocess.Popen[bytes]
    client: socket.socket

    def send(self, message: dict[str, Any] | bytes) -> None:
        data = message if isinstance(message, bytes) else json.dumps(message).encode()
        self.link.send(data)

    def close(self) -> None:
        self.link.close()
        self.client.close()
        if self.stand_in.poll() is None:
            self.stand_in.kill()
        self.stand_in.wait(10)


class Rig:
    """A real supervisor whose loop the test turns, and its impostors."""

    def __init__(self, lab: ServerLab) -> None:
        self.lab = lab
        self.audit_file = lab.root / "audit.jsonl"
        configure_audit(self.audit_file)
        self.supervisor = Supervisor(load_config(lab.config_file))
        self._kept_links: list[socket.socket] = []
        self._impostors_wanted = 0
        self._real_hand_off = self.supervisor._hand_to_zygote
        self.supervisor._hand_to_zygote = self._hand_off  # type: ignore[method-assign]

    def _hand_off(
        self, session: Session, connection: socket.socket, link: socket.socket
    ) -> None:
        if self._impostors_wanted:
            self._impostors_wanted -= 1
            self._kept_links.append(link.dup())
            return
        self._real_hand_off(session, connection, link)

    def pump(self, until: Callable[[], bool], timeout: float = PUMP_TIMEOUT) -> None:
        """Turn the supervisor's loop, as `main_loop` does, until `until()`."""

        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError("the supervisor never got there")
            wait = self.supervisor.timers.run_due()
            for key, _events in self.supervisor.selector.select(min(wait or 0, 0.05)):
                handler: Callable[[], None] = key.data
                handler()

    def impostor(self) -> Impostor:
        """A new connection whose worker is played by the test."""

        known = set(self.supervisor.sessions)
        self._impostors_wanted = 1
        client = socket.create_connection(("127.0.0.1", self.lab.port), timeout=10)
        self.pump(lambda: bool(self._kept_links))
        (connection_id,) = set(self.supervisor.sessions) - known
        session = self.supervisor.sessions[connection_id]

        stand_in = subprocess.Popen(["sleep", "60"])
        session.pidfd = os.pidfd_open(stand_in.pid)
        session.pid = stand_in.pid
        link = self._kept_links.pop()
        link.settimeout(0)
        return Impostor(session, link, stand_in, client)

    def reply(self, impostor: Impostor) -> dict[str, Any]:
        """Wait (turning the loop) for the supervisor's answer to the impostor."""

        answers: list[bytes] = []

        def answered() -> bool:
            try:
                answers.append(impostor.link.recv(ipc.MAX_MESSAGE_BYTES))
            except BlockingIOError:
                return False
            return True

        self.pump(answered)
        return ipc.decode(answers[0])

    def is_open(self, impostor: Impostor) -> bool:
        return impostor.session.connection_id in self.supervisor.sessions

    def closed_reason(self, impostor: Impostor) -> str | None:
        for line in self.audit_file.read_text().splitlines():
            event = json.loads(line)
            if (
                event["event"] == "connection.closed"
                and event["connection"] == impostor.session.connection_id
            ):
                return str(event["reason"])
        return None

    def real_login(self, user: str, key: ClientKey) -> subprocess.CompletedProcess[str]:
        """A real `sftp` session through the real zygote and a real worker."""

        client = subprocess.Popen(
            [
                "sftp",
                *self.lab.ssh_options(key),
                "-P",
                str(self.lab.port),
                "-b",
                "-",
                f"{user}@127.0.0.1",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert client.stdin is not None
        client.stdin.write("pwd\n")
        client.stdin.close()
        self.pump(lambda: client.poll() is not None, LOGIN_TIMEOUT)
        assert client.stdout is not None and client.stderr is not None
        stdout, stderr = client.stdout.read(), client.stderr.read()
        client.stdout.close()
        client.stderr.close()
        return subprocess.CompletedProcess(
            client.args, client.returncode, stdout, stderr
        )


@dataclass
class Scene:
    rig: Rig
    alice: ClientKey
    bob: ClientKey
    bystander: Impostor


@pytest.fixture(scope="module")
def rig() -> Iterator[tuple[Rig, ClientKey, ClientKey]]:
    ensure_service_user()
    root = make_lab_root()
    # The impostors fail logins from 127.0.0.1 on purpose; the defence that
    # would ban the address is tested on its own.
    lab = ServerLab(root, extra_config="[defense]\nenabled = false\n")
    lab.write_config(
        limits=f"max_auth_attempts = {MAX_AUTH_ATTEMPTS}\n"
        f"auth_failure_delay = {FAILURE_DELAY}\n"
    )
    alice = lab.add_user("alice", password="alice's real passphrase")
    bob = lab.add_user("bob")
    saved_handlers = {signum: signal.getsignal(signum) for signum in _HANDLED_SIGNALS}
    saved_wakeup = signal.set_wakeup_fd(-1)
    running = Rig(lab)
    try:
        running.supervisor.startup()
        yield running, alice, bob
    finally:
        running.supervisor.shutdown()
        for listener in running.supervisor.listeners:
            listener.close()
        running.supervisor.selector.close()
        signal.set_wakeup_fd(saved_wakeup)
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)
        configure_audit(None)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def scene(rig: tuple[Rig, ClientKey, ClientKey]) -> Iterator[Scene]:
    running, alice, bob = rig
    bystander = running.impostor()
    try:
        yield Scene(running, alice, bob, bystander)
    finally:
        bystander.close()
        # Every session of this test ends before the next test begins, so
        # none of them counts against the per-source connection limit.
        running.pump(lambda: not running.supervisor.sessions)


def assert_only_that_session_ended(scene: Scene, impostor: Impostor) -> None:
    rig = scene.rig
    rig.pump(lambda: not rig.is_open(impostor))

    assert rig.closed_reason(impostor) == "protocol violation"
    assert impostor.stand_in.wait(10) == -signal.SIGKILL
    assert rig.is_open(scene.bystander)
    assert scene.bystander.stand_in.poll() is None
    login = rig.real_login("alice", scene.alice)
    assert login.returncode == 0, login.stderr
    assert "Remote working directory: /" in login.stdout


def _auth(user: str, method: str, credential: str) -> dict[str, Any]:
    return {"type": "auth", "user": user, "method": method, "credential": credential}


def _sign(key: bytes, data: bytes, algorithm: str = "ssh-ed25519") -> dict[str, Any]:
    return {
        "type": "sign",
        "key": ipc.to_base64(key),
        "algorithm": algorithm,
        "data": ipc.to_base64(data),
    }


BROKEN_MESSAGES = {
    "not-json": b"{this is not json",
    "not-utf8": b"\xff\xfe\xfd",
    "not-an-object": b"[1, 2, 3]",
    "type-not-text": b'{"type": 7}',
    "unknown-type": {"type": "shell", "command": "id"},
    "extra-field": {**_auth("alice", "password", "x"), "home": "/"},
    "missing-field": {"type": "auth", "user": "alice", "method": "password"},
    "unknown-method": _auth("alice", "hostbased", "x"),
    "credential-too-long": _auth("alice", "password", "x" * 1025),
    "user-too-long": _auth("a" * 65, "password", "x"),
    "user-not-text": {**_auth("alice", "password", "x"), "user": ["alice"]},
    "nul-in-user": _auth("alice\0", "password", "x"),
    "login-never-granted": {"type": "login", "user": "alice"},
    "negative-count": {"type": "transfer", "bytes_in": -1, "bytes_out": 0},
    "boolean-count": {"type": "transfer", "bytes_in": True, "bytes_out": 0},
    "negative-packets": {
        "type": "transfer",
        "bytes_in": 0,
        "bytes_out": 0,
        "client_packets": -1,
    },
    "over-size": json.dumps(_auth("alice", "password", "x" * 20000)).encode(),
    "deep-nesting": b"[" * 100_000,
    "huge-number": b'{"type":"transfer","bytes_in":' + b"9" * 5000 + b',"bytes_out":0}',
    "lone-surrogate": b'{"type":"auth","user":"\\ud800","method":"password",'
    b'"credential":"x"}',
    "sign-not-base64": _sign(b"key", b"x" * 32) | {"data": "not base64!"},
    "sign-too-much": _sign(b"key", b"x" * 65),
    "sign-missing-field": {"type": "sign", "key": "", "data": ""},
}


@pytest.mark.parametrize("message", BROKEN_MESSAGES.values(), ids=BROKEN_MESSAGES)
def test_a_broken_message_ends_only_that_session(
    scene: Scene, message: dict[str, Any] | bytes
) -> None:
    impostor = scene.rig.impostor()
    try:
        impostor.send(message)
        assert_only_that_session_ended(scene, impostor)
    finally:
        impostor.close()


def test_login_after_a_refusal_is_a_violation(scene: Scene) -> None:
    impostor = scene.rig.impostor()
    try:
        impostor.send(_auth("alice", "password", "a wrong guess"))
        assert scene.rig.reply(impostor)["ok"] is False
        impostor.send({"type": "login", "user": "alice"})
        assert_only_that_session_ended(scene, impostor)
    finally:
        impostor.close()


def test_login_as_another_user_than_granted_is_a_violation(scene: Scene) -> None:
    impostor = scene.rig.impostor()
    try:
        impostor.send(_auth("alice", "publickey", scene.alice.public_line))
        assert scene.rig.reply(impostor)["ok"] is True
        impostor.send({"type": "login", "user": "bob"})
        assert_only_that_session_ended(scene, impostor)
    finally:
        impostor.close()


def test_authentication_after_login_is_a_violation(scene: Scene) -> None:
    impostor = scene.rig.impostor()
    try:
        impostor.send(_auth("alice", "publickey", scene.alice.public_line))
        assert scene.rig.reply(impostor)["ok"] is True
        impostor.send({"type": "login", "user": "alice"})
        impostor.send(_auth("bob", "password", "anything"))
        assert_only_that_session_ended(scene, impostor)
    finally:
        impostor.close()


def test_a_request_while_a_reply_is_pending_is_a_violation(scene: Scene) -> None:
    impostor = scene.rig.impostor()
    try:
        impostor.send(_auth("alice", "password", "first guess"))
        impostor.send(_auth("alice", "password", "second guess, too early"))
        assert_only_that_session_ended(scene, impostor)
    finally:
        impostor.close()


def test_a_request_after_the_attempt_limit_is_a_violation(scene: Scene) -> None:
    impostor = scene.rig.impostor()
    try:
        replies = []
        for attempt in range(MAX_AUTH_ATTEMPTS):
            impostor.send(_auth("alice", "publickey", f"ssh-ed25519 AAAA{attempt}"))
            replies.append(scene.rig.reply(impostor))
        impostor.send(_auth("alice", "publickey", scene.alice.public_line))

        assert [reply["ok"] for reply in replies] == [False] * MAX_AUTH_ATTEMPTS
        assert [reply["disconnect"] for reply in replies] == [False, False, True]
        assert_only_that_session_ended(scene, impostor)
    finally:
        impostor.close()


def test_the_supervisor_delays_failures_however_fast_the_worker_asks(
    scene: Scene,
) -> None:
    impostor = scene.rig.impostor()
    try:
        waits = []
        for attempt in range(MAX_AUTH_ATTEMPTS):
            asked = time.monotonic()
            impostor.send(_auth("alice", "password", f"guess {attempt}"))
            reply = scene.rig.reply(impostor)
            waits.append(time.monotonic() - asked)
            assert reply["ok"] is False

        for attempt, waited in enumerate(waits):
            assert waited >= FAILURE_DELAY * 2**attempt, waits
        assert scene.rig.is_open(impostor)
    finally:
        impostor.close()


def test_the_real_password_is_granted_to_an_honest_request(scene: Scene) -> None:
    impostor = scene.rig.impostor()
    try:
        impostor.send(_auth("alice", "password", "alice's real passphrase"))
        reply = scene.rig.reply(impostor)
        impostor.send({"type": "login", "user": "alice"})
        scene.rig.pump(lambda: impostor.session.user == "alice")

        assert reply["ok"] is True
        assert reply["home"] == str(scene.rig.lab.data_dir / "alice")
        assert scene.rig.is_open(impostor)
        assert impostor.stand_in.poll() is None
    finally:
        impostor.close()


def test_a_closed_link_ends_the_session_quietly(scene: Scene) -> None:
    impostor = scene.rig.impostor()
    try:
        impostor.link.close()
        scene.rig.pump(lambda: not scene.rig.is_open(impostor))

        assert scene.rig.closed_reason(impostor) == "closed"
        assert scene.rig.is_open(scene.bystander)
    finally:
        impostor.close()


def test_a_home_that_cannot_be_made_refuses_that_login_only(scene: Scene) -> None:
    # A user whose home holds bob's (homes may nest) can do this to it; so
    # can an operator's mistake.
    home = scene.rig.lab.data_dir / "bob"
    moved = home.with_name("bob.moved")
    home.rename(moved)
    home.symlink_to("/etc")
    impostor = scene.rig.impostor()
    try:
        impostor.send(_auth("bob", "publickey", scene.bob.public_line))
        reply = scene.rig.reply(impostor)

        assert reply["ok"] is False
        login = scene.rig.real_login("alice", scene.alice)
        assert login.returncode == 0, login.stderr
    finally:
        impostor.close()
        home.unlink()
        moved.rename(home)


# -- host key signatures ---------------------------------------------------------


def _host_key(scene: Scene) -> asyncssh.SSHKey:
    """The public half of the server's Ed25519 host key."""

    private = asyncssh.read_private_key(
        scene.rig.lab.state_dir / "ssh_host_ed25519_key"
    )
    return asyncssh.import_public_key(private.export_public_key())


def _signature(scene: Scene, impostor: Impostor, message: dict[str, Any]) -> Any:
    impostor.send(message)
    reply = scene.rig.reply(impostor)
    assert reply["type"] == "signature"
    return reply


def test_an_exchange_hash_is_signed_once_before_login(scene: Scene) -> None:
    host_key = _host_key(scene)
    exchange_hash = os.urandom(32)
    impostor = scene.rig.impostor()
    try:
        first = _signature(scene, impostor, _sign(host_key.public_data, exchange_hash))
        second = _signature(scene, impostor, _sign(host_key.public_data, exchange_hash))

        signature = base64.b64decode(first["signature"])
        assert host_key.verify(exchange_hash, signature)
        assert second == {
            "type": "signature",
            "error": "only one key exchange before login",
        }
        assert scene.rig.is_open(impostor)
    finally:
        impostor.close()


def test_after_login_every_key_exchange_is_signed(scene: Scene) -> None:
    host_key = _host_key(scene)
    impostor = scene.rig.impostor()
    try:
        _signature(scene, impostor, _sign(host_key.public_data, bytes(32)))
        impostor.send(_auth("alice", "publickey", scene.alice.public_line))
        assert scene.rig.reply(impostor)["ok"] is True
        impostor.send({"type": "login", "user": "alice"})

        for size in (32, 48, 64):
            data = os.urandom(size)
            reply = _signature(scene, impostor, _sign(host_key.public_data, data))
            assert host_key.verify(data, base64.b64decode(reply["signature"]))
    finally:
        impostor.close()


class SignFields(TypedDict):
    """What a sign request names, before _sign encodes it."""

    key: bytes
    data: bytes
    algorithm: str


class SignChange(TypedDict, total=False):
    """Some of SignFields, replaced to make a request the supervisor refuses."""

    key: bytes
    data: bytes
    algorithm: str


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"data": bytes(20)}, "20 bytes are not an exchange hash"),
        ({"key": b"not one of ours"}, "no such host key"),
        ({"algorithm": "rsa-sha2-256"}, "rsa-sha2-256 does not fit the key"),
        ({"algorithm": "ssh-ëd25519"}, "ssh-ëd25519 does not fit the key"),
    ],
    ids=["not-a-hash", "unknown-key", "wrong-algorithm", "not-ascii"],
)
def test_only_an_exchange_hash_by_a_host_key_is_signed(
    scene: Scene, change: SignChange, error: str
) -> None:
    host_key = _host_key(scene)
    request: SignFields = {
        "key": host_key.public_data,
        "data": bytes(32),
        "algorithm": "ssh-ed25519",
    }
    request.update(change)
    impostor = scene.rig.impostor()
    try:
        reply = _signature(
            scene,
            impostor,
            _sign(request["key"], request["data"], request["algorithm"]),
        )

        assert reply == {"type": "signature", "error": error}
    finally:
        impostor.close()


def test_a_signature_does_not_cut_a_refusal_delay_short(scene: Scene) -> None:
    host_key = _host_key(scene)
    impostor = scene.rig.impostor()
    try:
        impostor.send(_auth("alice", "password", "a wrong guess"))
        _signature(scene, impostor, _sign(host_key.public_data, bytes(32)))
        # The refusal is still due: asking again now is out of turn.
        impostor.send(_auth("alice", "password", "another guess"))
        assert_only_that_session_ended(scene, impostor)
    finally:
        impostor.close()
