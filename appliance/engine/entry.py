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
"""

from __future__ import annotations

import logging
import os
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import google_crc32c

from appliance import metrics
from appliance.engine.blockset import BlockSet
from appliance.engine.codec import IndexItem, StoredRecord, WalKind, encode_wal_frame
from appliance.engine.context import EngineContext
from appliance.engine.entry_files import EntryFiles
from appliance.engine.files import FileHandle
from appliance.engine.gate import gated
from appliance.engine.ioerrors import boundary, guarded_iter, is_missing, translate
from appliance.engine.models import EntryInfo, NewRecord, RecordMeta, RecordState
from appliance.engine.names import is_meta_entry
from appliance.errors import (
    ApplianceError,
    CorruptionError,
    InternalError,
    NotFound,
    TooEarly,
    UnprocessableEntity,
)
from appliance.units import KIB

log = logging.getLogger(__name__)
_FINISHED = RecordState.FINISHED
_STARTED = RecordState.STARTED
_ERRORED = RecordState.ERRORED
crc32c = google_crc32c.value
# ``read_payloads`` joins adjacent records of up to JOIN_RECORD_BYTES each into one pread of
# at most RUN_BYTES: for small records a syscall costs more than slicing the run; for bigger
# ones the copy out of the run costs more than the pread it saves.
JOIN_RECORD_BYTES = 32 * KIB
RUN_BYTES = 256 * KIB
# Blocks one step of ``write_batch`` writes into: it holds a data and a WAL file of each open,
# so this bounds a batch's descriptors however small the blocks (``max_block_records: 1``).
MAX_BATCH_BLOCKS = 32
# A run of ``read_payloads``: block id, pinned data handle (None: empty payload), first
# offset, and the records lying back to back from there.
_Run = tuple[int, "FileHandle | None", int, list[StoredRecord]]


class Entry:
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

    def _iter_records(self, start: int, stop: int) -> Iterator[RecordMeta]:
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
                    if lo < hi:
                        records = block.records
                        batch = [records[t] for t in order[lo:hi]]
                        cursor = order[hi - 1] + 1
                        break
                    i += 1
            if batch is None:
                return
            for record in batch:
                if record.state is _FINISHED:
                    yield record

    def _open_payload(self, meta: RecordMeta) -> tuple[StoredRecord, int, FileHandle | None]:
        """Current record, its block id and a pinned data handle (None for empty payloads)."""
        with self._lock:
            self._check_alive()
            block, record = self._blocks.locate(meta.timestamp)
            if record.state is _STARTED:
                raise TooEarly(f"Record {record.timestamp} is still being written")
            if record.state is not _FINISHED:
                raise InternalError(f"Record {record.timestamp} is broken")
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
            data = os.pread(handle.fd, record.size, record.offset)
            while len(data) < record.size:  # very large reads come back in pieces
                more = os.pread(handle.fd, record.size - len(data), record.offset + len(data))
                if not more:
                    break
                data += more
        finally:
            self._ctx.files.release(handle)
        if len(data) != record.size:
            raise self._damaged(block_id, record, "data file is shorter than the record")
        if crc32c(data) != record.crc:
            raise self._damaged(block_id, record, "payload checksum mismatch")
        metrics.records_read(1, len(data))
        return data

    @boundary("read the records")
    def read_payloads(self, metas: Sequence[RecordMeta]) -> list[bytes]:
        """Whole payloads of ``metas`` (records of this entry), checksums verified.

        The bulk form of ``read_payload`` for batched reads: the entry lock is taken once, and
        records lying back to back in one block's data file (the usual case for records
        written in time order) are read with one ``pread`` per run of up to ``RUN_BYTES``,
        then sliced and checked one by one. Errors are those of ``read_payload`` and come in
        the order of ``metas``: the first record that cannot be read raises, as if the
        records had been read one at a time.
        """
        runs, error = self._plan_runs(metas)
        payloads: list[bytes] = []
        try:
            for block_id, handle, start, records in runs:
                payloads.extend(self._read_run(block_id, handle, start, records))
        finally:
            for _, handle, _, _ in runs:
                if handle is not None:
                    self._ctx.files.release(handle)
        metrics.records_read(len(payloads), sum(len(p) for p in payloads))
        if error is not None:
            raise error
        return payloads

    def _plan_runs(self, metas: Sequence[RecordMeta]) -> tuple[list[_Run], ApplianceError | None]:
        """Under the lock: runs of adjacent records (block id, pinned handle, first offset,
        records) and the error of the first record that cannot be read (None if all can).

        Every run pins its own handle (``_ctx.files`` counts pins), so releasing one per run
        is balanced; an empty payload is a run without a handle.
        """
        runs: list[_Run] = []
        try:
            with self._lock:
                self._check_alive()
                return runs, self._plan_locked(metas, runs)
        except BaseException:
            for _, handle, _, _ in runs:
                if handle is not None:
                    self._ctx.files.release(handle)
            raise

    def _plan_locked(self, metas: Sequence[RecordMeta], runs: list[_Run]) -> ApplianceError | None:
        """Fill ``runs`` (entry lock held); the first record's error stops the planning."""
        blocks = self._blocks
        block_id = -1
        current: Mapping[int, StoredRecord] = {}  # records of the previous record's block
        records: list[StoredRecord] = []
        end = -1
        run_bytes = 0
        for meta in metas:
            ts = meta.timestamp
            # A timestamp lives in one block only: try the previous record's block first.
            record = current.get(ts)
            try:
                if record is None:
                    block, record = blocks.locate(ts)
                    block_id, current = block.block_id, block.records
                    end = -1  # maybe another block: start a new run
                if record.state is not _FINISHED:
                    if record.state is _STARTED:
                        raise TooEarly(f"Record {ts} is still being written")
                    raise InternalError(f"Record {ts} is broken")
                size = record.size
                # end is -1 after a record too big to be joined (and after a block change).
                if (
                    record.offset == end
                    and size <= JOIN_RECORD_BYTES
                    and run_bytes + size <= RUN_BYTES
                ):
                    records.append(record)
                    run_bytes += size
                    end += size
                elif size == 0:
                    runs.append((block_id, None, record.offset, [record]))
                    end = -1
                else:
                    try:
                        handle = self.files.pin_data(block_id)
                    except OSError as exc:
                        if not is_missing(exc):
                            raise  # not damage: the boundary maps it (EMFILE -> 503...)
                        path = str(self.files.data_path(block_id))
                        raise blocks.hide(
                            block_id, path, None, f"data file can't be opened: {exc}"
                        ) from exc
                    records = [record]
                    runs.append((block_id, handle, record.offset, records))
                    run_bytes = size
                    end = record.offset + size if size <= JOIN_RECORD_BYTES else -1
            except ApplianceError as exc:
                return exc
        return None

    def _read_run(
        self, block_id: int, handle: FileHandle | None, start: int, records: list[StoredRecord]
    ) -> list[bytes]:
        """Read one run with a single ``pread`` and verify each record's checksum."""
        if handle is None:
            return [b""]
        total = records[-1].offset + records[-1].size - start
        data = os.pread(handle.fd, total, start)
        while len(data) < total:  # very large reads come back in pieces
            more = os.pread(handle.fd, total - len(data), start + len(data))
            if not more:
                break
            data += more
        if len(records) == 1 and len(data) == total:
            payloads = [data]
        else:
            payloads = [data[r.offset - start : r.offset - start + r.size] for r in records]
        for record, payload in zip(records, payloads, strict=True):
            if len(payload) != record.size:
                raise self._damaged(block_id, record, "data file is shorter than the record")
            if record.size and crc32c(payload) != record.crc:  # empty: nothing to check
                raise self._damaged(block_id, record, "payload checksum mismatch")
        return payloads

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
            while done < record.size:
                step = min(chunk_size, record.size - done)
                chunk = os.pread(fd, step, record.offset + done)
                if not chunk:
                    break
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
        """Write whole in-memory records: one pwrite per block run, one WAL append per block.

        The records go in steps touching at most ``MAX_BATCH_BLOCKS`` blocks each, so a batch
        never holds more than that many data and WAL files open at once, however small the
        blocks are (issue 8 item 1). Every record gets the truth: either it is stored (no
        entry in the result) or it carries its own error and is not stored, not even after a
        restart; an I/O failure of one step fails that step's records only.
        """
        errors: dict[int, ApplianceError] = {}
        i = 0
        while i < len(records):
            try:
                i = self._write_step(records, i, errors)
            except ApplianceError as exc:  # e.g. the entry was removed meanwhile
                for new in records[i:]:
                    errors.setdefault(new.timestamp, exc)
                break
        return errors

    def _write_step(
        self, records: Sequence[NewRecord], start: int, errors: dict[int, ApplianceError]
    ) -> int:
        """Write records from ``start`` on, into at most MAX_BATCH_BLOCKS blocks; next index."""
        placed: list[tuple[int, StoredRecord, bytes]] = []
        data_handles: dict[int, FileHandle] = {}
        i = start
        with self._lock:
            self._check_alive()
            while i < len(records) and len(data_handles) < MAX_BATCH_BLOCKS:
                new = records[i]
                i += 1
                data = new.data if type(new.data) is bytes else bytes(new.data)
                try:
                    block, record = self._blocks.reserve(
                        new.timestamp, len(data), new.content_type, dict(new.labels), crc32c(data)
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
                placed.append((block.block_id, record, data))
        failed = self._write_runs(placed, data_handles)
        wal_handles: list[FileHandle] = []
        try:
            with self._lock:
                frames: dict[int, list[bytes]] = {}
                logged: dict[int, list[int]] = {}
                payloads = {record.timestamp: (record, data) for _, record, data in placed}
                for block_id, record, _ in placed:
                    ts = record.timestamp
                    state = _ERRORED if ts in failed else _FINISHED
                    frame = self._blocks.finalize(block_id, ts, state, record.crc)
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
                            for ts in logged[block_id]:
                                if ts not in failed:
                                    record, data = payloads[ts]
                                    journal.append("write", data, **self._journal_fields(record))
        finally:
            handles = [*data_handles.values(), *wal_handles]
            try:
                self._commit_and_release(handles)
            except OSError as exc:
                # Not made durable as promised (sync writes): nothing of this step is acked.
                unsynced = translate(exc, "write the records")
                for _, record, _ in placed:
                    errors.setdefault(record.timestamp, unsynced)
        for ts, cause in failed.items():
            errors[ts] = translate(cause, f"write record {ts}")
        return i

    @staticmethod
    def _write_runs(
        placed: list[tuple[int, StoredRecord, bytes]], handles: dict[int, FileHandle]
    ) -> dict[int, OSError]:
        """pwrite payloads, joining runs of adjacent records of one block; failures by ts."""
        failed: dict[int, OSError] = {}
        i = 0
        while i < len(placed):
            block_id, first, _ = placed[i]
            j = i + 1
            end = first.offset + first.size
            while j < len(placed) and placed[j][0] == block_id and placed[j][1].offset == end:
                end += placed[j][1].size
                j += 1
            run = placed[i:j]
            payload = run[0][2] if len(run) == 1 else b"".join(item[2] for item in run)
            handle = handles[block_id]
            try:
                view = memoryview(payload)
                position = first.offset
                while view:
                    written = os.pwrite(handle.fd, view, position)
                    view = view[written:]
                    position += written
                handle.dirty = True
            except OSError as exc:
                for _, record, _ in run:
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
            if self._ctx.journal is not None:
                self._ctx.journal.append("labels", b=self.bucket, e=self.name, ts=ts, l=labels)
        self._commit_and_release([handle])
        return new

    @boundary("remove the records")
    def remove_records(self, timestamps: Iterable[int]) -> dict[int, ApplianceError]:
        """Remove records by timestamp; per-timestamp errors (404). 422 for ``$meta`` entries."""
        self._refuse_meta()
        return self.remove_unchecked(timestamps)

    @boundary("remove the records")
    def remove_where(
        self, start: int, stop: int, predicate: Callable[[RecordMeta], bool] | None
    ) -> int:
        """Remove FINISHED records in [start, stop) matching ``predicate``; return how many."""
        self._refuse_meta()
        doomed = [
            r.timestamp for r in self.iter_records(start, stop) if predicate is None or predicate(r)
        ]
        return len(doomed) - len(self.remove_unchecked(doomed))

    def _refuse_meta(self) -> None:
        if self.is_meta:
            raise UnprocessableEntity(
                f"Can't delete records from system entry '{self.name}'; "
                "use label update with remove=true"
            )

    @boundary("remove the records")
    @gated
    def remove_unchecked(self, timestamps: Iterable[int]) -> dict[int, ApplianceError]:
        """Remove records (also from ``$meta`` entries: the upsert-by-key path)."""
        self._ctx.check_writable()
        errors: dict[int, ApplianceError] = {}
        with self._ctx.removing(), self._lock:
            self._check_alive()
            by_block: dict[int, list[int]] = {}
            for ts in timestamps:
                try:
                    block, _ = self._blocks.locate(ts)
                except NotFound as exc:
                    errors[ts] = exc
                    continue
                by_block.setdefault(block.block_id, []).append(ts)
            blocks = self._blocks
            gone: list[int] = []
            for block_id, doomed in by_block.items():
                block = blocks.make_live(block_id)
                for ts in doomed:
                    old = block.remove(ts)
                    if old is not None:
                        blocks.size -= old.size + old.meta_size
                        blocks.count -= 1
                        gone.append(ts)
                blocks.persist_removal(block)
            if gone and self._ctx.journal is not None:
                self._ctx.journal.append("remove", b=self.bucket, e=self.name, tss=gone)
        return errors

    @gated
    def remove_oldest_block(self) -> int:
        """Drop the oldest block (FIFO quota); return the bytes freed, 0 if none could go."""
        with self._lock:
            blocks = self._blocks
            if self.removed or not blocks.ids:
                return 0
            block_id = blocks.ids[0]
            live = blocks.live.get(block_id)
            if live is not None and live.pending:
                return 0  # a writer is streaming into it
            freed, _ = blocks.totals(block_id)
            doomed = list(blocks.get(block_id).records) if self._ctx.journal is not None else []
            blocks.drop(block_id)
            if self._ctx.journal is not None:
                self._ctx.journal.append("remove", b=self.bucket, e=self.name, tss=doomed)
            log.info("fifo quota removed block %s/%s/%s", self.bucket, self.name, block_id)
            return freed

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
