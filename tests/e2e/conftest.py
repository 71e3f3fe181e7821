"""Fixtures of the real-process tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.server import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running appliance with auth off, stopped (SIGTERM) after the test."""
    proc = ServerProcess(tmp_path / "data").start()
    yield proc
    proc.kill()


@pytest.fixture
def auth_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A running appliance with RS_API_TOKEN=init-secret."""
    proc = ServerProcess(tmp_path / "data", env={"RS_API_TOKEN": "init-secret"}).start()
    yield proc
    proc.kill()
