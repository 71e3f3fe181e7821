"""One block in memory, and the process-wide LRU of decoded blocks.

A block holds the records whose timestamps fall in ``[block_id, next_block_id)`` (the entry keeps
that invariant when it picks a block, so iterating blocks in id order yields ascending
timestamps). Records are kept in a dict by timestamp plus a sorted timestamp list for range
scans. ``alloc_end`` is where the next payload is reserved in ``<id>.blk``: it only grows, so
concurrent writers never share bytes. A block is *live* (pinned in its entry) while it has
changes that only the WAL holds (``dirty``) or writers in flight (``pending``); otherwise it may
sit in the bounded ``BlockCache`` and be dropped and re-read from its descriptor.

The descriptor never contains STARTED records: a write that never finished must not survive a
restart as a phantom. Its ``data_end`` covers FINISHED payloads only, which is what the data file
must at least hold (the startup integrity check compares the two).
"""

from __future__ import annotations

import threading
from bisect import bisect_left, insort
from collections import OrderedDict
from collections.abc import Sequence
from itertools import accumulate
from typing import Any

from appliance.engine.codec import Descriptor, IndexItem, StoredRecord
from appliance.engine.crc_view import COPY_CHECK_BYTES, running_checksums
from appliance.engine.models import RecordState

DEFAULT_BLOCK_CACHE = 64
_STARTED = RecordState.STARTED
_FINISHED = RecordState.FINISHED


class Block:
    """Records of one block, mutated only under the owning entry's lock."""

    __slots__ = (
        "block_id",
        "records",
        "order",
        "size",
        "meta_size",
        "alloc_end",
        "pending",
        "dirty",
        "wal_open",
        "encoded",
        "_columns",
        "_read_before",
    )

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.records: dict[int, StoredRecord] = {}
        self.order: list[int] = []
        self.size = 0
        self.meta_size = 0
        self.alloc_end = 0
        self.pending = 0
        self.dirty = False
        self.wal_open = False
        # Record bytes already built for WAL frames, reused by the next descriptor write.
        self.encoded: dict[int, tuple[StoredRecord, bytes]] = {}
        self._columns: Columns | None = None
        self._read_before = False

    def columns(self) -> Columns:
        """The records as columns (``Columns``), built on first use after a change (entry
        lock held). Every change to ``records`` or ``order`` calls ``forget_columns``."""
        cols = self._columns
        if cols is None:
            cols = self._columns = Columns(self)
        return cols

    def columns_if_read_before(self) -> Columns | None:
        """``columns()`` from the second time a query reads this block object on; None the
        first time. A block decoded for one batch and evicted before the next (more readers
        than the block cache holds) would pay for columns it never uses again."""
        if self._read_before:
            return self.columns()
        self._read_before = True
        return None

    def columns_to_read(self) -> Columns:
        """``columns()`` for a query about to read this block (``Entry.warm_next_block``):
        marked read before, so its first batch from the block takes them too."""
        self._read_before = True
        return self.columns()

    def built_columns(self) -> Columns | None:
        """The columns if they are built and current, without building them."""
        return self._columns

    def forget_columns(self) -> None:
        """Drop the columns: a record was added, replaced or removed."""
        self._columns = None

    @classmethod
    def from_descriptor(cls, descriptor: Descriptor) -> Block:
        """A clean block holding what a descriptor says."""
        block = cls(descriptor.block_id)
        block.records = {r.timestamp: r for r in descriptor.records}
        block.order = sorted(block.records)
        block.size = sum(r.size for r in descriptor.records)
        block.meta_size = sum(r.meta_size for r in descriptor.records)
        ends = [r.offset + r.size for r in descriptor.records]
        block.alloc_end = max([descriptor.data_end, *ends])
        return block

    @property
    def first_ts(self) -> int:
        """Smallest timestamp in the block (the block id when empty)."""
        return self.order[0] if self.order else self.block_id

    @property
    def latest_ts(self) -> int:
        """Largest timestamp in the block (0 when empty)."""
        return self.order[-1] if self.order else 0

    def put(self, record: StoredRecord) -> StoredRecord | None:
        """Insert or replace a record; return the replaced one."""
        ts = record.timestamp
        old = self.records.get(ts)
        self.records[ts] = record
        self._columns = None
        if old is None:
            order = self.order
            if not order or ts > order[-1]:
                order.append(ts)
            else:
                insort(order, ts)
        else:
            self.size -= old.size
            self.meta_size -= old.meta_size
        self.size += record.size
        self.meta_size += record.meta_size
        end = record.offset + record.size
        if end > self.alloc_end:
            self.alloc_end = end
        return old

    def remove(self, ts: int) -> StoredRecord | None:
        """Drop a record; return it (None if absent)."""
        old = self.records.pop(ts, None)
        if old is not None:
            self._columns = None
            del self.order[bisect_left(self.order, ts)]
            self.size -= old.size
            self.meta_size -= old.meta_size
        return old

    def persisted(self) -> list[StoredRecord]:
        """Records a descriptor stores (everything but STARTED), ascending."""
        records = self.records
        return [r for r in (records[t] for t in self.order) if r.state is not _STARTED]

    def to_descriptor(self, generation: int) -> Descriptor:
        """The descriptor of this block's persistent records."""
        records = self.persisted()
        finished_ends = [r.offset + r.size for r in records if r.state is _FINISHED]
        return Descriptor(
            block_id=self.block_id,
            generation=generation,
            records=tuple(records),
            size=sum(r.size for r in records),
            meta_size=sum(r.meta_size for r in records),
            data_end=max(finished_ends, default=0),
            first_ts=records[0].timestamp if records else self.block_id,
            latest_ts=records[-1].timestamp if records else 0,
        )


class Columns:
    """A block's records in timestamp order, as columns, for batched reads of a run of them:
    their sizes and running sums, which of them lie back to back, their checksums, and what
    a query or a response encoder derived from them once (``memo``), so that a batch costs
    slices of lists and a few bisections instead of a Python step per record.

    Built from the block as it is, and dropped by any change to it (``Block.forget_columns``):
    columns that are still the block's (``Block.built_columns``) describe it exactly. A run
    handed in from elsewhere is compared with them record by record first (``span``).
    """

    __slots__ = (
        "records", "ts", "sizes", "sizes_acc", "starts", "ends", "crcs", "entry",
        "_unfinished", "_unreadable", "_chain", "memo",
    )

    def __init__(self, block: Block) -> None:
        records = block.records
        self.records: list[StoredRecord] = [records[t] for t in block.order]
        self.ts: list[int] = list(block.order)
        self.sizes = [r.size for r in self.records]
        self.sizes_acc = list(accumulate(self.sizes, initial=0))  # bytes before record k
        self.starts = [r.offset for r in self.records]
        self.ends = [r.offset + r.size for r in self.records]
        self.crcs = [r.crc for r in self.records]
        entries = {r.entry for r in self.records}
        self.entry: str | None = entries.pop() if len(entries) == 1 else None
        # How many of the first k records are not finished; are not finished or are empty
        # (the latter cannot be part of a span read).
        states = [r.state is not _FINISHED for r in self.records]
        self._unfinished = list(accumulate(states, initial=0))
        self._unreadable = list(
            accumulate((bad or not size for bad, size in zip(states, self.sizes)), initial=0)
        )
        self._chain: list[int] | None = None
        self.memo: dict[str, Any] = {}  # per-block derivations of a query or an encoder

    def chain(self) -> list[int]:
        """``running_checksums`` of the records (built on first use): ``chain[k]`` is the
        CRC32C of the first ``k`` payloads joined, as their stored checksums say."""
        chain = self._chain
        if chain is None:
            # Two threads may build it at once: the same list either way.
            chain = self._chain = running_checksums(self.crcs, self.sizes)
        return chain

    def small(self, lo: int = 0, hi: int | None = None) -> bool:
        """Whether records ``lo`` to ``hi`` (all by default) are at least two and average
        below ``COPY_CHECK_BYTES``: then one check of their span against the running
        checksums (``chain``) costs less than a call a record."""
        hi = len(self.sizes) if hi is None else hi
        acc = self.sizes_acc
        return hi - lo >= 2 and acc[hi] - acc[lo] < COPY_CHECK_BYTES * (hi - lo)

    def all_finished(self, lo: int, hi: int) -> bool:
        """Whether records ``lo`` to ``hi`` (excluded) are all finished."""
        return self._unfinished[hi] == self._unfinished[lo]

    def readable(self, lo: int, hi: int) -> bool:
        """Whether records ``lo`` to ``hi`` (excluded) can be read as one span: all finished,
        none empty, each starting where the one before ends in the data file."""
        return (
            self._unreadable[hi] == self._unreadable[lo]
            and self.starts[lo + 1 : hi] == self.ends[lo : hi - 1]
        )

    def span(self, metas: Sequence[Any]) -> int | None:
        """The index of ``metas[0]`` if ``metas`` (a list) are this block's records from there
        on and ``readable``; None otherwise."""
        if not metas:
            return None
        lo = bisect_left(self.ts, metas[0].timestamp)
        hi = lo + len(metas)
        if (
            hi > len(self.ts)
            # Identity first, then by value: a record replaced since is another record.
            or self.records[lo:hi] != metas
            or not self.readable(lo, hi)
        ):
            return None
        return lo


class Run(list):  # type: ignore[type-arg]
    """Records ``columns.records[at:at + len(self)]`` of a block, as a list (``iter_runs``)."""

    __slots__ = ("columns", "at")

    def __init__(self, records: list[StoredRecord], columns: Columns, at: int) -> None:
        super().__init__(records)
        self.columns = columns
        self.at = at

    def tail(self, skip: int) -> Run:
        """The records after the first ``skip``, still a run of the same columns."""
        return Run(self[skip:], self.columns, self.at + skip)


def index_item(descriptor: Descriptor, crc: int) -> IndexItem:
    """The index summary of a descriptor whose encoded CRC is ``crc``."""
    return IndexItem(
        block_id=descriptor.block_id,
        first_ts=descriptor.first_ts,
        latest_ts=descriptor.latest_ts,
        record_count=len(descriptor.records),
        size=descriptor.size,
        meta_size=descriptor.meta_size,
        data_end=descriptor.data_end,
        descriptor_crc=crc,
        generation=descriptor.generation,
    )


class BlockCache:
    """Bounded LRU of clean decoded blocks, shared by all entries; keys are (entry uid, id)."""

    def __init__(self, capacity: int = DEFAULT_BLOCK_CACHE) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._blocks: OrderedDict[tuple[int, int], Block] = OrderedDict()
        # Plain counters (read by /metrics at scrape time): no metrics call on the hot path.
        self.hits = 0
        self.misses = 0

    def get(self, key: tuple[int, int]) -> Block | None:
        """The cached block, refreshed as most recently used."""
        with self._lock:
            block = self._blocks.get(key)
            if block is not None:
                self._blocks.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return block

    def __contains__(self, key: tuple[int, int]) -> bool:
        """Whether the block is cached (neither a hit nor a use)."""
        return key in self._blocks

    def peek(self, key: tuple[int, int]) -> Block | None:
        """The cached block, if any (neither a hit nor a use)."""
        return self._blocks.get(key)

    def put(self, key: tuple[int, int], block: Block) -> None:
        """Cache a clean block, evicting the least recently used beyond capacity."""
        with self._lock:
            self._blocks[key] = block
            self._blocks.move_to_end(key)
            while len(self._blocks) > self._capacity:
                self._blocks.popitem(last=False)

    def pop(self, key: tuple[int, int]) -> None:
        """Forget one block."""
        with self._lock:
            self._blocks.pop(key, None)

    def drop_entry(self, uid: int) -> None:
        """Forget every block of one entry."""
        with self._lock:
            for key in [k for k in self._blocks if k[0] == uid]:
                del self._blocks[key]
