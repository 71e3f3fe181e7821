"""check(): the offline scrub used by ``appliance check``."""

from __future__ import annotations

from pathlib import Path

from appliance.engine import Storage
from appliance.engine.check import CheckReport, check
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord

CT = "application/octet-stream"


def populated(path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=path))
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=3))
    bucket.write_batch("e", [NewRecord(ts, bytes([ts]) * 50) for ts in range(1, 10)])
    bucket.write_record("n/m/$meta", 1, b"{}", CT, {"key": "k"})
    storage.close()


def test_check_clean_folder_is_ok(tmp_path: Path) -> None:
    populated(tmp_path)
    report = check(tmp_path)
    assert isinstance(report, CheckReport) and report.ok and report.problems == []
    assert (report.buckets, report.records, report.payload_bytes) == (1, 10, 452)
    assert report.render().startswith("OK")
    assert len(report.render().splitlines()) == 1


def test_check_finds_payload_and_metadata_damage_without_changing_anything(tmp_path: Path) -> None:
    populated(tmp_path)
    data = tmp_path / "b" / "e" / "4.blk"
    blob = bytearray(data.read_bytes())
    blob[60] ^= 1
    data.write_bytes(bytes(blob))
    index = tmp_path / "b" / "e" / "blocks.idx"
    index.write_bytes(index.read_bytes()[:-1])
    before = sorted(p.name for p in (tmp_path / "b" / "e").iterdir())
    report = check(tmp_path)
    assert not report.ok
    assert {p.kind for p in report.problems} == {"payload_corrupt", "index_corrupt"}
    payload = next(p for p in report.problems if p.kind == "payload_corrupt")
    assert payload.path == str(data) and payload.offset == 50
    lines = report.render().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("2 problem(s)")
    assert sorted(p.name for p in (tmp_path / "b" / "e").iterdir()) == before


def test_check_repair_runs_startup_recovery(tmp_path: Path) -> None:
    populated(tmp_path)
    (tmp_path / "b" / "e" / "blocks.idx").write_bytes(b"junk")
    repaired = check(tmp_path, repair=True)
    assert {p.kind for p in repaired.problems} == {"index_corrupt"}
    assert repaired.problems[0].action == "rebuilt from descriptors"
    assert check(tmp_path).ok


def test_check_reports_pending_wal_damage(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    storage.create_bucket("b").write_record("e", 1, b"x", CT, {})
    wal = next((tmp_path / "b" / "e" / ".wal").glob("*.wal"))
    with wal.open("r+b") as f:
        f.truncate(wal.stat().st_size - 1)
    report = check(tmp_path)
    assert [p.kind for p in report.problems] == ["wal_torn"]
    assert report.problems[0].crash_leftover and not report.damaged
    lines = report.render().splitlines()
    assert lines[1] == (
        "left by an unclean shutdown (startup or check --repair recovers them): "
        "1 torn WAL tail to truncate"
    )
    assert lines[2].startswith("no damage: ")
    storage.close()
