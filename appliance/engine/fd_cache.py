"""Bounded cache of open file descriptors for block data files and WAL segments.

Opening a file per record costs more than the record's own I/O, so data (``.blk``) and WAL files
stay open, at most ``capacity`` of them, least recently used closed first. A handle is *pinned*
while someone does ``pread``/``pwrite``/``write`` on its fd: a pinned handle is never closed
(closing it could let the kernel reuse the number for another file mid-write); eviction and
``invalidate`` close it when the last pin goes. ``sync`` and ``close`` are serialised by a
per-handle lock, so the group committer can flush a handle that is concurrently being evicted.
Dirty handles are flushed before they are closed when the cache runs in ``sync_on_close`` mode.
"""

from __future__ import annotations

import os
import resource
import threading
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.engine import fs_ops

if TYPE_CHECKING:
    from appliance.engine.mirror import Mirror

DEFAULT_CAPACITY = 256
# Descriptors the cache may keep open: at most this share of RLIMIT_NOFILE, so sockets, the
# pinned handles of requests in flight and the rest of the process always have room.
LIMIT_SHARE = 4
MIN_CAPACITY = 16


def fd_budget(capacity: int = DEFAULT_CAPACITY) -> int:
    """``capacity``, but at most a quarter of the soft open-file limit (never below 16)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return capacity
    return max(MIN_CAPACITY, min(capacity, soft // LIMIT_SHARE))


class FileHandle:
    """One open file; ``fd`` is valid while the handle is pinned."""

    __slots__ = ("path", "fd", "pins", "dirty", "closed", "stale", "_lock")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.pins = 0
        self.dirty = False
        self.closed = False
        self.stale = False
        self._lock = threading.Lock()

    def sync(self) -> None:
        """fsync the file unless it was closed (closing flushed it already if dirty)."""
        with self._lock:
            if self.closed:
                return
            self.dirty = False
            fs_ops.fsync_fd(self.fd)

    def close(self, sync: bool) -> None:
        """Close the fd, flushing first when ``sync`` and dirty."""
        with self._lock:
            if self.closed:
                return
            try:
                if sync and self.dirty:
                    fs_ops.fsync_fd(self.fd)
            finally:
                self.closed = True
                os.close(self.fd)


class FileCache:
    """LRU of open files keyed by path; ``acquire`` pins, ``release`` unpins."""

    def __init__(
        self,
        capacity: int = DEFAULT_CAPACITY,
        sync_on_close: bool = False,
        read_only: bool = False,
        mirror: Mirror | None = None,
    ) -> None:
        self._capacity = capacity
        # With data on S3: an evicted file is fetched before it is opened (engine/mirror.py).
        self._mirror = mirror
        self._sync_on_close = sync_on_close
        # A replica opens files read-only: its data volume may be mounted read-only.
        self._read_flags = os.O_RDONLY if read_only else os.O_RDWR
        self._lock = threading.Lock()
        # Keyed by path *strings*: hashing pathlib objects costs more than a small read.
        self._open: OrderedDict[str, FileHandle] = OrderedDict()

    def acquire(self, path: str, create: bool = False, append: bool = False) -> FileHandle:
        """Pin (opening if needed) the file at ``path``; raises FileNotFoundError unless create."""
        with self._lock:
            handle = self._open.get(path)
            if handle is not None:
                self._open.move_to_end(path)
                handle.pins += 1
                return handle
        flags = os.O_WRONLY | os.O_APPEND if append else self._read_flags
        if create:
            flags |= os.O_CREAT
        if self._mirror is None:
            return self._open_new(path, flags)
        self._mirror.fetch_ahead(path)  # S3 I/O outside the lock: it holds up no other file
        with self._mirror.lock:  # eviction cannot swap the file between fetch and open
            self._mirror.open_local(path)
            return self._open_new(path, flags)

    def try_acquire(self, path: str) -> FileHandle | None:
        """Pin the file at ``path`` only if it is open already and the cache's lock is free
        now; None otherwise (never opens a file, never waits: the event loop's inline writes)."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            handle = self._open.get(path)
            if handle is None:
                return None
            self._open.move_to_end(path)
            handle.pins += 1
            return handle
        finally:
            self._lock.release()

    def _open_new(self, path: str, flags: int) -> FileHandle:
        fd = os.open(path, flags | os.O_CLOEXEC, 0o644)
        handle = FileHandle(path, fd)
        handle.pins = 1
        with self._lock:
            existing = self._open.get(path)
            if existing is not None:
                # Another thread opened it meanwhile: keep theirs, drop ours.
                existing.pins += 1
                os.close(fd)
                return existing
            self._open[path] = handle
            victims = self._evict_locked()
        self._close_all(victims)
        return handle

    def release(self, handle: FileHandle) -> None:
        """Unpin; closes the handle if it was invalidated or evicted while pinned."""
        with self._lock:
            handle.pins -= 1
            close = handle.pins == 0 and handle.stale
            # Pinned handles may have pushed the cache over its bound: shrink it now.
            victims = self._evict_locked() if len(self._open) > self._capacity else []
        if close:
            handle.close(self._sync_on_close)
        self._close_all(victims)

    def drop_if_idle(self, path: str) -> bool:
        """Close ``path``'s handle unless pinned; whether no one uses the file now (eviction)."""
        with self._lock:
            handle = self._open.get(path)
            if handle is None:
                return True
            if handle.pins:
                return False
            del self._open[path]
            handle.stale = True
        handle.close(self._sync_on_close)
        return True

    def invalidate(self, path: str) -> None:
        """Forget the handle of ``path`` (renamed/deleted file); closed once unpinned."""
        with self._lock:
            handle = self._open.pop(path, None)
            if handle is None:
                return
            handle.stale = True
            close = handle.pins == 0
        if close:
            handle.close(self._sync_on_close)

    def invalidate_under(self, folder: Path) -> None:
        """Forget every handle of a file below ``folder`` (entry/bucket removed or renamed)."""
        prefix = f"{folder}/"
        with self._lock:
            paths = [p for p in self._open if p.startswith(prefix)]
        for path in paths:
            self.invalidate(path)

    def sync_dirty(self) -> None:
        """fsync every cached file written since its last sync."""
        with self._lock:
            dirty = [h for h in self._open.values() if h.dirty]
        for handle in dirty:
            handle.sync()

    def close(self) -> None:
        """Close everything not pinned (pinned handles close on release)."""
        with self._lock:
            handles = list(self._open.values())
            self._open.clear()
            for handle in handles:
                handle.stale = True
            idle = [h for h in handles if h.pins == 0]
        self._close_all(idle)

    def __len__(self) -> int:
        return len(self._open)

    def _evict_locked(self) -> list[FileHandle]:
        victims: list[FileHandle] = []
        if len(self._open) <= self._capacity:
            return victims
        for path in list(self._open):
            if len(self._open) <= self._capacity:
                break
            handle = self._open[path]
            if handle.pins:
                continue
            del self._open[path]
            handle.stale = True
            victims.append(handle)
        return victims

    def _close_all(self, handles: list[FileHandle]) -> None:
        for handle in handles:
            handle.close(self._sync_on_close)
