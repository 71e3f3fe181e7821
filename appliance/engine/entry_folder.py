"""The files of one entry folder and the I/O on them (no locking, no in-memory state).

Layout of ``<data>/<bucket>/<entry>/``::

    blocks.idx              block index (codec), rewritten atomically after descriptor changes
    <id>.meta               block descriptor (codec), rewritten atomically
    <id>.blk                payload bytes; record i occupies [offset, offset + size)
    .wal/<id>.wal           WAL segment of a block with changes not yet in its descriptor
    <id>.blk.tmp            transient: data file being rewritten after a record removal
    <id>.meta.rewrite       commit marker of such a rewrite: the descriptor for the new data file

Crash ordering. WAL frames are appended with one ``os.write`` on an ``O_APPEND`` fd after the
payload bytes were written, so a frame never describes bytes that are not in the page cache. A
descriptor is written atomically *before* its WAL segment is deleted, and replaying a WAL over a
newer descriptor is idempotent (insert-or-replace by timestamp). A data-file rewrite first makes
the descriptor current (no WAL), then writes ``.blk.tmp`` (fsynced), then commits by writing
``.meta.rewrite`` atomically, then renames both into place; recovery rolls a committed rewrite
forward and discards an uncommitted one (``roll_rewrites``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

from appliance import metrics
from appliance.engine import fs_ops
from appliance.engine.block import index_item
from appliance.engine.codec import (
    BlockIndex,
    Descriptor,
    DescriptorDecoder,
    IndexItem,
    StoredRecord,
    decode_descriptor,
    descriptor_crc,
    encode_descriptor,
    encode_index,
    encode_wal_header,
    peek_generation,
)
from appliance.engine.context import EngineContext
from appliance.engine.fd_cache import FileHandle
from appliance.engine.generations import may_replace
from appliance.engine.ioerrors import RESOURCE_ERRNOS
from appliance.engine.report import RecoveryReport
from appliance.errors import CorruptionError, ServiceUnavailable

INDEX_FILE = "blocks.idx"
WAL_DIR = ".wal"
META_SUFFIX = ".meta"
DATA_SUFFIX = ".blk"
WAL_SUFFIX = ".wal"
REWRITE_SUFFIX = ".meta.rewrite"
DATA_TMP_SUFFIX = ".blk.tmp"
COPY_CHUNK_BYTES = 8 * 1024 * 1024
HEADER_PEEK_BYTES = 24  # enough for the generation of a descriptor, index or WAL header

log = logging.getLogger(__name__)


class EntryFiles:
    """Paths and file operations of one entry folder."""

    def __init__(self, ctx: EngineContext, path: Path) -> None:
        self.ctx = ctx
        self.path = path
        self._dir = str(path)  # file-cache keys are strings (cheap to build and hash)
        self.wal_dir = path / WAL_DIR
        self.index_path = path / INDEX_FILE
        self._own_data: set[int] = set()  # data files this lease generation has its own inode of
        self._named: set[int] = set()  # data files whose name this process made durable

    def meta_path(self, block_id: int) -> Path:
        """Descriptor of a block."""
        return self.path / f"{block_id}{META_SUFFIX}"

    def data_path(self, block_id: int) -> Path:
        """Payload file of a block."""
        return self.path / f"{block_id}{DATA_SUFFIX}"

    def wal_path(self, block_id: int) -> Path:
        """WAL segment of a block."""
        return self.wal_dir / f"{block_id}{WAL_SUFFIX}"

    def data_key(self, block_id: int) -> str:
        """File-cache key (path string) of a block's data file."""
        return f"{self._dir}/{block_id}{DATA_SUFFIX}"

    def wal_key(self, block_id: int) -> str:
        """File-cache key (path string) of a block's WAL segment."""
        return f"{self._dir}/{WAL_DIR}/{block_id}{WAL_SUFFIX}"

    def create(self) -> None:
        """Make the folder, its WAL folder and an empty index (a new entry).

        With synced writes every new folder is made durable in its parent (issue 8 item 7):
        a record acknowledged in a new entry must not lose its folder at a power loss.
        """
        fs_ops.make_dirs(self.wal_dir, sync=self.ctx.sync)
        if not self.index_path.exists():
            self.save_index([])

    # --- metadata -------------------------------------------------------------------------------

    def guard_replace(self, path: Path) -> None:
        """Refuse (503, and step down) to replace a file a newer lease generation wrote.

        The last check before a commit of a lease holder: a holder paused past its TTL that
        resumes mid-compaction finds its successor's stamp here (``fencing.may_replace``).
        """
        if self.ctx.abandoned:
            raise ServiceUnavailable("This instance no longer holds the storage lease")
        generation = self.ctx.generation
        if generation <= 0:
            return
        try:
            with open(path, "rb") as handle:
                head = handle.read(HEADER_PEEK_BYTES)
        except FileNotFoundError:
            return
        found = peek_generation(head)
        if found is not None and not may_replace(found, generation):
            raise self.ctx.deposed(
                f"{path} was written by generation {found}, ours is {generation}"
            )

    def save_index(self, items: Iterable[IndexItem]) -> None:
        """Rewrite ``blocks.idx`` atomically, stamped with the lease generation."""
        data = encode_index(BlockIndex(self.ctx.generation, tuple(items)))
        self.guard_replace(self.index_path)
        fs_ops.atomic_write(self.index_path, data)

    def save_descriptor(
        self,
        descriptor: Descriptor,
        encoded: Mapping[int, tuple[StoredRecord, bytes]] | None = None,
        sync_dir: bool = True,
    ) -> IndexItem:
        """Write a descriptor atomically; return its index item (``sync_dir``: see
        ``fs_ops.atomic_write``; the index write that follows fsyncs the same folder)."""
        data = encode_descriptor(descriptor, encoded)
        path = self.meta_path(descriptor.block_id)
        self.guard_replace(path)
        fs_ops.atomic_write(path, data, sync_dir=sync_dir)
        return index_item(descriptor, descriptor_crc(data))

    def load_descriptor(self, block_id: int, entry: str) -> tuple[Descriptor, int]:
        """Read and decode a descriptor and its CRC; CorruptionError names the file."""
        data, path = self._read_descriptor(block_id)
        return decode_descriptor(data, entry, str(path)), descriptor_crc(data)

    def descriptor_decoder(self, block_id: int, entry: str) -> DescriptorDecoder:
        """A descriptor read and checked, to decode a part at a time; CorruptionError names
        the file."""
        data, path = self._read_descriptor(block_id)
        return DescriptorDecoder(data, entry, str(path))

    def _read_descriptor(self, block_id: int) -> tuple[bytes, Path]:
        path = self.meta_path(block_id)
        self.ctx.local(path)  # data on S3: a descriptor restored lazily is fetched first
        try:
            data = fs_ops.read_file(path)
        except OSError as exc:
            if exc.errno in RESOURCE_ERRNOS:
                raise  # out of descriptors or memory: not damage (the I/O boundary maps it)
            reason = exc.strerror or type(exc).__name__  # str(exc) would name the file
            raise CorruptionError(
                f"block descriptor {path} can't be read: {exc}",
                path=str(path),
                public_detail=f"block descriptor can't be read: {reason}",
            ) from exc
        return data, path

    # --- WAL ------------------------------------------------------------------------------------

    def append_wal(self, block_id: int, frames: bytes, fresh: bool) -> FileHandle:
        """Append frames to a block's WAL (starting a new segment when ``fresh``); pinned."""
        path = self.wal_key(block_id)
        if fresh:
            self.guard_replace(Path(path))  # never delete a newer generation's segment
            fs_ops.remove_file(Path(path))
            frames = encode_wal_header(block_id, self.ctx.generation) + frames
        try:
            handle = self.ctx.files.acquire(path, create=True, append=True)
        except FileNotFoundError:
            fs_ops.make_dirs(self.wal_dir, sync=self.ctx.sync)
            handle = self.ctx.files.acquire(path, create=True, append=True)
        if fresh and self.ctx.sync:
            try:
                fs_ops.fsync_dir(self.wal_dir)  # the new segment's name, before its first 200
            except BaseException:
                self.ctx.files.release(handle)
                raise
        try:
            started = time.perf_counter()
            before = 0 if fresh else os.fstat(handle.fd).st_size
            try:
                fs_ops.write_all(handle.fd, (frames,))
            except OSError:
                # A torn tail would be replayed up to its last whole frame, bringing back
                # records the caller reports as failed: cut the append off (needs no space).
                os.ftruncate(handle.fd, before)
                raise
            handle.dirty = True
            metrics.wal_append_seconds(time.perf_counter() - started)
        except BaseException:
            self.ctx.files.release(handle)
            raise
        return handle

    def drop_wal(self, block_id: int) -> None:
        """Delete a block's WAL segment (its changes are in the descriptor now)."""
        self.ctx.files.invalidate(self.wal_key(block_id))
        # Synced: a segment that came back after a power loss would replay records removed since.
        fs_ops.remove_file(self.wal_path(block_id), sync=self.ctx.sync)

    # --- data -----------------------------------------------------------------------------------

    def pin_data(self, block_id: int, create: bool = False) -> FileHandle:
        """Pinned handle of a block's data file (``create``: for writing)."""
        if create and self.ctx.generation > 0 and block_id not in self._own_data:
            self._own_data.add(block_id)
            self._take_over_data(block_id)
        handle = self.ctx.files.acquire(self.data_key(block_id), create=create)
        if create and self.ctx.sync and block_id not in self._named:
            # A new data file's name must be durable before a record in it is acknowledged.
            try:
                fs_ops.fsync_dir(self.path)
            except BaseException:
                self.ctx.files.release(handle)
                raise
            self._named.add(block_id)
        return handle

    def _take_over_data(self, block_id: int) -> None:
        """Give this lease generation its own inode of a data file it is about to append to.

        A paused ex-holder may still have the file open; when it resumes, a ``pwrite`` it was
        about to make (after its last fence check) then lands in the orphaned old inode and
        cannot overwrite records this generation writes at the same offsets. One copy per
        block per holder (the latest block of an entry, usually), under the entry lock.
        """
        path = self.data_path(block_id)
        self.ctx.local(path)
        if not path.exists():
            return  # a new block: the file will be ours from the start
        tmp = self.path / f"{block_id}{DATA_TMP_SUFFIX}"
        shutil.copyfile(path, tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            fs_ops.fsync_fd(fd)
        finally:
            os.close(fd)
        self.ctx.files.invalidate(self.data_key(block_id))
        fs_ops.replace(tmp, path)

    def remove_descriptor(self, block_id: int) -> None:
        """Delete a block's descriptor only (its data file may still receive bytes)."""
        fs_ops.remove_file(self.meta_path(block_id))

    def remove_block(self, block_id: int) -> None:
        """Delete every file of a block."""
        self.drop_wal(block_id)
        fs_ops.remove_file(self.meta_path(block_id))
        self.ctx.files.invalidate(self.data_key(block_id))
        fs_ops.remove_file(self.data_path(block_id))

    def rewrite_data(self, descriptor: Descriptor) -> tuple[list[StoredRecord], IndexItem] | None:
        """Copy the descriptor's payloads into a compact new data file; None if it fails.

        The caller guarantees the descriptor on disk is current and no WAL exists for the block.
        """
        block_id = descriptor.block_id
        tmp = self.path / f"{block_id}{DATA_TMP_SUFFIX}"
        records: list[StoredRecord] = []
        position = 0
        try:
            source = self.pin_data(block_id)
        except FileNotFoundError:
            return None
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                for record in descriptor.records:
                    _copy_range(source.fd, out, record.offset, position, record.size)
                    records.append(replace(record, offset=position))
                    position += record.size
                fs_ops.fsync_fd(out)
            finally:
                os.close(out)
        except (OSError, EOFError) as exc:
            fs_ops.remove_file(tmp)
            # No room for the copy (a full disk): free the removed ranges in place instead.
            punched = _punch_gaps(source.fd, descriptor)
            log.warning(
                "record removal left block %s uncompacted (%s); removed ranges %s",
                block_id,
                exc,
                "punched out" if punched else "kept (no hole punching here)",
            )
            return None
        finally:
            self.ctx.files.release(source)
        new = replace(descriptor, records=tuple(records), data_end=position)
        marker = self.path / f"{block_id}{REWRITE_SUFFIX}"
        data = encode_descriptor(new)
        self.guard_replace(self.meta_path(block_id))
        fs_ops.atomic_write(marker, data)  # the commit point of the rewrite
        self.ctx.files.invalidate(self.data_key(block_id))
        fs_ops.replace(tmp, self.data_path(block_id), sync=False)
        fs_ops.replace(marker, self.meta_path(block_id))
        return records, index_item(new, descriptor_crc(data))

    def roll_rewrites(self, report: RecoveryReport, repair: bool) -> None:
        """Finish committed data-file rewrites and discard uncommitted ones (startup)."""
        for marker in sorted(self.path.glob(f"*{REWRITE_SUFFIX}")):
            block_id = marker.name[: -len(REWRITE_SUFFIX)]
            tmp = self.path / f"{block_id}{DATA_TMP_SUFFIX}"
            try:
                decode_descriptor(fs_ops.read_file(marker), source=str(marker))
            except CorruptionError as exc:
                report.add(
                    "rewrite_pending",
                    marker,
                    f"uncommitted rewrite: {exc}",
                    "discarded" if repair else "none",
                    exc.offset,
                )
                if repair:
                    fs_ops.remove_file(marker)
                    fs_ops.remove_file(tmp)
                continue
            report.add(
                "rewrite_pending",
                marker,
                "committed data rewrite was interrupted",
                "rolled forward" if repair else "none",
                crash_leftover=True,
            )
            if repair:
                if tmp.exists():
                    fs_ops.replace(tmp, self.path / f"{block_id}{DATA_SUFFIX}", sync=False)
                fs_ops.replace(marker, self.path / f"{block_id}{META_SUFFIX}")
        for tmp in sorted(self.path.glob(f"*{DATA_TMP_SUFFIX}")):
            report.add(
                "rewrite_pending",
                tmp,
                "uncommitted data rewrite",
                "discarded" if repair else "none",
                crash_leftover=True,
            )
            if repair:
                fs_ops.remove_file(tmp)
        if repair:
            for leftover in self.path.glob(f"*{fs_ops.TMP_SUFFIX}"):
                fs_ops.remove_file(leftover)  # an atomic_write interrupted before its rename


def _copy_range(src: int, dst: int, src_offset: int, dst_offset: int, count: int) -> None:
    """Copy ``count`` bytes between fds in bounded chunks; EOFError if the source is short."""
    while count > 0:
        step = min(count, COPY_CHUNK_BYTES)
        chunk = os.pread(src, step, src_offset)
        if not chunk:
            raise EOFError(f"data file ends before offset {src_offset}")
        written = os.pwrite(dst, chunk, dst_offset)
        src_offset += written
        dst_offset += written
        count -= written


def _punch_gaps(fd: int, descriptor: Descriptor) -> bool:
    """Punch out every byte of a data file no record of ``descriptor`` occupies; success."""
    position = 0
    ok = True
    for record in sorted(descriptor.records, key=lambda r: r.offset):
        if record.offset > position:
            ok = fs_ops.punch_hole(fd, position, record.offset - position) and ok
        position = max(position, record.offset + record.size)
    end = os.fstat(fd).st_size
    if end > position:
        ok = fs_ops.punch_hole(fd, position, end - position) and ok
    return ok
