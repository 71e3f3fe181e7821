"""The read-only replica's view: loads what the primary persisted, follows it on reload, and
never touches a file of the shared folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions, QuotaType
from appliance.errors import Forbidden, NotFound

CT = "application/octet-stream"
U64_MAX = 2**64 - 1


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: content hash and mtime."""
    state = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            state[str(path.relative_to(root))] = (
                hashlib.sha256(path.read_bytes()).hexdigest(),
                path.stat().st_mtime_ns,
            )
    return state


def stamps(storage: Storage, bucket: str = "b", entry: str = "e") -> list[int]:
    e = storage.get_bucket(bucket).get_entry(entry)
    return [m.timestamp for m in e.iter_records(0, U64_MAX)]


@pytest.fixture
def primary(tmp_path: Path) -> Storage:
    storage = Storage.open(EngineOptions(data_path=tmp_path))
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=3))
    for ts in range(1, 5):
        bucket.write_record("e", ts, b"x%d" % ts, CT, {"n": str(ts)})
    storage.compact()
    return storage


def replica_of(path: Path) -> Storage:
    return Storage.open(EngineOptions(data_path=path, read_only=True))


def test_replica_sees_what_the_primary_persisted(tmp_path: Path, primary: Storage) -> None:
    replica = replica_of(tmp_path)
    assert stamps(replica) == [1, 2, 3, 4]
    entry = replica.get_bucket("b").get_entry("e")
    assert entry.read_payload(entry.get_record(4)) == b"x4"
    primary.get_bucket("b").write_record("e", 5, b"x5", CT, {})
    replica.reload_replica()
    assert stamps(replica) == [1, 2, 3, 4]  # still only in the primary's WAL
    primary.compact()
    replica.reload_replica()
    assert stamps(replica) == [1, 2, 3, 4, 5]
    entry = replica.get_bucket("b").get_entry("e")
    assert entry.read_payload(entry.get_record(5)) == b"x5"
    replica.close()


def test_replica_follows_labels_removals_buckets_and_settings(
    tmp_path: Path, primary: Storage
) -> None:
    replica = replica_of(tmp_path)
    bucket = primary.get_bucket("b")
    bucket.get_entry("e").update_labels(2, {"n": "two"}, [])
    bucket.get_entry("e").remove_records([1])
    bucket.write_record("other", 7, b"o", CT, {})
    primary.create_bucket("c").write_record("e", 1, b"c", CT, {})
    bucket.update_settings(quota_type=QuotaType.FIFO, quota_size=10**9)
    primary.compact()
    replica.reload_replica()
    assert stamps(replica) == [2, 3, 4]
    assert replica.get_bucket("b").get_entry("e").get_record(2).labels == {"n": "two"}
    assert replica.bucket_names() == ["b", "c"] and stamps(replica, "b", "other") == [7]
    assert replica.get_bucket("b").settings.quota_type is QuotaType.FIFO
    entry = replica.get_bucket("b").get_entry("e")
    assert entry.read_payload(entry.get_record(3)) == b"x3"  # data file rewritten by removal
    bucket.remove_entry("other")
    primary.remove_bucket("c")
    replica.reload_replica()
    assert replica.bucket_names() == ["b"]
    with pytest.raises(NotFound):
        replica.get_bucket("b").get_entry("other")
    replica.close()


def test_replica_keeps_its_view_when_an_index_is_corrupt(tmp_path: Path, primary: Storage) -> None:
    replica = replica_of(tmp_path)
    primary.get_bucket("b").write_record("e", 9, b"x9", CT, {})
    primary.compact()
    index = tmp_path / "b" / "e" / "blocks.idx"
    good = index.read_bytes()
    index.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))
    replica.reload_replica()  # the old index is kept (its blocks still load), not an error
    assert stamps(replica)[:4] == [1, 2, 3, 4]
    index.write_bytes(good)
    replica.reload_replica()
    assert stamps(replica) == [1, 2, 3, 4, 9]
    replica.close()


def test_replica_never_writes_the_shared_folder(tmp_path: Path, primary: Storage) -> None:
    primary.get_bucket("b").write_record("e", 10, b"in the wal", CT, {})
    before = tree_state(tmp_path)
    replica = replica_of(tmp_path)
    for _ in range(3):
        replica.reload_replica()
    bucket = replica.get_bucket("b")
    entry = bucket.get_entry("e")
    for meta in entry.iter_records(0, U64_MAX):
        entry.read_payload(meta)
    with pytest.raises(Forbidden):
        bucket.write_record("e", 11, b"y", CT, {})
    with pytest.raises(Forbidden):
        entry.update_labels(1, {"a": "b"}, [])
    with pytest.raises(Forbidden):
        entry.remove_records([1])
    with pytest.raises(Forbidden):
        replica.remove_bucket("b")
    replica.compact()
    replica.close()
    assert tree_state(tmp_path) == before


def test_replica_of_a_missing_folder_is_empty_until_it_appears(tmp_path: Path) -> None:
    replica = replica_of(tmp_path / "later")
    assert replica.bucket_names() == []
    assert not (tmp_path / "later").exists()
    primary = Storage.open(EngineOptions(data_path=tmp_path / "later"))
    primary.create_bucket("b").write_record("e", 1, b"x", CT, {})
    primary.close()
    replica.reload_replica()
    assert stamps(replica) == [1]
    replica.close()
