"""What /proc says about a server's processes: tree, CPU time, memory.

CPU: a process's `utime + stime` count its own time; `cutime + cstime`
count the children it has reaped (and what those had reaped in turn).  So
the sum of all four fields over every live process of a server's tree is
all the CPU the server has ever used, as long as no process of the tree is
exiting while it is read.  The benchmark reads it while the sessions it
measures are still open, before and after the timed work.

Memory: PSS (proportional set size) charges each shared page to the
processes sharing it in equal parts, so the PSS of a set of processes adds
up to what they really occupy.  USS (private pages only) is what one
process would give back if it exited.  Both come from smaps_rollup; RSS is
not used because forked workers share most of their pages.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")
_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Memory:
    """The memory of one process or a group of them, in bytes."""

    pss: int
    uss: int

    def __add__(self, other: Memory) -> Memory:
        return Memory(self.pss + other.pss, self.uss + other.uss)


NO_MEMORY = Memory(0, 0)


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, or None if gone."""

    try:
        text = (_PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name is in parentheses and may itself hold spaces.
    return text[text.rindex(")") + 2 :].split()


def parent_of(pid: int) -> int | None:
    """The parent process id, or None if the process is gone."""

    fields = _stat_fields(pid)
    return int(fields[1]) if fields is not None else None


def children_map() -> dict[int, list[int]]:
    """Every live process id, keyed by its parent's id."""

    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        parent = parent_of(int(entry.name))
        if parent is not None:
            children.setdefault(parent, []).append(int(entry.name))
    return children


def descendants(root: int, children: dict[int, list[int]] | None = None) -> list[int]:
    """`root` and every process below it, parents before children."""

    children = children_map() if children is None else children
    found = [root]
    for pid in found:
        found.extend(sorted(children.get(pid, [])))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of these processes and of the children they have reaped."""

    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is None:
            continue
        # utime, stime, cutime, cstime are fields 14-17 of stat(5); the
        # list starts at field 3.
        ticks += sum(int(value) for value in fields[11:15])
    return ticks / _TICKS_PER_SECOND


def tree_cpu_seconds(root: int) -> float:
    """All CPU the process tree under `root` has used so far."""

    return cpu_seconds(descendants(root))


def memory_of(pid: int) -> Memory:
    """PSS and USS of one process; zero if it is gone."""

    try:
        text = (_PROC / str(pid) / "smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return NO_MEMORY
    values: dict[str, int] = {}
    for line in text.splitlines()[1:]:
        name, _, rest = line.partition(":")
        values[name] = int(rest.split()[0]) * 1024
    private = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return Memory(pss=values.get("Pss", 0), uss=private)


def command_of(pid: int) -> str:
    """The command line of a process, for logs and reports."""

    try:
        raw = (_PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()
