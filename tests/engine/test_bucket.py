"""Bucket: entries (nested, $meta), rename/remove, quotas, admission checks, size accounting."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.engine import Bucket, Storage
from appliance.engine import context as context_module
from appliance.engine.models import (
    BucketSettings,
    EngineOptions,
    NewRecord,
    Pieces,
    QuotaType,
)
from appliance.errors import (
    BadRequest,
    Conflict,
    InsufficientStorage,
    InternalError,
    NotFound,
    UnprocessableEntity,
)

CT = "application/octet-stream"
MIB = 1024 * 1024
U64_MAX = 2**64 - 1


@pytest.fixture
def bucket(storage: Storage) -> Bucket:
    return storage.create_bucket("b")


def test_bucket_size_accounting_matches_reductstore(bucket: Bucket) -> None:
    bucket.write_record("e", 1_000_000, b"12345678", CT, {})
    assert bucket.get_entry("e").info().size == 40
    assert bucket.info().size == 40
    # Second record: begin=8 adds 2 bytes of metadata; labels add their encoded length.
    bucket.write_record("e", 2_000_000, b"12345678", CT, {"a": "b"})
    assert bucket.get_entry("e").info().size == 40 + 8 + 32 + 2 + 8


def test_bucket_nested_entries_and_listing(bucket: Bucket) -> None:
    bucket.write_record("a/b/c", 1, b"x", CT, {})
    bucket.write_record("a/$meta", 1, b"{}", CT, {"key": "k"})
    names = [info.name for info in bucket.entries()]
    assert names == ["a", "a/b", "a/b/c"]
    info = bucket.info()
    assert info.entry_count == 3
    assert (
        info.size == bucket.get_entry("a/b/c").info().size + bucket.get_entry("a/$meta").info().size
    )
    assert (info.oldest_record, info.latest_record) == (1, 1)
    with pytest.raises(UnprocessableEntity):
        bucket.get_or_create_entry("a/../x")


def test_bucket_remove_entry_with_descendants(bucket: Bucket, storage: Storage) -> None:
    bucket.write_record("a/b", 1, b"x", CT, {})
    bucket.write_record("a/$meta", 1, b"x", CT, {"key": "k"})
    bucket.write_record("ab", 1, b"x", CT, {})
    bucket.remove_entry("a")
    assert [i.name for i in bucket.entries()] == ["ab"]
    assert not (storage.options.data_path / "b" / "a").exists()
    with pytest.raises(NotFound):
        bucket.remove_entry("a")
    bucket.write_record("a/b", 1, b"again", CT, {})  # the name is free again
    entry = bucket.get_entry("a/b")
    assert entry.read_payload(entry.get_record(1)) == b"again"


def test_bucket_rename_entry(bucket: Bucket) -> None:
    bucket.write_record("a", 1, b"top", CT, {})
    bucket.write_record("a/b", 2, b"child", CT, {})
    bucket.rename_entry("a", "x/y")
    assert [i.name for i in bucket.entries()] == ["x", "x/y", "x/y/b"]
    child = bucket.get_entry("x/y/b")
    assert child.read_payload(child.get_record(2)) == b"child"
    assert child.get_record(2).entry == "x/y/b"
    with pytest.raises(NotFound):
        bucket.rename_entry("a", "z")
    for new in ("x", "x/y", "x/y/b/c"):
        with pytest.raises(Conflict) as excinfo:
            bucket.rename_entry("x/y", new)
        assert excinfo.value.message == f"Entry '{new}' already exists in bucket 'b'"
    with pytest.raises(UnprocessableEntity):
        bucket.rename_entry("x/y", "../evil")
    bucket.write_record("x/y/b", 3, b"more", CT, {})  # the renamed entry keeps accepting writes
    assert bucket.get_entry("x/y/b").info().record_count == 2


def test_bucket_hard_quota_refuses_before_writing(storage: Storage) -> None:
    bucket = storage.create_bucket("q", BucketSettings(quota_type=QuotaType.HARD, quota_size=100))
    bucket.write_record("e", 1, b"x" * 50, CT, {})
    with pytest.raises(BadRequest) as excinfo:
        bucket.begin_write("e", 2, 60, CT, {})
    assert excinfo.value.message == "Quota of 'q' exceeded"
    with pytest.raises(NotFound):
        bucket.get_entry("e").get_record(2)
    errors = bucket.write_batch("e", [NewRecord(3, b"y" * 5), NewRecord(4, b"z" * 60)])
    assert set(errors) == {4} and isinstance(errors[4], BadRequest)


def test_bucket_fifo_quota_drops_oldest_blocks_never_meta(storage: Storage) -> None:
    settings = BucketSettings(quota_type=QuotaType.FIFO, quota_size=500, max_block_records=2)
    bucket = storage.create_bucket("f", settings)
    bucket.write_record("e/$meta", 1, b"m" * 10, CT, {"key": "k"})
    for ts in range(1, 21):
        bucket.write_record("e", ts, b"x" * 40, CT, {})
        # As ReductStore: the check counts the incoming payload, not its record metadata.
        assert bucket.info().size <= 500 + 32
    remaining = [m.timestamp for m in bucket.get_entry("e").iter_records(0, U64_MAX)]
    assert remaining[-1] == 20 and remaining[0] > 1
    assert bucket.get_entry("e/$meta").info().record_count == 1
    with pytest.raises(InternalError) as excinfo:
        bucket.write_record("other", 1, b"x" * 600, CT, {})
    assert excinfo.value.message == "Failed to keep quota of 'f'"


def test_bucket_storage_limit(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path / "d", max_storage_size=100))
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, b"x" * 10, CT, {})
    with pytest.raises(InternalError) as excinfo:
        bucket.write_record("e", 2, b"x" * 100, CT, {})
    assert excinfo.value.message == "storage limit exceeded"
    assert bucket.get_entry("e").info().record_count == 1
    storage.close()


def test_bucket_free_disk_guard_is_507(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    free = {"bytes": 20 * MIB}  # within twice the reserve: every write asks statvfs
    monkeypatch.setattr(context_module.fs_ops, "free_bytes", lambda path: free["bytes"])
    storage = Storage.open(EngineOptions(data_path=tmp_path / "d", min_free_space=16 * MIB))
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, b"x" * 10, CT, {})
    free["bytes"] = 16 * MIB + 5
    with pytest.raises(InsufficientStorage):
        bucket.write_record("e", 2, b"x" * 10, CT, {})
    errors = bucket.write_batch("e", [NewRecord(3, b"x" * 10)])
    assert isinstance(errors[3], InsufficientStorage)
    assert bucket.get_entry("e").info().record_count == 1
    storage.close()


def test_bucket_meta_rules(bucket: Bucket) -> None:
    with pytest.raises(UnprocessableEntity):
        bucket.write_record("e/$meta", 1, b"{}", CT, {})
    with pytest.raises(UnprocessableEntity):
        bucket.write_record("e/$meta", 1, b"{}", CT, {"key": "a", "remove": "true"})
    bucket.write_record("e/$meta", 1, b"v1", CT, {"key": "a"})
    bucket.write_record("e/$meta", 2, b"other", CT, {"key": "b"})
    bucket.write_record("e/$meta", 3, b"v2", CT, {"key": "a"})  # upsert: removes ts 1
    meta = bucket.get_entry("e/$meta")
    assert [m.timestamp for m in meta.iter_records(0, U64_MAX)] == [2, 3]
    meta.update_labels(2, {"remove": "true"}, [])  # tombstones are label updates
    errors = bucket.write_batch("e/$meta", [NewRecord(4, b"v3", labels={"key": "b"})])
    assert not errors
    assert [m.timestamp for m in meta.iter_records(0, U64_MAX)] == [3, 4]
    assert "e/$meta" not in [i.name for i in bucket.entries()]


def test_bucket_write_batch_reports_per_record_errors(bucket: Bucket) -> None:
    bucket.write_record("e", 2, b"old", CT, {})
    errors = bucket.write_batch(
        "e", [NewRecord(1, b"a"), NewRecord(2, b"dup"), NewRecord(3, b"c"), NewRecord(3, b"again")]
    )
    assert set(errors) == {2, 3} and all(isinstance(e, Conflict) for e in errors.values())
    entry = bucket.get_entry("e")
    assert [entry.read_payload(m) for m in entry.iter_records(0, U64_MAX)] == [b"a", b"old", b"c"]


def test_bucket_write_batch_writes_pieces_unjoined_and_checksummed(tmp_path: Path) -> None:
    """Payloads given as received pieces (``Pieces``, the pipelined batch path) are stored
    byte for byte with the checksum of the whole, beside plain ones, and survive a crash."""
    import os

    options = EngineOptions(data_path=tmp_path / "data")
    storage = Storage.open(options)
    bucket = storage.create_bucket("b")
    big = [os.urandom(64 * 1024) for _ in range(3)] + [os.urandom(1000)]
    small = [b"ab", b"cd", b""]
    records = [
        NewRecord(1, Pieces(big)),
        NewRecord(2, b"plain"),
        NewRecord(3, Pieces(small)),
        NewRecord(4, Pieces([os.urandom(40 * 1024), os.urandom(40 * 1024)])),
    ]
    expected = {r.timestamp: bytes(r.data) for r in records}
    assert len(records[0].data) == 3 * 64 * 1024 + 1000
    assert not bucket.write_batch("e", records)
    meta = bucket.write_batch("e/$meta", [NewRecord(5, Pieces([b"k", b"v"]), labels={"key": "a"})])
    assert not meta
    entry = bucket.get_entry("e")
    # read_payload verifies the stored CRC32C against the bytes on disk
    assert {m.timestamp: entry.read_payload(m) for m in entry.iter_records(0, U64_MAX)} == expected
    storage.abandon()  # a crash: the WAL is replayed on open
    reopened = Storage.open(options)
    entry = reopened.get_bucket("b").get_entry("e")
    assert {m.timestamp: entry.read_payload(m) for m in entry.iter_records(0, U64_MAX)} == expected
    meta_entry = reopened.get_bucket("b").get_entry("e/$meta")
    assert meta_entry.read_payload(meta_entry.get_record(5)) == b"kv"
    reopened.close()


def test_bucket_update_settings_persists(storage: Storage) -> None:
    bucket = storage.create_bucket("s")
    new = bucket.update_settings(quota_type=QuotaType.FIFO, quota_size=1000)
    assert new == BucketSettings(quota_type=QuotaType.FIFO, quota_size=1000)
    assert bucket.update_settings(max_block_records=5).quota_size == 1000
    storage.close()
    reopened = Storage.open(storage.options)
    assert reopened.get_bucket("s").settings == BucketSettings(
        quota_type=QuotaType.FIFO, quota_size=1000, max_block_records=5
    )
    reopened.close()
