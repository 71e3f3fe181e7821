"""The read-only replica's view of a shared data folder (spec engine §12, ARCHITECTURE §5).

A replica never writes, renames or deletes anything in the folder: no recovery, no WAL
replay, no compaction, no rewritten index. It reads ``blocks.idx`` (CRC-verified) and the
descriptors and data files the primary has persisted, so it sees a record once the primary's
compaction has written it, plus at most one update interval.

``ReplicaView.reload(storage)`` is the refresh step (``Storage.reload_replica``):

1. Re-scan the bucket folders: new buckets whose ``bucket.settings`` exists are added,
   vanished ones (or ones whose settings file is gone) dropped; settings are re-read when
   the file changed (ReductStore keeps them; we follow changes, which costs one stat).
2. Per bucket, re-scan the entry folders: new entries added, vanished ones dropped.
3. Per entry, ``blocks.idx`` is re-read only when its identity (inode, mtime, size) changed;
   every metadata write of the primary is an atomic rename, so a new version has a new
   inode. A changed index replaces the entry's in-memory view (new ``Entry``: its caches
   start empty) and closes the entry's cached file descriptors, so a data file the primary
   rewrote (record removal) is reopened. An index that fails its CRC (or cannot be read)
   keeps the old view; a new entry without a readable index is skipped and retried.

Label updates and removals arrive the same way: the primary persists them in descriptors and
the index (removals at once, label updates at compaction).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from appliance.engine import fs_ops
from appliance.engine.codec import (
    IndexItem,
    decode_descriptor_header,
    decode_index,
    decode_settings,
)
from appliance.engine.context import EngineContext
from appliance.engine.entry import Entry
from appliance.engine.entry_folder import META_SUFFIX, EntryFiles
from appliance.engine.report import RecoveryReport
from appliance.engine.scan import scan_buckets, scan_entries
from appliance.errors import CorruptionError

if TYPE_CHECKING:
    from appliance.engine.bucket import Bucket

log = logging.getLogger(__name__)

SETTINGS_FILE = "bucket.settings"
Signature = tuple[int, int, int]


def signature(path: Path) -> Signature | None:
    """``(inode, mtime_ns, size)`` of a file, or None if it is missing."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


def load_index_items(files: EntryFiles) -> list[IndexItem]:
    """The entry's index items from ``blocks.idx``; from descriptor headers if it is missing.

    CorruptionError if the index fails its CRC (the caller keeps its previous view).
    """
    path = files.index_path
    try:
        return list(decode_index(fs_ops.read_file(path), str(path)).items)
    except FileNotFoundError:
        pass
    items = []
    for meta in sorted(files.path.glob(f"*{META_SUFFIX}")):
        if not meta.name[: -len(META_SUFFIX)].isdigit():
            continue
        try:
            files.ctx.local(meta)  # data on S3: fetched if it is a placeholder
            items.append(decode_descriptor_header(fs_ops.read_file(meta), str(meta)))
        except (OSError, CorruptionError):
            continue  # being written, or damaged: the primary's recovery deals with it
    return sorted(items, key=lambda item: item.block_id)


class ReplicaView:
    """What the replica last loaded: file identities of every settings file and index."""

    def __init__(self, ctx: EngineContext) -> None:
        self.ctx = ctx
        self._settings: dict[str, Signature] = {}
        self._indexes: dict[tuple[str, str], tuple[Entry, Signature | None]] = {}
        self._failing: set[Path] = set()  # logged once until they load again

    def reload(self, current: dict[str, Bucket]) -> dict[str, Bucket]:
        """One refresh: the new bucket map (buckets reused where they still exist)."""
        from appliance.engine.bucket import Bucket  # late: the bucket module is above us

        found: dict[str, Bucket] = {}
        data_path = self.ctx.data_path
        folders = scan_buckets(data_path, RecoveryReport()) if data_path.is_dir() else []
        for name, path in folders:
            settings_path = path / SETTINGS_FILE
            sig = signature(settings_path)
            if sig is None:
                continue  # being created or removed by the primary
            bucket = current.get(name)
            if bucket is None or self._settings.get(name) != sig:
                try:
                    settings = decode_settings(fs_ops.read_file(settings_path), str(settings_path))
                except (OSError, CorruptionError) as exc:
                    if bucket is None:
                        self._warn(settings_path, exc)
                        continue
                    settings = bucket.settings
                if bucket is None:
                    bucket = Bucket(self.ctx, name, path, settings, {})
                else:
                    bucket.apply_settings(settings)
                self._settings[name] = sig
            bucket.swap_entries(self._reload_entries(bucket))
            found[name] = bucket
        for name in set(current) - set(found):
            self._settings.pop(name, None)
            current[name].swap_entries({})
            current[name].removed = True
        self._indexes = {k: v for k, v in self._indexes.items() if k[0] in found}
        return found

    def _reload_entries(self, bucket: Bucket) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        known = set()
        for name, path in scan_entries(bucket.path, RecoveryReport()):
            key = (bucket.name, name)
            known.add(key)
            files = EntryFiles(self.ctx, path)
            sig = signature(files.index_path)
            seen = self._indexes.get(key)
            if seen is not None and seen[1] == sig and sig is not None:
                entries[name] = seen[0]
                continue
            try:
                items = load_index_items(files)
            except (OSError, CorruptionError) as exc:
                self._warn(files.index_path, exc)
                if seen is not None:
                    entries[name] = seen[0]  # keep the old view; retried next time
                continue
            self._failing.discard(files.index_path)
            if seen is not None:
                # Data files may have been rewritten (new inodes): reopen them on next read.
                self.ctx.files.invalidate_under(path)
            entry = Entry(self.ctx, bucket.name, name, files, items)
            entries[name] = entry
            self._indexes[key] = (entry, sig)
        for key in [k for k in self._indexes if k[0] == bucket.name and k not in known]:
            del self._indexes[key]
        return entries

    def _warn(self, path: Path, exc: BaseException) -> None:
        if path not in self._failing:
            self._failing.add(path)
            log.warning("replica cannot load %s (keeping the previous view): %s", path, exc)
