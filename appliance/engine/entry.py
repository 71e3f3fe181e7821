"""One entry: thread-safe record lookup, queries, payload I/O and mutations.

One lock per entry serialises metadata changes (``BlockSet`` does the bookkeeping under it).
Payload bytes are read and written *outside* the lock at offsets fixed under it, so concurrent
writers of one entry stream in parallel, readers of other entries never wait, and readers of
this entry wait only for metadata work.

Fault model at runtime: a descriptor that fails its checksum (or cannot be read) aborts that
operation with ``CorruptionError`` naming bucket/entry/block, the file and the offset; it is
logged and the block is hidden until restart (``BlockSet.hide``) while every other block keeps
serving. A payload that fails its checksum (or is cut short) fails that one read the same way
and is logged, but its block stays in service: the descriptor is sound, and hiding up to
``max_block_records`` good records for one bad byte would make bit rot worse than it is.

``Entry`` is the facade; two of its jobs live in their own modules and are mixed in:
``bulk_read`` (``read_payloads``: adjacent records in one ``pread``) and ``entry_removal``
(``remove_records``, ``remove_where``, ``remove_unchecked``, ``remove_oldest_block``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import google_crc32c

from appliance import metrics
from appliance.engine import fs_ops
from appliance.engine.block import Columns, Run
from appliance.engine.blockset import BlockSet
from appliance.engine.bulk_read import BulkReads
from appliance.engine.bulk_write import build_run
from appliance.engine.codec import (
    IndexItem,
    RecordShape,
    StoredRecord,
    WalKind,
    encode_wal_frame,
    encode_wal_many,
)
from appliance.engine.context import EngineContext
from appliance.engine.entry_folder import EntryFiles
from appliance.engine.entry_removal import EntryRemoval
from appliance.engine.fd_cache import FileHandle
from appliance.engine.gate import gated
from appliance.engine.ioerrors import boundary, guarded_iter, is_missing, translate
from appliance.engine.models import EntryInfo, NewRecord, Pieces, RecordMeta, RecordState
from appliance.engine.names import is_meta_entry
from appliance.engine.readable import check_readable
from appliance.errors import (
    ApplianceError,
    CorruptionError,
    NotFound,
)
from appliance.sizes import JOIN_RECORD_BYTES
from appliance.units import KIB, MIB

log = logging.getLogger(__name__)
_FINISHED = RecordState.FINISHED
# Records a step of ``warm_next_block`` decodes at a time (~0.1 ms here) before it looks at
# the clock.
WARM_STEP_RECORDS = 64
_ERRORED = RecordState.ERRORED
crc32c = google_crc32c.value


def extend_crc(crc: int, parts: list[bytes]) -> int:
    """``crc`` extended by ``parts`` in order: the CRC32C of what came before them and them
    joined (0 for the parts alone)."""
    for part in parts:
        crc = google_crc32c.extend(crc, part)
    return crc


# Blocks one step of ``write_batch`` writes into: it holds a data and a WAL file of each open,
# so this bounds a batch's descriptors however small the blocks (``max_block_records: 1``).
MAX_BATCH_BLOCKS = 32

# The bulk path of a batch (``Entry._write_bulk``) holds the entry lock through its payloads'
# ``pwrite``: small records only, and a bounded run, so readers of the entry wait ~1 ms at most.
BULK_RECORD_BYTES = JOIN_RECORD_BYTES
BULK_RUN_BYTES = 2 * MIB


def _next_run(records: Sequence[NewRecord], start: int) -> int:
    """The first index after ``start`` whose record may begin a bulk run: small, in memory,
    and later than the record before it (``len(records)`` if none)."""
    for k in range(start + 1, len(records)):
        new = records[k]
        data = new.data
        if (
            type(data) is bytes
            and len(data) <= BULK_RECORD_BYTES
            and new.timestamp > records[k - 1].timestamp
        ):
            return k
    return len(records)


class Entry(BulkReads, EntryRemoval):
    """Records of one entry of one bucket (thread-safe)."""

    def __init__(
        self,
        ctx: EngineContext,
        bucket: str,
        name: str,
        files: EntryFiles,
        items: list[IndexItem],
    ) -> None:
        self._ctx = ctx
        self.bucket = bucket
        self.name = name
        self.files = files
        self.is_meta = is_meta_entry(name)
        self.removed = False
        # Bumped by every removal and label update (never by a write): a query batch collected
        # ahead of its request is served only if no record it may contain changed since.
        self.changes = 0
        self._lock = threading.Lock()
        self._blocks = BlockSet(ctx, bucket, name, files, items, ctx.new_uid())

    def __repr__(self) -> str:
        return f"Entry({self.bucket}/{self.name})"

    def set_limits(self, max_block_size: int, max_block_records: int) -> None:
        """Block limits from the bucket settings (applied to the next block choice)."""
        with self._lock:
            self._blocks.max_block_size = max_block_size
            self._blocks.max_block_records = max_block_records

    # --- statistics -----------------------------------------------------------------------------

    def info(self) -> EntryInfo:
        """Size, record and block counts, oldest and latest timestamps (0 when empty)."""
        with self._lock:
            blocks = self._blocks
            ids = blocks.ids
            oldest = blocks.first_ts(ids[0]) if ids else 0
            latest = blocks.latest_ts(ids[-1]) if ids else 0
            return EntryInfo(self.name, blocks.size, blocks.count, len(ids), oldest, latest)

    @property
    def size(self) -> int:
        """Payload plus record-metadata bytes (spec api §3.2)."""
        return self._blocks.size

    @property
    def oldest_record(self) -> int:
        """Oldest timestamp, 0 when the entry has no records (FIFO candidate order)."""
        with self._lock:
            ids = self._blocks.ids
            return self._blocks.first_ts(ids[0]) if ids else 0

    def block_ids(self) -> list[int]:
        """Ids of the entry's blocks, ascending (a block holds timestamps from its id on)."""
        with self._lock:
            return list(self._blocks.ids)

    def _check_alive(self) -> None:
        if self.removed:
            raise NotFound(f"Entry '{self.name}' not found in bucket '{self.bucket}'")

    # --- reads ----------------------------------------------------------------------------------

    @boundary("read the record")
    def get_record(self, ts: int) -> RecordMeta:
        """The record at ``ts`` in any state; 404 if absent."""
        with self._lock:
            self._check_alive()
            return self._blocks.locate(ts)[1]

    @boundary("read the record")
    def latest_record(self) -> RecordMeta:
        """The latest FINISHED record; 404 when there is none."""
        with self._lock:
            self._check_alive()
            for block_id in reversed(self._blocks.ids):
                block = self._blocks.get(block_id)
                for ts in reversed(block.order):
                    record = block.records[ts]
                    if record.state is _FINISHED:
                        return record
        raise NotFound(f"Entry '{self.name}' in bucket '{self.bucket}' has no records")

    def iter_records(self, start: int, stop: int) -> Iterator[RecordMeta]:
        """FINISHED records with start <= ts < stop, ascending; one block per lock hold."""
        return guarded_iter(self._iter_records(start, stop), "read the records")

    def iter_runs(self, start: int, stop: int, size: int) -> Iterator[list[RecordMeta]]:
        """``iter_records`` a run at a time: non-empty lists of FINISHED records with
        start <= ts < stop, ascending, each from one block and of at most ``size`` records
        (a query takes a batch's records in bulk; ``size`` spares listing a whole block)."""
        return guarded_iter(self._iter_runs(start, stop, size), "read the records")

    def _iter_runs(self, start: int, stop: int, size: int) -> Iterator[list[RecordMeta]]:
        finished = _FINISHED
        for run in self._iter_blocks(start, stop, size, runs=True):
            if (
                run.columns.all_finished(run.at, run.at + len(run)) if type(run) is Run
                else all(record.state is finished for record in run)
            ):
                yield run  # type: ignore[misc]
                continue
            kept = [record for record in run if record.state is finished]
            if kept:
                yield kept  # type: ignore[misc]

    def _iter_records(self, start: int, stop: int) -> Iterator[RecordMeta]:
        for batch in self._iter_blocks(start, stop):
            for record in batch:
                if record.state is _FINISHED:
                    yield record

    def _iter_blocks(
        self, start: int, stop: int, size: int | None = None, runs: bool = False
    ) -> Iterator[list[StoredRecord]]:
        """Each block's records with start <= ts < stop (any state), one lock hold a block;
        at most ``size`` records a list (the rest of the block follows in the next one).
        ``runs``: the records of a block other than the last (which writers keep changing)
        come as a ``Run`` of its columns, which a query takes in bulk, once the block was
        read before (``Block.columns_if_read_before``)."""
        cursor = start
        while cursor < stop:
            batch: list[StoredRecord] | None = None
            with self._lock:
                self._check_alive()
                ids = self._blocks.ids
                i = max(bisect_right(ids, cursor) - 1, 0)
                while i < len(ids) and ids[i] < stop:
                    block = self._blocks.get(ids[i])
                    order = block.order
                    lo = bisect_left(order, cursor)
                    hi = bisect_left(order, stop, lo)
                    if size is not None and hi - lo > size:
                        hi = lo + size
                    if lo < hi:
                        columns = (
                            block.columns_if_read_before() if runs and i < len(ids) - 1
                            else None
                        )
                        if columns is not None:
                            batch = Run(columns.records[lo:hi], columns, lo)
                        else:
                            records = block.records
                            batch = [records[t] for t in order[lo:hi]]
                        cursor = order[hi - 1] + 1
                        break
                    i += 1
            if batch is None:
                return
            yield batch

    def warm_next_block(
        self, ts: int, deadline: float, *, runs: bool = False,
        prepare: Callable[[Columns], object] | None = None,
    ) -> None:
        """Get the block after the one holding ``ts`` ready for a query about to read it,
        until ``deadline`` (``time.perf_counter``) and at least one step. If it is not in
        memory, its descriptor is decoded ``WARM_STEP_RECORDS`` at a time (once whole it goes
        to the block cache). For a query that reads in runs (``runs``), a later call then
        builds the cached block's columns, with their running checksums when its records are
        small, and hands them to ``prepare`` (the reader's own per-block derivations). A
        query reading this entry from ``ts`` calls it after each batch, so the batch that
        reaches the block costs neither. Never raises for damage: the read that needs the
        block finds and reports it."""
        columns: Columns | None = None
        decoder = None
        with self._lock:
            if self.removed:
                return
            blocks = self._blocks
            block_id = blocks.next_cold(ts)
            if block_id is None:
                columns = blocks.columns_ahead(ts) if runs else None
            else:
                decoder = blocks.take_warming(block_id)
        if block_id is None:
            if columns is not None:
                if columns.small():
                    columns.chain()
                if prepare is not None:
                    prepare(columns)
            return
        try:  # outside the lock: writers of this entry are not held up
            if decoder is None:
                decoder = self.files.descriptor_decoder(block_id, self.name)
            while not decoder.step(WARM_STEP_RECORDS) and time.perf_counter() < deadline:
                pass
        except (CorruptionError, OSError):
            return
        with self._lock:
            if not self.removed:
                blocks.keep_warming(decoder)

    def _open_payload(self, meta: RecordMeta) -> tuple[StoredRecord, int, FileHandle | None]:
        """Current record, its block id and a pinned data handle (None for empty payloads)."""
        with self._lock:
            self._check_alive()
            block, record = self._blocks.locate(meta.timestamp)
            check_readable(record.timestamp, record.state)
            if record.size == 0:
                return record, block.block_id, None
            try:
                return record, block.block_id, self.files.pin_data(block.block_id)
            except OSError as exc:
                if not is_missing(exc):
                    raise  # out of descriptors, I/O error...: not damage (the boundary maps it)
                path = str(self.files.data_path(block.block_id))
                raise self._blocks.hide(
                    block.block_id, path, None, f"data file can't be opened: {exc}"
                ) from exc

    def _damaged(self, block_id: int, record: StoredRecord, detail: str) -> CorruptionError:
        """A payload failed its checksum: fail this read only (the block's metadata is sound)."""
        path = str(self.files.data_path(block_id))
        public = (
            f"Record {record.timestamp} in block {self.bucket}/{self.name}/{block_id} is "
            f"corrupted: {detail}"
        )
        message = f"{public} (file {path}, offset {record.offset})"
        log.error("corrupt payload: %s", message, extra={"file": path, "offset": record.offset})
        return CorruptionError(message, path=path, offset=record.offset, public_detail=public)

    @boundary("read the record")
    def read_payload(self, meta: RecordMeta) -> bytes:
        """The whole payload, checksum verified (CorruptionError on mismatch)."""
        record, block_id, handle = self._open_payload(meta)
        if handle is None:
            return b""
        try:
            data = fs_ops.read_at(handle.fd, record.size, record.offset)
        finally:
            self._ctx.files.release(handle)
        if len(data) != record.size:
            raise self._damaged(block_id, record, "data file is shorter than the record")
        if crc32c(data) != record.crc:
            raise self._damaged(block_id, record, "payload checksum mismatch")
        metrics.records_read(1, len(data))
        return data

    def iter_payload(self, meta: RecordMeta, chunk_size: int = 512 * KIB) -> Iterator[bytes]:
        """Stream a payload in chunks; CorruptionError after the last chunk on a bad checksum."""
        return guarded_iter(self._iter_payload(meta, chunk_size), "read the record")

    def _iter_payload(self, meta: RecordMeta, chunk_size: int) -> Iterator[bytes]:
        record, block_id, handle = self._open_payload(meta)
        if handle is None:
            return
        # A private duplicate of the fd: a consumer may abandon this generator anywhere, and
        # closing a dup on garbage collection needs no lock (unpinning a cached handle would).
        try:
            fd = os.dup(handle.fd)
        finally:
            self._ctx.files.release(handle)
        crc = 0
        done = 0
        try:
            for chunk in fs_ops.read_chunks(fd, record.size, record.offset, chunk_size):
                crc = google_crc32c.extend(crc, chunk)
                done += len(chunk)
                yield chunk
        finally:
            os.close(fd)
        if done != record.size:
            raise self._damaged(block_id, record, "data file is shorter than the record")
        if crc != record.crc:
            raise self._damaged(block_id, record, "payload checksum mismatch")
        metrics.records_read(1, done)

    # --- writes (driven by Bucket and RecordWriter) ---------------------------------------------

    def begin(
        self, ts: int, size: int, content_type: str, labels: Mapping[str, str]
    ) -> tuple[int, StoredRecord, FileHandle]:
        """Reserve a STARTED record; return its block id, record and a pinned data handle."""
        with self._lock:
            self._check_alive()
            block, record = self._blocks.reserve(ts, size, content_type, dict(labels))
            try:
                handle = self.files.pin_data(block.block_id, create=True)
            except OSError:
                self._blocks.finalize(block.block_id, ts, _ERRORED, 0)
                raise
            return block.block_id, record, handle

    @gated
    def finish(
        self, block_id: int, ts: int, state: RecordState, crc: int, data: FileHandle | None
    ) -> None:
        """Log the final state of a write in the WAL; with synced writes fsync data + WAL.

        Releases ``data`` (the writer's pinned data handle) in every case.
        """
        handles = [data] if data is not None else []
        try:
            with self._lock:
                frame = self._blocks.finalize(block_id, ts, state, crc)
                if frame is not None and not self.removed:
                    block = self._blocks.live[block_id]
                    try:
                        handles.append(self._blocks.append_wal(block, frame))
                    except OSError:
                        # Not logged, so not stored: the record must not be served either.
                        self._blocks.unlog(block_id, [ts])
                        raise
                    if state is _FINISHED and self._ctx.journal is not None:
                        self._journal_write(block.records[ts], data)
        except BaseException:
            self._release_all(handles)
            raise
        self._commit_and_release(handles)

    def try_write(
        self, ts: int, data: bytes, content_type: str, labels: Mapping[str, str],
        admit: Callable[[int], bool],
    ) -> bool:
        """Store a whole small record now if nothing makes this thread wait; False (nothing
        done) otherwise: the entry lock is busy, the record does not append to the last block
        in time order with room to spare (no block to finish or file to create), or its data
        file or WAL segment is not open in the file cache, or ``admit(size)`` says no.

        For the event loop's inline writes (``Bucket.try_write_small``): the lock is held
        through the ``pwrite`` (a small payload costs less than handing the lock on), and the
        WAL frame is appended before it is released, so a True means what ``finish`` means.
        Synced writes and the journal are the caller's to rule out (they wait on the disk).
        """
        if not self._lock.acquire(blocking=False):
            return False
        cache = self._ctx.files
        handles: list[FileHandle] = []
        size = len(data)
        try:
            if self.removed:
                return False
            blocks = self._blocks
            block = blocks.appendable(ts, size)
            if block is None:
                return False
            block_id = block.block_id
            for key in (self.files.data_key(block_id), self.files.wal_key(block_id)):
                handle = cache.try_acquire(key)
                if handle is None:
                    return False
                handles.append(handle)
            if not admit(size):
                return False
            crc = crc32c(data)
            block, record = blocks.reserve(ts, size, content_type, dict(labels), crc)
            failure: OSError | None = None
            try:
                fs_ops.write_all(handles[0].fd, (data,), record.offset)
                handles[0].dirty = True
            except OSError as exc:
                failure = exc  # logged ERRORED below, like a streamed record that failed
            frame = blocks.finalize(block_id, ts, _ERRORED if failure else _FINISHED, crc)
            if frame is not None:
                try:
                    handles.append(blocks.append_wal(block, frame))
                except OSError:
                    blocks.unlog(block_id, [ts])  # not logged, so not stored
                    raise
            if failure is not None:
                raise failure
        finally:
            self._lock.release()
            self._release_all(handles)
        metrics.records_written(1, size)
        return True

    def _journal_write(self, record: StoredRecord, data: FileHandle | None) -> None:
        """Journal a finished streamed record with its payload (read back from its block)."""
        journal = self._ctx.journal
        assert journal is not None
        fields = self._journal_fields(record)
        if data is None or record.size == 0:
            journal.append("write", b"", **fields)
        else:
            journal.append_from_file("write", data.fd, record.offset, record.size, **fields)

    def _journal_fields(self, record: StoredRecord) -> dict[str, object]:
        return {
            "b": self.bucket,
            "e": self.name,
            "ts": record.timestamp,
            "ct": record.content_type,
            "l": dict(record.labels),
        }

    def _release_all(self, handles: list[FileHandle]) -> None:
        for handle in handles:
            self._ctx.files.release(handle)

    def _commit_and_release(self, handles: list[FileHandle]) -> None:
        """fsync through the group committer when writes are synced; always unpin."""
        try:
            if self._ctx.committer is not None:
                self._ctx.committer.commit(handles)
        finally:
            self._release_all(handles)
        mirror = self._ctx.options.mirror
        if mirror is not None and mirror.sync_interval == 0:
            mirror.commit()  # RS_REMOTE_SYNC_INTERVAL=0: acknowledged only once on S3

    def write_batch(self, records: Sequence[NewRecord]) -> dict[int, ApplianceError]:
        """Write whole in-memory records: runs appending to the last block in bulk (one
        ``pwrite``, one WAL frame), the rest one pwrite per block run, one WAL append per block.

        The general steps touch at most ``MAX_BATCH_BLOCKS`` blocks each, so a batch never
        holds more than that many data and WAL files open at once, however small the blocks
        are (issue 8 item 1). Every record gets the truth: either it is stored (no entry in
        the result) or it carries its own error and is not stored, not even after a restart;
        an I/O failure of one step fails that step's records only.
        """
        errors: dict[int, ApplianceError] = {}
        # Records of a batch mostly share a few (content type, labels) pairs, often the very
        # same objects (the API's header parser shares them): encode each pair once. Keyed by
        # the caller's objects, which ``records`` keeps alive for the whole call.
        shapes: dict[tuple[int, str], RecordShape] = {}
        i = 0
        count = len(records)
        refused = 0
        while i < count:
            try:
                done = self._write_bulk(records, i, shapes, errors)
                if done != i:
                    refused = 0
                elif refused:
                    # Refused again right after a general step (records older than the last
                    # block's, a failing disk...): the rest of the batch goes the general way.
                    done = self._write_step(records, i, count, shapes, errors)
                else:
                    # Not a bulk run (a new block, out of order, large records...): the general
                    # step, up to the next record that may start a run again.
                    refused = 1
                    done = self._write_step(records, i, _next_run(records, i), shapes, errors)
                i = done
            except ApplianceError as exc:  # e.g. the entry was removed meanwhile
                for new in records[i:]:
                    errors.setdefault(new.timestamp, exc)
                break
        return errors

    def _write_bulk(
        self,
        records: Sequence[NewRecord],
        start: int,
        shapes: dict[tuple[int, str], RecordShape],
        errors: dict[int, ApplianceError],
    ) -> int:
        """Write the run of records from ``start`` that appends to the last block in time order
        (``BlockSet.appendable_run``) at once; the index after it (``start``: none written).

        Under one hold of the entry lock: the payloads in one ``pwrite``, then one WRITE_MANY
        WAL frame, then the FINISHED records into the block; nothing is visible before it is
        logged, so no STARTED stage is needed. Any I/O failure leaves nothing behind (the WAL
        append cuts itself off) and returns ``start``: the general path retries those records
        and reports their failure its usual way. The journal (point-in-time backups) takes the
        general path too.
        """
        if self._ctx.journal is not None:
            return start
        blocks = self._blocks
        handles: list[FileHandle] = []
        stored: list[StoredRecord] = []
        end = start
        try:
            with self._lock:
                self._check_alive()
                run = blocks.appendable_run(records, start, BULK_RECORD_BYTES, BULK_RUN_BYTES)
                if run is None:
                    return start
                block, end = run
                try:
                    handle = self.files.pin_data(block.block_id, create=True)
                except OSError:
                    return start
                handles.append(handle)
                first = block.alloc_end
                stored, encoded, payloads, offset = build_run(
                    records, start, end, first, shapes, self.name
                )
                try:
                    # One pwrite of the joined run: for records this small, copying them is
                    # cheaper than a pwritev of as many iovecs (0.14 against 0.58 µs a KiB).
                    fs_ops.write_all(handle.fd, (b"".join(payloads),), first)
                    handle.dirty = True
                    handles.append(
                        blocks.append_wal(block, encode_wal_many(self._ctx.generation, encoded))
                    )
                except OSError:
                    end = start  # nothing is stored: handles released below
                else:
                    blocks.append_run(block, stored, encoded, offset)
        except BaseException:
            self._release_all(handles)
            raise
        if end == start:
            self._release_all(handles)
            return start
        try:
            self._commit_and_release(handles)
        except OSError as exc:
            # Not made durable as promised (sync writes): nothing of this run is acked.
            unsynced = translate(exc, "write the records")
            for record in stored:
                errors.setdefault(record.timestamp, unsynced)
        return end

    def _write_step(
        self,
        records: Sequence[NewRecord],
        start: int,
        stop: int,
        shapes: dict[tuple[int, str], RecordShape],
        errors: dict[int, ApplianceError],
    ) -> int:
        """Write records ``start:stop`` one by one, into at most MAX_BATCH_BLOCKS blocks; the
        index after the last one written."""
        placed: list[tuple[int, StoredRecord, bytes | Pieces, RecordShape]] = []
        data_handles: dict[int, FileHandle] = {}
        reserve = self._blocks.reserve
        i = start
        with self._lock:
            self._check_alive()
            while i < stop and len(data_handles) < MAX_BATCH_BLOCKS:
                new = records[i]
                i += 1
                data = new.data
                if type(data) is bytes:
                    crc = crc32c(data)
                elif type(data) is Pieces:
                    crc = extend_crc(0, data.parts)
                else:
                    data = bytes(data)
                    crc = crc32c(data)
                key = (id(new.labels), new.content_type)
                shape = shapes.get(key)
                if shape is None:
                    shape = shapes[key] = RecordShape(new.content_type, new.labels)
                try:
                    block, record = reserve(
                        new.timestamp, len(data), new.content_type, shape.labels, crc, shape
                    )
                except ApplianceError as exc:
                    errors[new.timestamp] = exc
                    continue
                except OSError as exc:  # finishing the previous (full) block failed
                    errors[new.timestamp] = translate(exc, "write the record")
                    continue
                if block.block_id not in data_handles:
                    try:
                        data_handles[block.block_id] = self.files.pin_data(
                            block.block_id, create=True
                        )
                    except OSError as exc:
                        self._blocks.finalize(block.block_id, new.timestamp, _ERRORED, 0)
                        errors[new.timestamp] = translate(exc, "write the record")
                        continue
                placed.append((block.block_id, record, data, shape))
        failed = self._write_runs(placed, data_handles)
        wal_handles: list[FileHandle] = []
        finalize = self._blocks.finalize
        try:
            with self._lock:
                frames: dict[int, list[bytes]] = {}
                logged: dict[int, list[int]] = {}
                for block_id, record, _, shape in placed:
                    ts = record.timestamp
                    state = _ERRORED if ts in failed else _FINISHED
                    frame = finalize(block_id, ts, state, record.crc, shape)
                    if frame is not None:
                        frames.setdefault(block_id, []).append(frame)
                        logged.setdefault(block_id, []).append(ts)
                if not self.removed:
                    for block_id, block_frames in frames.items():
                        block = self._blocks.live[block_id]
                        try:
                            handle = self._blocks.append_wal(block, b"".join(block_frames))
                        except OSError as exc:
                            # Not logged, so not stored: never report or serve these records.
                            self._blocks.unlog(block_id, logged[block_id])
                            problem = translate(exc, "write the records")
                            for ts in logged[block_id]:
                                errors[ts] = problem
                            continue
                        wal_handles.append(handle)
                        journal = self._ctx.journal
                        if journal is not None:
                            payloads = {r.timestamp: (r, data) for _, r, data, _ in placed}
                            for ts in logged[block_id]:
                                if ts not in failed:
                                    record, data = payloads[ts]
                                    journal.append(
                                        "write", bytes(data), **self._journal_fields(record)
                                    )
        finally:
            handles = [*data_handles.values(), *wal_handles]
            try:
                self._commit_and_release(handles)
            except OSError as exc:
                # Not made durable as promised (sync writes): nothing of this step is acked.
                unsynced = translate(exc, "write the records")
                for _, record, _, _ in placed:
                    errors.setdefault(record.timestamp, unsynced)
        for ts, cause in failed.items():
            errors[ts] = translate(cause, f"write record {ts}")
        return i

    @staticmethod
    def _write_runs(
        placed: list[tuple[int, StoredRecord, bytes | Pieces, RecordShape]],
        handles: dict[int, FileHandle],
    ) -> dict[int, OSError]:
        """pwrite payloads, joining runs of adjacent records of one block; failures by ts."""
        failed: dict[int, OSError] = {}
        i = 0
        while i < len(placed):
            block_id, first, _, _ = placed[i]
            j = i + 1
            end = first.offset + first.size
            while j < len(placed) and placed[j][0] == block_id and placed[j][1].offset == end:
                end += placed[j][1].size
                j += 1
            run = placed[i:j]
            payloads: Sequence[bytes]
            if len(run) == 1 or first.size >= JOIN_RECORD_BYTES:
                # Large records: one pwrite per record (or per received piece) beats copying
                # megabytes into a joined run.
                payloads = []
                for item in run:
                    data = item[2]
                    if type(data) is Pieces:
                        payloads.extend(data.parts)
                    else:
                        payloads.append(data)
            else:
                payloads = (b"".join(bytes(item[2]) for item in run),)
            handle = handles[block_id]
            try:
                fs_ops.write_all(handle.fd, payloads, first.offset)
                handle.dirty = True
            except OSError as exc:
                for _, record, _, _ in run:
                    failed[record.timestamp] = exc
            i = j
        return failed

    # --- label updates and removal --------------------------------------------------------------

    @boundary("update the labels")
    @gated
    def update_labels(
        self, ts: int, update: Mapping[str, str], remove: Iterable[str]
    ) -> RecordMeta:
        """Replace/add ``update`` and drop ``remove`` labels of one record (WAL-logged)."""
        self._ctx.check_writable()
        removed = set(remove)
        with self._lock:
            self._check_alive()
            block, record = self._blocks.locate(ts)
            labels = {k: v for k, v in record.labels.items() if k not in removed}
            labels.update(update)
            block = self._blocks.make_live(block.block_id)
            new = StoredRecord(
                ts,
                record.size,
                record.content_type,
                labels,
                record.state,
                self.name,
                record.offset,
                record.crc,
                record.meta_size,
            )
            frame = encode_wal_frame(WalKind.UPDATE, self._ctx.generation, new)
            # Logged first: an update the WAL could not take (a full disk) changes nothing.
            handle = self._blocks.append_wal(block, frame)
            block.records[ts] = new
            block.forget_columns()
            self.changes += 1
            if self._ctx.journal is not None:
                self._ctx.journal.append("labels", b=self.bucket, e=self.name, ts=ts, l=labels)
        self._commit_and_release([handle])
        return new

    def find_by_label(self, name: str, value: str) -> list[int]:
        """Timestamps of records (any state) carrying label ``name=value`` (``$meta`` upserts)."""
        with self._lock:
            self._check_alive()
            found: list[int] = []
            for block_id in list(self._blocks.ids):
                block = self._blocks.get(block_id)
                found.extend(ts for ts, r in block.records.items() if r.labels.get(name) == value)
            return found

    # --- maintenance ----------------------------------------------------------------------------

    @gated
    def compact(self) -> bool:
        """Move WAL contents into descriptors and the index; return whether anything changed."""
        with self._lock:
            if self.removed:
                return False
            return self._blocks.compact()

    def retire(self) -> None:
        """Mark removed (further calls 404) and forget cached blocks; files are the caller's."""
        with self._lock:
            self.removed = True
            self._ctx.blocks.drop_entry(self._blocks.uid)
            self._blocks.live.clear()
        self._ctx.files.invalidate_under(self.files.path)
