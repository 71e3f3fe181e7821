"""Group commit: concurrent writers share fsync rounds."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from appliance.engine.commit import GroupCommitter
from appliance.engine.fd_cache import FileCache, FileHandle


def test_commit_concurrent_writers_share_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers = 32
    cache = FileCache()
    handles = [cache.acquire(str(tmp_path / f"f{i}"), create=True) for i in range(writers)]
    synced: list[str] = []

    def slow_sync(self: FileHandle) -> None:
        time.sleep(0.01)  # a disk flush: long enough for others to queue behind it
        synced.append(self.path)

    monkeypatch.setattr(FileHandle, "sync", slow_sync)
    committer = GroupCommitter()
    barrier = threading.Barrier(writers)
    done: list[str] = []

    def writer(handle: FileHandle) -> None:
        barrier.wait()
        committer.commit([handle])
        assert handle.path in synced  # never acknowledged before its own file was flushed
        done.append(handle.path)

    threads = [threading.Thread(target=writer, args=(h,)) for h in handles]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(done) == writers
    assert committer.fsyncs == writers  # each file flushed exactly once
    assert committer.rounds <= writers // 4, committer.rounds  # far fewer rounds than writers
    committer.close()
    for handle in handles:
        cache.release(handle)
    cache.close()


def test_commit_shared_file_is_flushed_once_per_round(tmp_path: Path) -> None:
    cache = FileCache()
    wal = cache.acquire(str(tmp_path / "x.wal"), create=True)
    committer = GroupCommitter()
    committer.commit([wal, wal])
    assert (committer.rounds, committer.fsyncs) == (1, 1)
    cache.release(wal)
    cache.close()


def test_commit_failure_reaches_the_writers_of_that_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FileCache()
    handle = cache.acquire(str(tmp_path / "f"), create=True)

    def failing(self: FileHandle) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(FileHandle, "sync", failing)
    committer = GroupCommitter()
    with pytest.raises(OSError):
        committer.commit([handle])
    monkeypatch.undo()
    committer.commit([handle])  # a later round is not poisoned by the old failure
    committer.close()
    cache.release(handle)
    cache.close()


def test_commit_flushes_payload_files_before_wal_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = FileCache()
    names = ["a.wal", "a.blk", "b.wal", "b.blk"]
    handles = [cache.acquire(str(tmp_path / n), create=True) for n in names]
    order: list[str] = []
    monkeypatch.setattr(FileHandle, "sync", lambda self: order.append(Path(self.path).suffix))
    committer = GroupCommitter()
    committer.commit(handles)
    assert order[:2] == [".blk", ".blk"] and order[2:] == [".wal", ".wal"]
    committer.close()
    for handle in handles:
        cache.release(handle)
    cache.close()
