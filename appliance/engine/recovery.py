"""Startup recovery of one entry folder, shared by ``Storage.open`` and ``check`` (spec engine §4).

``recover_entry`` runs in two modes: ``repair=True`` (startup, ``check --repair``) fixes what it
finds; ``repair=False`` (``check``) only reports, touching nothing. Steps:

1. Roll data-file rewrites forward or back (``EntryFiles.roll_rewrites``).
2. Load ``blocks.idx``. Missing or failing its CRC -> rebuild from descriptors.
3. With integrity checks (or when rebuilding): read every descriptor, verify its CRC and header;
   a corrupt one is moved to ``<data>/.quarantine/<bucket>/<entry>/`` with its data file. If the
   index disagrees with the descriptors (missing, extra, different), it is rebuilt from them.
4. Replay every WAL segment over its block's descriptor: a torn or corrupt tail is cut at the
   last good frame (never fatal), the result becomes the descriptor, the segment is deleted.
   A segment that merely ends early is ``wal_torn`` (a crash leftover); a checksum, magic or
   frame-length failure is ``wal_corrupt`` (damage), wherever it sits.
   A lease holder (``options.wal_fence``) replays only the frames the generation fence accepts
   (``appliance.roles.fencing``: nothing a lower generation wrote after a higher one began);
   the others are reported as ``wal_fenced`` (they were never acknowledged).
5. With integrity checks: records beyond the end of a data file shorter than its descriptor
   requires are taken out of the block (what is left of their bytes is quarantined); a data
   file without a descriptor is quarantined.
6. Save the index if anything changed.

A lease holder (generation > 0) always reads the descriptor headers, so an index that a paused
ex-holder clobbered (older than a descriptor it indexes) is rebuilt (``index_stale``).

Every anomaly becomes a ``Problem`` in the report (and a log line); a clean folder reports none.
What an ordinary crash leaves behind is marked ``crash_leftover`` (see ``report.py`` for the
evidence each kind needs), so an operator can tell a crash from damage.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from appliance.engine import fs_ops
from appliance.engine.block import Block
from appliance.engine.codec import (
    IndexItem,
    WalFrame,
    WalSegment,
    decode_descriptor_header,
    decode_index,
    decode_wal,
)
from appliance.engine.context import EngineContext
from appliance.engine.entry_folder import DATA_SUFFIX, META_SUFFIX, WAL_SUFFIX, EntryFiles
from appliance.engine.generations import index_is_stale
from appliance.engine.models import RecordState
from appliance.engine.report import RecoveryReport
from appliance.errors import CorruptionError


def _block_ids(folder: Path, suffix: str) -> dict[int, Path]:
    """``{block id: path}`` of files named ``<digits><suffix>`` in ``folder``."""
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        stem = path.name[: -len(suffix)] if path.name.endswith(suffix) else ""
        if stem.isdigit() and path.is_file():
            found[int(stem)] = path
    return found


class EntryRecovery:
    """One recovery (or scrub) pass over one entry folder."""

    def __init__(
        self,
        ctx: EngineContext,
        bucket: str,
        entry: str,
        files: EntryFiles,
        report: RecoveryReport,
        *,
        repair: bool,
        integrity: bool,
    ) -> None:
        self.ctx = ctx
        self.bucket = bucket
        self.entry = entry
        self.files = files
        self.report = report
        self.repair = repair
        self.integrity = integrity
        self.items: dict[int, IndexItem] = {}
        self.quarantined: set[int] = set()
        self.dirty = False
        self.index_generation = 0
        # Block ids of the intact index as loaded (None: missing or corrupt): the evidence that
        # tells a crash leftover (a file the index never listed) from damage.
        self.indexed: frozenset[int] | None = None
        self.damaged_wals: set[int] = set()  # blocks whose WAL was corrupt, not merely torn

    def _action(self, action: str) -> str:
        return action if self.repair else "none"

    def run(self) -> list[IndexItem]:
        """Recover the entry; return its index items."""
        self.files.roll_rewrites(self.report, self.repair)
        loaded = self._load_index()
        self.indexed = frozenset(loaded) if loaded is not None else None
        if loaded is None or self.integrity or self.ctx.generation > 0:
            self._check_descriptors(loaded)
        else:
            self.items = loaded
        self._replay_wals()
        if self.integrity:
            self._check_data_files()
        if self.repair:
            self.files.wal_dir.mkdir(parents=True, exist_ok=True)
            if self.dirty or not self.files.index_path.exists():
                self.files.save_index(self.items[i] for i in sorted(self.items))
        return [self.items[i] for i in sorted(self.items)]

    def _load_index(self) -> dict[int, IndexItem] | None:
        path = self.files.index_path
        try:
            index = decode_index(fs_ops.read_file(path), str(path))
        except FileNotFoundError:
            if _block_ids(self.files.path, META_SUFFIX):
                self.report.add(
                    "index_missing",
                    path,
                    "block index is missing",
                    self._action("rebuilt from descriptors"),
                )
            return None
        except CorruptionError as exc:
            self.report.add(
                "index_corrupt",
                path,
                str(exc),
                self._action("rebuilt from descriptors"),
                exc.offset,
            )
            return None
        self.index_generation = index.generation
        return {item.block_id: item for item in index.items}

    def _check_descriptors(self, loaded: dict[int, IndexItem] | None) -> None:
        """Read every descriptor header; rebuild the index if it disagrees with them."""
        on_disk: dict[int, IndexItem] = {}
        for block_id, path in sorted(_block_ids(self.files.path, META_SUFFIX).items()):
            try:
                self.ctx.local(path)  # data on S3: fetched if restored lazily
                header = decode_descriptor_header(fs_ops.read_file(path), str(path))
                if header.block_id != block_id:
                    raise CorruptionError(
                        f"block descriptor {path} names block {header.block_id}",
                        path=str(path),
                        offset=8,
                    )
            except CorruptionError as exc:
                self._quarantine_block(block_id, exc)
                continue
            on_disk[block_id] = header
        self.items = on_disk
        if loaded is None:
            self.dirty = True
            return
        index_path = self.files.index_path
        mismatch = False
        if index_is_stale(self.index_generation, (h.generation for h in on_disk.values())):
            self.report.add(
                "index_stale",
                index_path,
                f"block index (generation {self.index_generation}) is older than a descriptor",
                self._action("rebuilt from descriptors"),
            )
            mismatch = True
        for block_id in sorted(set(loaded) | set(on_disk)):
            if block_id in self.quarantined:
                mismatch = True  # already reported as descriptor_corrupt
            elif block_id not in on_disk:
                self.report.add(
                    "descriptor_missing",
                    self.files.meta_path(block_id),
                    "indexed block has no descriptor",
                    self._action("index rebuilt"),
                )
                mismatch = True
            elif block_id not in loaded:
                # Intact index, intact descriptor: the index lags (crash between the two writes).
                self.report.add(
                    "descriptor_extra",
                    self.files.meta_path(block_id),
                    "descriptor is not in the block index",
                    self._action("index rebuilt"),
                    crash_leftover=True,
                )
                mismatch = True
            elif loaded[block_id] != on_disk[block_id]:
                self.report.add(
                    "index_mismatch",
                    index_path,
                    f"index item of block {block_id} disagrees with its descriptor",
                    self._action("index rebuilt"),
                    crash_leftover=True,
                )
                mismatch = True
        self.dirty = self.dirty or mismatch

    def _quarantine_block(self, block_id: int, exc: CorruptionError) -> None:
        """Move a block with a corrupt descriptor aside (its data file too)."""
        self.quarantined.add(block_id)
        meta = self.files.meta_path(block_id)
        self.report.add(
            "descriptor_corrupt", meta, str(exc), self._action("quarantined"), exc.offset
        )
        self.items.pop(block_id, None)
        self.dirty = True
        if not self.repair:
            return
        target = self.ctx.quarantine_path(self.bucket, self.entry)
        fs_ops.move(meta, target / meta.name)
        data = self.files.data_path(block_id)
        self.ctx.local(data)
        if not data.exists():
            return
        if self.files.wal_path(block_id).exists():
            # Records still in the WAL live in this data file: keep it, quarantine a copy.
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data, target / data.name)
        else:
            fs_ops.move(data, target / data.name)

    def _replay_wals(self) -> None:
        for file_id, path in sorted(_block_ids(self.files.wal_dir, WAL_SUFFIX).items()):
            data = fs_ops.read_file(path)
            segment = decode_wal(data, self.entry, str(path))
            if segment.error is not None:
                torn = segment.error.recoverable  # ends early: an append cut short by a crash
                if not torn:
                    self.damaged_wals.add(file_id)
                action = f"truncated at {segment.good_end}" if segment.good_end else "deleted"
                self.report.add(
                    "wal_torn" if torn else "wal_corrupt",
                    path,
                    str(segment.error),
                    self._action(action),
                    segment.error.offset,
                    crash_leftover=torn,
                )
            frames = self._fenced(path, segment, data)
            if not self.repair:
                continue
            if segment.error is not None and segment.good_end:
                fs_ops.truncate(path, segment.good_end)
            if segment.good_end and frames:
                self._apply(segment.block_id or file_id, frames)
            fs_ops.remove_file(path)
            self.dirty = True

    def _fenced(self, path: Path, segment: WalSegment, data: bytes) -> tuple[WalFrame, ...]:
        """The frames the generation fence lets a lease holder replay (all without a fence)."""
        fence = self.ctx.options.wal_fence
        if fence is None or not segment.frames:
            return segment.frames
        key = path.relative_to(self.ctx.data_path).as_posix()
        rule = fence.segment(key, segment.generation, data)
        # ``frame.end``: the records of one WRITE_MANY frame share its offsets (and its fate).
        kept = tuple(frame for frame in segment.frames if rule.accept(frame.generation, frame.end))
        dropped = len(segment.frames) - len(kept)
        if dropped:
            self.report.add(
                "wal_fenced",
                path,
                f"{dropped} frame(s) written by an older lease generation after a newer one "
                "began (never acknowledged)",
                self._action("ignored"),
            )
        return kept

    def _apply(self, block_id: int, frames: tuple[WalFrame, ...]) -> None:
        block = self._base_block(block_id)
        for frame in frames:
            if frame.record is None:
                block.remove(frame.timestamp)  # WalKind.REMOVE
            else:
                block.put(frame.record)
        descriptor = block.to_descriptor(self.ctx.generation)
        if descriptor.records:
            self.items[block_id] = self.files.save_descriptor(descriptor)
        else:
            self.items.pop(block_id, None)
            self.files.remove_block(block_id)

    def _base_block(self, block_id: int) -> Block:
        """The block as its descriptor has it (empty if there is none or it is corrupt)."""
        if not self.files.meta_path(block_id).exists():
            return Block(block_id)
        try:
            descriptor, _ = self.files.load_descriptor(block_id, self.entry)
        except CorruptionError as exc:
            self._quarantine_block(block_id, exc)
            return Block(block_id)
        return Block.from_descriptor(descriptor)

    def _check_data_files(self) -> None:
        data_files = _block_ids(self.files.path, DATA_SUFFIX)
        for block_id, item in sorted(self.items.items()):
            path = data_files.get(block_id)
            length = path.stat().st_size if path is not None else 0
            if length >= item.data_end:
                continue
            kind = "data_missing" if path is None else "data_short"
            self.report.add(
                kind,
                self.files.data_path(block_id),
                f"data file has {length} bytes, descriptor needs {item.data_end}",
                self._action("records beyond the end quarantined"),
                length,
            )
            if self.repair:
                descriptor, _ = self.files.load_descriptor(block_id, self.entry)
                beyond = [
                    r.timestamp
                    for r in descriptor.records
                    if r.state is RecordState.FINISHED and r.offset + r.size > length
                ]
                self._set_item(
                    block_id,
                    drop_records(self.ctx, self.bucket, self.entry, self.files, block_id, beyond),
                )
        for block_id, path in sorted(data_files.items()):
            if block_id in self.items or self.files.wal_path(block_id).exists():
                continue
            if not path.exists():
                continue  # removed above with its last records
            # Never listed by an intact index, WAL not damaged: a new block whose first write
            # never reached the WAL (or only a torn one), or a dropped block whose files were
            # being deleted. Listed: its descriptor is lost; WAL corrupt: its records are lost;
            # no readable index: no evidence either way. Those three are damage.
            never_indexed = (
                self.indexed is not None
                and block_id not in self.indexed
                and block_id not in self.damaged_wals
            )
            self.report.add(
                "data_orphan",
                path,
                "data file has no descriptor",
                self._action("quarantined"),
                crash_leftover=never_indexed,
            )
            if self.repair:
                fs_ops.move(path, self.ctx.quarantine_path(self.bucket, self.entry) / path.name)

    def _set_item(self, block_id: int, item: IndexItem | None) -> None:
        if item is None:
            self.items.pop(block_id, None)
        else:
            self.items[block_id] = item
        self.dirty = True


def drop_records(
    ctx: EngineContext,
    bucket: str,
    entry: str,
    files: EntryFiles,
    block_id: int,
    timestamps: list[int],
) -> IndexItem | None:
    """Take records whose payload is damaged out of a block; their bytes go to quarantine.

    Returns the block's new index item (None if the block is now empty and was removed).
    The caller saves the index.
    """
    descriptor, _ = files.load_descriptor(block_id, entry)
    block = Block.from_descriptor(descriptor)
    target = ctx.quarantine_path(bucket, entry)
    data_path = files.data_path(block_id)
    ctx.local(data_path)
    for ts in timestamps:
        record = block.remove(ts)
        if record is None or not data_path.exists():
            continue
        with open(data_path, "rb") as source:
            source.seek(record.offset)
            damaged = source.read(record.size)
        target.mkdir(parents=True, exist_ok=True)
        fs_ops.atomic_write(target / f"{block_id}.{ts}.payload", damaged)
    if not block.records:
        files.remove_block(block_id)
        return None
    return files.save_descriptor(block.to_descriptor(ctx.generation))


def recover_entry(
    ctx: EngineContext,
    bucket: str,
    entry: str,
    files: EntryFiles,
    report: RecoveryReport,
    *,
    repair: bool,
    integrity: bool,
) -> list[IndexItem]:
    """Recover (``repair``) or scrub one entry folder; return its index items."""
    return EntryRecovery(
        ctx, bucket, entry, files, report, repair=repair, integrity=integrity
    ).run()
