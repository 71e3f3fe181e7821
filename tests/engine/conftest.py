"""Fixtures shared by the engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import EngineOptions


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[Storage]:
    """An engine on a fresh data folder, closed after the test."""
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    yield storage
    storage.close()
