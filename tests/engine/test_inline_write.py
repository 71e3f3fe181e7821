"""``Bucket.try_write_small``: a small record stored on the calling thread (the event loop's
inline single writes) only when nothing can make that thread wait; otherwise it does nothing
and says so, and the ordinary ``write_record`` (the worker hop) stores the record."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from appliance.engine import Storage
from appliance.engine.models import BucketSettings, EngineOptions, QuotaType, RecordState
from appliance.errors import Forbidden, UnprocessableEntity

LABELS = {"n": "1"}


def _started(storage: Storage, settings: BucketSettings | None = None) -> None:
    """Bucket ``b`` with entry ``e`` holding one record at ts 1 (block and WAL open)."""
    storage.create_bucket("b", settings)
    storage.get_bucket("b").write_record("e", 1, b"first", "text/plain", LABELS)


def _payload(storage: Storage, ts: int) -> bytes:
    entry = storage.get_bucket("b").get_entry("e")
    meta = entry.get_record(ts)
    assert meta.state is RecordState.FINISHED
    return entry.read_payload(meta)


def test_stores_the_record_and_it_survives_a_crash_from_the_wal(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    try:
        _started(storage)
        bucket = storage.get_bucket("b")
        assert bucket.try_write_small("e", 2, b"second", "text/plain", LABELS)
        assert bucket.try_write_small("e", 3, b"", "application/octet-stream", {})  # empty
        assert _payload(storage, 2) == b"second"
        info = bucket.get_entry("e").info()
        assert info.record_count == 3 and info.latest_record == 3
        # The folder as a SIGKILL would leave it (no compaction, no close): the records must
        # come back from the WAL alone (payload in the block file, WAL frame written first).
        shutil.copytree(tmp_path / "data", tmp_path / "crashed")
    finally:
        storage.close()
    reopened = Storage.open(EngineOptions(data_path=tmp_path / "crashed"))
    try:
        assert _payload(reopened, 2) == b"second"
        assert reopened.get_bucket("b").get_entry("e").get_record(2).labels == LABELS
        assert _payload(reopened, 3) == b""
    finally:
        reopened.close()


def test_declines_without_doing_anything_when_it_would_have_to_wait_or_create(
    storage: Storage,
) -> None:
    storage.create_bucket("b")
    bucket = storage.get_bucket("b")
    # A new entry (folders to create) and the first record of an entry (a block to start).
    assert not bucket.try_write_small("e", 1, b"x", "text/plain", {})
    assert bucket.entry_names() == []
    bucket.write_record("e", 1, b"x", "text/plain", {})
    entry = bucket.get_entry("e")
    # Out of time order: the general block choice (and a possible duplicate) is the hop's.
    assert not bucket.try_write_small("e", 1, b"y", "text/plain", {})
    # The entry lock held by another thread (a writer in its metadata work).
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with entry._lock:  # noqa: SLF001
            held.set()
            release.wait(5)

    t = threading.Thread(target=hold)
    t.start()
    held.wait(5)
    try:
        assert not bucket.try_write_small("e", 5, b"z", "text/plain", {})
    finally:
        release.set()
        t.join(5)
    # A backup pausing the write gate.
    with storage._ctx.gate.exclusive(5):  # noqa: SLF001
        assert not bucket.try_write_small("e", 5, b"z", "text/plain", {})
    # The block's files evicted from the file cache (opening one could wait on the disk).
    storage._ctx.files.close()  # noqa: SLF001
    assert not bucket.try_write_small("e", 5, b"z", "text/plain", {})
    assert entry.info().record_count == 1  # nothing of the declined writes was stored
    bucket.write_record("e", 5, b"z", "text/plain", {})  # the hop reopens the files
    assert bucket.try_write_small("e", 6, b"w", "text/plain", {})
    assert entry.info().record_count == 3


def test_declines_when_the_record_would_finish_the_block(storage: Storage) -> None:
    _started(storage, BucketSettings(max_block_records=2))
    bucket = storage.get_bucket("b")
    assert bucket.try_write_small("e", 2, b"2", "text/plain", {})  # fills the block
    assert not bucket.try_write_small("e", 3, b"3", "text/plain", {})  # needs a new block
    bucket.write_record("e", 3, b"3", "text/plain", {})  # the hop flushes and starts one
    assert len(bucket.get_entry("e").block_ids()) == 2
    assert bucket.try_write_small("e", 4, b"4", "text/plain", {})  # WAL of the new block open


@pytest.mark.parametrize(
    "options, settings",
    [
        ({"sync_writes": True}, None),  # its fsync would run on the event loop
        ({"journal": True}, None),  # continuous archiving journals the payload
        ({"max_storage_size": 10**9}, None),  # the instance-wide limit
        ({}, BucketSettings(quota_type=QuotaType.FIFO, quota_size=10**9)),  # may evict
        ({}, BucketSettings(quota_type=QuotaType.HARD, quota_size=10**9)),
    ],
)
def test_declines_where_durability_or_admission_needs_the_worker(
    tmp_path: Path, options: dict[str, object], settings: BucketSettings | None
) -> None:
    opened = EngineOptions(data_path=tmp_path / "data", **options)  # type: ignore[arg-type]
    storage = Storage.open(opened)
    try:
        _started(storage, settings)
        bucket = storage.get_bucket("b")
        assert not bucket.try_write_small("e", 2, b"2", "text/plain", {})
        assert bucket.get_entry("e").info().record_count == 1
    finally:
        storage.close()


def test_declines_for_meta_entries_and_on_a_lease(tmp_path: Path, storage: Storage) -> None:
    storage.create_bucket("b")
    bucket = storage.get_bucket("b")
    bucket.write_record("e/$meta", 1, b"a", "text/plain", {"key": "a"})
    assert not bucket.try_write_small("e/$meta", 2, b"b", "text/plain", {"key": "b"})  # upsert
    leased = Storage.open(EngineOptions(data_path=tmp_path / "leased", generation=3))
    try:
        _started(leased)  # a lease holder's commits check the lease, which may renew it
        assert not leased.get_bucket("b").try_write_small("e", 2, b"2", "text/plain", {})
    finally:
        leased.close()


def test_errors_are_those_of_write_record(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data"))
    try:
        _started(storage)
        with pytest.raises(UnprocessableEntity):
            storage.get_bucket("b").try_write_small("e", 2**64, b"x", "text/plain", {})
    finally:
        storage.close()
    replica = Storage.open(EngineOptions(data_path=tmp_path / "data", read_only=True))
    try:
        with pytest.raises(Forbidden):
            replica.get_bucket("b").try_write_small("e", 9, b"x", "text/plain", {})
    finally:
        replica.close()
