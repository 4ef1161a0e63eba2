"""A description of the machine a run measured, for the results' header."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path


def describe() -> dict[str, str]:
    """CPU, kernel and software versions, as printable strings."""

    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpus": str(os.cpu_count()),
        "cpu_model": _cpu_model(),
        "memory": f"{_memory_gib():.0f} GiB",
        "load_average": " ".join(f"{value:.2f}" for value in os.getloadavg()),
        "kernel": platform.release(),
        "openssh": _openssh_version(),
        "python": f"{platform.python_version()} ({_interpreter()})",
        "asyncssh": _package_version("asyncssh"),
        "cryptography": _package_version("cryptography"),
    }


def _interpreter() -> str:
    """The interpreter behind the virtual environment, if any.

    Named because builds differ in speed: Debian's is built with
    profile-guided optimization, a default pyenv build is not.
    """

    base = getattr(sys, "_base_executable", sys.executable)
    return os.path.realpath(base)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / (1024 * 1024)
    return 0.0


def _openssh_version() -> str:
    # ssh -V prints to stderr; sshd and sftp come from the same release.
    completed = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
    return completed.stderr.strip() or "unknown"


def _package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"
