"""Entry.read_payloads: the bulk payload read of batched queries (one pread per run)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

import appliance.engine.bulk_read as bulk_read_module
from appliance.engine import Bucket, Entry, Storage
from appliance.engine.models import BucketSettings, RecordMeta
from appliance.errors import CorruptionError, InternalError, NotFound, TooEarly

U64_MAX = 2**64 - 1
CT = "application/octet-stream"


@pytest.fixture
def bucket(storage: Storage) -> Bucket:
    return storage.create_bucket("b", BucketSettings(max_block_records=4, max_block_size=10_000))


@pytest.fixture
def preads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Sizes of every os.pread call made while the test runs."""
    sizes: list[int] = []
    real: Callable[[int, int, int], bytes] = os.pread

    def counting(fd: int, size: int, offset: int) -> bytes:
        sizes.append(size)
        return real(fd, size, offset)

    monkeypatch.setattr(os, "pread", counting)
    return sizes


def payload(ts: int, size: int = 8) -> bytes:
    return bytes([ts % 251]) * size


def metas(entry: Entry) -> list[RecordMeta]:
    return list(entry.iter_records(0, U64_MAX))


def read_span(entry: Entry, metas: list[RecordMeta]) -> bytes | None:
    """The payloads ``Entry.read_run`` reads as one span, or None."""
    run = entry.read_run(metas)
    return None if run is None else run[0]


def read_twice(entry: Entry) -> None:
    """Read every run of the entry twice: its blocks other than the last build columns."""
    for _ in range(2):
        list(entry.iter_runs(0, U64_MAX, 1_000))


def assert_unpinned(entry: Entry) -> None:
    assert all(h.pins == 0 for h in entry._ctx.files._open.values())


def test_bulk_read_equals_single_reads_across_blocks_and_empty_payloads(bucket: Bucket) -> None:
    for ts in range(1, 11):
        bucket.write_record("e", ts, payload(ts, ts % 3 * 5), CT, {})  # sizes 5, 10, 0, ...
    entry = bucket.get_entry("e")
    records = metas(entry)
    assert entry.read_payloads(records) == [entry.read_payload(m) for m in records]
    assert entry.read_payloads(records[::-1]) == [entry.read_payload(m) for m in records[::-1]]
    assert entry.read_payloads([]) == []
    assert_unpinned(entry)


def test_bulk_read_joins_adjacent_records_into_one_pread_per_block(
    bucket: Bucket, preads: list[int]
) -> None:
    for ts in range(1, 9):  # two blocks of four 8-byte records
        bucket.write_record("e", ts, payload(ts), CT, {})
    entry = bucket.get_entry("e")
    records = metas(entry)
    preads.clear()
    assert entry.read_payloads(records) == [payload(ts) for ts in range(1, 9)]
    assert preads == [32, 32]
    preads.clear()
    assert entry.read_payloads([records[0], records[2]]) == [payload(1), payload(3)]
    assert preads == [8, 8]  # not adjacent: one pread each


def test_bulk_read_out_of_order_writes_are_not_joined(bucket: Bucket, preads: list[int]) -> None:
    for ts in (4, 3, 2, 1):  # one block; file order is the reverse of time order
        bucket.write_record("e", ts, payload(ts), CT, {})
    entry = bucket.get_entry("e")
    preads.clear()
    assert entry.read_payloads(metas(entry)) == [payload(ts) for ts in (1, 2, 3, 4)]
    assert preads == [8, 8, 8, 8]


def test_bulk_read_runs_are_bounded(
    bucket: Bucket, preads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_read_module, "RUN_BYTES", 16)
    for ts in range(1, 5):
        bucket.write_record("e", ts, payload(ts), CT, {})
    entry = bucket.get_entry("e")
    preads.clear()
    assert entry.read_payloads(metas(entry)) == [payload(ts) for ts in range(1, 5)]
    assert preads == [16, 16]


def test_bulk_read_bigger_records_get_a_pread_each(
    bucket: Bucket, preads: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bulk_read_module, "JOIN_RECORD_BYTES", 8)
    for ts, size in ((1, 8), (2, 8), (3, 9), (4, 8), (5, 8)):
        bucket.write_record("e", ts, payload(ts, size), CT, {})
    entry = bucket.get_entry("e")
    preads.clear()
    got = entry.read_payloads(metas(entry))
    assert got == [payload(ts, size) for ts, size in ((1, 8), (2, 8), (3, 9), (4, 8))] + [
        payload(5)
    ]
    assert preads == [16, 9, 8, 8]  # 1+2 joined; 3 too big; 4 after it; 5 in the next block


def test_bulk_read_corrupt_payload_fails_with_that_record(bucket: Bucket, storage: Storage) -> None:
    for ts in (1, 2, 3):
        bucket.write_record("e", ts, payload(ts), CT, {})
    path = storage.options.data_path / "b" / "e" / "1.blk"
    blob = bytearray(path.read_bytes())
    blob[9] ^= 0xFF  # inside record 2
    path.write_bytes(bytes(blob))
    entry = bucket.get_entry("e")
    records = metas(entry)
    with pytest.raises(CorruptionError) as excinfo:
        entry.read_payloads(records)
    assert excinfo.value.offset == 8 and excinfo.value.path == str(path)
    assert "Record 2 " in excinfo.value.message and "checksum" in excinfo.value.message
    assert entry.read_payloads([records[0], records[2]]) == [payload(1), payload(3)]
    assert_unpinned(entry)


def test_bulk_read_short_data_file_fails_from_the_first_cut_record(
    bucket: Bucket, storage: Storage
) -> None:
    for ts in (1, 2, 3):
        bucket.write_record("e", ts, payload(ts), CT, {})
    path = storage.options.data_path / "b" / "e" / "1.blk"
    os.truncate(path, 12)  # record 2 is cut, record 3 is gone
    entry = bucket.get_entry("e")
    records = metas(entry)
    with pytest.raises(CorruptionError) as excinfo:
        entry.read_payloads(records)
    assert "Record 2 " in excinfo.value.message and "shorter" in excinfo.value.message
    assert entry.read_payloads(records[:1]) == [payload(1)]
    assert_unpinned(entry)


def test_bulk_read_errors_come_in_record_order(bucket: Bucket) -> None:
    bucket.write_record("e", 1, payload(1), CT, {})
    writer = bucket.begin_write("e", 2, 8, CT, {})  # still being written
    broken = bucket.begin_write("e", 3, 8, CT, {})
    broken.abort("client went away")
    entry = bucket.get_entry("e")
    first = entry.get_record(1)
    with pytest.raises(TooEarly):
        entry.read_payloads([first, entry.get_record(2), entry.get_record(3)])
    with pytest.raises(InternalError) as excinfo:
        entry.read_payloads([first, entry.get_record(3), entry.get_record(2)])
    assert excinfo.value.message == "Record 3 is broken"
    gone = RecordMeta(99, 8, CT, {}, first.state, "e")
    with pytest.raises(NotFound):
        entry.read_payloads([first, gone])
    writer.write(payload(2))
    writer.finish()
    assert entry.read_payloads([first, entry.get_record(2)]) == [payload(1), payload(2)]
    assert_unpinned(entry)


def test_bulk_read_of_a_removed_entry_is_not_found(bucket: Bucket) -> None:
    bucket.write_record("e", 1, payload(1), CT, {})
    entry = bucket.get_entry("e")
    records = metas(entry)
    bucket.remove_entry("e")
    with pytest.raises(NotFound):
        entry.read_payloads(records)


def test_records_at_equals_get_record_in_any_state_and_reports_absent_ones(
    bucket: Bucket,
) -> None:
    for ts in range(1, 11):  # blocks of 4 records: the lookups cross blocks
        bucket.write_record("e", ts, payload(ts), CT, {"n": str(ts)})
    writer = bucket.begin_write("e", 11, 8, CT, {})  # still being written
    entry = bucket.get_entry("e")
    wanted = [3, 1, 99, 4, 5, 11, 10, 0]
    found = entry.records_at(wanted)
    assert len(found) == len(wanted)
    for ts, got in zip(wanted, found, strict=True):
        if ts in (99, 0):
            assert isinstance(got, NotFound)
            assert got.message == f"Record {ts} not found in entry b/e"
        else:
            assert got == entry.get_record(ts)
    assert found[5].state is not found[0].state  # 11 is STARTED, 3 is FINISHED
    assert entry.records_at([]) == []
    writer.write(payload(11))
    writer.finish()
    bucket.remove_entry("e")
    with pytest.raises(NotFound):
        entry.records_at([1])


def test_read_span_is_one_pread_of_records_back_to_back(bucket: Bucket, preads: list[int]) -> None:
    for ts in range(1, 9):  # two blocks of four 8-byte records
        bucket.write_record("e", ts, payload(ts), CT, {})
    entry = bucket.get_entry("e")
    records = metas(entry)
    preads.clear()
    assert read_span(entry, records[:4]) == b"".join(payload(ts) for ts in range(1, 5))
    assert preads == [32]
    assert read_span(entry, records[1:3]) == payload(2) + payload(3)
    assert read_span(entry, records[3:5]) is None  # two blocks
    assert read_span(entry, [records[0], records[2]]) is None  # a gap
    assert read_span(entry, [records[1], records[0]]) is None  # not in file order
    assert read_span(entry, []) is None
    assert_unpinned(entry)


def test_read_span_none_for_removed_damaged_or_empty_records(
    bucket: Bucket, storage: Storage
) -> None:
    for ts in (1, 2, 3):
        bucket.write_record("e", ts, payload(ts), CT, {})
    bucket.write_record("e", 4, b"", CT, {})
    entry = bucket.get_entry("e")
    records = metas(entry)
    assert read_span(entry, records) is None  # an empty payload: read_payloads' case
    entry.remove_records([3])
    assert read_span(entry, records[:3]) is None
    path = storage.options.data_path / "b" / "e" / "1.blk"
    blob = bytearray(path.read_bytes())
    blob[9] ^= 0xFF  # inside record 2
    path.write_bytes(bytes(blob))
    assert read_span(entry, records[:2]) is None  # read_payloads then reports the damage
    with pytest.raises(CorruptionError):
        entry.read_payloads(records[:2])
    assert_unpinned(entry)


def test_read_span_checks_large_records_in_place(storage: Storage) -> None:
    """Records of 6,000 bytes: checked through crc_at's in-place path; damage is caught."""
    bucket = storage.create_bucket("c", BucketSettings(max_block_size=1_000_000))
    for ts in (1, 2):
        bucket.write_record("e", ts, payload(ts, 6_000), CT, {})
    entry = bucket.get_entry("e")
    records = metas(entry)
    assert read_span(entry, records) == payload(1, 6_000) + payload(2, 6_000)
    path = storage.options.data_path / "c" / "e" / "1.blk"
    blob = bytearray(path.read_bytes())
    blob[6_000 + 4_000] ^= 0xFF  # inside record 2
    path.write_bytes(bytes(blob))
    assert read_span(entry, records) is None
    with pytest.raises(CorruptionError):
        entry.read_payloads(records)


def test_read_run_gives_the_columns_of_a_block_other_than_the_last(bucket: Bucket) -> None:
    """A span of a block whose columns a query built (a block other than the last, read
    before) comes with them and where it starts in them; otherwise without."""
    for ts in range(1, 9):  # two blocks of four 8-byte records
        bucket.write_record("e", ts, payload(ts), CT, {"n": str(ts % 2)})
    entry = bucket.get_entry("e")
    records = metas(entry)
    assert entry.read_run(records[1:4]) == (payload(2) + payload(3) + payload(4), None, 0)
    read_twice(entry)
    run = entry.read_run(records[1:4])
    assert run is not None
    body, columns, at = run
    assert body == payload(2) + payload(3) + payload(4)
    assert at == 1 and columns is not None
    assert columns.records[1:4] == records[1:4]
    assert columns.ts == [1, 2, 3, 4]
    assert entry.read_run(records[0:1])[1] is columns  # built once, kept while unchanged
    assert entry.read_run(records[5:7]) == (payload(6) + payload(7), None, 0)
    assert entry.read_run(records[3:5]) is None  # two blocks
    assert entry.read_run([records[1], records[0]]) is None  # not in file order
    assert entry.read_run([records[0], records[2]]) is None  # a gap
    assert_unpinned(entry)


def test_columns_follow_every_change_of_their_block(bucket: Bucket, storage: Storage) -> None:
    """Columns built before a record was inserted, relabelled or removed in the block are
    never used for it: the change drops them, and a run is compared record by record."""
    for ts in (10, 20, 30, 40, 50, 60):  # blocks 10 (full) and 50
        bucket.write_record("e", ts, payload(ts), CT, {"n": "a"})
    entry = bucket.get_entry("e")
    before = metas(entry)
    read_twice(entry)
    first = entry.read_run(before[0:3])
    assert first is not None and first[1] is not None

    bucket.write_record("e", 25, payload(25), CT, {"n": "b"})  # out of order, into block 10
    after = metas(entry)
    assert [m.timestamp for m in after[:5]] == [10, 20, 25, 30, 40]
    assert entry.read_run(after[0:2])[1] is None  # dropped by the write
    read_twice(entry)
    assert entry.read_run(after[0:2])[1] is not first[1]  # rebuilt
    assert entry.read_run(after[1:3]) is None  # 25's payload lies after 40's in the file
    # 20 and 30 still lie back to back in the file, but are no longer a run of the block.
    assert entry.read_run(before[1:3]) == (payload(20) + payload(30), None, 0)
    assert entry.read_run(after[3:5])[0] == payload(30) + payload(40)

    entry.update_labels(20, {"n": "c"}, [])
    read_twice(entry)
    stale = entry.read_run(before[0:2])  # the old 20: planned record by record instead
    assert stale is not None and stale[1] is None
    relabelled = metas(entry)
    body, columns, at = entry.read_run(relabelled[0:2])
    assert body == payload(10) + payload(20) and at == 0
    assert columns.records[1].labels == {"n": "c"}

    entry.remove_records([10])
    assert entry.read_run(relabelled[0:2]) is None
    read_twice(entry)
    left = metas(entry)
    assert entry.read_run(left[0:1])[2] == 0  # 20 now starts the block's columns

    path = storage.options.data_path / "b" / "e" / "10.blk"
    blob = bytearray(path.read_bytes())
    blob[8 * 3 + 2] ^= 0xFF  # inside 40, after columns were built
    path.write_bytes(bytes(blob))
    assert entry.read_run(left[2:4]) is None  # checked on every read
    with pytest.raises(CorruptionError):
        entry.read_payloads(left[2:4])
    assert_unpinned(entry)


def test_read_columns_reads_a_run_while_its_columns_are_the_block_s(bucket: Bucket) -> None:
    """``iter_runs`` gives a block other than the last, from the second time it reads it, as
    a ``Run`` of its columns; ``read_columns`` reads it without comparing records, only
    while the block is unchanged."""
    for ts in range(1, 10):  # blocks 1-4, 5-8 (runs) and 9 (the last: plain lists)
        bucket.write_record("e", ts, payload(ts), CT, {})
    entry = bucket.get_entry("e")
    first = list(entry.iter_runs(0, U64_MAX, 3))
    assert [type(run).__name__ for run in first] == ["list", "Run", "list", "Run", "list"]
    runs = list(entry.iter_runs(0, U64_MAX, 3))  # each block read before: its columns
    assert [[m.timestamp for m in run] for run in runs] == [[1, 2, 3], [4], [5, 6, 7], [8], [9]]
    assert [type(run).__name__ for run in runs] == ["Run"] * 4 + ["list"]
    run = runs[2]
    assert (run.at, run.columns.ts) == (0, [5, 6, 7, 8])
    assert entry.read_columns(run.columns, 0, 3) == payload(5) + payload(6) + payload(7)
    entry.update_labels(6, {"k": "v"}, [])
    assert entry.read_columns(run.columns, 0, 3) is None  # changed since: not the block's
    fresh = list(entry.iter_runs(5, 9, 3))[0]  # read before: built again at once
    assert fresh.columns is not run.columns and fresh[1].labels == {"k": "v"}
    assert entry.read_columns(fresh.columns, 0, 3) == payload(5) + payload(6) + payload(7)
    assert_unpinned(entry)


def test_read_columns_checks_small_records_with_one_call_and_finds_damage(
    bucket: Bucket, storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A span of small records read through a block's columns is checked with one CRC32C
    call against the block's running checksums; damage in any of its records makes the
    read refuse the span, and the per-record read then names the damaged record."""
    for ts in range(1, 10):  # blocks 1-4 and 5-8 get columns; 9 is the last
        bucket.write_record("e", ts, payload(ts, 100), CT, {})
    entry = bucket.get_entry("e")
    read_twice(entry)
    run = list(entry.iter_runs(5, 9, 10))[0]
    assert run.columns.ts == [5, 6, 7, 8]
    calls: list[str] = []
    real = bulk_read_module.google_crc32c
    real_value, real_extend = real.value, real.extend

    class Counting:
        @staticmethod
        def value(data: bytes) -> int:
            calls.append("value")
            return real_value(data)

        @staticmethod
        def extend(crc: int, data: bytes) -> int:
            calls.append("extend")
            return real_extend(crc, data)

    monkeypatch.setattr(bulk_read_module, "google_crc32c", Counting)
    expected = b"".join(payload(ts, 100) for ts in (5, 6, 7, 8))
    assert entry.read_columns(run.columns, 0, 4) == expected
    assert calls == ["extend"]
    calls.clear()
    assert entry.read_columns(run.columns, 2, 3) == payload(7, 100)  # one record: its own check
    assert calls == ["value"]
    path = storage.options.data_path / "b" / "e" / "5.blk"
    clean = path.read_bytes()
    for record in range(4):
        blob = bytearray(clean)
        blob[record * 100 + 37] ^= 0x10
        path.write_bytes(bytes(blob))
        assert entry.read_columns(run.columns, 0, 4) is None
        with pytest.raises(CorruptionError, match=f"^Record {5 + record} in block"):
            entry.read_payloads(run)
        path.write_bytes(clean)
    assert entry.read_columns(run.columns, 0, 4) == expected
    assert_unpinned(entry)
