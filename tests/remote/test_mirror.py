"""The mirror (engine/mirror.py) on the memory backend: upload, eviction, fetch, restore."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.mirror import KEY_PREFIX, Mirror
from appliance.engine.models import BucketSettings, EngineOptions
from appliance.errors import ServiceUnavailable
from backends.errors import BackendUnavailable
from backends.memory import MemoryBackend

SMALL_BLOCKS = BucketSettings(max_block_size=64 * 1024, max_block_records=8)


def open_storage(root: Path, mirror: Mirror) -> Storage:
    """Restore the mirror, then open the engine on the cache folder."""
    mirror.restore()
    return Storage.open(EngineOptions(data_path=root, mirror=mirror, min_free_space=0))


def payloads(count: int, size: int, seed: int = 7) -> dict[int, bytes]:
    """Deterministic random payloads keyed by timestamp."""
    rng = random.Random(seed)
    return {1_000 + i: rng.randbytes(size) for i in range(count)}


def write_all(storage: Storage, data: dict[int, bytes]) -> None:
    """One bucket, one entry, every payload."""
    bucket = storage.create_bucket("b", SMALL_BLOCKS)
    for ts, payload in data.items():
        bucket.write_record("e", ts, payload, "application/octet-stream", {"k": str(ts)})


def read_all(storage: Storage, data: dict[int, bytes]) -> None:
    """Every payload comes back byte for byte."""
    entry = storage.get_bucket("b").get_entry("e")
    for ts, payload in data.items():
        assert entry.read_payload(entry.get_record(ts)) == payload, ts


def test_sync_uploads_and_a_new_cache_restores_everything(tmp_path: Path) -> None:
    backend = MemoryBackend()
    data = payloads(60, 10_000)
    first = Mirror(backend, tmp_path / "a", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "a", first)
    write_all(storage, data)
    storage.close()
    first.close()
    keys = {info.key for info in backend.list(KEY_PREFIX)}
    assert any(k.endswith(".blk") for k in keys) and f"{KEY_PREFIX}b/e/blocks.idx" in keys
    assert first.info()["unsynced_bytes"] == 0 and first.info()["last_sync"] is not None

    second = Mirror(backend, tmp_path / "b", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "b", second)
    assert second.info()["evicted_files"] > 0  # data objects start as placeholders
    read_all(storage, data)
    assert second.info()["evicted_files"] == 0  # fetched on first use
    storage.close()
    second.close()


def test_a_cache_far_smaller_than_the_data_returns_every_byte(tmp_path: Path) -> None:
    backend = MemoryBackend()
    data = payloads(120, 20_000)  # ~2.4 MB of payload
    mirror = Mirror(backend, tmp_path / "c", cache_size=400_000, sync_interval=60)
    storage = open_storage(tmp_path / "c", mirror)
    write_all(storage, data)
    storage.compact()
    mirror.sync()
    assert mirror.evict() > 0
    assert mirror.cache_bytes <= mirror.cache_size
    for _ in range(3):  # cycles of fetch and evict
        read_all(storage, data)
        mirror.sync()
        mirror.evict()
        on_disk = sum(
            os.stat(p).st_blocks * 512 for p in (tmp_path / "c" / "b" / "e").glob("*.blk")
        )
        assert on_disk <= mirror.cache_size + 70_000  # placeholders are sparse
    storage.close()
    mirror.close()


def test_a_dirty_file_is_never_evicted(tmp_path: Path) -> None:
    backend = MemoryBackend()
    mirror = Mirror(backend, tmp_path / "d", cache_size=1, sync_interval=60)
    storage = open_storage(tmp_path / "d", mirror)
    write_all(storage, payloads(20, 5_000))
    mirror.cache_bytes = 10**6  # over the limit, yet nothing was uploaded: every file is dirty
    assert mirror.evict() == 0
    assert all(os.stat(p).st_blocks > 0 for p in (tmp_path / "d" / "b" / "e").glob("*.blk"))
    storage.close()
    mirror.close()


def test_removal_deletes_objects_one_sync_later(tmp_path: Path) -> None:
    backend = MemoryBackend()
    mirror = Mirror(backend, tmp_path / "r", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "r", mirror)
    write_all(storage, payloads(10, 1_000))
    mirror.sync()
    storage.rename_bucket("b", "c")
    mirror.sync()
    assert any(i.key.startswith(f"{KEY_PREFIX}b/") for i in backend.list(KEY_PREFIX))
    mirror.sync()
    keys = {info.key for info in backend.list(KEY_PREFIX)}
    assert not any(k.startswith(f"{KEY_PREFIX}b/") for k in keys)
    assert any(k.startswith(f"{KEY_PREFIX}c/e/") for k in keys)
    storage.remove_bucket("c")
    mirror.sync()
    mirror.sync()
    assert not any(i.key.startswith(f"{KEY_PREFIX}c/") for i in backend.list(KEY_PREFIX))
    storage.close()
    mirror.close()


class FlakyBackend(MemoryBackend):
    """Fails every call while ``down``."""

    down = False

    def __getattribute__(self, name: str):  # noqa: ANN204
        if name in {"write", "upload", "download", "list", "delete", "init"} and object.__getattribute__(self, "down"):
            raise BackendUnavailable("simulated outage", backend="memory")
        return object.__getattribute__(self, name)


def test_sync_interval_zero_acknowledges_only_once_on_the_store(tmp_path: Path) -> None:
    backend = FlakyBackend()
    mirror = Mirror(backend, tmp_path / "z", cache_size=10**9, sync_interval=0)
    storage = open_storage(tmp_path / "z", mirror)
    bucket = storage.create_bucket("b", SMALL_BLOCKS)
    bucket.write_record("e", 1, b"x" * 100, "text/plain", {})
    wal_keys = [i.key for i in backend.list(KEY_PREFIX) if "/.wal/" in i.key]
    assert wal_keys  # the record's WAL frame is on the store before write_record returned
    backend.down = True
    with pytest.raises(ServiceUnavailable) as caught:
        bucket.write_record("e", 2, b"y" * 100, "text/plain", {})
    assert "not yet uploaded" in caught.value.message
    assert "botocore" not in caught.value.message
    assert mirror.info()["last_error"] is not None
    backend.down = False
    mirror.sync()
    assert mirror.info()["last_error"] is None and mirror.info()["unsynced_bytes"] == 0
    storage.close()
    mirror.close()
    fresh = Mirror(backend, tmp_path / "z2", cache_size=10**9, sync_interval=0)
    storage = open_storage(tmp_path / "z2", fresh)
    entry = storage.get_bucket("b").get_entry("e")
    assert entry.read_payload(entry.get_record(2)) == b"y" * 100  # stored locally, uploaded later
    storage.close()
    fresh.close()


def test_fetch_failure_is_a_503_without_backend_text(tmp_path: Path) -> None:
    backend = FlakyBackend()
    data = payloads(30, 10_000)
    mirror = Mirror(backend, tmp_path / "f", cache_size=50_000, sync_interval=60)
    storage = open_storage(tmp_path / "f", mirror)
    write_all(storage, data)
    storage.compact()
    mirror.sync()
    assert mirror.evict() > 0
    backend.down = True
    entry = storage.get_bucket("b").get_entry("e")
    with pytest.raises(ServiceUnavailable) as caught:
        for ts in data:
            entry.read_payload(entry.get_record(ts))
    assert caught.value.message.startswith("Remote storage is unavailable")
    backend.down = False
    read_all(storage, data)
    storage.close()
    mirror.close()


def test_a_fenced_or_abandoned_mirror_uploads_nothing(tmp_path: Path) -> None:
    backend = MemoryBackend()
    mirror = Mirror(backend, tmp_path / "x", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "x", mirror)
    write_all(storage, payloads(5, 1_000))
    mirror.sync()
    before = {i.key: i.etag for i in backend.list(KEY_PREFIX)}
    write_all_more = storage.get_bucket("b")
    write_all_more.write_record("e", 99_999, b"late", "text/plain", {})

    def deposed() -> None:
        raise ServiceUnavailable("This instance no longer holds the storage lease")

    mirror.fence = deposed  # the lease says: not ours any more
    with pytest.raises(ServiceUnavailable):
        mirror.sync()
    assert {i.key: i.etag for i in backend.list(KEY_PREFIX)} == before
    mirror.fence = None
    mirror.abandoned = True
    mirror.sync()  # a no-op once abandoned
    mirror.close()
    assert {i.key: i.etag for i in backend.list(KEY_PREFIX)} == before
    storage.abandon()

