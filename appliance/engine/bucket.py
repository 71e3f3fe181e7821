"""One bucket: settings, its entries (nested names, auto-created parents) and its writes.

Folder ``<data>/<bucket>/`` holds ``bucket.settings`` (codec, written atomically) and one folder
per entry; entry ``a/b`` lives in ``<bucket>/a/b/`` so a rename or removal of ``a`` carries its
descendants. Before anything of a write touches the disk, the bucket's ``Quota`` (``quota.py``)
applies ReductStore's admission checks in its order (spec engine §5: storage limit, quota, free
disk); ``$meta`` rules (key label required, ``remove=true`` refused, upsert by key) come first
since they are pure validation.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from operator import attrgetter
from pathlib import Path

from appliance import metrics
from appliance.engine import fs_ops
from appliance.engine.codec import decode_settings, encode_settings
from appliance.engine.context import EngineContext
from appliance.engine.entry import Entry
from appliance.engine.entry_folder import EntryFiles
from appliance.engine.gate import gated
from appliance.engine.ioerrors import boundary, io_boundary
from appliance.engine.models import (
    META_ENTRY_MAX_BLOCK_SIZE,
    U64_MAX,
    BucketInfo,
    BucketSettings,
    EntryInfo,
    NewRecord,
    QuotaType,
    RecordState,
)
from appliance.engine.names import (
    is_meta_entry,
    is_same_or_descendant,
    parents,
    validate_entry_name,
)
from appliance.engine.quota import Quota
from appliance.engine.recovery import recover_entry
from appliance.engine.report import RecoveryReport
from appliance.engine.scan import scan_entries
from appliance.engine.writer import RecordWriter
from appliance.errors import (
    ApplianceError,
    Conflict,
    CorruptionError,
    NotFound,
    UnprocessableEntity,
)

SETTINGS_FILE = "bucket.settings"
META_KEY_LABEL = "key"
META_REMOVE_LABEL = "remove"

_DATA = attrgetter("data")
_TIMESTAMP = attrgetter("timestamp")


def _valid_stamps(records: Sequence[NewRecord]) -> bool:
    """True if every timestamp is an ``int`` (not a subclass) in 0..U64_MAX (C-level passes)."""
    if not records:
        return True
    stamps = list(map(_TIMESTAMP, records))
    return set(map(type, stamps)) == {int} and min(stamps) >= 0 and max(stamps) <= U64_MAX


class Bucket:
    """Entries and settings of one bucket (thread-safe)."""

    def __init__(
        self,
        ctx: EngineContext,
        name: str,
        path: Path,
        settings: BucketSettings,
        entries: dict[str, Entry],
    ) -> None:
        self._ctx = ctx
        self._name = name
        self.path = path
        self._settings = settings
        self._entries = entries
        self._lock = threading.RLock()
        self._quota = Quota(ctx, name, lambda: self.size, self._evictable_entries)
        self.removed = False
        for entry in entries.values():
            self._apply_limits(entry)

    @classmethod
    def create(cls, ctx: EngineContext, name: str, path: Path, settings: BucketSettings) -> Bucket:
        """A new, empty bucket folder, made whole in a staging folder and renamed into place.

        A failure (a full disk) or a crash leaves no bucket behind, never one with default
        settings; the rename is fsynced, so an acknowledged bucket survives power loss.
        """
        staging = fs_ops.staging_dir(ctx.data_path)
        try:
            fs_ops.atomic_write(staging / SETTINGS_FILE, encode_settings(settings))
            fs_ops.rename_dir(staging, path)
        except BaseException:
            fs_ops.remove_tree(staging)
            raise
        return cls(ctx, name, path, settings, {})

    @classmethod
    def load(
        cls,
        ctx: EngineContext,
        name: str,
        path: Path,
        report: RecoveryReport,
        *,
        repair: bool,
        integrity: bool,
    ) -> Bucket:
        """Open an existing bucket folder, recovering every entry in it."""
        settings = load_settings(path / SETTINGS_FILE, ctx.options.bucket_defaults, report, repair)
        entries: dict[str, Entry] = {}
        for entry_name, entry_path in scan_entries(path, report):
            try:
                entries[entry_name] = _open_entry(
                    ctx, name, entry_name, entry_path, report, repair=repair, integrity=integrity
                )
            except (OSError, CorruptionError) as exc:
                report.add(
                    "entry_failed", entry_path, f"entry can't be recovered: {exc}", "skipped"
                )
        return cls(ctx, name, path, settings, entries)

    @property
    def name(self) -> str:
        """The bucket name."""
        return self._name

    @property
    def settings(self) -> BucketSettings:
        """Current settings (all fields filled)."""
        return self._settings

    @property
    def size(self) -> int:
        """Bytes of all entries, ``$meta`` included (spec api §3.2)."""
        with self._lock:
            entries = list(self._entries.values())
        return sum(entry.size for entry in entries)

    def _apply_limits(self, entry: Entry) -> None:
        max_size = META_ENTRY_MAX_BLOCK_SIZE if entry.is_meta else self._settings.max_block_size
        entry.set_limits(max_size, self._settings.max_block_records)

    @boundary("change the bucket settings")
    @gated
    def update_settings(
        self,
        quota_type: QuotaType | None = None,
        quota_size: int | None = None,
        max_block_size: int | None = None,
        max_block_records: int | None = None,
    ) -> BucketSettings:
        """Change some settings (None keeps the current value); persisted atomically."""
        self._ctx.check_writable()
        with self._lock:
            new = self._settings.merged(quota_type, quota_size, max_block_size, max_block_records)
            fs_ops.atomic_write(self.path / SETTINGS_FILE, encode_settings(new))
            self.apply_settings(new)
            if self._ctx.journal is not None:
                self._ctx.journal.append("bucket_settings", encode_settings(new), b=self._name)
            return new

    def apply_settings(self, settings: BucketSettings) -> None:
        """Use ``settings`` from now on (no disk write: the replica's refresh, or after saving)."""
        with self._lock:
            self._settings = settings
            for entry in self._entries.values():
                self._apply_limits(entry)

    def swap_entries(self, entries: dict[str, Entry]) -> None:
        """Replace the entry map (the replica's refresh); no disk write."""
        for entry in entries.values():
            self._apply_limits(entry)
        with self._lock:
            self._entries = entries

    # --- entries --------------------------------------------------------------------------------

    def info(self) -> BucketInfo:
        """Entry count (without ``$meta``), size (with), oldest and latest record."""
        with self._lock:
            entries = list(self._entries.values())
        infos = [(entry.is_meta, entry.info()) for entry in entries]
        size = sum(info.size for _, info in infos)
        visible = [info for is_meta, info in infos if not is_meta]
        with_records = [info for info in visible if info.record_count]
        oldest = min((i.oldest_record for i in with_records), default=0)
        latest = max((i.latest_record for i in with_records), default=0)
        return BucketInfo(self._name, len(visible), size, oldest, latest)

    def entries(self) -> list[EntryInfo]:
        """Entry statistics sorted by name, ``$meta`` entries excluded."""
        with self._lock:
            entries = [e for e in self._entries.values() if not e.is_meta]
        return sorted((entry.info() for entry in entries), key=lambda info: info.name)

    def entry_names(self) -> list[str]:
        """Every entry name, ``$meta`` entries included, sorted."""
        with self._lock:
            return sorted(self._entries)

    def _entry_not_found(self, name: str) -> NotFound:
        return NotFound(f"Entry '{name}' not found in bucket '{self._name}'")

    def get_entry(self, name: str) -> Entry:
        """The entry; 404 if it does not exist."""
        with self._lock:
            entry = self._entries.get(name)
        if entry is None:
            raise self._entry_not_found(name)
        return entry

    @boundary("create the entry")
    @gated
    def get_or_create_entry(self, name: str) -> Entry:
        """The entry, created with its missing parents if needed (422 on a bad name)."""
        entry = self._entries.get(name)
        if entry is not None:
            return entry
        validate_entry_name(name)
        with self._lock:
            entry = self._entries.get(name)
            if entry is None:
                self._check_alive()
                self._ctx.check_writable()
                self._create_entries([*parents(name), name])
            return self._entries[name]

    def _create_entries(self, names: list[str]) -> None:
        """Create the missing ones of ``names`` (in order), all or none (lock held).

        A failure (a full disk) removes the entries this call made, folders included: a
        write answered 507 must not leave empty entries behind.
        """
        made: list[str] = []
        try:
            for name in names:
                if name not in self._entries:
                    self._entries[name] = self._new_entry(name)
                    made.append(name)
        except BaseException:
            for name in reversed(made):
                self._entries.pop(name).retire()
                moved = fs_ops.retire_dir(self.path / name, self._ctx.data_path)
                if moved is not None:
                    fs_ops.remove_tree(moved)
            raise

    def _new_entry(self, name: str) -> Entry:
        files = EntryFiles(self._ctx, self.path / name)
        try:
            files.create()
        except BaseException:
            fs_ops.remove_tree(files.path)  # only its own folder: parents are other entries
            raise
        entry = Entry(self._ctx, self._name, name, files, [])
        self._apply_limits(entry)
        return entry

    def _check_alive(self) -> None:
        if self.removed:
            raise NotFound(f"Bucket '{self._name}' is not found")

    @boundary("remove the entry")
    @gated
    def remove_entry(self, name: str) -> None:
        """Remove an entry and all its descendants (``$meta`` included) with their files."""
        self._ctx.check_writable()
        with self._lock:
            if name not in self._entries:
                raise self._entry_not_found(name)
            for doomed in [n for n in self._entries if is_same_or_descendant(n, name)]:
                self._entries.pop(doomed).retire()
            # One durable rename makes the removal all-or-nothing across a crash (issue 8).
            with self._ctx.retiring(self.path / name):
                moved = fs_ops.retire_dir(self.path / name, self._ctx.data_path)
            if self._ctx.journal is not None:
                self._ctx.journal.append("entry_remove", b=self._name, e=name)
        if moved is not None:
            fs_ops.remove_tree(moved)

    @boundary("rename the entry")
    @gated
    def rename_entry(self, old: str, new: str) -> None:
        """Rename an entry and its descendants (404 / 409 / 422 as ReductStore)."""
        self._ctx.check_writable()
        validate_entry_name(new)
        with self._lock:
            if old not in self._entries:
                raise self._entry_not_found(old)
            if new in self._entries or is_same_or_descendant(new, old):
                raise Conflict(f"Entry '{new}' already exists in bucket '{self._name}'")
            moved = sorted(n for n in self._entries if is_same_or_descendant(n, old))
            for name in moved:
                # The folder must be self-contained (no WAL) when it moves; a failure here
                # (a full disk) leaves every entry as it was.
                self._entries[name].compact()
            for name in moved:
                self._entries.pop(name).retire()
            reopen = {name: name for name in moved}
            try:
                self._create_entries(parents(new))
                with self._ctx.moving(self.path / old, self.path / new):
                    fs_ops.rename_dir(self.path / old, self.path / new)
                reopen = {name: new + name[len(old) :] for name in moved}
                if self._ctx.journal is not None:
                    self._ctx.journal.append("entry_rename", b=self._name, e=old, n=new)
            except FileExistsError as exc:
                raise Conflict(f"Entry '{new}' already exists in bucket '{self._name}'") from exc
            finally:
                for name in reopen.values():
                    self._entries[name] = self._reopen_entry(name)

    def _reopen_entry(self, name: str) -> Entry:
        """Load an entry folder that was just moved (compacted before: nothing to recover)."""
        entry = _open_entry(
            self._ctx,
            self._name,
            name,
            self.path / name,
            RecoveryReport(),
            repair=True,
            integrity=False,
        )
        self._apply_limits(entry)
        return entry

    # --- writes ---------------------------------------------------------------------------------

    @boundary("write the record")
    @gated
    def begin_write(
        self, entry: str, ts: int, size: int, content_type: str, labels: Mapping[str, str]
    ) -> RecordWriter:
        """Admit and reserve one record; stream its payload through the returned writer."""
        self._ctx.check_writable()
        _check_timestamp(ts)
        if size < 0:
            raise UnprocessableEntity("content-length must be a number")
        self._quota.check_storage_limit(size, 0)
        target = self._entries.get(entry)
        if target is None:
            validate_entry_name(entry)  # an existing entry's name was validated already
        is_meta = target.is_meta if target is not None else is_meta_entry(entry)
        if is_meta:
            self._check_meta_labels(entry, labels)
        with self._quota.guard(self._settings):
            self._quota.admit(self._settings, size, 0, self._ctx.disk.free(size))
            target = self.get_or_create_entry(entry)
            if is_meta:
                self._upsert(target, ts, size, labels)
            block_id, record, handle = target.begin(ts, size, content_type, labels)
        return RecordWriter(target, block_id, record, handle)

    @boundary("write the record")
    def write_record(
        self, entry: str, ts: int, data: bytes, content_type: str, labels: Mapping[str, str]
    ) -> None:
        """Write a whole small record in one call."""
        writer = self.begin_write(entry, ts, len(data), content_type, labels)
        try:
            if data:
                writer.write(data)
        except BaseException:
            writer.abort("write failed")
            raise
        writer.finish()

    def try_write_small(
        self, entry: str, ts: int, data: bytes, content_type: str, labels: Mapping[str, str]
    ) -> bool:
        """``write_record`` on the calling thread if it needs no waiting (the event loop's
        inline small writes); False, with nothing done, when it would or might wait: synced
        writes, the journal, data on S3 or a lease (their commits wait on I/O), a new or
        ``$meta`` entry, a quota or storage limit, a backup pausing the gate, or anything
        ``Entry.try_write`` declines. Errors are those of ``write_record``."""
        ctx = self._ctx
        target = self._entries.get(entry)
        if (
            target is None
            or target.is_meta
            or self.removed
            or ctx.committer is not None
            or ctx.journal is not None
            or ctx.options.mirror is not None
            or ctx.generation
            or not ctx.gate.try_enter()
        ):
            return False
        try:
            with io_boundary("write the record"):
                ctx.check_writable()
                _check_timestamp(ts)
                settings = self._settings
                return target.try_write(
                    ts, data, content_type, labels,
                    lambda size: self._quota.admit_all(settings, size, ctx.disk.free(size)),
                )
        finally:
            ctx.gate.leave()

    @boundary("write the records")
    @gated
    def write_batch(self, entry: str, records: Sequence[NewRecord]) -> dict[int, ApplianceError]:
        """Write in-memory records; errors by timestamp (one WAL append for the batch)."""
        self._ctx.check_writable()
        validate_entry_name(entry)
        if is_meta_entry(entry):
            return self._write_each(entry, records)
        errors: dict[int, ApplianceError] = {}
        accepted: list[NewRecord] = []
        pending = 0
        with self._quota.guard(self._settings):
            # C-level passes over the batch (a 1,000-record batch: no Python step per record).
            total = sum(map(len, map(_DATA, records)))
            free = self._ctx.disk.free(total)
            if self._quota.admit_all(self._settings, total, free) and _valid_stamps(records):
                accepted = list(records)  # what the loop below would conclude, record by record
            else:
                for record in records:
                    size = len(record.data)
                    try:
                        _check_timestamp(record.timestamp)
                        self._quota.check_storage_limit(size, pending)
                        self._quota.admit(self._settings, size, pending, free)
                    except ApplianceError as exc:
                        errors[record.timestamp] = exc
                        continue
                    accepted.append(record)
                    pending += size
            if accepted:
                failed = self.get_or_create_entry(entry).write_batch(accepted)
                errors.update(failed)
                if not failed and len(accepted) == len(records):
                    metrics.records_written(len(accepted), total)
                else:
                    stored = [r for r in accepted if r.timestamp not in failed]
                    metrics.records_written(len(stored), sum(len(r.data) for r in stored))
        return errors

    def _write_each(self, entry: str, records: Sequence[NewRecord]) -> dict[int, ApplianceError]:
        errors: dict[int, ApplianceError] = {}
        for record in records:
            try:
                self.write_record(
                    entry, record.timestamp, record.data, record.content_type, record.labels
                )
            except ApplianceError as exc:
                errors[record.timestamp] = exc
        return errors

    def _evictable_entries(self) -> list[Entry]:
        """The entries FIFO may drop blocks from (never ``$meta``)."""
        with self._lock:
            return [e for e in self._entries.values() if not e.is_meta]

    def _check_meta_labels(self, entry: str, labels: Mapping[str, str]) -> None:
        if META_KEY_LABEL not in labels:
            raise UnprocessableEntity(
                f"Record in system entry '{entry}' must have label '{META_KEY_LABEL}'"
            )
        if labels.get(META_REMOVE_LABEL, "").lower() == "true":
            raise UnprocessableEntity(
                f"Label '{META_REMOVE_LABEL}=true' can't be written to system entry '{entry}'; "
                "use label update"
            )

    def _upsert(self, entry: Entry, ts: int, size: int, labels: Mapping[str, str]) -> None:
        """Remove older records with the same ``key`` (after making sure ``ts`` is free)."""
        try:
            existing = entry.get_record(ts)
        except NotFound:
            existing = None
        if existing is not None and not (
            existing.state is RecordState.ERRORED and existing.size == size
        ):
            raise Conflict(f"A record with timestamp {ts} already exists")
        same_key = [
            t for t in entry.find_by_label(META_KEY_LABEL, labels[META_KEY_LABEL]) if t != ts
        ]
        if same_key:
            entry.remove_unchecked(same_key)

    # --- maintenance ----------------------------------------------------------------------------

    def compact(self) -> None:
        """Flush every entry's WAL into descriptors and indexes."""
        with self._lock:
            entries = list(self._entries.values())
        for entry in entries:
            entry.compact()

    def retire(self) -> None:
        """Mark removed and retire every entry (files are the caller's)."""
        with self._lock:
            self.removed = True
            for entry in self._entries.values():
                entry.retire()
            self._entries.clear()


def _open_entry(
    ctx: EngineContext,
    bucket: str,
    name: str,
    path: Path,
    report: RecoveryReport,
    *,
    repair: bool,
    integrity: bool,
) -> Entry:
    """Recover an entry folder and build its ``Entry``."""
    files = EntryFiles(ctx, path)
    items = recover_entry(ctx, bucket, name, files, report, repair=repair, integrity=integrity)
    return Entry(ctx, bucket, name, files, items)


def _check_timestamp(ts: int) -> None:
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 <= ts <= U64_MAX:
        raise UnprocessableEntity("'ts' must be an unix timestamp in microseconds")


def load_settings(
    path: Path, defaults: BucketSettings, report: RecoveryReport, repair: bool
) -> BucketSettings:
    """Read ``bucket.settings``; a missing or corrupt file falls back to defaults (rewritten)."""
    try:
        return decode_settings(fs_ops.read_file(path), str(path))
    except FileNotFoundError:
        kind, message, offset = "settings_missing", "bucket settings file is missing", None
    except CorruptionError as exc:
        kind, message, offset = "settings_corrupt", str(exc), exc.offset
    report.add(kind, path, message, "defaults written" if repair else "none", offset)
    if repair:
        fs_ops.atomic_write(path, encode_settings(defaults))
    return defaults
