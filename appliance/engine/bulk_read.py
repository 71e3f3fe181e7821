"""Bulk reads of one entry: whole payloads of many records, adjacent ones in one ``pread``.

Part of ``Entry`` (``entry.py`` is the facade; this is a mixin so the lock and block state
stay in one object): planning takes the entry lock once, reading happens outside it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import google_crc32c

from appliance import metrics
from appliance.engine import fs_ops
from appliance.engine.block import Block, Columns
from appliance.engine.blockset import BlockSet
from appliance.engine.codec import StoredRecord
from appliance.engine.context import EngineContext
from appliance.engine.crc_view import COPY_CHECK_BYTES, crc_at
from appliance.engine.entry_folder import EntryFiles
from appliance.engine.fd_cache import FileHandle
from appliance.engine.ioerrors import boundary, is_missing
from appliance.engine.models import RecordMeta, RecordState
from appliance.engine.readable import check_readable
from appliance.errors import ApplianceError, CorruptionError
from appliance.sizes import JOIN_RECORD_BYTES, RUN_BYTES

_FINISHED = RecordState.FINISHED
crc32c = google_crc32c.value
# A run of ``read_payloads``: block id, pinned data handle (None: empty payload), first
# offset, and the records lying back to back from there.
_Run = tuple[int, "FileHandle | None", int, list[StoredRecord]]


def _chained(columns: Columns, lo: int, hi: int) -> tuple[int, int] | None:
    """The running checksums around records ``lo`` to ``hi`` of ``columns``, to check them
    as one span, if they are small records (below ``COPY_CHECK_BYTES`` on average, where a
    call a record costs more than the bytes); None to check them one by one. Larger records
    are checked by ``crc_at``, which releases the GIL while it runs."""
    if not columns.small(lo, hi):
        return None
    chain = columns.chain()
    return chain[lo], chain[hi]


class BulkReads:
    """``Entry.read_payloads`` and its planning (mixed into ``Entry``)."""

    # Provided by ``Entry``: the entry lock, its blocks, its folder, the shared context.
    _lock: threading.Lock
    _blocks: BlockSet
    _ctx: EngineContext
    files: EntryFiles

    if TYPE_CHECKING:  # Entry's

        def _check_alive(self) -> None: ...

        def _damaged(self, block_id: int, record: StoredRecord, detail: str) -> CorruptionError: ...

    @boundary("read the records")
    def records_at(self, timestamps: Sequence[int]) -> list[RecordMeta | ApplianceError]:
        """The record at each of ``timestamps`` in any state, or the 404 of one that is absent.

        The bulk form of ``get_record`` for the replication sender, which looks up a batch of
        logged timestamps: the entry lock is taken once, and a timestamp is looked up in the
        previous one's block first (a timestamp lives in one block only).
        """
        out: list[RecordMeta | ApplianceError] = []
        blocks = self._blocks
        current: Mapping[int, StoredRecord] = {}
        with self._lock:
            self._check_alive()
            for ts in timestamps:
                record = current.get(ts)
                if record is None:
                    try:
                        block, record = blocks.locate(ts)
                    except ApplianceError as exc:
                        out.append(exc)
                        continue
                    current = block.records
                out.append(record)
        return out

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

    @boundary("read the records")
    def read_run(self, metas: Sequence[RecordMeta]) -> tuple[bytes, Columns | None, int] | None:
        """The payloads of ``metas`` as one ``bytes``, if they lie back to back in this order in
        one block's data file: one ``pread``, then each record's checksum verified on its slice.
        Also the block's ``Columns`` and the index of ``metas[0]`` in them when the block has
        them built (``iter_runs`` builds them) and ``metas`` are a run of them, else None, 0.

        For batched reads of records too big for ``read_payloads`` to join (above
        ``JOIN_RECORD_BYTES`` each gets its own ``pread``, and the response then joins them
        into a new body: a second copy into fresh memory). None if the records are not one
        span (or one is absent, not finished, short or damaged): the caller then reads them
        with ``read_payloads``, which raises the right error for the first bad one.
        """
        cols: Columns | None = None
        lo = 0
        with self._lock:
            self._check_alive()
            if not metas:
                return None
            try:
                block, first = self._blocks.locate(metas[0].timestamp)
            except ApplianceError:
                return None
            cols = block.built_columns()
            if cols is not None and isinstance(metas, list):
                at = cols.span(metas)
                if at is None:
                    cols = None
                else:
                    lo = at
            if cols is None:
                span = self._plan_span(block, first, metas)
                if span is None:
                    return None
                start, starts, ends, crcs = span
            else:
                hi = lo + len(metas)
                start = cols.starts[lo]
                starts, ends, crcs = cols.starts[lo:hi], cols.ends[lo:hi], cols.crcs[lo:hi]
            try:
                handle = self.files.pin_data(block.block_id)
            except OSError:
                return None  # read_payloads tells a missing file from an I/O error
        chained = None if cols is None else _chained(cols, lo, lo + len(metas))
        data = self._read_checked(handle, start, starts, ends, crcs, chained)
        return None if data is None else (data, cols, lo)

    @boundary("read the records")
    def read_columns(self, columns: Columns, lo: int, hi: int) -> bytes | None:
        """``read_run`` of ``columns.records[lo:hi]``, a run ``iter_runs`` gave: nothing to
        compare if the columns are still their block's (else None, and the caller reads the
        records as any others). One ``pread``, then each record's checksum verified."""
        with self._lock:
            self._check_alive()
            try:
                block, _ = self._blocks.locate(columns.ts[lo])
            except ApplianceError:
                return None
            if block.built_columns() is not columns or not columns.readable(lo, hi):
                return None
            try:
                handle = self.files.pin_data(block.block_id)
            except OSError:
                return None
        return self._read_checked(
            handle, columns.starts[lo], columns.starts[lo:hi], columns.ends[lo:hi],
            columns.crcs[lo:hi], _chained(columns, lo, hi),
        )

    def _read_checked(
        self, handle: FileHandle, start: int, starts: list[int], ends: list[int],
        crcs: list[int], chained: tuple[int, int] | None = None,
    ) -> bytes | None:
        """The bytes from ``start`` to ``ends[-1]`` of a pinned data file (released here), if
        every record's slice matches its checksum; None otherwise. With ``chained`` (the
        block's running checksums before and after the span, ``Columns.chain``), the whole
        span is checked against them with one call instead."""
        try:
            total = ends[-1] - start
            data = fs_ops.read_at(handle.fd, total, start)
        finally:
            self._ctx.files.release(handle)
        if len(data) != total:
            return None
        if chained is not None:
            # One call for the span; a mismatch names no record, but the caller's per-record
            # path (``read_payloads``) finds the damaged one and reports it.
            if google_crc32c.extend(chained[0], data) != chained[1]:
                return None
            metrics.records_read(len(starts), total)
            return data
        value = google_crc32c.value
        for at, end, crc in zip(starts, ends, crcs):
            size = end - at
            at -= start
            # Small: the slice's copy costs less than ``crc_at``'s ctypes call (and its own).
            if (value(data[at : at + size]) if size < COPY_CHECK_BYTES
                    else crc_at(data, at, size)) != crc:
                return None
        metrics.records_read(len(starts), total)
        return data

    def _plan_span(
        self, block: Block, first: StoredRecord, metas: Sequence[RecordMeta]
    ) -> tuple[int, list[int], list[int], list[int]] | None:
        """(first offset, starts, ends, checksums) if ``metas`` are finished records lying back
        to back in ``block``'s data file (``first`` is ``metas[0]`` there), in this order;
        None otherwise (entry lock held)."""
        found = block.records
        records = [first]
        end = first.offset + first.size
        for meta in metas[1:]:
            record = found.get(meta.timestamp)
            if record is None or record.offset != end:
                return None
            records.append(record)
            end += record.size
        if any(r.state is not _FINISHED or not r.size for r in records):
            return None
        return (
            first.offset,
            [r.offset for r in records],
            [r.offset + r.size for r in records],
            [r.crc for r in records],
        )

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
                    check_readable(ts, record.state)
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
        data = fs_ops.read_at(handle.fd, total, start)
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
