"""Point-in-time recovery: continuous archiving of the mutation journal and replay (issue 12 §2).

With ``RS_BACKUP_ARCHIVE_INTERVAL`` > 0 the engine journals every mutation
(``engine/journal.py``); every interval ``ship`` closes the open journal segment and stores
each closed one in the target as ``archive/<first seq>-<last seq>.jnl``, then deletes it
locally. The RPO is therefore the interval (plus the upload time): a machine lost for good
loses at most the changes of the segment not yet shipped.

Each backup taken with archiving on records ``journal_seq``, the first journal sequence number
*not* in it (taken while writes are paused). ``restore_to_time(target, T, data)`` restores the
newest full backup whose cut is at or before ``T``, then replays the archived frames from its
``journal_seq`` on, in order, up to the last one journaled at or before ``T``: records written
later are absent, later label updates, removals and entry/bucket removals are undone.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from appliance.backup import instance, restore
from appliance.backup import manifest as mf
from appliance.engine import Storage
from appliance.engine.codec import decode_settings
from appliance.engine.journal import Frame, decode_frames, read_segment
from appliance.engine.models import EngineOptions
from appliance.errors import ApplianceError, NotFound, UnprocessableEntity

log = logging.getLogger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
ARCHIVE_NAME = re.compile(r"^(\d{20})-(\d{20})\.jnl$")


def archive_name(first: int, last: int) -> str:
    """Name of an archived segment holding frames ``first..last``."""
    return f"{first:020d}-{last:020d}.jnl"


def parse_time(value: str) -> int:
    """µs since the epoch from ``value``: an integer, or ISO 8601 (naive means UTC)."""
    text = value.strip()
    if text.isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UnprocessableEntity(
            f"'{value}' is not a time: give µs since the epoch or ISO 8601"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    # Exact integer arithmetic: a float timestamp can be off by a µs at today's magnitudes.
    return (when - EPOCH) // timedelta(microseconds=1)


def ship(segments: list[Path], target) -> int:  # type: ignore[no-untyped-def]
    """Store closed journal segments in the target's archive, then delete them; frames shipped."""
    shipped = 0
    for path in segments:
        frames = list(read_segment(path))
        if frames:
            target.put_archive(archive_name(frames[0].seq, frames[-1].seq), path)
            shipped += len(frames)
        path.unlink()
    return shipped


def _segments(target, start_seq: int) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Names of the archived segments that continue ``start_seq``, in order; NotFound at a gap."""
    expected = start_seq
    for name in sorted(target.list_archive()):
        match = ARCHIVE_NAME.match(name)
        if match is None:
            continue
        first, last = int(match.group(1)), int(match.group(2))
        if last < expected:
            continue
        if first > expected:
            raise NotFound(
                f"the archive has a gap: frames {expected}..{first - 1} are missing "
                "(archiving was off or a segment was lost)"
            )
        yield name
        expected = last + 1


def check_archive(target, start_seq: int) -> None:  # type: ignore[no-untyped-def]
    """Refuse before anything is restored when the archive does not continue ``start_seq``."""
    for _ in _segments(target, start_seq):
        pass


def archived_frames(target, start_seq: int) -> Iterator[Frame]:  # type: ignore[no-untyped-def]
    """Archived frames from ``start_seq`` on, in order; raises at a gap in the sequence."""
    expected = start_seq
    for name in _segments(target, start_seq):
        frames, _ = decode_frames(target.get_archive(name))
        for frame in frames:
            if frame.seq < expected:
                continue
            if frame.seq != expected:
                raise NotFound(f"archive segment {name} skips frame {expected}")
            expected += 1
            yield frame


def prune_archive(target) -> list[str]:  # type: ignore[no-untyped-def]
    """Delete archived segments no remaining full backup needs (all frames before the oldest
    one's ``journal_seq``); nothing while no full backup was taken with archiving on."""
    starts = []
    for info in target.list_backups():
        if info.complete and info.buckets is None:
            seq = target.load(info.id).extra.get("journal_seq")
            if isinstance(seq, int):
                starts.append(seq)
    if not starts:
        return []
    oldest = min(starts)
    doomed = []
    for name in target.list_archive():
        match = ARCHIVE_NAME.match(name)
        if match is not None and int(match.group(2)) < oldest:
            target.delete_archive(name)
            doomed.append(name)
    return doomed


@dataclass
class PitrResult:
    """What a point-in-time restore did."""

    base: str
    to_us: int
    applied: int = 0
    last_frame_us: int = 0
    failed: list[str] = field(default_factory=list)

    def render(self) -> str:
        """A summary for the CLI."""
        lines = [f"frame failed: {f}" for f in self.failed]
        reached = mf.iso(self.last_frame_us) if self.last_frame_us else "the backup's cut"
        lines.append(
            f"restored backup {self.base} + {self.applied} archived change(s) up to "
            f"{mf.iso(self.to_us)} (last change replayed: {reached})"
        )
        return "\n".join(lines)


def choose_base(target, to_us: int) -> mf.Manifest:  # type: ignore[no-untyped-def]
    """The newest complete full backup taken with archiving on, cut at or before ``to_us``."""
    for info in reversed(target.list_backups()):
        if not info.complete or info.cut_us > to_us or info.buckets is not None:
            continue
        found = target.load(info.id)
        if "journal_seq" in found.extra:
            return found
    raise NotFound(
        f"no complete full backup taken with archiving on is older than {mf.iso(to_us)}"
    )


def apply(storage: Storage, frame: Frame) -> None:
    """Apply one journaled mutation through the engine's own API."""
    f = frame.fields
    op = frame.op
    if op == "write":
        storage.get_bucket(f["b"]).write_record(f["e"], f["ts"], frame.payload, f["ct"], f["l"])
    elif op == "labels":
        entry = storage.get_bucket(f["b"]).get_entry(f["e"])
        current = entry.get_record(f["ts"])
        entry.update_labels(f["ts"], f["l"], set(current.labels) - set(f["l"]))
    elif op == "remove":
        storage.get_bucket(f["b"]).get_entry(f["e"]).remove_unchecked(f["tss"])
    elif op == "entry_remove":
        storage.get_bucket(f["b"]).remove_entry(f["e"])
    elif op == "entry_rename":
        storage.get_bucket(f["b"]).rename_entry(f["e"], f["n"])
    elif op == "bucket_create":
        # ``$system`` and the other ``$`` buckets are the instance's own (internal).
        storage.create_bucket(f["b"], decode_settings(frame.payload), internal=f["b"].startswith("$"))
    elif op == "bucket_settings":
        s = decode_settings(frame.payload)
        storage.get_bucket(f["b"]).update_settings(
            s.quota_type, s.quota_size, s.max_block_size, s.max_block_records
        )
    elif op == "bucket_remove":
        storage.remove_bucket(f["b"])
    elif op == "bucket_rename":
        storage.rename_bucket(f["b"], f["n"])
    else:
        raise UnprocessableEntity(f"unknown journal operation '{op}'")


def restore_to_time(target, to_us: int, data: Path) -> PitrResult:  # type: ignore[no-untyped-def]
    """Rebuild in ``data`` (empty) the state the instance had at ``to_us``; read-only after."""
    base = choose_base(target, to_us)
    check_archive(target, int(base.extra["journal_seq"]))  # type: ignore[arg-type]
    frames = archived_frames(target, int(base.extra["journal_seq"]))  # type: ignore[arg-type]
    restore.restore(target, base.id, data)
    result = PitrResult(base.id, to_us)
    with instance.stopped(data):
        storage = Storage.open(EngineOptions(data_path=data, min_free_space=0))
        try:
            for frame in frames:
                if frame.time_us > to_us:
                    break
                try:
                    apply(storage, frame)
                except ApplianceError as exc:
                    result.failed.append(f"#{frame.seq} {frame.op} {frame.fields}: {exc.message}")
                result.applied += 1
                result.last_frame_us = frame.time_us
        finally:
            storage.close()
        instance.mark_restored(data, f"{base.id} + archive to {mf.iso(to_us)}")
    return result
