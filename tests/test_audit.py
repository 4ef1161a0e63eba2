"""The audit file: one JSON line per event, and rotation without a restart."""

from __future__ import annotations

import json
from pathlib import Path

from serverlab import ServerLab


def _events(path: Path) -> list[dict[str, object]]:
    """Every line of an audit file as JSON; a line that is not fails the test."""

    return [json.loads(line) for line in path.read_text().splitlines()]


def _made_directories(events: list[dict[str, object]]) -> list[object]:
    return [event["path"] for event in events if event["event"] == "sftp.mkdir"]


def test_copytruncate_rotation_needs_no_restart(lab: ServerLab) -> None:
    """logrotate's `copytruncate` copies the file, then empties it.  Every
    process appends (O_APPEND), so the next line, even from a session that
    was open during the rotation, starts the emptied file instead of
    landing past a hole where the old end was."""

    audit_file = lab.root / "audit-file.jsonl"
    rotated = lab.root / "audit-file.jsonl.1"
    lab.extra_config = f'audit_log = "{audit_file}"'
    lab.write_config()
    key = lab.add_user("alice")
    lab.start()

    result = lab.sftp(
        "alice",
        "mkdir before\n"
        f"!cp {audit_file} {rotated} && truncate -s 0 {audit_file}\n"
        "mkdir after\n",
        key=key,
    )
    assert result.returncode == 0, result.stderr
    lab.stop()

    assert _made_directories(_events(rotated)) == ["/before"]
    assert audit_file.read_bytes().startswith(b'{"time":')
    after = _events(audit_file)
    assert _made_directories(after) == ["/after"]
    assert after[-1]["event"] == "connection.closed"
