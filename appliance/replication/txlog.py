"""The per-task, per-entry transaction log: a ring file of record timestamps to send.

Layout as ReductStore's (spec replication §1.7), so the files are interchangeable: a 16-byte
header (``write_pos``, ``read_pos``: big-endian u64 absolute offsets) and a ring of 9-byte
slots (type byte 0 = write, 1 = label update; big-endian u64 timestamp in µs). The log is empty
when both positions are equal, so it holds at most ``capacity - 1`` transactions.

Durability: pushes and pops are ``pwrite``s to the page cache (no fsync), made *before* the
writer's 200 leaves, so a record acknowledged to a client is in the log even if the process is
SIGKILLed right after (power loss is covered only with ``RS_ENGINE_SYNC_WRITES``, like the data).
The slots are written before the header that publishes them, so a crash between the two loses
nothing that was published.

Unlike ReductStore, a full log does not drop silently: ``push`` returns how many of the oldest
transactions it overwrote, and the task counts them as errors in its diagnostics.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import struct
import threading
from pathlib import Path

from appliance.engine.fs_ops import fsync_fd

log = logging.getLogger(__name__)

HEADER = 16
SLOT = 9
WRITE, UPDATE = 0, 1
_POS = struct.Struct(">QQ")
_U64 = struct.Struct(">Q")
_KINDS = frozenset({WRITE, UPDATE})


@functools.lru_cache(maxsize=32)
def _slots(count: int) -> struct.Struct:
    """The layout of ``count`` consecutive slots (packed or unpacked in one call, not one
    call per transaction: writers push whole batches, the sender peeks up to a batch)."""
    return struct.Struct(">" + "BQ" * count)


def _pack(items: list[tuple[int, int]]) -> bytes:
    """``(kind, timestamp)`` items as consecutive slots."""
    return _slots(len(items)).pack(*itertools.chain.from_iterable(items))


class BrokenLog(Exception):  # noqa: N818 - a state, raised to the task
    """A slot could not be decoded; the task recreates the log."""


class TransactionLog:
    """A ring of ``(kind, timestamp)`` slots in one file; thread-safe."""

    def __init__(self, path: Path, capacity: int) -> None:
        """Open ``path`` (created, or recreated if its header is damaged) with ``capacity``."""
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._open(max(2, capacity))
        except BaseException:
            os.close(self._fd)
            raise

    def _open(self, capacity: int) -> None:
        size = os.fstat(self._fd).st_size
        if size >= HEADER:
            write, read = _POS.unpack(os.pread(self._fd, HEADER, 0))
            if self._valid(size, write, read):
                self._end, self._write, self._read = size, write, read
                wanted = HEADER + SLOT * capacity
                if size != wanted:
                    if write == read:
                        self._reset(capacity)
                    else:
                        log.warning(
                            "transaction log %s keeps its size %d until it is empty",
                            self.path,
                            (size - HEADER) // SLOT,
                        )
                return
            log.error("transaction log %s is damaged: recreated empty", self.path)
        self._reset(capacity)

    @staticmethod
    def _valid(size: int, write: int, read: int) -> bool:
        return (size - HEADER) % SLOT == 0 and all(
            HEADER <= pos < size and (pos - HEADER) % SLOT == 0 for pos in (write, read)
        )

    def _reset(self, capacity: int) -> None:
        self._end = HEADER + SLOT * capacity
        self._write = self._read = HEADER
        os.ftruncate(self._fd, 0)
        os.ftruncate(self._fd, self._end)  # sparse: no blocks until slots are written
        os.pwrite(self._fd, _POS.pack(HEADER, HEADER), 0)
        fsync_fd(self._fd)

    @property
    def capacity(self) -> int:
        """How many slots the ring has (it holds one less)."""
        return (self._end - HEADER) // SLOT

    def __len__(self) -> int:
        """Transactions waiting to be sent."""
        diff = self._write - self._read
        if diff < 0:
            diff += self._end - HEADER
        return diff // SLOT

    def push(self, items: list[tuple[int, int]]) -> int:
        """Append ``(kind, timestamp)`` items; returns how many oldest ones were overwritten."""
        if not items:
            return 0
        ring = self._end - HEADER
        with self._lock:
            dropped = 0
            if len(items) >= ring // SLOT:  # more than the ring: only the newest fit
                dropped = len(items) - (ring // SLOT - 1)
                items = items[dropped:]
            pending = len(self)
            overflow = max(0, pending + len(items) - (ring // SLOT - 1))
            data = _pack(items)
            pos = self._write
            first = min(len(data), self._end - pos)
            os.pwrite(self._fd, data[:first], pos)
            if first < len(data):
                os.pwrite(self._fd, data[first:], HEADER)
            self._write = HEADER + (pos - HEADER + len(data)) % ring
            if overflow:
                self._read = HEADER + (self._read - HEADER + overflow * SLOT) % ring
                os.pwrite(self._fd, _POS.pack(self._write, self._read), 0)
            else:
                os.pwrite(self._fd, _U64.pack(self._write), 0)
            return dropped + overflow

    def front(self, n: int, skip: int = 0) -> list[tuple[int, int]]:
        """Up to ``n`` oldest transactions after the first ``skip``, not consumed; BrokenLog
        for a bad slot."""
        return self.peek(n, skip)[1]

    def peek(self, n: int, skip: int = 0) -> tuple[int, list[tuple[int, int]]]:
        """``front`` with the position of its first slot (``pop``'s ``start``)."""
        with self._lock:
            count = min(n, len(self) - skip)
            pos = HEADER + (self._read - HEADER + skip * SLOT) % (self._end - HEADER)
            if count <= 0:
                return pos, []
            start = pos
            first = min(count * SLOT, self._end - pos)
            data = os.pread(self._fd, first, pos)
            if first < count * SLOT:
                data += os.pread(self._fd, count * SLOT - first, HEADER)
        if len(data) != count * SLOT:
            raise BrokenLog(f"{self.path}: {len(data)} bytes where {count} slots should be")
        flat = _slots(count).unpack(data)
        kinds = flat[0::2]
        if not _KINDS.issuperset(kinds):
            bad = next(kind for kind in kinds if kind not in _KINDS)
            raise BrokenLog(f"{self.path}: bad transaction type {bad}")
        return start, list(zip(kinds, flat[1::2]))

    def pop(self, n: int, start: int | None = None) -> bool:
        """Consume the ``n`` oldest transactions; with ``start`` (from ``peek``) only if they
        are still the oldest, so a late pop of a sender being replaced cannot consume records
        another sender has not delivered yet. True if popped."""
        with self._lock:
            if start is not None and start != self._read:
                return False
            n = min(n, len(self))
            self._read = HEADER + (self._read - HEADER + n * SLOT) % (self._end - HEADER)
            os.pwrite(self._fd, _U64.pack(self._read), 8)
            return True

    def close(self) -> None:
        """Close the file (the positions are already on disk)."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def remove(self) -> None:
        """Close and delete the file."""
        self.close()
        self.path.unlink(missing_ok=True)
