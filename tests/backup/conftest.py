"""Fixtures of the backup tests: a live storage on ``tmp_path`` and a folder target."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The live data folder."""
    return tmp_path / "data"


@pytest.fixture
def target(tmp_path: Path) -> Path:
    """The backup target folder."""
    return tmp_path / "backups"


@pytest.fixture
def storage(data: Path) -> Iterator[Storage]:
    """An open storage with small blocks (several files per entry)."""
    store = Storage.open(EngineOptions(data_path=data, min_free_space=0))
    store.create_bucket("b1", BucketSettings(max_block_records=8, max_block_size=64 * 1024))
    store.create_bucket("b2")
    yield store
    store.close()


def read_all(data: Path) -> dict[tuple[str, str, int], tuple[bytes, dict[str, str]]]:
    """Every FINISHED record of a data folder opened read-only (as `cp` opens a backup)."""
    store = Storage.open(EngineOptions(data_path=data, read_only=True))
    try:
        found = {}
        for bucket in store.bucket_names():
            b = store.get_bucket(bucket)
            for entry in b.entry_names():
                e = b.get_entry(entry)
                for meta in e.iter_records(0, 2**64 - 1):
                    found[(bucket, entry, meta.timestamp)] = (e.read_payload(meta), dict(meta.labels))
        return found
    finally:
        store.close()
