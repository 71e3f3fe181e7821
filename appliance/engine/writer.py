"""Streaming one record into its block: ``RecordWriter`` (spec engine §5 steps 11-12, §6).

``Bucket.begin_write`` reserves the record (state STARTED) and hands out a writer. Chunks go
straight to the block data file with ``pwrite`` (``fs_ops.write_all``) at the reserved offset,
outside the entry lock, while a CRC32C of the payload accumulates; nothing is buffered, so a
1 GiB record never sits in memory. ``finish`` appends the framed WAL entry (FINISHED, with the
checksum): from then on the record survives a SIGKILL, and with ``sync_writes`` also power
loss (group commit).
Too many or too few bytes, a client that went away, or an I/O error make the record ERRORED,
which is also WAL-logged, so it is never half-visible as FINISHED and its timestamp can be
rewritten with a body of the same size.
"""

from __future__ import annotations

import logging
from types import TracebackType

from appliance import metrics
from appliance.engine import fs_ops
from appliance.engine.codec import StoredRecord
from appliance.engine.entry import Entry, extend_crc
from appliance.engine.fd_cache import FileHandle
from appliance.engine.ioerrors import boundary, translate
from appliance.engine.models import RecordMeta, RecordState
from appliance.errors import ApplianceError, BadRequest, InternalError

log = logging.getLogger(__name__)


class RecordWriter:
    """Streams the payload of one reserved record; ``finish`` or ``abort`` exactly once."""

    def __init__(
        self, entry: Entry, block_id: int, record: StoredRecord, handle: FileHandle
    ) -> None:
        self._entry = entry
        self._block_id = block_id
        self._record = record
        self._handle: FileHandle | None = handle
        self._written = 0
        self._crc = 0
        self._error: ApplianceError | None = None
        self._done = False

    @property
    def meta(self) -> RecordMeta:
        """The record as reserved (state STARTED)."""
        return self._record

    @property
    def written(self) -> int:
        """Payload bytes accepted so far."""
        return self._written

    def write(self, chunk: bytes) -> None:
        """Write the next chunk at the reserved offset; BadRequest when over the declared size."""
        self.write_many([chunk])

    @boundary("write the record")
    def write_many(self, chunks: list[bytes]) -> None:
        """Write the next chunks in order with as few system calls as ``fs_ops.write_all``
        allows (one ``pwritev`` a MiB: one release of the GIL each, where a ``pwrite`` a chunk
        handed it to the event loop and waited for it back once per chunk); BadRequest when
        over the declared size (then none is written)."""
        if self._done:
            raise self._error or InternalError("Record writer is already closed")
        chunks = [c if type(c) is bytes else bytes(c) for c in chunks]  # the C CRC32C: bytes
        size = sum(map(len, chunks))
        if self._written + size > self._record.size:
            self._fail(BadRequest("Content is bigger than in content-length"))
        handle = self._handle
        assert handle is not None
        position = self._record.offset + self._written
        try:
            fs_ops.write_all(handle.fd, chunks, position)
        except OSError as exc:
            self._fail(translate(exc, "write the record"))
        handle.dirty = True
        self._crc = extend_crc(self._crc, chunks)
        self._written += size

    @boundary("write the record")
    def finish(self) -> None:
        """Complete the record (FINISHED); BadRequest if fewer bytes came than declared."""
        if self._done:
            if self._error is not None:
                raise self._error
            return
        if self._written < self._record.size:
            self._fail(BadRequest("Content is smaller than in content-length"))
        self._done = True
        handle, self._handle = self._handle, None
        self._entry.finish(
            self._block_id, self._record.timestamp, RecordState.FINISHED, self._crc, handle
        )
        metrics.records_written(1, self._record.size)

    @boundary("abort the record")
    def abort(self, reason: str) -> None:
        """The body will not arrive (client went away): the record becomes ERRORED."""
        if self._done:
            return
        log.info(
            "write of record %s in %s aborted: %s", self._record.timestamp, self._entry, reason
        )
        self._close_errored()

    def _fail(self, error: ApplianceError) -> None:
        """Make the record ERRORED and raise ``error`` (now and on later calls)."""
        self._error = error
        if not self._done:
            self._close_errored()
        raise error

    def _close_errored(self) -> None:
        self._done = True
        handle, self._handle = self._handle, None
        self._entry.finish(
            self._block_id, self._record.timestamp, RecordState.ERRORED, self._crc, handle
        )

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None:
            self.abort(f"{exc_type.__name__ if exc_type else 'error'}: {exc}")
        elif not self._done:
            self.finish()
