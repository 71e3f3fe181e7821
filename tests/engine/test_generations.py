"""Lease generations in the engine: the WAL fence in recovery, refusing to replace a newer
generation's files, stale index rebuilds, abandoning a deposed holder's storage."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions
from appliance.errors import ServiceUnavailable
from appliance.roles.fencing import Fence, GenerationMarker, snapshot_wal
from backends.filesystem import FilesystemBackend

CT = "application/octet-stream"
U64_MAX = 2**64 - 1


class FakeFence:
    """The lease as the engine sees it: passes until ``lost`` is set; records step-downs."""

    def __init__(self) -> None:
        self.lost = False
        self.deposed_reasons: list[str] = []

    def check(self) -> None:
        if self.lost:
            raise ServiceUnavailable("fenced")

    def deposed(self, reason: str) -> None:
        self.deposed_reasons.append(reason)
        self.lost = True


def open_gen(path: Path, generation: int, **extra: object) -> Storage:
    return Storage.open(EngineOptions(data_path=path, generation=generation, **extra))  # type: ignore[arg-type]


def stamps(storage: Storage) -> list[int]:
    entry = storage.get_bucket("b").get_entry("e")
    return [m.timestamp for m in entry.iter_records(0, U64_MAX)]


def marker(generation: int, path: Path) -> GenerationMarker:
    wal = snapshot_wal(FilesystemBackend(path))
    return GenerationMarker(generation, f"owner-{generation}", 0.0, wal)


def test_recovery_ignores_frames_a_stale_generation_wrote_after_a_newer_began(
    tmp_path: Path,
) -> None:
    old = open_gen(tmp_path, 1)
    bucket = old.create_bucket("b")
    for ts in (1, 2, 3):
        bucket.write_record("e", ts, b"acked", CT, {})
    markers = [GenerationMarker(1, "owner-1", 0.0, {}), marker(2, tmp_path)]
    bucket.write_record("e", 4, b"late", CT, {})  # the paused ex-holder resumes: never acked
    new = open_gen(tmp_path, 2, wal_fence=Fence(markers, 2))
    assert stamps(new) == [1, 2, 3]
    fenced = [p for p in new.recovery.problems if p.kind == "wal_fenced"]
    assert len(fenced) == 1 and "1 frame(s)" in fenced[0].message
    new.close()


def test_recovery_without_newer_markers_replays_everything(tmp_path: Path) -> None:
    old = open_gen(tmp_path, 1)
    bucket = old.create_bucket("b")
    for ts in (1, 2):
        bucket.write_record("e", ts, b"x", CT, {})
    markers = [GenerationMarker(1, "owner-1", 0.0, {}), marker(2, tmp_path)]
    new = open_gen(tmp_path, 2, wal_fence=Fence(markers, 2))
    assert stamps(new) == [1, 2] and "wal_fenced" not in new.recovery.kinds()
    new.close()


def test_stale_holder_refuses_to_replace_a_newer_generations_descriptor(tmp_path: Path) -> None:
    # The worst case: the ex-holder's fence check passed just before it was paused, so its
    # next write goes ahead when it resumes. Nothing of generation 2 may be damaged.
    fence = FakeFence()
    old = open_gen(tmp_path, 1, fence=fence)
    bucket = old.create_bucket("b", BucketSettings(max_block_records=100))
    bucket.write_record("e", 1, b"one", CT, {})
    old.compact()
    markers = [GenerationMarker(1, "owner-1", 0.0, {}), marker(2, tmp_path)]
    new = open_gen(tmp_path, 2, wal_fence=Fence(markers, 2))
    new.get_bucket("b").write_record("e", 2, b"two", CT, {})  # same offset the stale one uses
    new.compact()  # descriptor and index now stamped with generation 2
    bucket.write_record("e", 3, b"stale", CT, {})  # lands in the orphaned data inode
    with pytest.raises(ServiceUnavailable):
        old.compact()
    assert fence.deposed_reasons and "generation 2" in fence.deposed_reasons[0]
    with pytest.raises(ServiceUnavailable):
        bucket.write_record("e", 4, b"more", CT, {})
    old.close()  # abandoned: closes files, writes nothing
    entry = new.get_bucket("b").get_entry("e")
    assert entry.read_payload(entry.get_record(2)) == b"two"
    new.close()
    again = open_gen(tmp_path, 3, wal_fence=Fence(markers, 3))
    assert stamps(again) == [1, 2]  # the stale frame came after generation 2 began
    entry = again.get_bucket("b").get_entry("e")
    assert [entry.read_payload(entry.get_record(ts)) for ts in (1, 2)] == [b"one", b"two"]
    again.close()


def test_stale_holder_never_deletes_a_newer_generations_wal_segment(tmp_path: Path) -> None:
    fence = FakeFence()
    old = open_gen(tmp_path, 1, fence=fence)
    bucket = old.create_bucket("b", BucketSettings(max_block_records=100))
    bucket.write_record("e", 1, b"one", CT, {})
    old.compact()
    new = open_gen(tmp_path, 2)
    new.get_bucket("b").write_record("e", 2, b"two", CT, {})  # gen-2 WAL segment of block 1
    with pytest.raises(ServiceUnavailable):
        bucket.write_record("e", 3, b"stale", CT, {})
    assert fence.lost
    wal = tmp_path / "b" / "e" / ".wal" / "1.wal"
    assert wal.exists()
    del new  # crash of the new holder: its WAL must still be there for recovery
    again = open_gen(tmp_path, 3)
    assert stamps(again) == [1, 2]
    again.close()


def test_index_older_than_its_descriptors_is_rebuilt(tmp_path: Path) -> None:
    first = open_gen(tmp_path, 1)
    bucket = first.create_bucket("b", BucketSettings(max_block_records=100))
    bucket.write_record("e", 1, b"one", CT, {})
    first.close()
    index = tmp_path / "b" / "e" / "blocks.idx"
    clobber = index.read_bytes()
    second = open_gen(tmp_path, 2)
    second.get_bucket("b").write_record("e", 2, b"two", CT, {})
    second.close()
    index.write_bytes(clobber)  # what a paused ex-holder's late rename would leave
    third = open_gen(tmp_path, 3, integrity_checks=False)
    assert "index_stale" in third.recovery.kinds()
    assert stamps(third) == [1, 2]
    third.close()


def test_abandon_writes_nothing_and_refuses_mutations(tmp_path: Path) -> None:
    storage = open_gen(tmp_path, 1)
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, b"x", CT, {})
    wal_dir = tmp_path / "b" / "e" / ".wal"
    before = sorted(p.name for p in wal_dir.iterdir())
    storage.abandon()
    with pytest.raises(ServiceUnavailable):
        bucket.write_record("e", 2, b"y", CT, {})
    with pytest.raises(ServiceUnavailable):
        storage.create_bucket("c")
    storage.close()
    assert sorted(p.name for p in wal_dir.iterdir()) == before  # not compacted


def test_close_with_a_lost_lease_does_not_flush(tmp_path: Path) -> None:
    fence = FakeFence()
    storage = open_gen(tmp_path, 1, fence=fence)
    storage.create_bucket("b").write_record("e", 1, b"x", CT, {})
    fence.lost = True
    storage.close()
    assert list((tmp_path / "b" / "e" / ".wal").iterdir())  # left for the successor
    again = open_gen(tmp_path, 2)
    assert stamps(again) == [1]
    again.close()
