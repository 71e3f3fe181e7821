"""Offline scrub of a data folder: ``appliance check`` (STYLE 18).

``check(data_path)`` walks every bucket and entry without changing anything: bucket settings,
block index, WAL segments and descriptors are decoded and CRC-checked by the same recovery code
that runs at startup (``recover_entry(repair=False, integrity=True)``), then every FINISHED
record's payload is read back and compared with the CRC32C stored at write time.
``check(data_path, repair=True)`` first runs the real startup recovery (``Storage.open`` with
integrity checks, then ``close``), then scrubs the result: the report lists what recovery found
and did, plus what no repair can fix: payloads that no longer match their checksum (reads of
those records fail with ``CorruptionError``; the rest of their block keeps serving).
Run it on a stopped instance: it does not coordinate with a live one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import google_crc32c

from appliance.engine.bucket import SETTINGS_FILE, load_settings
from appliance.engine.context import EngineContext
from appliance.engine.entry_folder import EntryFiles
from appliance.engine.models import EngineOptions, RecordState
from appliance.engine.recovery import recover_entry
from appliance.engine.report import RecoveryReport
from appliance.engine.scan import scan_buckets, scan_entries
from appliance.errors import CorruptionError

SCRUB_CHUNK_BYTES = 8 * 1024 * 1024


@dataclass
class CheckReport(RecoveryReport):
    """Problems found by a scrub, plus how much was scanned."""

    buckets: int = 0
    entries: int = 0
    blocks: int = 0
    records: int = 0
    payload_bytes: int = 0
    repaired: bool = False

    def render(self) -> str:
        """One line per problem, the crash-leftover summary if any, then a summary line."""
        lines = [p.render() for p in self.problems]
        leftovers = self.leftover_summary()
        if leftovers:
            lines.append(leftovers)
        scanned = (
            f"{self.buckets} bucket(s), {self.entries} entr(ies), {self.blocks} block(s), "
            f"{self.records} record(s), {self.payload_bytes} payload byte(s) checked"
        )
        suffix = " after repair" if self.repaired else ""
        lines.append(f"{self.verdict()}{suffix}: {scanned}")
        return "\n".join(lines)


def check(data_path: Path, repair: bool = False) -> CheckReport:
    """Scrub ``data_path``; with ``repair`` run startup recovery first (same code)."""
    report = CheckReport(repaired=repair)
    if not data_path.is_dir():
        report.add("data_missing", data_path, "data path is not a folder")
        return report
    # Imported here: storage imports this module's siblings, never the other way round.
    from appliance.engine.storage import Storage, finish_removals

    if repair:
        storage = Storage.open(EngineOptions(data_path=data_path, integrity_checks=True))
        storage.close()
        report.problems.extend(storage.recovery.problems)
    ctx = EngineContext.create(EngineOptions(data_path=data_path, read_only=True))
    scrub = RecoveryReport()
    finish_removals(data_path, scrub, repair=False)
    for bucket, bucket_path in scan_buckets(data_path, scrub):
        report.buckets += 1
        load_settings(bucket_path / SETTINGS_FILE, ctx.options.bucket_defaults, scrub, False)
        for entry, entry_path in scan_entries(bucket_path, scrub):
            report.entries += 1
            files = EntryFiles(ctx, entry_path)
            try:
                items = recover_entry(
                    ctx, bucket, entry, files, scrub, repair=False, integrity=True
                )
            except (OSError, CorruptionError) as exc:
                scrub.add("entry_failed", entry_path, f"entry can't be read: {exc}")
                continue
            for item in items:
                report.blocks += 1
                _scrub_block(files, entry, item.block_id, report, scrub)
    if repair:
        # Recovery already reported (and fixed) what it could; keep only what is left.
        seen = {(p.kind, p.path) for p in report.problems}
        scrub.problems = [p for p in scrub.problems if (p.kind, p.path) not in seen]
    report.problems.extend(scrub.problems)
    return report


def _scrub_block(
    files: EntryFiles, entry: str, block_id: int, report: CheckReport, scrub: RecoveryReport
) -> None:
    """Verify the payload CRC of every FINISHED record of one block."""
    try:
        records = files.load_descriptor(block_id, entry)[0].records
    except CorruptionError as exc:
        scrub.add("descriptor_corrupt", files.meta_path(block_id), str(exc), offset=exc.offset)
        return
    data_path = files.data_path(block_id)
    try:
        fd = os.open(data_path, os.O_RDONLY)
    except OSError:
        fd = -1
    try:
        for record in records:
            report.records += 1
            if record.state is not RecordState.FINISHED or record.size == 0:
                continue
            crc, got = (0, 0) if fd < 0 else _crc_range(fd, record.offset, record.size)
            report.payload_bytes += got
            if got != record.size or crc != record.crc:
                detail = (
                    "payload is truncated" if got != record.size else "payload checksum mismatch"
                )
                scrub.add(
                    "payload_corrupt",
                    data_path,
                    f"record {record.timestamp} of block {block_id}: {detail}",
                    offset=record.offset,
                )
    finally:
        if fd >= 0:
            os.close(fd)


def _crc_range(fd: int, offset: int, size: int) -> tuple[int, int]:
    """CRC32C of ``size`` bytes at ``offset`` and how many bytes could be read."""
    crc = 0
    done = 0
    while done < size:
        chunk = os.pread(fd, min(SCRUB_CHUNK_BYTES, size - done), offset + done)
        if not chunk:
            break
        crc = google_crc32c.extend(crc, chunk)
        done += len(chunk)
    return crc, done


__all__ = ["CheckReport", "check"]
