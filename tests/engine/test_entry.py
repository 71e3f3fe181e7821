"""Entry: block choice, lookup, queries, payload reads, label updates and removals."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.engine import Bucket, Storage
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord, RecordState
from appliance.errors import CorruptionError, InternalError, NotFound, TooEarly, UnprocessableEntity

U64_MAX = 2**64 - 1
CT = "application/octet-stream"


@pytest.fixture
def bucket(storage: Storage) -> Bucket:
    return storage.create_bucket("b", BucketSettings(max_block_records=3, max_block_size=1000))


def listed(bucket: Bucket, entry: str, start: int = 0, stop: int = U64_MAX) -> list[int]:
    return [m.timestamp for m in bucket.get_entry(entry).iter_records(start, stop)]


def test_entry_write_read_and_meta(bucket: Bucket) -> None:
    bucket.write_record("e", 10, b"hello", "text/plain", {"k": "v"})
    entry = bucket.get_entry("e")
    meta = entry.get_record(10)
    assert (
        meta.timestamp,
        meta.size,
        meta.content_type,
        dict(meta.labels),
        meta.state,
        meta.entry,
    ) == (
        10,
        5,
        "text/plain",
        {"k": "v"},
        RecordState.FINISHED,
        "e",
    )
    assert entry.read_payload(meta) == b"hello"
    assert b"".join(entry.iter_payload(meta, chunk_size=2)) == b"hello"
    assert entry.latest_record().timestamp == 10


def test_entry_blocks_roll_over_and_out_of_order_writes(bucket: Bucket) -> None:
    for ts in (100, 200, 300, 400, 500):
        bucket.write_record("e", ts, b"x" * 10, CT, {})
    bucket.write_record("e", 50, b"y", CT, {})  # before the first block: a new block
    bucket.write_record("e", 250, b"z", CT, {})  # belated, inside a full block: stays there
    info = bucket.get_entry("e").info()
    assert info.record_count == 7 and info.block_count == 3
    assert (info.oldest_record, info.latest_record) == (50, 500)
    assert listed(bucket, "e") == [50, 100, 200, 250, 300, 400, 500]
    assert listed(bucket, "e", 200, 400) == [200, 250, 300]
    assert listed(bucket, "e", 501, U64_MAX) == []


def test_entry_block_size_limit_and_oversize_record(bucket: Bucket) -> None:
    bucket.write_record("e", 1, b"a" * 600, CT, {})
    bucket.write_record("e", 2, b"b" * 600, CT, {})  # 1200 > 1000: new block
    bucket.write_record("e", 3, b"c" * 5000, CT, {})  # bigger than a block: alone in one
    entry = bucket.get_entry("e")
    assert entry.info().block_count == 3
    assert entry.read_payload(entry.get_record(3)) == b"c" * 5000


def test_entry_iter_records_restartable_and_skips_unfinished(bucket: Bucket) -> None:
    for ts in range(1, 11):
        bucket.write_record("e", ts, bytes([ts]), CT, {})
    writer = bucket.begin_write("e", 11, 4, CT, {})
    entry = bucket.get_entry("e")
    got: list[int] = []
    cursor = 0
    while True:  # a continuous query re-calls with start = last + 1
        batch = [
            m.timestamp for m, _ in zip(entry.iter_records(cursor, U64_MAX), range(3), strict=False)
        ]
        if not batch:
            break
        got += batch
        cursor = batch[-1] + 1
    assert got == list(range(1, 11))
    assert entry.get_record(11).state == RecordState.STARTED
    with pytest.raises(TooEarly):
        entry.read_payload(entry.get_record(11))
    writer.write(b"1234")
    writer.finish()
    assert listed(bucket, "e")[-1] == 11
    assert entry.latest_record().timestamp == 11


def test_entry_not_found_messages(bucket: Bucket) -> None:
    with pytest.raises(NotFound) as excinfo:
        bucket.get_entry("nope")
    assert excinfo.value.message == "Entry 'nope' not found in bucket 'b'"
    bucket.write_record("e", 5, b"x", CT, {})
    entry = bucket.get_entry("e")
    with pytest.raises(NotFound) as excinfo:
        entry.get_record(4)
    assert excinfo.value.message == "Record 4 not found in entry b/e"
    bucket.get_or_create_entry("empty")
    with pytest.raises(NotFound):
        bucket.get_entry("empty").latest_record()


def test_entry_update_labels(bucket: Bucket) -> None:
    bucket.write_record("e", 1, b"x", CT, {"a": "1", "b": "2"})
    entry = bucket.get_entry("e")
    size_before = entry.info().size
    meta = entry.update_labels(1, {"b": "3", "c": "4"}, ["a", "zz"])
    assert dict(meta.labels) == {"b": "3", "c": "4"}
    assert dict(entry.get_record(1).labels) == {"b": "3", "c": "4"}
    assert entry.info().size == size_before  # metadata size is fixed at write time
    with pytest.raises(NotFound):
        entry.update_labels(2, {"a": "b"}, [])


def test_entry_remove_records_and_blocks(bucket: Bucket) -> None:
    for ts in range(1, 8):
        bucket.write_record("e", ts, bytes([ts]) * ts, CT, {})
    entry = bucket.get_entry("e")
    errors = entry.remove_records([2, 3, 99])
    assert set(errors) == {99} and isinstance(errors[99], NotFound)
    assert listed(bucket, "e") == [1, 4, 5, 6, 7]
    assert entry.read_payload(entry.get_record(5)) == b"\x05" * 5  # data file was compacted
    entry.remove_records([4, 5, 6])  # empties the middle block: removed
    assert entry.info().block_count == 2
    assert entry.remove_where(0, 8, lambda m: m.timestamp == 7) == 1
    assert listed(bucket, "e") == [1]
    assert entry.info().record_count == 1


def test_entry_remove_where_range(bucket: Bucket) -> None:
    bucket.write_batch("e", [NewRecord(ts, b"d" * 3) for ts in range(1, 11)])
    entry = bucket.get_entry("e")
    assert entry.remove_where(3, 7, None) == 4
    assert listed(bucket, "e") == [1, 2, 7, 8, 9, 10]


def test_entry_errored_record_states(bucket: Bucket) -> None:
    writer = bucket.begin_write("e", 1, 10, CT, {})
    writer.write(b"12345")
    writer.abort("client went away")
    entry = bucket.get_entry("e")
    assert entry.get_record(1).state == RecordState.ERRORED
    with pytest.raises(InternalError) as excinfo:
        entry.read_payload(entry.get_record(1))
    assert excinfo.value.message == "Record 1 is broken"
    assert listed(bucket, "e") == []


def test_entry_runtime_payload_corruption_fails_only_that_record(
    bucket: Bucket, storage: Storage
) -> None:
    for ts in (1, 2, 3):
        bucket.write_record("e", ts, bytes([ts]) * 8, CT, {})
    path = storage.options.data_path / "b" / "e" / "1.blk"
    blob = bytearray(path.read_bytes())
    blob[9] ^= 0xFF  # inside record 2
    path.write_bytes(bytes(blob))
    entry = bucket.get_entry("e")
    with pytest.raises(CorruptionError) as excinfo:
        entry.read_payload(entry.get_record(2))
    err = excinfo.value
    assert err.path == str(path) and err.offset == 8 and "b/e/1" in err.message
    assert entry.read_payload(entry.get_record(3)) == b"\x03" * 8
    with pytest.raises(CorruptionError):
        b"".join(entry.iter_payload(entry.get_record(2)))


def test_entry_runtime_descriptor_corruption_hides_the_block(tmp_path: Path) -> None:
    options = EngineOptions(data_path=tmp_path / "data")
    storage = Storage.open(options)
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=2))
    for ts in (1, 2, 3, 4):
        bucket.write_record("e", ts, b"x", CT, {})
    storage.close()
    storage = Storage.open(options)
    meta = options.data_path / "b" / "e" / "1.meta"
    blob = bytearray(meta.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    meta.write_bytes(bytes(blob))
    entry = storage.get_bucket("b").get_entry("e")
    with pytest.raises(CorruptionError) as excinfo:
        entry.get_record(1)
    assert "b/e/1" in excinfo.value.message and excinfo.value.path == str(meta)
    assert [m.timestamp for m in entry.iter_records(0, U64_MAX)] == [3, 4]
    assert entry.info().record_count == 2
    storage.close()


def test_entry_meta_entries_refuse_record_removal(bucket: Bucket) -> None:
    bucket.write_record("e/$meta", 1, b"{}", "application/json", {"key": "k"})
    meta_entry = bucket.get_entry("e/$meta")
    with pytest.raises(UnprocessableEntity) as excinfo:
        meta_entry.remove_records([1])
    assert excinfo.value.message == (
        "Can't delete records from system entry 'e/$meta'; use label update with remove=true"
    )
    with pytest.raises(UnprocessableEntity):
        meta_entry.remove_where(0, U64_MAX, None)
