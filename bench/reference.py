"""A plain asyncssh SFTP server: the floor under any server built on asyncssh.

asyncssh's own `SFTPServer` with its `chroot=` path mapping, in one
process, with none of sftpjail's work: no supervisor, no fork, no
sandbox, no permission rules, no audit log, and none of the transport
tunings of `sftpjail.transport`.  What it costs per request is what
asyncssh and asyncio cost; `python -m bench.floor` sets it beside
OpenSSH and sftpjail.  It is a yardstick, never a server to deploy:
asyncssh's chroot is path arithmetic that symlinks can leave.

`python -m bench.reference --port P --root DIR --host-key KEY
--authorized-keys FILE` runs it in the foreground; `AsyncsshReference`
runs it for the benchmark.  It is not run as the benchmark user: the
files it writes belong to root, which changes nothing it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import asyncssh

from bench.servers import (
    BENCH_USER,
    ChrootedServer,
    ensure_system_user,
    make_work_dir,
)

READY_LINE = "asyncssh reference server listening"
REPOSITORY = Path(__file__).resolve().parent.parent


class AsyncsshReference(ChrootedServer):
    """`python -m bench.reference` on 127.0.0.1, its root below the run's."""

    name = "asyncssh"

    @property
    def ready_line(self) -> str:
        return READY_LINE

    def prepare(self, client_public_key: Path) -> None:
        self.host_key = self.root / "host_ed25519"
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.host_key)],
            check=True,
        )
        self.authorized_keys = self.root / "authorized_keys"
        shutil.copyfile(client_public_key, self.authorized_keys)
        self.chroot.mkdir(mode=0o755)
        make_work_dir(self.work_dir, ensure_system_user(BENCH_USER))

    def environment(self) -> dict[str, str]:
        # The server runs in its own directory: Python must find bench/.
        return {**os.environ, "PYTHONPATH": str(REPOSITORY)}

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "bench.reference",
            f"--port={self.port}",
            f"--root={self.chroot}",
            f"--host-key={self.host_key}",
            f"--authorized-keys={self.authorized_keys}",
        ]


async def serve(port: int, root: Path, host_key: Path, authorized_keys: Path) -> None:
    """Serve SFTP on 127.0.0.1:`port` until killed."""

    def sftp_server(channel: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(channel, chroot=str(root).encode())

    server = await asyncssh.listen(
        "127.0.0.1",
        port,
        server_host_keys=[str(host_key)],
        authorized_client_keys=str(authorized_keys),
        sftp_factory=sftp_server,
        allow_scp=False,
        allow_pty=False,
        agent_forwarding=False,
        gss_host=None,
    )
    print(READY_LINE, file=sys.stderr, flush=True)
    await server.wait_closed()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.reference")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--host-key", type=Path, required=True)
    parser.add_argument("--authorized-keys", type=Path, required=True)
    arguments = parser.parse_args(argv)
    asyncio.run(
        serve(
            arguments.port,
            arguments.root,
            arguments.host_key,
            arguments.authorized_keys,
        )
    )


if __name__ == "__main__":
    main()
