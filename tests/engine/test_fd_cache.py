"""The fd cache: bounded, pinned handles are never closed under a reader or writer."""

from __future__ import annotations

import os
from pathlib import Path

from appliance.engine.fd_cache import FileCache


def test_files_cache_is_bounded_and_reuses_handles(tmp_path: Path) -> None:
    cache = FileCache(capacity=2)
    paths = [str(tmp_path / f"f{i}") for i in range(4)]
    handles = [cache.acquire(p, create=True) for p in paths]
    for handle in handles:
        cache.release(handle)
    assert len(cache) == 2
    again = cache.acquire(paths[-1])
    assert again is handles[-1]
    cache.release(again)
    assert handles[0].closed and not handles[-1].closed
    cache.close()
    assert handles[-1].closed


def test_files_pinned_handle_survives_eviction_and_invalidation(tmp_path: Path) -> None:
    cache = FileCache(capacity=1)
    pinned = cache.acquire(str(tmp_path / "a"), create=True)
    other = cache.acquire(str(tmp_path / "b"), create=True)
    cache.release(other)
    cache.invalidate(pinned.path)
    assert not pinned.closed
    os.pwrite(pinned.fd, b"still open", 0)  # the fd is still ours
    cache.release(pinned)
    assert pinned.closed
    assert (tmp_path / "a").read_bytes() == b"still open"


def test_files_missing_file_without_create_raises(tmp_path: Path) -> None:
    cache = FileCache()
    try:
        cache.acquire(str(tmp_path / "nope"))
    except FileNotFoundError:
        pass
    else:
        raise AssertionError("expected FileNotFoundError")
    assert len(cache) == 0


def test_files_invalidate_under_a_folder(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    cache = FileCache()
    inside = cache.acquire(str(tmp_path / "a" / "x"), create=True)
    outside = cache.acquire(str(tmp_path / "ab"), create=True)
    cache.release(inside)
    cache.release(outside)
    cache.invalidate_under(tmp_path / "a")
    assert inside.closed and not outside.closed
    cache.close()
