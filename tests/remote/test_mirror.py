"""The mirror (engine/mirror.py) on the memory backend: upload, eviction, fetch, restore."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.mirror import KEY_PREFIX, REMOTE_MANIFEST, Mirror, decode_manifest
from appliance.engine.models import BucketSettings, EngineOptions
from appliance.errors import ServiceUnavailable
from backends.base import Backend
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


def upload_all(backend: Backend, folder: Path, data: dict[int, bytes]) -> None:
    """A writer node at ``folder`` stores ``data`` (``write_all``) and stops: all on the store."""
    writer = Mirror(backend, folder, cache_size=10**9, sync_interval=60)
    storage = open_storage(folder, writer)
    write_all(storage, data)
    storage.close()
    writer.close()


def evicted_storage(
    backend: Backend, root: Path, data: dict[int, bytes], cache_size: int
) -> tuple[Mirror, Storage]:
    """A storage at ``root`` on a cache of ``cache_size`` bytes holding ``data``
    (``write_all``), compacted, synced, and with blocks evicted."""
    mirror = Mirror(backend, root, cache_size=cache_size, sync_interval=60)
    storage = open_storage(root, mirror)
    write_all(storage, data)
    storage.compact()
    mirror.sync()
    assert mirror.evict() > 0
    return mirror, storage


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
    mirror, storage = evicted_storage(backend, tmp_path / "c", data, 400_000)
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


def test_rename_keeps_the_objects_and_removal_deletes_them_after_the_manifest(
    tmp_path: Path,
) -> None:
    backend = MemoryBackend()
    data = payloads(10, 1_000)
    mirror = Mirror(backend, tmp_path / "r", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "r", mirror)
    write_all(storage, data)
    storage.compact()  # (a rename compacts first: then it has nothing to fold)
    mirror.sync()
    before = {i.key: i.etag for i in backend.list(KEY_PREFIX)}
    storage.rename_bucket("b", "c")
    mirror.sync()
    # Nothing copied, nothing deleted: the committed manifest maps c/... to the b/... objects.
    assert {i.key: i.etag for i in backend.list(KEY_PREFIX)}.keys() == before.keys()
    files = decode_manifest(backend.read(REMOTE_MANIFEST))["files"]
    assert files and all(rel.startswith("c/") for rel in files)
    assert all(value[0].startswith(f"{KEY_PREFIX}b/") for value in files.values())
    other = Mirror(backend, tmp_path / "r2", cache_size=10**9, sync_interval=60)
    restored = open_storage(tmp_path / "r2", other)
    assert restored.bucket_names() == ["c"]
    entry = restored.get_bucket("c").get_entry("e")
    for ts, payload in data.items():
        assert entry.read_payload(entry.get_record(ts)) == payload
    restored.close()
    storage.remove_bucket("c")
    mirror.sync()  # one pass: the manifest without c, then its objects go
    assert list(backend.list(KEY_PREFIX)) == []
    assert decode_manifest(backend.read(REMOTE_MANIFEST))["files"] == {}
    storage.close()
    mirror.close()


def test_renaming_evicted_blocks_uploads_no_placeholder(tmp_path: Path) -> None:
    backend = MemoryBackend()
    data = payloads(40, 20_000)
    mirror, storage = evicted_storage(backend, tmp_path / "v", data, 100_000)
    storage.get_bucket("b").rename_entry("e", "f")
    storage.rename_bucket("b", "c")
    mirror.sync()
    entry = storage.get_bucket("c").get_entry("f")
    for ts, payload in data.items():  # evicted blocks are fetched from their old keys
        assert entry.read_payload(entry.get_record(ts)) == payload
    other = Mirror(backend, tmp_path / "v2", cache_size=10**9, sync_interval=60)
    restored = open_storage(tmp_path / "v2", other)
    entry = restored.get_bucket("c").get_entry("f")
    for ts, payload in data.items():  # no sparse placeholder went up as the block
        assert entry.read_payload(entry.get_record(ts)) == payload
    restored.close()
    storage.close()
    mirror.close()


def test_a_reused_name_gets_fresh_keys_while_its_old_objects_are_named(tmp_path: Path) -> None:
    backend = MemoryBackend()
    first, second = payloads(10, 1_000, seed=1), payloads(10, 1_000, seed=2)
    mirror = Mirror(backend, tmp_path / "n", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "n", mirror)
    write_all(storage, first)
    mirror.sync()
    storage.rename_bucket("b", "c")  # c's files keep the objects r/b/...
    write_all(storage, second)  # a new bucket b: same file names as the old b
    mirror.sync()
    files = decode_manifest(backend.read(REMOTE_MANIFEST))["files"]
    keys = [value[0] or f"{KEY_PREFIX}{rel}" for rel, value in files.items()]
    assert len(keys) == len(set(keys))  # no object is named twice
    other = Mirror(backend, tmp_path / "n2", cache_size=10**9, sync_interval=60)
    restored = open_storage(tmp_path / "n2", other)
    for name, data in (("c", first), ("b", second)):
        entry = restored.get_bucket(name).get_entry("e")
        for ts, payload in data.items():
            assert entry.read_payload(entry.get_record(ts)) == payload, (name, ts)
    restored.close()
    storage.close()
    mirror.close()


class ManifestFailing(MemoryBackend):
    """Refuses the manifest PUT (``put``) or every delete (``delete``): a crash point."""

    fail: str | None = None

    def replace_if_unchanged(self, key, data, etag):  # noqa: ANN001, ANN201
        if self.fail == "put" and key == REMOTE_MANIFEST:
            raise BackendUnavailable("simulated crash before the manifest", backend="memory")
        return super().replace_if_unchanged(key, data, etag)

    def delete(self, key):  # noqa: ANN001, ANN201
        if self.fail == "delete":
            raise BackendUnavailable("simulated crash before the deletes", backend="memory")
        return super().delete(key)


def buckets_restored(backend: MemoryBackend, root: Path) -> dict[str, list[str]]:
    """{bucket: entries} as a new node with an empty cache sees the bucket."""
    mirror = Mirror(backend, root, cache_size=10**9, sync_interval=60)
    storage = open_storage(root, mirror)
    found = {n: sorted(storage.get_bucket(n).entry_names()) for n in storage.bucket_names()}
    storage.close()
    return found


@pytest.mark.parametrize("fail", ["put", "delete"])
def test_a_crash_in_a_rename_or_removal_pass_leaves_the_old_or_the_new_state(
    tmp_path: Path, fail: str
) -> None:
    backend = ManifestFailing()
    mirror = Mirror(backend, tmp_path / "w", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "w", mirror)
    write_all(storage, payloads(10, 1_000))
    storage.create_bucket("gone", SMALL_BLOCKS).write_record("x", 1, b"1", "text/plain", {})
    mirror.sync()
    old = buckets_restored(backend, tmp_path / "old")
    assert old == {"b": ["e"], "gone": ["x"]}
    storage.get_bucket("b").rename_entry("e", "renamed")
    storage.remove_bucket("gone")
    backend.fail = fail
    if fail == "put":
        with pytest.raises(ServiceUnavailable):
            mirror.sync()
    else:
        mirror.sync()  # committed: failed deletes are retried later, the pass stands
        assert mirror.info()["last_error"] is None
    seen = buckets_restored(backend, tmp_path / f"after-{fail}")
    assert seen == (old if fail == "put" else {"b": ["renamed"]})
    backend.fail = None
    if fail == "delete":  # the orphans are collected by the next writer's first pass
        assert any(i.key.startswith(f"{KEY_PREFIX}gone/") for i in backend.list(KEY_PREFIX))
        mirror.abandoned = True  # a crash: nothing more from this process
        storage.abandon()
        mirror.close()
        again = Mirror(backend, tmp_path / "w", cache_size=10**9, sync_interval=60)
        storage = open_storage(tmp_path / "w", again)  # restart from the cache
        again.sync()
        assert not any(i.key.startswith(f"{KEY_PREFIX}gone/") for i in backend.list(KEY_PREFIX))
        mirror = again
    else:
        mirror.sync()
    assert buckets_restored(backend, tmp_path / "final") == {"b": ["renamed"]}
    storage.close()
    mirror.close()


def test_a_crash_between_the_folder_rename_and_the_state_update_is_finished(
    tmp_path: Path,
) -> None:
    backend = MemoryBackend()
    data = payloads(10, 1_000)
    root = tmp_path / "m"
    mirror = Mirror(backend, root, cache_size=10**9, sync_interval=60)
    storage = open_storage(root, mirror)
    write_all(storage, data)
    storage.compact()
    mirror.sync()
    storage.close()
    mirror.close()
    # What a SIGKILL right after the engine's rename leaves: the intent, the old state.
    (root / ".mirror" / "move.json").write_text('["b", "c"]')
    (root / "b").rename(root / "c")
    again = Mirror(backend, root, cache_size=10**9, sync_interval=60)
    storage = open_storage(root, again)
    again.sync()
    files = decode_manifest(backend.read(REMOTE_MANIFEST))["files"]
    assert files and all(rel.startswith("c/") for rel in files)
    assert buckets_restored(backend, tmp_path / "n") == {"c": ["e"]}
    storage.close()
    again.close()


def test_a_replica_poll_is_one_request_whatever_the_number_of_objects(tmp_path: Path) -> None:
    backend = MemoryBackend()
    writer = Mirror(backend, tmp_path / "w", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "w", writer)
    write_all(storage, payloads(8, 1_000))
    writer.sync()
    replica = Mirror(
        backend, tmp_path / "replica", cache_size=10**9, sync_interval=60, read_only=True
    )
    replica.restore()
    polls = []
    for more in (0, 200):
        for i in range(more):  # 200 more records: 25 more blocks, 50 more objects
            storage.get_bucket("b").write_record("e", 50_000 + i, b"z" * 500, "text/plain", {})
        storage.compact()
        writer.sync()
        replica.refresh()  # applies the new manifest
        before = dict(replica.backend.counts)
        assert replica.refresh() == 0  # nothing new: one HEAD of the manifest
        delta = {k: v - before.get(k, 0) for k, v in replica.backend.counts.items()}
        polls.append({k: v for k, v in delta.items() if v})
    assert polls[0] == polls[1] == {"stat": 1}
    assert "list" not in replica.backend.counts
    storage.close()
    writer.close()


def test_integrity_checks_off_restores_descriptors_lazily(tmp_path: Path) -> None:
    backend = MemoryBackend()
    data = payloads(60, 2_000)
    upload_all(backend, tmp_path / "w", data)
    counts = {}
    for lazy in (False, True):
        root = tmp_path / f"lazy-{lazy}"
        mirror = Mirror(backend, root, cache_size=10**9, sync_interval=60, lazy_descriptors=lazy)
        mirror.restore()
        counts[lazy] = dict(mirror.backend.counts)
        restored = Storage.open(
            EngineOptions(
                data_path=root, mirror=mirror, min_free_space=0, integrity_checks=not lazy
            )
        )
        read_all(restored, data)
        restored.close()
        mirror.close()
    descriptors = len([k for k in backend.list(KEY_PREFIX) if k.key.endswith(".meta")])
    assert descriptors > 5
    assert counts[False]["read"] - counts[True]["read"] == descriptors
    assert "list" not in counts[True] and counts[True]["download"] == 1  # the manifest only


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
    mirror, storage = evicted_storage(backend, tmp_path / "f", data, 50_000)
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



class LostAnswer(MemoryBackend):
    """The first manifest replace lands but its answer is lost; the retry gets 412."""

    lose = False

    def replace_if_unchanged(self, key, data, etag):  # noqa: ANN001, ANN201
        info = super().replace_if_unchanged(key, data, etag)
        if self.lose and key == REMOTE_MANIFEST:
            self.lose = False
            return super().replace_if_unchanged(key, data, etag)  # the retry: 412
        return info


def test_the_manifest_is_fenced_against_another_writer_not_against_a_lost_answer(
    tmp_path: Path,
) -> None:
    backend = LostAnswer()
    mirror = Mirror(backend, tmp_path / "a", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "a", mirror)
    write_all(storage, payloads(5, 1_000))
    mirror.sync()
    storage.get_bucket("b").write_record("e", 77_777, b"more", "text/plain", {})
    backend.lose = True
    mirror.sync()  # our own write answered 412 on the retry: still a success
    assert mirror.info()["last_error"] is None
    # Another writer commits (a successor after a lease change): this one may not any more.
    successor = Mirror(backend, tmp_path / "b", cache_size=10**9, sync_interval=60)
    other = open_storage(tmp_path / "b", successor)
    other.get_bucket("b").write_record("e", 88_888, b"new holder", "text/plain", {})
    successor.sync()
    storage.get_bucket("b").write_record("e", 99_999, b"deposed", "text/plain", {})
    with pytest.raises(ServiceUnavailable) as caught:
        mirror.sync()
    assert "another writer" in caught.value.message
    files = decode_manifest(backend.read(REMOTE_MANIFEST))["files"]
    assert files == successor._manifest_files()  # noqa: SLF001 - untouched by the deposed one
    other.close()
    successor.close()
    storage.abandon()


def test_a_lease_holder_replaces_a_commit_slipped_in_by_a_deposed_holder(tmp_path: Path) -> None:
    backend = MemoryBackend()
    holder = Mirror(backend, tmp_path / "h", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "h", holder)
    write_all(storage, payloads(5, 1_000))
    holder.fence = lambda: None  # the lease says: ours
    holder.sync()
    deposed = Mirror(backend, tmp_path / "d", cache_size=10**9, sync_interval=60)
    old = open_storage(tmp_path / "d", deposed)
    old.create_bucket("late", SMALL_BLOCKS).write_record("x", 1, b"late", "text/plain", {})
    deposed.sync()  # within the fence's margin: its commit lands
    storage.get_bucket("b").write_record("e", 99_999, b"ours", "text/plain", {})
    holder.sync()  # 412, the fence still passes: the holder's state replaces it
    files = decode_manifest(backend.read(REMOTE_MANIFEST))["files"]
    assert files == holder._manifest_files()  # noqa: SLF001
    assert not any(rel.startswith("late/") for rel in files)
    old.abandon()
    storage.close()
    holder.close()
