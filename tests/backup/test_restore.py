"""Restore: whole, one bucket, one entry, dry run, damaged backup, running instance refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.backup import instance, restore
from appliance.backup.files import walk_files
from appliance.engine import Storage
from appliance.errors import Conflict, CorruptionError, NotFound
from tests.backup.conftest import read_all
from tests.backup.test_snapshot import backup, write


def test_whole_restore_gives_the_backup_state_marked_read_only(
    storage: Storage, data: Path, target: Path, tmp_path: Path
) -> None:
    for ts in range(1, 20):
        write(storage, "b1", "e", ts, k=str(ts))
    write(storage, "b2", "x/y", 7)
    made = backup(storage, data, target)
    restored = tmp_path / "restored"
    dry = restore.plan(target, made.id, restored)
    assert not restored.exists() and dry.add and not dry.replace
    done = restore.restore(target, made.id, restored)
    assert done.add == dry.add
    assert read_all(restored) == read_all(target / made.id / "data")
    assert instance.restored_from(restored) == made.id
    backup_inodes = {p.stat().st_ino for _, p in walk_files(target / made.id / "data")}
    assert not backup_inodes & {p.stat().st_ino for _, p in walk_files(restored)}
    with pytest.raises(Conflict, match="not empty"):
        restore.restore(target, made.id, restored)


def test_bucket_and_entry_restore_leave_the_rest_alone(
    storage: Storage, data: Path, target: Path, tmp_path: Path
) -> None:
    for ts in range(1, 10):
        write(storage, "b1", "e", ts)
        write(storage, "b1", "f", ts)
    made = backup(storage, data, target)
    storage.get_bucket("b1").remove_entry("e")
    storage.get_bucket("b1").get_entry("f").remove_records([1, 2])
    write(storage, "b2", "z", 5)
    storage.close()
    before = read_all(data)
    plan = restore.plan(target, made.id, data, "b1", "e")
    assert plan.add and not plan.remove
    restore.restore(target, made.id, data, "b1", "e")
    after = read_all(data)
    assert {k for k in after if k[1] == "e"} == {("b1", "e", ts) for ts in range(1, 10)}
    assert {k: v for k, v in after.items() if k[1] != "e"} == before  # f and b2 untouched
    restore.restore(target, made.id, data, "b1")
    after = read_all(data)
    assert {k for k in after if k[0] == "b1" and k[1] == "f"} == {("b1", "f", t) for t in range(1, 10)}
    assert ("b2", "z", 5) in after
    with pytest.raises(NotFound):
        restore.plan(target, made.id, data, "nope")


def test_damaged_backup_stops_the_restore_naming_the_file(
    storage: Storage, data: Path, target: Path, tmp_path: Path
) -> None:
    write(storage, "b1", "e", 1, size=5000)
    made = backup(storage, data, target)
    blk = next((target / made.id / "data" / "b1" / "e").glob("*.blk"))
    raw = bytearray(blk.read_bytes())
    raw[-1] ^= 0xFF
    blk.write_bytes(bytes(raw))
    with pytest.raises(CorruptionError, match=r"b1/e/\d+\.blk"):
        restore.restore(target, made.id, tmp_path / "r")


def test_a_folder_held_by_a_running_instance_is_refused(
    storage: Storage, data: Path, target: Path, tmp_path: Path
) -> None:
    write(storage, "b1", "e", 1)
    made = backup(storage, data, target)
    other = tmp_path / "other"
    other.mkdir()
    fd = instance.hold(other)
    try:
        with pytest.raises(Conflict, match="in use by a running instance"):
            restore.restore(target, made.id, other)
    finally:
        instance.release(fd)
    restore.restore(target, made.id, other)  # stopped now: allowed
    assert os.path.exists(other / "b1")


def test_set_read_write_on_a_stopped_folder_and_refused_on_a_running_one(
    storage: Storage, data: Path, target: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from appliance.cli.main import main

    write(storage, "b1", "e", 1)
    made = backup(storage, data, target)
    restored = tmp_path / "restored"
    assert main(["restore", made.id, "--target", str(target), "--data", str(restored)]) == 0
    assert instance.restored_from(restored) == made.id
    fd = instance.hold(restored)
    try:
        assert main(["set-read-write", "--data", str(restored)]) == 1
        assert "in use by a running instance" in capsys.readouterr().err
    finally:
        instance.release(fd)
    assert main(["set-read-write", "--data", str(restored)]) == 0
    assert instance.restored_from(restored) is None
