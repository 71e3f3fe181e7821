"""Snapshots into a folder target: consistency, no shared inode with the live folder,
incremental sharing, manifest, incomplete backups, verify, delete and retention."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from appliance.backup import folder as ft
from appliance.backup import manifest as mf
from appliance.backup import snapshot
from appliance.backup.files import walk_files
from appliance.engine import Storage
from tests.backup.conftest import read_all


def backup(storage: Storage, data: Path, target: Path, buckets: list[str] | None = None) -> mf.Manifest:
    """One backup the way the service takes it."""
    staged = snapshot.stage(storage, data, buckets)
    return snapshot.publish(staged, target, instance="test", generation=0, buckets=buckets)


def write(storage: Storage, bucket: str, entry: str, ts: int, size: int = 1000, **labels: str) -> bytes:
    payload = os.urandom(size)
    storage.get_bucket(bucket).write_record(entry, ts, payload, "application/octet-stream", labels)
    return payload


def test_backup_holds_exactly_the_records_acknowledged_before_the_cut(
    storage: Storage, data: Path, target: Path
) -> None:
    expected = {("b1", "e", ts): (write(storage, "b1", "e", ts, x="1"), {"x": "1"}) for ts in range(1, 30)}
    expected[("b2", "f", 5)] = (write(storage, "b2", "f", 5), {})
    storage.get_bucket("b1").get_entry("e").update_labels(3, {"y": "2"}, [])
    expected[("b1", "e", 3)] = (expected[("b1", "e", 3)][0], {"x": "1", "y": "2"})
    storage.get_bucket("b1").get_entry("e").remove_records([4])
    del expected[("b1", "e", 4)]
    made = backup(storage, data, target)
    write(storage, "b1", "e", 100)  # after the cut: not in the backup
    assert read_all(target / made.id / "data") == expected
    assert mf.read(target / made.id) == made
    assert not [p for p in (target / made.id / "data").rglob("*.wal") if p.is_file()], "compacted"
    assert not (data / snapshot.STAGING_DIR / made.id).exists()


def test_backup_never_shares_an_inode_with_the_live_folder(
    storage: Storage, data: Path, target: Path
) -> None:
    for ts in range(1, 40):
        write(storage, "b1", "e", ts)
    storage.compact()
    made = backup(storage, data, target)
    live = {p.stat().st_ino for _, p in walk_files(data)}
    copied = {p.stat().st_ino for _, p in walk_files(target / made.id / "data")}
    assert not live & copied


def test_second_backup_shares_unchanged_files_and_costs_about_the_delta(
    storage: Storage, data: Path, target: Path
) -> None:
    for ts in range(1, 200):
        write(storage, "b1", "e", ts, size=4000)
    first = backup(storage, data, target)
    for ts in range(1000, 1040):  # 40 records: 5 new blocks of 8
        write(storage, "b1", "e", ts, size=4000)
    second = backup(storage, data, target)
    delta = 40 * 4000
    assert delta <= second.new_bytes < delta + 8 * 4000 + 64 * 1024, second.new_bytes
    assert first.new_bytes > 199 * 4000
    # Deleting the first backup leaves the second whole.
    ft.delete(target, first.id)
    assert ft.verify(target, second.id).ok
    assert len(read_all(target / second.id / "data")) == 239


def test_bucket_filter_backs_up_only_those_buckets(storage: Storage, data: Path, target: Path) -> None:
    write(storage, "b1", "e", 1)
    write(storage, "b2", "e", 1)
    made = backup(storage, data, target, ["b2"])
    assert {k[0] for k in read_all(target / made.id / "data")} == {"b2"}
    assert made.buckets == ("b2",)


def test_verify_finds_and_names_a_flipped_byte(storage: Storage, data: Path, target: Path) -> None:
    for ts in range(1, 20):
        write(storage, "b1", "e", ts)
    made = backup(storage, data, target)
    assert ft.verify(target, made.id).ok
    blk = sorted((target / made.id / "data" / "b1" / "e").glob("*.blk"))[0]
    raw = bytearray(blk.read_bytes())
    raw[10] ^= 0x01
    blk.write_bytes(bytes(raw))
    report = ft.verify(target, made.id)
    assert not report.ok
    rel = blk.relative_to(target / made.id / "data").as_posix()
    assert any(rel in p and "checksum mismatch" in p for p in report.problems), report.problems
    assert any("payload checksum mismatch" in p for p in report.problems), report.problems


def test_incomplete_backup_is_listed_as_such_and_removed_by_retention(
    storage: Storage, data: Path, target: Path
) -> None:
    write(storage, "b1", "e", 1)
    made = backup(storage, data, target)
    # A backup that died before its manifest: folder with data, no manifest.
    staged = snapshot.stage(storage, data, None)
    (target / staged.id / "data").mkdir(parents=True)
    infos = {i.id: i for i in ft.list_backups(target)}
    assert infos[made.id].complete and not infos[staged.id].complete
    assert "incomplete" in (infos[staged.id].problem or "")
    with pytest.raises(Exception, match="incomplete"):
        ft.verify(target, staged.id)
    with ft.locked(target):
        assert ft.apply_retention(target, 0, 0) == [staged.id]


def test_retention_keeps_the_last_n_and_drops_old_ones(storage: Storage, data: Path, target: Path) -> None:
    ids = []
    for i in range(4):
        write(storage, "b1", "e", i + 1)
        ids.append(backup(storage, data, target).id)
    with ft.locked(target):
        assert ft.apply_retention(target, keep_last=2, max_age=0) == ids[:2]
    cuts = {i.id: i.cut_us for i in ft.list_backups(target)}
    now = cuts[ids[3]] + 10_000_000
    with ft.locked(target):
        # Both are older than 5 s at "now"; the newest complete backup always stays.
        assert ft.apply_retention(target, keep_last=0, max_age=5, now_us=now) == [ids[2]]
    assert [i.id for i in ft.list_backups(target)] == [ids[3]]
    assert ft.verify(target, ids[3]).ok


def test_pause_waits_for_writes_in_flight_and_holds_new_ones(storage: Storage, data: Path) -> None:
    bucket = storage.get_bucket("b1")
    writer = bucket.begin_write("e", 1, 3, "x", {})
    writer.write(b"abc")
    done = threading.Event()
    with storage.pause_writes(5.0):
        t = threading.Thread(target=lambda: (writer.finish(), done.set()))
        t.start()
        time.sleep(0.2)
        assert not done.is_set(), "finish waits while the gate is closed"
    t.join(5)
    assert done.is_set()
    assert bucket.get_entry("e").read_payload(bucket.get_entry("e").get_record(1)) == b"abc"


def test_tree_bytes_skips_a_file_renamed_away_while_it_is_listed(tmp_path, monkeypatch) -> None:
    """A backup in progress renames its temporary files; listing it must not fail on one."""
    from appliance.backup import files

    (tmp_path / "kept").write_bytes(b"x" * 10)
    gone = tmp_path / "gone.tmp"
    real_walk = files.walk_files

    def walk_then_vanish(root):
        gone.write_bytes(b"y" * 5)
        for rel, path in real_walk(root):
            if path == gone:
                gone.unlink()  # renamed away between the listing and the stat
            yield rel, path

    monkeypatch.setattr(files, "walk_files", walk_then_vanish)
    assert files.tree_bytes(tmp_path) == 10
