"""Run a function in a forked child and bring its JSON answer back.

A sandbox cannot be taken off again, so anything that wants to *try* one
(`sftpjail check`, the tests) does it in a child process.  The child always
ends with `os._exit`: it never returns into the caller's code, never runs
its exit handlers twice and never flushes the parent's buffers.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
from collections.abc import Callable
from typing import Any, NoReturn

from sftpjail.errors import SandboxError

_READ_SIZE = 65536


def run_in_child(
    body: Callable[[], dict[str, Any]], *, timeout: float = 30.0
) -> dict[str, Any]:
    """Fork, run `body()` in the child, return the dict it returned.

    Raises `SandboxError` if the body raised (with its message), if the
    child ended without an answer (it was killed, or replaced by exec), or
    if it took longer than `timeout` seconds (it is then killed).
    """

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        _be_child(body, read_end, write_end)

    os.close(write_end)
    try:
        raw = _read_until_closed(read_end, pid, timeout)
    finally:
        os.close(read_end)
        _reap(pid, timeout)

    if not raw:
        raise SandboxError("the sandbox trial ended without an answer")
    answer: dict[str, Any] = json.loads(raw)
    if "error" in answer:
        raise SandboxError(f"the sandbox trial failed: {answer['error']}")
    result: dict[str, Any] = answer["result"]
    return result


def _be_child(
    body: Callable[[], dict[str, Any]], read_end: int, write_end: int
) -> NoReturn:
    status = 1
    try:
        os.close(read_end)
        try:
            answer: dict[str, Any] = {"result": body()}
        except BaseException as error:  # reported to the parent
            answer = {"error": f"{type(error).__name__}: {error}"}
        _write_all(write_end, json.dumps(answer).encode())
        status = 0
    finally:
        os._exit(status)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_until_closed(fd: int, pid: int, timeout: float) -> bytes:
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    while True:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(remaining, 0))
        if not readable:
            os.kill(pid, signal.SIGKILL)
            raise SandboxError(f"the sandbox trial did not finish in {timeout:g} s")
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _reap(pid: int, timeout: float) -> None:
    """Wait for the child, killing it if it lingers after closing the pipe."""

    deadline = time.monotonic() + timeout
    try:
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return
            time.sleep(0.01)
    except ChildProcessError:
        pass
