"""Storage: buckets, info quirks, compaction, reopen persistence, read-only mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord, QuotaType, StorageInfo
from appliance.errors import Conflict, Forbidden, InternalError, NotFound, UnprocessableEntity

CT = "application/octet-stream"
U64_MAX = 2**64 - 1


def test_storage_buckets_crud(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path / "new" / "data"))
    assert storage.info() == StorageInfo(0, 0, U64_MAX, 0)
    storage.create_bucket("b2")
    bucket = storage.create_bucket("b1", BucketSettings(quota_type=QuotaType.HARD, quota_size=9))
    assert storage.bucket_names() == ["b1", "b2"]
    assert bucket.settings.quota_size == 9
    assert storage.get_bucket("b2").settings == BucketSettings()
    with pytest.raises(Conflict) as excinfo:
        storage.create_bucket("b1")
    assert excinfo.value.message == "Bucket 'b1' already exists"
    for bad in ("$system", "a/b", "..", ""):
        with pytest.raises(UnprocessableEntity):
            storage.create_bucket(bad)
    with pytest.raises(NotFound) as excinfo:
        storage.get_bucket("nope")
    assert excinfo.value.message == "Bucket 'nope' is not found"
    storage.remove_bucket("b2")
    assert storage.bucket_names() == ["b1"]
    assert not (tmp_path / "new" / "data" / "b2").exists()
    storage.close()
    storage.close()  # idempotent


def test_storage_info_quirks(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    storage.create_bucket("a").write_record("e", 5_000_000, b"12345678", CT, {})
    storage.create_bucket("c").write_record("e", 9_000_000, b"12345678", CT, {})
    info = storage.info()
    assert (info.bucket_count, info.usage, info.oldest_record, info.latest_record) == (
        2,
        80,
        5_000_000,
        9_000_000,
    )
    storage.create_bucket("empty")
    assert storage.info().oldest_record == 0  # an empty bucket forces 0, as ReductStore
    storage.close()


def test_storage_rename_bucket(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    storage.create_bucket("a").write_record("e", 1, b"data", CT, {})
    storage.create_bucket("other")
    with pytest.raises(Conflict) as excinfo:
        storage.rename_bucket("a", "other")
    assert excinfo.value.message == "Bucket 'other' already exists"
    with pytest.raises(NotFound):
        storage.rename_bucket("zzz", "y")
    with pytest.raises(UnprocessableEntity):
        storage.rename_bucket("a", "b/c")
    storage.rename_bucket("a", "z")
    assert storage.bucket_names() == ["other", "z"]
    entry = storage.get_bucket("z").get_entry("e")
    assert entry.read_payload(entry.get_record(1)) == b"data"
    storage.close()


def test_storage_compaction_moves_wal_into_descriptors(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    bucket = storage.create_bucket("b")
    bucket.write_batch("e", [NewRecord(ts, b"x" * 10) for ts in range(1, 6)])
    entry_dir = tmp_path / "b" / "e"
    assert list((entry_dir / ".wal").glob("*.wal")) and not list(entry_dir.glob("*.meta"))
    storage.compact()
    assert not list((entry_dir / ".wal").glob("*.wal"))
    assert [p.name for p in entry_dir.glob("*.meta")] == ["1.meta"]
    bucket.get_entry("e").update_labels(3, {"l": "v"}, [])
    assert list((entry_dir / ".wal").glob("*.wal"))  # label updates are WAL-logged
    storage.close()
    assert not list((entry_dir / ".wal").glob("*.wal"))


def test_storage_reopen_keeps_everything(tmp_path: Path) -> None:
    options = EngineOptions(data_path=tmp_path)
    storage = Storage.open(options)
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=3))
    bucket.write_batch(
        "e", [NewRecord(ts, bytes([ts]) * ts, "text/plain", {"n": str(ts)}) for ts in range(1, 11)]
    )
    bucket.write_record("a/b", 7, b"nested", CT, {})
    bucket.get_entry("e").update_labels(4, {"n": "four"}, [])
    bucket.get_entry("e").remove_records([5])
    before = {i.name: i for i in bucket.entries()}
    storage.close()
    storage = Storage.open(options)
    assert storage.recovery.ok and not storage.recovery.problems
    bucket = storage.get_bucket("b")
    assert {i.name: i for i in bucket.entries()} == before
    entry = bucket.get_entry("e")
    records = list(entry.iter_records(0, U64_MAX))
    assert [m.timestamp for m in records] == [1, 2, 3, 4, 6, 7, 8, 9, 10]
    assert dict(entry.get_record(4).labels) == {"n": "four"}
    assert all(entry.read_payload(m) == bytes([m.timestamp]) * m.timestamp for m in records)
    storage.close()


def test_storage_crash_without_close_replays_the_wal(tmp_path: Path) -> None:
    options = EngineOptions(data_path=tmp_path)
    storage = Storage.open(options)
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, b"acknowledged", CT, {})
    # No close(): the process "dies" here; only the data file and the WAL exist.
    reopened = Storage.open(options)
    entry = reopened.get_bucket("b").get_entry("e")
    assert entry.read_payload(entry.get_record(1)) == b"acknowledged"
    assert reopened.recovery.ok
    reopened.close()


def test_storage_unusable_data_path_is_internal_error(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_bytes(b"")
    with pytest.raises(InternalError) as excinfo:
        Storage.open(EngineOptions(data_path=file / "data"))
    assert "not usable" in excinfo.value.message


def test_storage_read_only_refuses_mutations(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    storage.create_bucket("b").write_record("e", 1, b"x", CT, {})
    storage.close()
    replica = Storage.open(EngineOptions(data_path=tmp_path, read_only=True))
    bucket = replica.get_bucket("b")
    entry = bucket.get_entry("e")
    assert entry.read_payload(entry.get_record(1)) == b"x"
    with pytest.raises(Forbidden):
        bucket.write_record("e", 2, b"y", CT, {})
    with pytest.raises(Forbidden):
        replica.create_bucket("c")
    replica.close()


def test_storage_ignores_dot_folders_and_reports_bad_names(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    storage.create_bucket("b").write_record("e", 1, b"x", CT, {})
    storage.close()
    (tmp_path / ".quarantine" / "x").mkdir(parents=True)
    (tmp_path / "not a bucket").mkdir()
    (tmp_path / "b" / ".hidden").mkdir()
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert storage.bucket_names() == ["b"]
    assert storage.recovery.kinds() == {"not_a_bucket"}
    assert [i.name for i in storage.get_bucket("b").entries()] == ["e"]
    storage.close()
