"""Startup recovery: torn WAL tails, corrupt metadata, quarantine, index rebuilds."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions, QuotaType

CT = "application/octet-stream"
U64_MAX = 2**64 - 1


def crashed_store(path: Path, compacted: int, in_wal: int, block_records: int = 4) -> None:
    """Write ``compacted`` records (then compact) and ``in_wal`` more; never close (a crash)."""
    storage = Storage.open(EngineOptions(data_path=path))
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=block_records))
    for ts in range(1, compacted + 1):
        bucket.write_record("e", ts, bytes([ts]) * 10, CT, {"i": str(ts)})
    storage.compact()
    for ts in range(compacted + 1, compacted + in_wal + 1):
        bucket.write_record("e", ts, bytes([ts]) * 10, CT, {"i": str(ts)})


def timestamps(storage: Storage) -> list[int]:
    return [m.timestamp for m in storage.get_bucket("b").get_entry("e").iter_records(0, U64_MAX)]


def test_recovery_torn_wal_tail_is_truncated_not_fatal(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=0, in_wal=3)
    wal = next((tmp_path / "b" / "e" / ".wal").glob("*.wal"))
    size = wal.stat().st_size
    with wal.open("r+b") as f:
        f.truncate(size - 3)  # the last frame is torn
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == [1, 2]
    problems = storage.recovery.problems
    assert [p.kind for p in problems] == ["wal_torn"]
    assert problems[0].crash_leftover and not storage.recovery.damaged
    assert problems[0].path == str(wal) and problems[0].offset is not None
    assert problems[0].offset < size and problems[0].action.startswith("truncated")
    assert not wal.exists()  # replayed into a descriptor, then dropped
    storage.get_bucket("b").write_record("e", 3, b"rewritten", CT, {})
    storage.close()


def test_recovery_corrupt_descriptor_is_quarantined(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=8, in_wal=0)
    meta = tmp_path / "b" / "e" / "5.meta"
    blob = bytearray(meta.read_bytes())
    blob[20] ^= 0xFF
    meta.write_bytes(bytes(blob))
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == [1, 2, 3, 4]
    assert "descriptor_corrupt" in storage.recovery.kinds()
    quarantine = tmp_path / ".quarantine" / "b" / "e"
    assert sorted(p.name for p in quarantine.iterdir()) == ["5.blk", "5.meta"]
    assert storage.bucket_names() == ["b"]  # .quarantine is not a bucket
    storage.close()


def test_recovery_corrupt_index_is_rebuilt_from_descriptors(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=8, in_wal=2)
    index = tmp_path / "b" / "e" / "blocks.idx"
    index.write_bytes(b"garbage")
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == list(range(1, 11))
    assert storage.recovery.kinds() == {"index_corrupt"}
    storage.close()
    assert Storage.open(EngineOptions(data_path=tmp_path)).recovery.ok


def test_recovery_missing_index_is_rebuilt(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=8, in_wal=0)
    (tmp_path / "b" / "e" / "blocks.idx").unlink()
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == list(range(1, 9))
    assert storage.recovery.kinds() == {"index_missing"}
    storage.close()


def test_recovery_stale_index_is_cross_checked(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=4, in_wal=0)
    stale = (tmp_path / "b" / "e" / "blocks.idx").read_bytes()
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    for ts in range(5, 9):
        storage.get_bucket("b").write_record("e", ts, b"x", CT, {})
    storage.close()
    (tmp_path / "b" / "e" / "blocks.idx").write_bytes(stale)  # lost the index update
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == list(range(1, 9))
    assert "descriptor_extra" in storage.recovery.kinds()
    assert not storage.recovery.damaged  # an intact index behind intact descriptors
    storage.close()


def test_recovery_without_integrity_checks_trusts_the_index(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=8, in_wal=2)
    (tmp_path / "b" / "e" / "999.meta").write_bytes(b"junk that nobody indexes")
    storage = Storage.open(EngineOptions(data_path=tmp_path, integrity_checks=False))
    assert timestamps(storage) == list(range(1, 11))  # WAL still replayed
    assert storage.recovery.ok
    storage.close()


def test_recovery_corrupt_settings_fall_back_to_defaults(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    storage.create_bucket("b", BucketSettings(quota_type=QuotaType.FIFO, quota_size=5))
    storage.get_bucket("b").write_record("e", 1, b"x", CT, {})
    storage.close()
    (tmp_path / "b" / "bucket.settings").write_bytes(b"\x00" * 10)
    defaults = BucketSettings(max_block_records=77)
    storage = Storage.open(EngineOptions(data_path=tmp_path, bucket_defaults=defaults))
    assert storage.get_bucket("b").settings == defaults
    assert storage.recovery.kinds() == {"settings_corrupt"}
    assert [p.action for p in storage.recovery.problems] == ["defaults written"]
    assert timestamps(storage) == [1]
    storage.close()
    assert Storage.open(EngineOptions(data_path=tmp_path)).recovery.ok  # rewritten


def test_recovery_short_data_file_loses_only_records_past_its_end(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=4, in_wal=0)
    data = tmp_path / "b" / "e" / "1.blk"
    with data.open("r+b") as f:
        f.truncate(25)  # records 1 and 2 (10 bytes each) survive, 3 is cut, 4 is gone
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == [1, 2]
    assert storage.recovery.kinds() == {"data_short"}
    entry = storage.get_bucket("b").get_entry("e")
    assert entry.read_payload(entry.get_record(2)) == b"\x02" * 10
    storage.close()


def test_recovery_interrupted_rewrite_rolls_forward(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=4, in_wal=0)
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    storage.get_bucket("b").get_entry("e").remove_records([2])
    storage.close()
    entry_dir = tmp_path / "b" / "e"
    snapshot = tmp_path.parent / "snapshot"
    shutil.copytree(tmp_path, snapshot)
    # Simulate the crash window: committed marker + tmp data present, renames not done.
    (snapshot / "b" / "e" / "1.meta.rewrite").write_bytes((entry_dir / "1.meta").read_bytes())
    (snapshot / "b" / "e" / "1.blk.tmp").write_bytes((entry_dir / "1.blk").read_bytes())
    (snapshot / "b" / "e" / "1.blk").write_bytes(b"\x00" * 40)
    storage = Storage.open(EngineOptions(data_path=snapshot))
    assert timestamps(storage) == [1, 3, 4]
    entry = storage.get_bucket("b").get_entry("e")
    assert entry.read_payload(entry.get_record(3)) == b"\x03" * 10
    assert storage.recovery.kinds() == {"rewrite_pending"}
    storage.close()


def test_recovery_orphan_data_file_is_quarantined(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=4, in_wal=0)
    (tmp_path / "b" / "e" / "77.blk").write_bytes(b"lost bytes")
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert storage.recovery.kinds() == {"data_orphan"}
    # The intact index never listed block 77: what a crash before its first WAL frame leaves.
    assert storage.recovery.problems[0].crash_leftover
    assert (tmp_path / ".quarantine" / "b" / "e" / "77.blk").read_bytes() == b"lost bytes"
    storage.close()


def test_recovery_orphan_of_an_indexed_block_is_damage(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=8, in_wal=0)
    (tmp_path / "b" / "e" / "5.meta").unlink()  # the index still lists block 5
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert storage.recovery.kinds() == {"descriptor_missing", "data_orphan"}
    assert [p.crash_leftover for p in storage.recovery.problems] == [False, False]
    storage.close()


@pytest.mark.parametrize("cut", [0, 10, 27])
def test_recovery_wal_with_broken_header_is_dropped(tmp_path: Path, cut: int) -> None:
    crashed_store(tmp_path, compacted=4, in_wal=1)
    wal = next((tmp_path / "b" / "e" / ".wal").glob("*.wal"))
    with wal.open("r+b") as f:
        f.truncate(cut)
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == [1, 2, 3, 4]
    # The lost block's payload bytes have no metadata left: moved aside, not deleted.
    assert storage.recovery.kinds() == {"wal_torn", "data_orphan"}
    # A header cut short is what a crash while starting a segment leaves: no damage.
    assert all(p.crash_leftover for p in storage.recovery.problems)
    storage.close()


def test_recovery_wal_with_corrupt_header_is_damage(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=4, in_wal=1)
    wal = next((tmp_path / "b" / "e" / ".wal").glob("*.wal"))
    blob = bytearray(wal.read_bytes())
    blob[0] ^= 0xFF  # bad magic, full length: not an append cut short
    wal.write_bytes(bytes(blob))
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == [1, 2, 3, 4]
    assert storage.recovery.kinds() == {"wal_corrupt", "data_orphan"}
    assert not any(p.crash_leftover for p in storage.recovery.problems)
    storage.close()


def test_recovery_wal_checksum_mismatch_is_damage_even_at_the_end(tmp_path: Path) -> None:
    crashed_store(tmp_path, compacted=0, in_wal=3)
    wal = next((tmp_path / "b" / "e" / ".wal").glob("*.wal"))
    blob = bytearray(wal.read_bytes())
    blob[-2] ^= 0xFF  # inside the last frame's CRC: complete, but wrong
    wal.write_bytes(bytes(blob))
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    assert timestamps(storage) == [1, 2]
    problems = storage.recovery.problems
    assert [(p.kind, p.crash_leftover) for p in problems] == [("wal_corrupt", False)]
    assert problems[0].action.startswith("truncated")
    storage.close()


def test_recovery_logs_crash_leftovers_at_info_and_damage_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crashed_store(tmp_path, compacted=0, in_wal=3)
    wal = next((tmp_path / "b" / "e" / ".wal").glob("*.wal"))
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 3)
    (tmp_path / "b" / "e" / "77.blk").write_bytes(b"never indexed")
    with caplog.at_level(logging.INFO, logger="appliance.engine"):
        Storage.open(EngineOptions(data_path=tmp_path)).close()
    levels = {r.getMessage(): r.levelno for r in caplog.records}
    summary_line = (
        "startup recovered after an unclean shutdown: 1 torn WAL tail truncated, "
        "1 unfinished data file set aside"
    )
    assert levels[summary_line] == logging.INFO
    assert all(level == logging.INFO for level in levels.values()), levels
    assert not any("damage" in message for message in levels)

    crashed_store(tmp_path / "2", compacted=8, in_wal=0)
    (tmp_path / "2" / "b" / "e" / "blocks.idx").write_bytes(b"garbage")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="appliance.engine"):
        Storage.open(EngineOptions(data_path=tmp_path / "2")).close()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "startup recovery found 1 problem(s) (damage)" in warnings
    assert any(m.startswith("storage problem: index_corrupt: ") for m in warnings)


def test_recovery_parent_entry_without_index_is_still_found(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    bucket = storage.create_bucket("b")
    bucket.write_record("a", 1, b"parent", CT, {})
    bucket.write_record("a/b", 1, b"child", CT, {})
    storage.close()
    (tmp_path / "b" / "a" / "blocks.idx").unlink()
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    entry = storage.get_bucket("b").get_entry("a")
    assert entry.read_payload(entry.get_record(1)) == b"parent"
    assert storage.recovery.kinds() == {"index_missing"}
    storage.close()
