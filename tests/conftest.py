"""Fixtures shared by the server tests."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from serverlab import ServerLab, ensure_service_user, make_lab_root


@pytest.fixture
def lab() -> Iterator[ServerLab]:
    """A configured but not yet started server in its own directory."""

    ensure_service_user()
    root = make_lab_root()
    server = ServerLab(root)
    server.write_config()
    try:
        yield server
    finally:
        try:
            server.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)
