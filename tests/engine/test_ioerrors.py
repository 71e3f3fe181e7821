"""The engine's one I/O error boundary (issue 9 item 3) and the no-trace rule on failure."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from appliance.engine import Storage, fs_ops
from appliance.engine.ioerrors import translate
from appliance.engine.models import EngineOptions
from appliance.errors import (
    InsufficientStorage,
    InternalError,
    ServiceUnavailable,
    UnprocessableEntity,
)


def oserror(code: int, path: str = "/secret/data/b/e/1.blk") -> OSError:
    """An OSError as the kernel reports it: with errno, strerror and the file name."""
    return OSError(code, os.strerror(code), path)


@pytest.mark.parametrize(
    ("code", "kind", "status"),
    [
        (errno.ENOSPC, InsufficientStorage, 507),
        (errno.EDQUOT, InsufficientStorage, 507),
        (errno.EMFILE, ServiceUnavailable, 503),
        (errno.ENFILE, ServiceUnavailable, 503),
        (errno.ENAMETOOLONG, UnprocessableEntity, 422),
        (errno.EIO, InternalError, 500),
        (errno.EACCES, InternalError, 500),
    ],
)
def test_ioerrors_translate_maps_errno_and_never_names_the_path(
    code: int, kind: type, status: int
) -> None:
    error = translate(oserror(code), "write the record")
    assert type(error) is kind and error.status == status
    assert "/secret" not in error.public_message
    assert "write the record" in error.public_message


def test_ioerrors_full_disk_at_bucket_creation_is_507_and_leaves_no_bucket(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, data: bytes, sync: bool = True) -> None:
        raise oserror(errno.ENOSPC, str(path))

    monkeypatch.setattr(fs_ops, "atomic_write", full)
    with pytest.raises(InsufficientStorage):
        storage.create_bucket("b")
    monkeypatch.undo()
    assert storage.bucket_names() == []
    data = storage.options.data_path
    assert sorted(p.name for p in data.iterdir() if not p.name.startswith(".")) == []
    assert list((data / fs_ops.REMOVING_DIR).iterdir()) == []
    storage.close()
    assert Storage.open(EngineOptions(data_path=data)).bucket_names() == []


def test_ioerrors_out_of_descriptors_on_write_is_503_and_stores_nothing(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, b"one", "text/plain", {})
    real_open = os.open

    def no_fds(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if str(path).endswith(".blk"):
            raise oserror(errno.EMFILE, str(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    storage._ctx.files.close()  # nothing cached: the next write must open its data file
    monkeypatch.setattr(os, "open", no_fds)
    with pytest.raises(ServiceUnavailable, match="Too many open files"):
        bucket.write_record("e", 2, b"two", "text/plain", {})
    errors = bucket.write_batch("e", [])
    assert errors == {}
    monkeypatch.undo()
    entry = bucket.get_entry("e")
    assert [r.timestamp for r in entry.iter_records(0, 10)] == [1]
    assert entry.read_payload(entry.get_record(1)) == b"one"  # the block was not hidden


def test_ioerrors_failed_wal_append_leaves_labels_unchanged(
    storage: Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, b"one", "text/plain", {"a": "1"})
    entry = bucket.get_entry("e")

    real = fs_ops.write_all

    def broken(fd: int, chunks: object, offset: int | None = None) -> None:
        if offset is not None:  # a payload pwrite: only the WAL append fails here
            return real(fd, chunks, offset)  # type: ignore[arg-type]
        raise oserror(errno.EIO)

    monkeypatch.setattr(fs_ops, "write_all", broken)
    with pytest.raises(InternalError, match="update the labels") as failure:
        entry.update_labels(1, {"a": "2"}, [])
    assert "/secret" not in failure.value.public_message
    monkeypatch.undo()
    assert entry.get_record(1).labels == {"a": "1"}


def test_ioerrors_batch_reports_failed_wal_records_and_they_do_not_come_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch whose WAL append fails answers 507 for exactly those records; a restart does
    not resurrect them (the torn append is cut off)."""
    from appliance.engine.models import NewRecord

    data = tmp_path / "data"
    storage = Storage.open(EngineOptions(data_path=data))
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, b"one", "text/plain", {})
    real = fs_ops.write_all

    def half_then_full(fd: int, chunks: object, offset: int | None = None) -> None:
        if offset is not None:  # a payload pwrite: only the WAL append fails here
            return real(fd, chunks, offset)  # type: ignore[arg-type]
        frames = b"".join(chunks)  # type: ignore[arg-type]
        real(fd, (frames[: len(frames) // 2],))
        raise oserror(errno.ENOSPC)

    monkeypatch.setattr(fs_ops, "write_all", half_then_full)
    errors = bucket.write_batch("e", [NewRecord(ts, b"x" * 10) for ts in (2, 3)])
    monkeypatch.undo()
    assert set(errors) == {2, 3} and all(e.status == 507 for e in errors.values())
    entry = bucket.get_entry("e")
    assert [r.timestamp for r in entry.iter_records(0, 10)] == [1]
    storage.abandon()  # a crash: no compaction on close
    reopened = Storage.open(EngineOptions(data_path=data))
    entry = reopened.get_bucket("b").get_entry("e")
    assert [r.timestamp for r in entry.iter_records(0, 10)] == [1]
    reopened.close()
