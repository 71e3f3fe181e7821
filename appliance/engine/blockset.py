"""The blocks of one entry: in-memory block index, block choice, and persisting block changes.

Not thread-safe on its own: every method is called with the owning entry's lock held.

State: sorted block ids; ``items`` = the index items as persisted in ``blocks.idx`` (one per
descriptor on disk); ``live`` = blocks pinned in memory because the WAL holds changes their
descriptor lacks (``dirty``) or writers are in flight (``pending``); ``hidden`` = items of blocks
taken out of service after runtime corruption (still written to the index, so recovery decides);
``size``/``count`` = running totals for ``Entry.info`` and quotas.

Block choice (spec engine §5, steps 8-9): a record goes to the block with the greatest id <= ts;
before the first block, or when the chosen block is full (``max_block_size`` /
``max_block_records``) and all its records are older than ``ts``, a new block with id = ts
starts and the full one is flushed. Deviation from ReductStore: a belated record that falls
*inside* the time span of a full block still goes into that block (it may exceed the limits), so
every block holds exactly the records of ``[id, next_id)`` and a lookup can never miss a record.
"""

from __future__ import annotations

import logging
from bisect import bisect_right, insort
from collections.abc import Mapping, Sequence

from appliance.engine.block import Block, Columns, index_item
from appliance.engine.codec import (
    DescriptorDecoder,
    IndexItem,
    RecordShape,
    StoredRecord,
    WalKind,
    encode_record,
    encode_wal_frame,
)
from appliance.engine.context import EngineContext
from appliance.engine.entry_folder import EntryFiles
from appliance.engine.fd_cache import FileHandle
from appliance.engine.models import NewRecord, RecordState
from appliance.engine.sizing import position_metadata_size, record_metadata_size
from appliance.errors import Conflict, CorruptionError, NotFound

log = logging.getLogger(__name__)
_STARTED = RecordState.STARTED
_ERRORED = RecordState.ERRORED


class BlockSet:
    """In-memory index and block persistence of one entry (caller holds the entry lock)."""

    def __init__(
        self,
        ctx: EngineContext,
        bucket: str,
        entry: str,
        files: EntryFiles,
        items: list[IndexItem],
        uid: int,
    ) -> None:
        self.ctx = ctx
        self.bucket = bucket
        self.entry = entry
        self.files = files
        self.uid = uid
        self.items: dict[int, IndexItem] = {item.block_id: item for item in items}
        self.ids: list[int] = sorted(self.items)
        self.live: dict[int, Block] = {}
        self.hidden: dict[int, IndexItem] = {}
        self.size = sum(i.size + i.meta_size for i in self.items.values())
        self.count = sum(i.record_count for i in self.items.values())
        self.max_block_size = 0
        self.max_block_records = 0
        # The descriptor being decoded ahead of a read, a part at a time (``warm``).
        self.warming: DescriptorDecoder | None = None

    # --- statistics -----------------------------------------------------------------------------

    def first_ts(self, block_id: int) -> int:
        """Oldest timestamp in a block."""
        block = self.live.get(block_id)
        return block.first_ts if block is not None else self.items[block_id].first_ts

    def latest_ts(self, block_id: int) -> int:
        """Latest timestamp in a block."""
        block = self.live.get(block_id)
        return block.latest_ts if block is not None else self.items[block_id].latest_ts

    def totals(self, block_id: int) -> tuple[int, int]:
        """(bytes incl. record metadata, record count) of a block."""
        block = self.live.get(block_id)
        if block is not None:
            return block.size + block.meta_size, len(block.records)
        item = self.items[block_id]
        return item.size + item.meta_size, item.record_count

    # --- lookup ---------------------------------------------------------------------------------

    def get(self, block_id: int) -> Block:
        """The block, from the live set, the shared cache, or its descriptor."""
        block = self.live.get(block_id)
        if block is not None:
            return block
        key = (self.uid, block_id)
        block = self.ctx.blocks.get(key)
        if block is not None:
            return block
        decoder = self.take_warming(block_id)
        try:
            if decoder is not None:  # part decoded ahead, from the bytes the index names
                decoder.step(decoder.header.record_count)
                descriptor, crc = decoder.descriptor(), decoder.crc
            else:
                descriptor, crc = self.files.load_descriptor(block_id, self.entry)
        except CorruptionError as exc:
            raise self.hide(block_id, exc.path, exc.offset, str(exc), exc.public_detail) from exc
        item = self.items.get(block_id)
        if item is not None and item.descriptor_crc != crc:
            # An intact descriptor newer than the index: a crash fell between the two writes.
            log.warning(
                "stale index item of %s/%s block %s healed", self.bucket, self.entry, block_id
            )
            self.items[block_id] = index_item(descriptor, crc)
        block = Block.from_descriptor(descriptor)
        self.ctx.blocks.put(key, block)
        return block

    def next_cold(self, ts: int) -> int | None:
        """The block after the one holding ``ts``, if it is not in memory (nor hidden)."""
        i = bisect_right(self.ids, ts)
        if i < 1 or i >= len(self.ids):
            return None
        block_id = self.ids[i]
        if block_id in self.live or block_id in self.hidden:
            return None
        return None if (self.uid, block_id) in self.ctx.blocks else block_id

    def columns_ahead(self, ts: int) -> Columns | None:
        """The columns of the block after the one holding ``ts``, built for a query about to
        read it (``Block.columns_to_read``), if it is cached, not the last block (writers
        keep changing that one) and has none yet; None otherwise (entry lock held)."""
        i = bisect_right(self.ids, ts)
        if i < 1 or i >= len(self.ids) - 1:
            return None
        block = self.ctx.blocks.peek((self.uid, self.ids[i]))
        if block is None or block.built_columns() is not None:
            return None
        return block.columns_to_read()

    def take_warming(self, block_id: int) -> DescriptorDecoder | None:
        """The decoder of ``block_id`` being decoded ahead (taken: a second taker gets None),
        if it was read from the descriptor the index names."""
        decoder = self.warming
        if decoder is None or decoder.header.block_id != block_id:
            return None
        self.warming = None
        return decoder if self._indexed(decoder) else None

    def _indexed(self, decoder: DescriptorDecoder) -> bool:
        """Whether the index names the bytes ``decoder`` reads (not rewritten since)."""
        item = self.items.get(decoder.header.block_id)
        return item is not None and item.descriptor_crc == decoder.crc

    def keep_warming(self, decoder: DescriptorDecoder) -> None:
        """After a step ahead: a whole descriptor goes to the block cache, a part waits for
        the next step; dropped if the block changed, or got loaded, meanwhile."""
        block_id = decoder.header.block_id
        if (
            not self._indexed(decoder)
            or block_id in self.live
            or (self.uid, block_id) in self.ctx.blocks
        ):
            return
        if not decoder.done:
            self.warming = decoder
            return
        try:
            block = Block.from_descriptor(decoder.descriptor())
        except CorruptionError:
            return  # the read that needs the block finds it so, and reports it
        self.ctx.blocks.put((self.uid, block_id), block)

    def make_live(self, block_id: int) -> Block:
        """The block, pinned in memory because it is about to change."""
        block = self.get(block_id)
        if block_id not in self.live:
            self.live[block_id] = block
            self.ctx.blocks.pop((self.uid, block_id))
        return block

    def not_found(self, ts: int) -> NotFound:
        """ReductStore's 404 for a missing record."""
        return NotFound(f"Record {ts} not found in entry {self.bucket}/{self.entry}")

    def locate(self, ts: int) -> tuple[Block, StoredRecord]:
        """The block and record at ``ts``; 404 if absent."""
        i = bisect_right(self.ids, ts) - 1
        if i < 0:
            raise self.not_found(ts)
        block = self.get(self.ids[i])
        record = block.records.get(ts)
        if record is None:
            raise self.not_found(ts)
        return block, record

    def hide(
        self,
        block_id: int,
        path: str | None,
        offset: int | None,
        detail: str,
        public_detail: str | None = None,
    ) -> CorruptionError:
        """Take a damaged block out of service until restart; return the error to raise.

        ``detail`` goes to the log and may name files; ``public_detail`` is the client-safe kind
        of damage (without one, the client is pointed at the log).
        """
        block = f"Block {self.bucket}/{self.entry}/{block_id}"
        error = CorruptionError(
            f"{block} is corrupted: {detail} (file {path}, offset {offset})",
            path=path,
            offset=offset,
            public_detail=(
                f"{block} is corrupted: {public_detail}"
                if public_detail is not None
                else f"{block} is corrupted (details in the server log)"
            ),
        )
        log.error(
            "corrupt block taken out of service: %s",
            error.message,
            extra={"file": path, "offset": offset},
        )
        if block_id in self.items or block_id in self.live:
            size, count = self.totals(block_id)
            self.size -= size
            self.count -= count
            item = self.items.pop(block_id, None)
            if item is not None:
                self.hidden[block_id] = item
            self.live.pop(block_id, None)
            self.ctx.blocks.pop((self.uid, block_id))
            self.ids.remove(block_id)
        return error

    # --- writes ---------------------------------------------------------------------------------

    def reserve(
        self, ts: int, size: int, content_type: str, labels: Mapping[str, str], crc: int = 0,
        shape: RecordShape | None = None,
    ) -> tuple[Block, StoredRecord]:
        """Place a STARTED record and reserve its bytes (409 on a duplicate timestamp).

        ``shape``: the content type and labels precomputed (batch writes; then ``labels`` is
        ``shape.labels``), which saves their share of the metadata size computation."""
        block = self._last_with_room(ts, size)
        if block is not None:
            # Appending in time order to the last block, which has room: what ``_choose`` and
            # ``Block.put`` conclude for it, without their general steps (the common case of
            # every write, and per record of a batch).
            offset = block.alloc_end
            record = self._started(ts, size, content_type, labels, offset, crc, shape)
            meta_size = record.meta_size
            block.records[ts] = record
            block.order.append(ts)
            block.forget_columns()
            block.size += size
            block.meta_size += meta_size
            block.alloc_end = offset + size
            self.size += size + meta_size
            self.count += 1
            block.pending += 1
            return block, record
        block = self._choose(ts, size)
        existing = block.records.get(ts)
        if existing is not None:
            if existing.state is not _ERRORED or existing.size != size:
                raise Conflict(f"A record with timestamp {ts} already exists")
            offset = existing.offset  # an errored record of the same size is overwritten in place
        else:
            offset = block.alloc_end
        record = self._started(ts, size, content_type, labels, offset, crc, shape)
        meta_size = record.meta_size
        old = block.put(record)
        if old is not None:
            self.size -= old.size + old.meta_size
            self.count -= 1
        self.size += size + meta_size
        self.count += 1
        block.pending += 1
        return block, record

    def appendable(self, ts: int, size: int) -> Block | None:
        """The last block if a record at ``ts`` of ``size`` bytes would be appended to it in
        time order with room to spare and its WAL segment already started (``reserve``'s
        fast path, no block to flush or file to create); else None."""
        block = self._last_with_room(ts, size)
        return block if block is not None and block.wal_open else None

    def _last_block(self) -> Block | None:
        """The last block when it is live and holds records (what an append in time order
        goes to); else None."""
        ids = self.ids
        block = self.live.get(ids[-1]) if ids else None
        return block if block is not None and block.order else None

    def _last_with_room(self, ts: int, size: int) -> Block | None:
        """The last block if a record at ``ts`` of ``size`` bytes appends to it in time order
        with room to spare (``reserve``'s fast path); else None."""
        block = self._last_block()
        if (
            block is not None
            and ts > block.order[-1]
            and block.size + size <= self.max_block_size
            and len(block.records) < self.max_block_records
        ):
            return block
        return None

    def appendable_run(
        self, records: Sequence[NewRecord], start: int, max_record: int, max_bytes: int
    ) -> tuple[Block, int] | None:
        """The last block and the end of the run of ``records`` from ``start`` on that append
        to it in time order with room to spare (what ``reserve``'s fast path would conclude
        for each), in-memory payloads of at most ``max_record`` bytes, ``max_bytes`` in all;
        None when not even the first one does."""
        block = self._last_block()
        if block is None:
            return None
        last = block.order[-1]
        room = min(self.max_block_size - block.size, max_bytes)
        end = min(len(records), start + self.max_block_records - len(block.records))
        i = start
        while i < end:
            new = records[i]
            data = new.data
            ts = new.timestamp
            if type(data) is not bytes or ts <= last:
                break
            size = len(data)
            if size > room or size > max_record:
                break
            room -= size
            last = ts
            i += 1
        return (block, i) if i > start else None

    def append_run(
        self, block: Block, records: list[StoredRecord], encoded: list[bytes], alloc_end: int
    ) -> None:
        """Add FINISHED records, already written and logged, at the end of ``block`` (from
        ``appendable_run``); ``encoded``: their record bytes, reused by the next descriptor."""
        size = meta_size = 0
        by_ts = block.records
        cache = block.encoded
        for record, data in zip(records, encoded, strict=True):
            ts = record.timestamp
            by_ts[ts] = record
            cache[ts] = (record, data)
            size += record.size
            meta_size += record.meta_size
        block.order.extend(r.timestamp for r in records)
        block.forget_columns()
        block.size += size
        block.meta_size += meta_size
        block.alloc_end = alloc_end
        self.size += size + meta_size
        self.count += len(records)

    def _started(
        self, ts: int, size: int, content_type: str, labels: Mapping[str, str], offset: int,
        crc: int, shape: RecordShape | None,
    ) -> StoredRecord:
        """A STARTED record at ``offset`` with its descriptor size (from ``shape`` when given)."""
        if shape is None:
            meta_size = record_metadata_size(ts, offset, offset + size, labels, content_type)
        else:
            meta_size = position_metadata_size(ts, offset, offset + size) + shape.meta_size
        return StoredRecord(
            ts, size, content_type, labels, _STARTED, self.entry, offset, crc, meta_size
        )

    def _choose(self, ts: int, size: int) -> Block:
        ids = self.ids
        if not ids or ts < ids[0]:
            return self._new_block(ts)
        block = self.make_live(ids[bisect_right(ids, ts) - 1])
        if ts in block.records or not block.records or block.block_id == ts:
            return block
        full = (
            block.size + size > self.max_block_size
            or len(block.records) + 1 > self.max_block_records
        )
        if full and block.latest_ts < ts:
            if block.dirty:
                self.flush([block])  # the block is finished: its WAL becomes a descriptor
            return self._new_block(ts)
        return block

    def _new_block(self, ts: int) -> Block:
        block = Block(ts)
        insort(self.ids, ts)
        self.live[ts] = block
        return block

    def finalize(
        self, block_id: int, ts: int, state: RecordState, crc: int,
        shape: RecordShape | None = None,
    ) -> bytes | None:
        """Set the final state of a reserved record; return its WAL frame (None if it vanished).

        ``shape``: the one given to ``reserve`` (its encoded labels are reused)."""
        block = self.live.get(block_id)
        if block is None:
            return None  # the block was removed meanwhile (entry removal, FIFO)
        block.pending -= 1
        record = block.records.get(ts)
        if record is None or record.state is not _STARTED:
            return None  # removed while being written
        final = StoredRecord(
            ts,
            record.size,
            record.content_type,
            record.labels,
            state,
            self.entry,
            record.offset,
            crc,
            record.meta_size,
        )
        block.records[ts] = final
        block.forget_columns()
        encoded = encode_record(final, shape)
        block.encoded[ts] = (final, encoded)
        return encode_wal_frame(WalKind.WRITE, self.ctx.generation, final, encoded)

    def unlog(self, block_id: int, timestamps: list[int]) -> None:
        """Make finalized records whose WAL frames could not be written ERRORED (not stored)."""
        block = self.live.get(block_id)
        if block is None:
            return
        for ts in timestamps:
            record = block.records.get(ts)
            block.encoded.pop(ts, None)
            if record is not None:
                block.forget_columns()
                block.records[ts] = StoredRecord(
                    ts,
                    record.size,
                    record.content_type,
                    record.labels,
                    _ERRORED,
                    self.entry,
                    record.offset,
                    record.crc,
                    record.meta_size,
                )

    def append_wal(self, block: Block, frames: bytes) -> FileHandle:
        """Append frames to the block's WAL; the block becomes dirty. Returns a pinned handle."""
        handle = self.files.append_wal(block.block_id, frames, fresh=not block.wal_open)
        block.wal_open = True
        block.dirty = True
        return handle

    # --- persistence ----------------------------------------------------------------------------

    def flush(self, blocks: list[Block]) -> None:
        """Write descriptors, then the index, then drop the WAL segments they replace.

        The index is saved before any WAL is deleted: a crash in between replays the WAL over
        the newer descriptor, which is idempotent; the reverse order could lose records.
        """
        for block in blocks:
            descriptor = block.to_descriptor(self.ctx.generation)
            if descriptor.records:
                # No folder fsync per descriptor: save_index below renames in the same folder
                # and fsyncs it once for all of them, before any WAL segment is deleted.
                self.items[block.block_id] = self.files.save_descriptor(
                    descriptor, block.encoded, sync_dir=False
                )
            elif self.items.pop(block.block_id, None) is not None:
                # Only writers in flight are left: the block has nothing to persist yet.
                self.files.remove_descriptor(block.block_id)
        self.save_index()
        for block in blocks:
            if block.wal_open:
                self.files.drop_wal(block.block_id)
                block.wal_open = False
            block.dirty = False
            block.encoded.clear()
            if not block.pending:
                self.live.pop(block.block_id, None)
                self.ctx.blocks.put((self.uid, block.block_id), block)

    def save_index(self) -> None:
        """Persist the index items (plus hidden ones) atomically."""
        items = dict(self.hidden)
        items.update(self.items)
        self.files.save_index(items[i] for i in sorted(items))

    def compact(self) -> bool:
        """Flush every dirty block; return whether anything was written."""
        dirty = [block for block in self.live.values() if block.dirty]
        if dirty:
            self.flush(dirty)
        idle = [
            b
            for b in self.live.values()
            if not b.dirty and not b.pending and b.block_id in self.items
        ]
        for block in idle:
            # Pinned for a change that never came (a refused write): back to the shared LRU.
            del self.live[block.block_id]
            self.ctx.blocks.put((self.uid, block.block_id), block)
        return bool(dirty)

    def drop(self, block_id: int) -> None:
        """Delete a block: index first (a crash then leaves only an orphan), then its files."""
        size, count = self.totals(block_id)
        self.size -= size
        self.count -= count
        self.ids.remove(block_id)
        self.items.pop(block_id, None)
        self.live.pop(block_id, None)
        self.ctx.blocks.pop((self.uid, block_id))
        self.save_index()
        self.files.remove_block(block_id)

    def persist_removal(self, block: Block) -> None:
        """Make record removals from ``block`` durable, compacting its data file when possible."""
        if not block.records:
            self.drop(block.block_id)
            return
        self.flush([block])
        if block.pending:
            return  # writers hold offsets in the data file: leave the holes
        rewritten = self.files.rewrite_data(block.to_descriptor(self.ctx.generation))
        if rewritten is not None:
            records, item = rewritten
            for record in records:
                block.records[record.timestamp] = record
            block.forget_columns()
            block.alloc_end = item.data_end
            self.items[block.block_id] = item
            self.save_index()
