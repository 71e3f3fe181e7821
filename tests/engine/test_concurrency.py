"""Concurrency: writers, readers, label updates, removals and compaction on one entry at once."""

from __future__ import annotations

import threading
from pathlib import Path

from appliance.engine import Storage
from appliance.engine.codec import decode_index, decode_wal
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord

U64_MAX = 2**64 - 1


def payload(ts: int) -> bytes:
    return ts.to_bytes(8, "little") * (1 + ts % 7)


def test_concurrency_mixed_workload_stays_consistent(tmp_path: Path) -> None:
    options = EngineOptions(data_path=tmp_path)
    storage = Storage.open(options)
    bucket = storage.create_bucket("b", BucketSettings(max_block_records=16))
    stop = threading.Event()
    failures: list[BaseException] = []

    def guarded(fn):  # type: ignore[no-untyped-def]
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # noqa: BLE001
                failures.append(exc)
                stop.set()

        return run

    @guarded
    def batch_writer() -> None:
        for base in range(0, 2000, 50):
            errors = bucket.write_batch(
                "e", [NewRecord(ts, payload(ts)) for ts in range(base, base + 50, 2)]
            )
            assert not errors

    @guarded
    def stream_writer() -> None:
        for ts in range(1, 2000, 2):
            data = payload(ts)
            with bucket.begin_write("e", ts, len(data), "text/plain", {"odd": "1"}) as writer:
                writer.write(data[:5])
                writer.write(data[5:])

    @guarded
    def reader() -> None:
        while not stop.is_set():
            entry = bucket.get_entry("e") if "e" in bucket.entry_names() else None
            if entry is None:
                continue
            last = -1
            for meta in entry.iter_records(0, U64_MAX):
                assert meta.timestamp > last
                last = meta.timestamp
                assert entry.read_payload(meta) == payload(meta.timestamp)

    @guarded
    def maintainer() -> None:
        while not stop.is_set():
            storage.compact()
            if "e" in bucket.entry_names():
                entry = bucket.get_entry("e")
                for meta in list(entry.iter_records(0, 400))[:3]:
                    entry.update_labels(meta.timestamp, {"seen": "1"}, [])

    writers = [threading.Thread(target=batch_writer), threading.Thread(target=stream_writer)]
    others = [threading.Thread(target=reader), threading.Thread(target=maintainer)]
    for thread in writers + others:
        thread.start()
    for thread in writers:
        thread.join(timeout=60)
    stop.set()
    for thread in others:
        thread.join(timeout=60)
    assert not failures, failures
    entry = bucket.get_entry("e")
    removed = entry.remove_where(0, 1000, lambda m: m.timestamp % 3 == 0)
    assert removed == len([t for t in range(1000) if t % 3 == 0])
    expected = [t for t in range(2000) if t >= 1000 or t % 3]
    storage.close()

    storage = Storage.open(options)
    entry = storage.get_bucket("b").get_entry("e")
    got = [m.timestamp for m in entry.iter_records(0, U64_MAX)]
    assert got == expected
    assert all(entry.read_payload(entry.get_record(t)) == payload(t) for t in got[::37])
    assert storage.recovery.ok
    storage.close()


def test_concurrency_generation_is_stamped_in_wal_and_index(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path, generation=7))
    storage.create_bucket("b").write_record("e", 1, b"x", "text/plain", {})
    wal = next((tmp_path / "b" / "e" / ".wal").glob("*.wal"))
    segment = decode_wal(wal.read_bytes())
    assert segment.generation == 7 and [f.generation for f in segment.frames] == [7]
    storage.close()
    index = decode_index((tmp_path / "b" / "e" / "blocks.idx").read_bytes())
    assert index.generation == 7 and [i.generation for i in index.items] == [7]
