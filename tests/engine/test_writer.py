"""RecordWriter: streaming, length mismatches, abort, errored overwrite, concurrency."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from appliance.engine import Bucket, RecordWriter, Storage
from appliance.engine.models import EngineOptions, RecordState
from appliance.errors import BadRequest, Conflict

CT = "application/octet-stream"


@pytest.fixture
def bucket(storage: Storage) -> Bucket:
    return storage.create_bucket("b")


def test_writer_streams_chunks(bucket: Bucket) -> None:
    writer = bucket.begin_write("e", 1, 10, CT, {"x": "y"})
    assert isinstance(writer, RecordWriter)
    assert writer.meta.state == RecordState.STARTED and writer.meta.size == 10
    for chunk in (b"012", bytearray(b"345"), memoryview(b"6789")):
        writer.write(chunk)  # type: ignore[arg-type]
    writer.finish()
    entry = bucket.get_entry("e")
    assert entry.read_payload(entry.get_record(1)) == b"0123456789"


def test_writer_too_many_bytes_is_bad_request_and_errored(bucket: Bucket) -> None:
    writer = bucket.begin_write("e", 1, 4, CT, {})
    writer.write(b"12")
    with pytest.raises(BadRequest) as excinfo:
        writer.write(b"345")
    assert excinfo.value.message == "Content is bigger than in content-length"
    assert bucket.get_entry("e").get_record(1).state == RecordState.ERRORED
    writer.abort("late")  # no-op once closed


def test_writer_too_few_bytes_is_bad_request_and_errored(bucket: Bucket) -> None:
    writer = bucket.begin_write("e", 1, 4, CT, {})
    writer.write(b"12")
    with pytest.raises(BadRequest) as excinfo:
        writer.finish()
    assert excinfo.value.message == "Content is smaller than in content-length"
    assert bucket.get_entry("e").get_record(1).state == RecordState.ERRORED


def test_writer_context_manager_aborts_on_exception(bucket: Bucket) -> None:
    with pytest.raises(RuntimeError):
        with bucket.begin_write("e", 1, 4, CT, {}) as writer:
            writer.write(b"12")
            raise RuntimeError("client went away")
    assert bucket.get_entry("e").get_record(1).state == RecordState.ERRORED
    with bucket.begin_write("e", 2, 2, CT, {}) as writer:
        writer.write(b"ok")
    assert bucket.get_entry("e").get_record(2).state == RecordState.FINISHED


def test_writer_errored_record_is_overwritten_only_with_same_size(bucket: Bucket) -> None:
    writer = bucket.begin_write("e", 1, 4, CT, {})
    writer.abort("gone")
    with pytest.raises(Conflict) as excinfo:
        bucket.write_record("e", 1, b"12345", CT, {})
    assert excinfo.value.message == "A record with timestamp 1 already exists"
    bucket.write_record("e", 1, b"abcd", "text/plain", {"new": "1"})
    entry = bucket.get_entry("e")
    meta = entry.get_record(1)
    assert (meta.state, meta.content_type, dict(meta.labels)) == (
        RecordState.FINISHED,
        "text/plain",
        {"new": "1"},
    )
    assert entry.read_payload(meta) == b"abcd"
    with pytest.raises(Conflict):
        bucket.begin_write("e", 1, 4, CT, {})


def test_writer_duplicate_of_started_record_conflicts(bucket: Bucket) -> None:
    writer = bucket.begin_write("e", 1, 1, CT, {})
    with pytest.raises(Conflict):
        bucket.begin_write("e", 1, 1, CT, {})
    writer.write(b"x")
    writer.finish()


def test_writer_concurrent_writers_of_one_entry(bucket: Bucket) -> None:
    writers = [bucket.begin_write("e", ts, 1000, CT, {}) for ts in range(1, 9)]

    def stream(writer: RecordWriter) -> None:
        byte = bytes([writer.meta.timestamp])
        for _ in range(10):
            writer.write(byte * 100)
        writer.finish()

    threads = [threading.Thread(target=stream, args=(w,)) for w in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    entry = bucket.get_entry("e")
    for ts in range(1, 9):
        assert entry.read_payload(entry.get_record(ts)) == bytes([ts]) * 1000


def test_writer_sync_writes_group_commit(tmp_path: Path) -> None:
    storage = Storage.open(EngineOptions(data_path=tmp_path / "data", sync_writes=True))
    bucket = storage.create_bucket("b")
    errors: list[BaseException] = []

    def write(base: int) -> None:
        try:
            for i in range(10):
                bucket.write_record("e", base + i, b"payload", CT, {})
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(1000 * t,)) for t in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert bucket.get_entry("e").info().record_count == 80
    committer = storage._ctx.committer  # noqa: SLF001 - white-box: fsync accounting
    assert committer is not None and committer.rounds <= 80
    storage.close()


def test_write_many_writes_a_group_with_one_system_call(
    bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import google_crc32c

    from appliance.engine import fs_ops

    calls: list[int] = []
    real = fs_ops.write_all
    payload = bytes(range(256)) * 40
    pieces = [payload[:1000], bytearray(payload[1000:1001]), memoryview(payload[1001:7000])]
    writer = bucket.begin_write("e", 1, len(payload), CT, {})
    data_fd = writer._handle.fd  # noqa: SLF001 - the payload's file, apart from the WAL's

    def counting(fd: int, chunks: Any, offset: int | None = None) -> None:
        if fd == data_fd:
            calls.append(len(chunks))
        real(fd, chunks, offset)

    monkeypatch.setattr(fs_ops, "write_all", counting)
    writer.write_many(pieces)  # type: ignore[arg-type]
    writer.write_many([])
    writer.write(payload[7000:])
    writer.finish()
    assert calls == [3, 0, 1]
    entry = bucket.get_entry("e")
    record = entry.get_record(1)
    assert entry.read_payload(record) == payload
    assert record.crc == google_crc32c.value(payload)  # type: ignore[attr-defined]


def test_write_many_over_the_declared_size_writes_none_of_the_group(bucket: Bucket) -> None:
    writer = bucket.begin_write("e", 1, 6, CT, {})
    writer.write_many([b"ab", b"cd"])
    with pytest.raises(BadRequest):
        writer.write_many([b"ef", b"gh"])
    entry = bucket.get_entry("e")
    assert entry.get_record(1).state == RecordState.ERRORED
    with pytest.raises(BadRequest):
        writer.write(b"x")  # closed by the failure
