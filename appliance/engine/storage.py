"""The storage engine's root: every bucket under ``options.data_path`` (ARCHITECTURE §3).

``Storage.open`` creates the data folder if needed, then recovers every bucket and entry (WAL
replay, integrity checks, quarantine; see ``recovery.py``) and keeps serving whatever is
healthy: one bad file never stops startup, only an unusable data path does (InternalError with
a clear message). ``compact`` is the single step of the compaction loop; ``close`` compacts,
fsyncs dirty data files and closes every cached file descriptor.

Roles (ARCHITECTURE §5): with ``options.read_only`` (REPLICA) nothing is created or recovered;
the view is loaded by ``reload_replica`` (``replica.py``), which the replica's refresh calls
every update interval. A lease holder opens with its generation and fence: every mutation and
``compact``/``close`` checks the fence first, and ``abandon`` (after stepping down) closes
the file descriptors without writing anything, so a deposed holder cannot flush stale state
over its successor's files.
"""

from __future__ import annotations

import logging
import os
import threading
from contextlib import AbstractContextManager
from pathlib import Path

from appliance.engine import fs_ops
from appliance.engine.bucket import Bucket
from appliance.engine.codec import encode_settings
from appliance.engine.context import EngineContext
from appliance.engine.gate import gated
from appliance.engine.ioerrors import boundary
from appliance.engine.models import U64_MAX, BucketSettings, EngineOptions, StorageInfo
from appliance.engine.names import INTERNAL_BUCKETS, validate_bucket_name
from appliance.engine.replica import ReplicaView
from appliance.engine.report import RecoveryReport
from appliance.engine.scan import scan_buckets
from appliance.errors import Conflict, Forbidden, InternalError, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)


def finish_removals(path: Path, report: RecoveryReport, repair: bool) -> None:
    """Report (and with ``repair`` delete) bucket/entry removals a crash interrupted."""
    trash = path / fs_ops.REMOVING_DIR
    if not trash.is_dir():
        return
    for leftover in sorted(trash.iterdir()):
        report.add(
            "removal_pending",
            leftover,
            "folder of an interrupted removal (or creation), never visible",
            "deleted" if repair else "none",
            crash_leftover=True,
        )
    if repair:
        fs_ops.purge_removing(path)


class Storage:
    """All buckets of one data folder (thread-safe)."""

    def __init__(self, ctx: EngineContext, buckets: dict[str, Bucket], report: RecoveryReport):
        self._ctx = ctx
        self._buckets = buckets
        self._lock = threading.RLock()
        self._closed = False
        self.recovery = report
        self._replica = ReplicaView(ctx) if ctx.options.read_only else None
        ctx.storage_usage = self._usage

    @classmethod
    def open(cls, options: EngineOptions) -> Storage:
        """Open (creating if missing) and recover the data folder; a replica only loads it."""
        if options.read_only:
            storage = cls(EngineContext.create(options), {}, RecoveryReport())
            storage.reload_replica()
            return storage
        path = options.data_path
        try:
            # Durable from the start: every bucket's survival hangs on this folder's name.
            fs_ops.make_dirs(path, sync=True)
            if not os.access(path, os.R_OK | os.X_OK) or (
                not options.read_only and not os.access(path, os.W_OK)
            ):
                raise PermissionError(f"no read/write access to {path}")
            # Made while there is room: removals rename into it even on a full disk.
            fs_ops.make_dirs(path / fs_ops.REMOVING_DIR, sync=True)
        except OSError as exc:
            raise InternalError(f"Data path {path} is not usable: {exc}") from exc
        ctx = EngineContext.create(options)
        report = RecoveryReport()
        repair = not options.read_only
        integrity = options.integrity_checks and repair
        finish_removals(path, report, repair=True)
        buckets: dict[str, Bucket] = {}
        for name, bucket_path in scan_buckets(path, report):
            try:
                buckets[name] = Bucket.load(
                    ctx, name, bucket_path, report, repair=repair, integrity=integrity
                )
            except OSError as exc:  # one unreadable bucket must not stop the others
                report.add(
                    "bucket_failed", bucket_path, f"bucket can't be opened: {exc}", "skipped"
                )
        leftovers = report.leftover_summary()
        if leftovers:
            log.info("startup %s", leftovers)  # an ordinary crash: nothing was damaged
        if report.damaged:
            log.warning("startup recovery found %d problem(s) (damage)", len(report.damage))
        if ctx.reserve is not None:
            ctx.reserve.refill()
        return cls(ctx, buckets, report)

    @property
    def options(self) -> EngineOptions:
        """The options the storage was opened with."""
        return self._ctx.options

    def cache_stats(self) -> tuple[int, int]:
        """Hits and misses of the shared block cache since the storage opened."""
        blocks = self._ctx.blocks
        return blocks.hits, blocks.misses

    def _usage(self) -> int:
        with self._lock:
            buckets = list(self._buckets.values())
        return sum(bucket.size for bucket in buckets)

    def close(self) -> None:
        """Flush all WAL state into descriptors and indexes, fsync data, close files.

        A lease holder flushes only while the fence passes (its WAL stays for the successor's
        recovery otherwise); a replica and an abandoned storage just close their files.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            buckets = list(self._buckets.values())
        ctx = self._ctx
        if not ctx.options.read_only and not ctx.abandoned:
            try:
                ctx.check_writable()
            except ServiceUnavailable as exc:
                log.warning("not flushing the storage on close: %s", exc.message)
                ctx.abandoned = True
        if not ctx.options.read_only and not ctx.abandoned:
            for bucket in buckets:
                bucket.compact()
            ctx.files.sync_dirty()
        self._close_files()

    def pause_writes(self, timeout: float) -> AbstractContextManager[float]:
        """Close the write gate (backup snapshot): yields the seconds in-flight writes took."""
        return self._ctx.gate.exclusive(timeout)

    def journal_position(self) -> tuple[int, int] | None:
        """Next journal sequence number and the time of the last frame (None: no journal)."""
        journal = self._ctx.journal
        return None if journal is None else (journal.next_seq, journal.last_time_us)

    def rotate_journal(self) -> list[Path]:
        """Close the open journal segment; every closed segment (empty without a journal)."""
        journal = self._ctx.journal
        return [] if journal is None else journal.rotate()

    def mark_abandoned(self) -> None:
        """Refuse every later mutation with 503 (only a flag: safe from any thread)."""
        self._ctx.abandoned = True

    def abandon(self) -> None:
        """Stop using the storage without writing anything (a deposed lease holder).

        Later mutations fail with 503; descriptors, indexes and WALs stay as they are for the
        new holder's recovery. Idempotent; ``close`` after it only closes what is left.
        """
        self._ctx.abandoned = True
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._close_files()

    def _close_files(self) -> None:
        if self._ctx.journal is not None:
            self._ctx.journal.close()
        self._ctx.files.close()
        if self._ctx.committer is not None:
            self._ctx.committer.close()

    @boundary("compact")
    def compact(self) -> None:
        """One compaction step: WAL entries become block descriptors and block indexes."""
        if self._ctx.options.read_only:
            return
        self._ctx.check_writable()  # a paused ex-holder must not compact over its successor
        with self._lock:
            buckets = list(self._buckets.values())
        for bucket in buckets:
            bucket.compact()

    def reload_replica(self) -> None:
        """The replica's refresh step: pick up buckets, settings, entries and indexes."""
        if self._replica is None:
            raise Forbidden("only a read-only replica reloads its view")
        with self._lock:
            current = dict(self._buckets)
        found = self._replica.reload(current)
        with self._lock:
            self._buckets = found

    def info(self) -> StorageInfo:
        """Bucket count, usage and record range with ReductStore's quirks (spec api §2)."""
        with self._lock:
            buckets = list(self._buckets.values())
        infos = [bucket.info() for bucket in buckets]
        if not infos:
            return StorageInfo(0, 0, U64_MAX, 0)
        return StorageInfo(
            bucket_count=len(infos),
            usage=sum(info.size for info in infos),
            oldest_record=min(info.oldest_record for info in infos),
            latest_record=max(info.latest_record for info in infos),
        )

    def disk_info(self) -> dict[str, int]:
        """Free bytes of the data file system, the free space writes keep (507 below it) and
        the removal reserve held now (0 once a removal on a full disk used it)."""
        reserve = self._ctx.reserve
        try:
            free = fs_ops.free_bytes(self._ctx.data_path)
        except OSError:
            free = 0
        return {
            "free_space": free,
            "min_free_space": self._ctx.options.min_free_space,
            "removal_reserve": reserve.held if reserve is not None else 0,
        }

    def bucket_names(self) -> list[str]:
        """Names of every bucket, sorted."""
        with self._lock:
            return sorted(self._buckets)

    @boundary("create the bucket")
    @gated
    def create_bucket(
        self, name: str, settings: BucketSettings | None = None, *, internal: bool = False
    ) -> Bucket:
        """A new bucket (409 if it exists, 422 for a bad name; ``internal``: one of the
        instance's own ``$`` buckets, e.g. ``$system``)."""
        self._ctx.check_writable()
        if not (internal and name in INTERNAL_BUCKETS):
            validate_bucket_name(name)
        with self._lock:
            if name in self._buckets:
                raise Conflict(f"Bucket '{name}' already exists")
            bucket = Bucket.create(
                self._ctx,
                name,
                self._ctx.data_path / name,
                settings if settings is not None else self._ctx.options.bucket_defaults,
            )
            self._buckets[name] = bucket
            if self._ctx.journal is not None:
                self._ctx.journal.append("bucket_create", encode_settings(bucket.settings), b=name)
            return bucket

    def peek_bucket(self, name: str) -> Bucket | None:
        """The bucket or None, without the storage lock (which a bucket creation or removal
        holds through its fsyncs): for the event loop, which must not wait for it."""
        return self._buckets.get(name)

    def get_bucket(self, name: str) -> Bucket:
        """The bucket; 404 if missing."""
        with self._lock:
            bucket = self._buckets.get(name)
        if bucket is None:
            raise NotFound(f"Bucket '{name}' is not found")
        return bucket

    @boundary("remove the bucket")
    @gated
    def remove_bucket(self, name: str) -> None:
        """Remove a bucket and all its data (synchronously)."""
        self._ctx.check_writable()
        with self._ctx.removing():
            with self._lock:
                bucket = self.get_bucket(name)
                del self._buckets[name]
                bucket.retire()
                self._ctx.files.invalidate_under(bucket.path)
                # One durable rename makes the removal all-or-nothing across a crash (issue 8).
                with self._ctx.retiring(bucket.path):
                    moved = fs_ops.retire_dir(bucket.path, self._ctx.data_path)
                if self._ctx.journal is not None:
                    self._ctx.journal.append("bucket_remove", b=name)
            if moved is not None:
                fs_ops.remove_tree(moved)  # outside the lock: other buckets stay usable

    @boundary("rename the bucket")
    @gated
    def rename_bucket(self, old: str, new: str) -> None:
        """Rename a bucket (404 / 409 / 422 as ReductStore)."""
        self._ctx.check_writable()
        with self._lock:
            bucket = self.get_bucket(old)
            validate_bucket_name(new)
            if new in self._buckets:
                raise Conflict(f"Bucket '{new}' already exists")
            target = self._ctx.data_path / new
            if target.exists():
                raise Conflict(f"Bucket '{new}' already exists")
            bucket.compact()
            del self._buckets[old]
            bucket.retire()
            try:
                with self._ctx.moving(bucket.path, target):
                    fs_ops.rename_dir(bucket.path, target)
                if self._ctx.journal is not None:
                    self._ctx.journal.append("bucket_rename", b=old, n=new)
            except OSError:
                target = bucket.path
                new = old
                raise
            finally:
                self._buckets[new] = Bucket.load(
                    self._ctx, new, target, RecoveryReport(), repair=True, integrity=False
                )
