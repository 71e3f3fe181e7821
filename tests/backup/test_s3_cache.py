"""Backups of an instance whose data folder is an S3 cache (engine/mirror.py on the memory
backend): evicted blocks are placeholders of zeros there, a backup must hold the real bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from appliance.backup import folder as ft
from appliance.backup import snapshot
from appliance.backup.targets import open_target
from appliance.engine import Storage
from appliance.engine.mirror import Mirror
from appliance.engine.models import EngineOptions
from appliance.errors import ServiceUnavailable
from tests.backup.conftest import read_all
from tests.remote.test_mirror import (
    FlakyBackend,
    evicted_storage,
    payloads,
    upload_all,
)


def evicted_cache(root: Path, backend: FlakyBackend) -> tuple[Mirror, Storage, dict[int, bytes]]:
    """A storage on a cache ~6x smaller than its data, synced, most blocks evicted."""
    data = payloads(120, 20_000)  # ~2.4 MB of payload
    mirror, storage = evicted_storage(backend, root, data, 400_000)
    return mirror, storage, data


def backup(storage: Storage, root: Path, target: Path) -> str:
    """Stage and publish a backup of every bucket as the service does; its id. A sync pass
    runs between the two (as the mirror's background pass may): it uploads no staged link."""
    staged = snapshot.stage(storage, root, None)
    mirror = storage.options.mirror
    assert mirror is not None
    mirror.sync()
    keys = [info.key for info in mirror.backend.list("")]
    assert keys and not [k for k in keys if snapshot.STAGING_DIR in k]
    made = open_target(str(target)).publish(staged, instance="t", generation=0, buckets=None)
    return made.id


def payloads_of(folder: Path) -> dict[int, bytes]:
    """``{timestamp: payload}`` of b/e in a backup's data folder."""
    return {ts: payload for (_, _, ts), (payload, _) in read_all(folder).items()}


def test_a_backup_of_an_evicted_cache_holds_every_real_byte(tmp_path: Path) -> None:
    root, target = tmp_path / "cache", tmp_path / "backups"
    mirror, storage, data = evicted_cache(root, FlakyBackend())
    evicted = mirror.info()["evicted_files"]
    try:
        bid = backup(storage, root, target)
        assert payloads_of(target / bid / "data") == data
        assert ft.verify(target, bid).ok
        # The backup held eviction off only while it linked: the cache is bounded again.
        assert mirror.evict() > 0 and mirror.cache_bytes <= mirror.cache_size
        assert mirror.info()["evicted_files"] >= evicted // 2
    finally:
        storage.close()
        mirror.close()


def test_a_block_evicted_again_after_the_prefetch_is_fetched_under_the_gate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, target = tmp_path / "cache", tmp_path / "backups"
    mirror, storage, data = evicted_cache(root, FlakyBackend())
    real = snapshot.prefetch
    stragglers: list[int] = []

    def prefetch_then_evict(m: Any, data_path: Path, buckets: list[str] | None) -> int:
        fetched = real(m, data_path, buckets)
        assert not any(m.is_placeholder(p) for p in (root / "b" / "e").glob("*.blk"))
        pins, m._pins = m._pins, 0  # noqa: SLF001 - a straggler, as if the hold had a gap
        try:
            stragglers.append(m.evict())
        finally:
            m._pins = pins  # noqa: SLF001
        return fetched

    monkeypatch.setattr(snapshot, "prefetch", prefetch_then_evict)
    try:
        bid = backup(storage, root, target)
        assert stragglers[0] > 0
        assert payloads_of(target / bid / "data") == data
    finally:
        storage.close()
        mirror.close()


def test_s3_down_fails_the_backup_before_anything_reaches_the_target(tmp_path: Path) -> None:
    root, target = tmp_path / "cache", tmp_path / "backups"
    backend = FlakyBackend()
    mirror, storage, data = evicted_cache(root, backend)
    backend.down = True
    try:
        with pytest.raises(ServiceUnavailable) as caught:
            backup(storage, root, target)
        assert caught.value.message.startswith("backup failed: b/e/")
        assert "nothing was written to the target" in caught.value.message
        assert not target.exists() or ft.list_backups(target) == []
        assert list((root / snapshot.STAGING_DIR).iterdir()) == []
        backend.down = False
        bid = backup(storage, root, target)  # S3 back: the next backup is complete
        assert payloads_of(target / bid / "data") == data
    finally:
        storage.close()
        mirror.close()


def test_lazily_restored_descriptors_are_fetched_too(tmp_path: Path) -> None:
    backend = FlakyBackend()
    data = payloads(60, 2_000)
    upload_all(backend, tmp_path / "w", data)
    root, target = tmp_path / "lazy", tmp_path / "backups"
    mirror = Mirror(backend, root, cache_size=10**9, sync_interval=60, lazy_descriptors=True)
    mirror.restore()
    restored = Storage.open(
        EngineOptions(data_path=root, mirror=mirror, min_free_space=0, integrity_checks=False)
    )
    try:
        assert any(mirror.is_placeholder(p) for p in (root / "b" / "e").glob("*.meta"))
        bid = backup(restored, root, target)
        assert payloads_of(target / bid / "data") == data
        assert ft.verify(target, bid).ok
    finally:
        restored.close()
        mirror.close()
