"""Batch writes in bulk: one WRITE_MANY WAL frame and one ``pwrite`` per run of a batch that
appends to the last block; its recovery after cuts and damage, old per-record segments, the
checker and the generation fence."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import google_crc32c
import pytest

from appliance.engine import Storage
from appliance.engine.bulk_write import build_run
from appliance.engine.check import check
from appliance.engine.codec import (
    WAL_HEADER_SIZE,
    StoredRecord,
    WalKind,
    decode_wal,
    encode_record,
    encode_wal_frame,
    encode_wal_header,
    encode_wal_many,
    encode_wal_remove,
)
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord, RecordState
from appliance.engine.sizing import record_metadata_size
from appliance.roles.fencing import Fence, GenerationMarker, snapshot_wal
from backends.filesystem import FilesystemBackend

CT = "application/octet-stream"
U64_MAX = 2**64 - 1
LABELS = {"kind": "batch"}


def rec(ts: int, offset: int, size: int, labels: dict[str, str] | None = None) -> StoredRecord:
    """A FINISHED record as the engine stores it (metadata size computed like the engine)."""
    labels = LABELS if labels is None else labels
    meta = record_metadata_size(ts, offset, offset + size, labels, CT)
    return StoredRecord(ts, size, CT, labels, RecordState.FINISHED, "e", offset, 0, meta)


def payload(ts: int) -> bytes:
    return bytes([ts % 251]) * 20


def batch(first: int, count: int) -> list[NewRecord]:
    """``count`` records in time order sharing one labels dict, as the API parsers hand them."""
    return [NewRecord(ts, payload(ts), CT, LABELS) for ts in range(first, first + count)]


def stamps(storage: Storage) -> list[int]:
    entry = storage.get_bucket("b").get_entry("e")
    return [m.timestamp for m in entry.iter_records(0, U64_MAX)]


def wal_of(path: Path) -> Path:
    wals = sorted((path / "b" / "e" / ".wal").glob("*.wal"))
    assert len(wals) == 1, wals
    return wals[0]


def crashed_batches(path: Path, *batches: list[NewRecord], block_records: int = 1024) -> None:
    """Write the batches, then leave without compacting or closing (what SIGKILL leaves)."""
    storage = Storage.open(EngineOptions(data_path=path))
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=block_records))
    for records in batches:
        assert bucket.write_batch("e", records) == {}
    storage.abandon()


# --- codec ----------------------------------------------------------------------------------------


def test_wal_many_frame_layout_and_round_trip() -> None:
    records = [rec(10, 0, 20), rec(11, 20, 20), rec(12, 40, 20, {})]
    frame = encode_wal_many(7, [encode_record(r) for r in records])
    body = b"".join(encode_record(r) for r in records)
    kind, length, generation, count = struct.unpack_from("<BIQI", frame)
    assert (kind, length, generation, count) == (4, 12 + len(body), 7, 3)
    assert frame[17:-4] == body
    assert frame[-4:] == struct.pack("<I", google_crc32c.value(frame[:-4]))
    data = encode_wal_header(10, 7) + frame
    segment = decode_wal(data, entry="e")
    assert segment.error is None and segment.good_end == len(data)
    assert [f.record for f in segment.frames] == records
    assert {(f.kind, f.generation, f.offset, f.end) for f in segment.frames} == {
        (WalKind.WRITE, 7, WAL_HEADER_SIZE, len(data))
    }


def test_wal_mixed_old_and_new_frames_decode_in_order() -> None:
    old = rec(1, 0, 20)
    many = [rec(2, 20, 20), rec(3, 40, 20)]
    updated = rec(2, 20, 20, {"kind": "relabelled"})
    frames = [
        encode_wal_frame(WalKind.WRITE, 1, old),
        encode_wal_many(1, [encode_record(r) for r in many]),
        encode_wal_remove(1, 3),
        encode_wal_frame(WalKind.UPDATE, 1, updated),
    ]
    data = encode_wal_header(1, 1) + b"".join(frames)
    segment = decode_wal(data, entry="e")
    assert segment.error is None
    assert [(f.kind, f.timestamp) for f in segment.frames] == [
        (WalKind.WRITE, 1), (WalKind.WRITE, 2), (WalKind.WRITE, 3), (WalKind.REMOVE, 3),
        (WalKind.UPDATE, 2),
    ]
    ends = [f.end for f in segment.frames]
    starts = [f.offset for f in segment.frames]
    assert starts[1] == starts[2] == ends[0] and ends[1] == ends[2] == starts[3]


def test_wal_many_cut_at_every_byte_keeps_only_whole_frames() -> None:
    first = encode_wal_header(1, 0) + encode_wal_frame(WalKind.WRITE, 0, rec(1, 0, 20))
    many = encode_wal_many(0, [encode_record(rec(ts, ts * 20, 20)) for ts in (2, 3, 4)])
    for cut in range(len(many)):
        segment = decode_wal(first + many[:cut], entry="e")
        assert [f.timestamp for f in segment.frames] == [1], cut
        assert segment.good_end == len(first)
        if cut:
            assert segment.error is not None and segment.error.recoverable, cut


def test_wal_many_damage_is_not_a_torn_tail() -> None:
    first = encode_wal_header(1, 0) + encode_wal_frame(WalKind.WRITE, 0, rec(1, 0, 20))
    many = bytearray(encode_wal_many(0, [encode_record(rec(ts, ts * 20, 20)) for ts in (2, 3)]))
    many[30] ^= 0x01
    segment = decode_wal(first + bytes(many), entry="e")
    assert [f.timestamp for f in segment.frames] == [1]
    assert segment.error is not None and not segment.error.recoverable
    assert segment.error.offset == len(first) and "checksum" in str(segment.error)


def test_wal_many_with_a_wrong_count_is_damage() -> None:
    records = [encode_record(rec(ts, ts * 20, 20)) for ts in (2, 3)]
    body = struct.pack("<QI", 0, 3) + b"".join(records)  # says 3, carries 2
    head = struct.pack("<BI", WalKind.WRITE_MANY, len(body)) + body
    frame = head + struct.pack("<I", google_crc32c.value(head))
    segment = decode_wal(encode_wal_header(1, 0) + frame, entry="e")
    assert segment.frames == () and segment.error is not None
    assert not segment.error.recoverable


# --- the engine writes them -----------------------------------------------------------------------


def test_batch_appended_to_the_last_block_is_one_frame(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, payload(1), CT, LABELS)  # the block exists: the batch appends
    assert bucket.write_batch("e", batch(2, 50)) == {}
    segment = decode_wal(wal_of(tmp_path).read_bytes(), entry="e")
    assert segment.error is None
    assert len({f.offset for f in segment.frames}) == 2  # the single write, then one frame
    assert [f.timestamp for f in segment.frames] == list(range(1, 52))
    entry = bucket.get_entry("e")
    for ts in (1, 2, 26, 51):
        assert entry.read_payload(entry.get_record(ts)) == payload(ts)
    offsets = [entry.get_record(ts).offset for ts in range(1, 52)]
    assert offsets == [20 * i for i in range(51)]
    assert entry.info().size == sum(
        20 + record_metadata_size(ts, o, o + 20, LABELS, CT)
        for ts, o in zip(range(1, 52), offsets, strict=True)
    )
    storage.close()
    reopened = Storage.open(EngineOptions(data_path=tmp_path))
    assert stamps(reopened) == list(range(1, 52))
    reopened.close()


def test_batch_across_block_boundaries_and_out_of_order_records(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=8))
    records = batch(100, 30) + [NewRecord(50, payload(50), CT, LABELS)] + batch(130, 5)
    records += [NewRecord(101, b"dup", CT, LABELS)]  # a conflict, on the general path
    errors = bucket.write_batch("e", records)
    assert list(errors) == [101] and errors[101].status == 409
    expected = [50, *range(100, 135)]
    assert stamps(storage) == expected
    entry = bucket.get_entry("e")
    assert all(entry.read_payload(entry.get_record(ts)) == payload(ts) for ts in expected)
    assert entry.info().block_count == 6  # 50 alone, then 100-134 by eight
    storage.abandon()  # a crash: recovery replays the WAL segments
    reopened = Storage.open(EngineOptions(data_path=tmp_path))
    assert stamps(reopened) == expected
    entry = reopened.get_bucket("b").get_entry("e")
    assert all(entry.read_payload(entry.get_record(ts)) == payload(ts) for ts in expected)
    reopened.close()


def test_batch_run_failing_its_pwritev_falls_back_and_reports_per_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed bulk write leaves nothing behind; the general path retries the records and,
    failing again, reports them as it always did (ERRORED, never served)."""
    import errno

    from appliance.engine import fs_ops

    storage = Storage.open(EngineOptions(data_path=tmp_path))
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, payload(1), CT, LABELS)
    real = fs_ops.write_all

    def no_space(fd: int, chunks: object, offset: int | None = None) -> None:
        if offset is not None:
            raise OSError(errno.ENOSPC, "full")
        return real(fd, chunks, offset)  # type: ignore[arg-type]

    monkeypatch.setattr(fs_ops, "write_all", no_space)
    errors = bucket.write_batch("e", batch(2, 3))
    monkeypatch.undo()
    assert sorted(errors) == [2, 3, 4] and {e.status for e in errors.values()} == {507}
    assert all(h.pins == 0 for h in storage._ctx.files._open.values())  # nothing left pinned
    assert stamps(storage) == [1]
    assert bucket.write_batch("e", batch(5, 3)) == {}
    assert stamps(storage) == [1, 5, 6, 7]
    storage.abandon()
    reopened = Storage.open(EngineOptions(data_path=tmp_path))
    assert stamps(reopened) == [1, 5, 6, 7]
    reopened.close()


@pytest.mark.parametrize("ts", [0, 5, 1_000_000, 1_700_000_000_123_456, 2**64 - 1])
def test_bulk_run_metadata_size_is_the_engine_figure(ts: int) -> None:
    """``build_run`` inlines ``position_metadata_size``: the same figure at every varint
    boundary of the timestamp and the offsets."""
    for offset in (0, 1, 127, 128, 16_383, 16_384, 2**21, 2**35):
        for size in (0, 1, 127, 128):
            new = NewRecord(ts, b"x" * size, CT, LABELS)
            stored, encoded, _, after = build_run([new], 0, 1, offset, {}, "e")
            expected = record_metadata_size(ts, offset, offset + size, LABELS, CT)
            assert stored[0].meta_size == expected, (offset, size)
            assert after == offset + size
            assert encoded[0] == encode_record(stored[0])


def wal_appends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count ``BlockSet.append_wal`` calls (one per WAL append) from now on."""
    from appliance.engine.blockset import BlockSet

    calls: list[int] = []
    real = BlockSet.append_wal

    def counted(self: BlockSet, block: object, frames: bytes) -> object:
        calls.append(len(frames))
        return real(self, block, frames)  # type: ignore[arg-type]

    monkeypatch.setattr(BlockSet, "append_wal", counted)
    return calls


def test_batches_the_bulk_path_refuses_still_take_one_general_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Large records, and small ones older than the last block's, are not bulk runs: the
    batch still goes in one general step (one WAL append per block), not one per record."""
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1000, payload(1000), CT, LABELS)
    bucket.write_record("e", 1, payload(1), CT, LABELS)  # block 1: 1 and 1000
    calls = wal_appends(monkeypatch)
    large = [NewRecord(ts, b"L" * 40_000, CT, LABELS) for ts in range(2000, 2010)]
    assert bucket.write_batch("e", large) == {}
    assert len(calls) == 1
    calls.clear()
    belated = batch(10, 20)  # between 1 and 1000: never an append to the end
    assert bucket.write_batch("e", belated) == {}
    assert len(calls) <= 2
    assert stamps(storage) == [1, *range(10, 30), 1000, *range(2000, 2010)]
    storage.close()


# --- recovery and the checker ---------------------------------------------------------------------


def test_recovery_of_a_batch_frame_cut_at_every_byte(tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    crashed_batches(origin, batch(1, 1), batch(2, 3))
    wal = wal_of(origin)
    data = wal.read_bytes()
    segment = decode_wal(data, entry="e")
    frame_start = segment.frames[1].offset
    assert segment.frames[1].end == len(data) and segment.frames[0].end == frame_start
    for cut in range(frame_start, len(data) + 1):
        folder = tmp_path / f"cut{cut}"
        shutil.copytree(origin, folder)
        with wal_of(folder).open("r+b") as f:
            f.truncate(cut)
        storage = Storage.open(EngineOptions(data_path=folder))
        if cut == len(data):
            assert stamps(storage) == [1, 2, 3, 4]
            assert storage.recovery.kinds() == set()
        else:
            assert stamps(storage) == [1], cut
            expected = {"wal_torn"} if cut > frame_start else set()
            assert storage.recovery.kinds() == expected, cut
            assert not storage.recovery.damaged
        storage.close()
        shutil.rmtree(folder)


def test_recovery_of_a_damaged_batch_frame_keeps_what_came_before(tmp_path: Path) -> None:
    crashed_batches(tmp_path, batch(1, 1), batch(2, 3), batch(5, 2))
    wal = wal_of(tmp_path)
    blob = bytearray(wal.read_bytes())
    segment = decode_wal(bytes(blob), entry="e")
    second = segment.frames[1]
    blob[second.offset + 40] ^= 0xFF  # inside the second frame's records
    wal.write_bytes(bytes(blob))
    assert [p.kind for p in check(tmp_path).problems] == ["wal_corrupt"]
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert stamps(storage) == [1]  # nothing after damage is trusted
    problems = storage.recovery.problems
    assert [(p.kind, p.crash_leftover, p.offset) for p in problems if p.kind != "data_short"] == [
        ("wal_corrupt", False, second.offset)
    ]
    storage.close()


def test_old_per_record_segment_and_batch_frames_replay_together(tmp_path: Path) -> None:
    """A segment as the previous release wrote it (one frame per record), continued by this
    one with a batch frame: recovery replays both, and the checker finds nothing wrong."""
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, payload(1), CT, LABELS)
    storage.close()  # block 1 has a descriptor; its data file holds record 1
    data_file = tmp_path / "b" / "e" / "1.blk"
    with data_file.open("ab") as f:
        for ts in (2, 3, 4, 5):
            f.write(payload(ts))
    crc = google_crc32c.value
    records = [
        StoredRecord(
            ts, 20, CT, LABELS, RecordState.FINISHED, "e", (ts - 1) * 20, crc(payload(ts)),
            record_metadata_size(ts, (ts - 1) * 20, ts * 20, LABELS, CT),
        )
        for ts in (2, 3, 4, 5)
    ]
    old_frames = b"".join(encode_wal_frame(WalKind.WRITE, 0, r) for r in records[:2])
    new_frame = encode_wal_many(0, [encode_record(r) for r in records[2:]])
    wal_dir = tmp_path / "b" / "e" / ".wal"
    wal_dir.mkdir(exist_ok=True)
    (wal_dir / "1.wal").write_bytes(
        encode_wal_header(1, 0) + old_frames + new_frame + encode_wal_remove(0, 3)
    )
    report = check(tmp_path)  # decodes the segment (its records count once replayed)
    assert report.ok and report.problems == [], report.render()
    wal = wal_dir / "1.wal"
    whole = wal.read_bytes()
    wal.write_bytes(whole[: len(whole) - 20 - 10])  # cut inside the batch frame
    assert [p.kind for p in check(tmp_path).problems] == ["wal_torn"]
    wal.write_bytes(whole)
    reopened = Storage.open(EngineOptions(data_path=tmp_path))
    assert stamps(reopened) == [1, 2, 4, 5]
    assert reopened.recovery.kinds() == set()
    entry = reopened.get_bucket("b").get_entry("e")
    assert [entry.read_payload(entry.get_record(ts)) for ts in (2, 4, 5)] == [
        payload(2), payload(4), payload(5)
    ]
    reopened.close()
    assert check(tmp_path).ok


def test_fence_drops_a_whole_batch_frame_written_after_a_newer_generation_began(
    tmp_path: Path,
) -> None:
    old = Storage.open(EngineOptions(data_path=tmp_path, generation=1))
    bucket = old.create_bucket("b")
    assert bucket.write_batch("e", batch(1, 3)) == {}
    assert bucket.write_batch("e", batch(4, 3)) == {}
    wal = snapshot_wal(FilesystemBackend(tmp_path))
    markers = [GenerationMarker(1, "owner-1", 0.0, {}), GenerationMarker(2, "owner-2", 0.0, wal)]
    assert bucket.write_batch("e", batch(7, 3)) == {}  # the paused ex-holder resumes: never acked
    new = Storage.open(EngineOptions(data_path=tmp_path, generation=2, wal_fence=Fence(markers, 2)))
    assert stamps(new) == [1, 2, 3, 4, 5, 6]
    assert "wal_fenced" in new.recovery.kinds()
    new.close()
