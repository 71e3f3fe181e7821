"""Taking a consistent online snapshot of a data folder (issue 12 §1).

Two phases, so writes are paused only for the cheap one:

1. ``stage`` (writes paused): the engine's write gate closes (new mutations wait, in-flight
   ones finish), the µs cut instant is taken, every file of the selected buckets is hard-linked
   into ``<data>/.backup-staging/<id>/`` and its size noted, then the gate opens. A hard link is
   one system call per file whatever its size, so the pause depends on the file count, not the
   bytes. Metadata files (descriptors, index, settings, tokens) are only ever replaced by
   rename, so the linked inode keeps the cut's content; data and WAL files are append-only
   (records are never rewritten in place once FINISHED), so their first ``size`` bytes are the
   cut's content. Payload bytes that streaming writers add during or after the pause belong to
   records that are not FINISHED in the cut and disappear on recovery, like after a crash.
2. ``publish`` (writes flowing): each staged file's prefix is copied into the target (a new
   inode: a backup never shares an inode with the live folder), or hard-linked to the same file
   of the newest complete backup when its size and CRC32C match (incremental by construction);
   then the engine's startup recovery runs on the copy (WAL → descriptors and index, so the
   backup is a plain compacted data folder that opens read-only), every file's CRC32C goes into
   the manifest, and the manifest is written last. The staging links are removed at the end
   (and at the next start if the process died).

Data on S3 (``storage.options.mirror`` set): the data folder is a bounded cache in which
evicted blocks (and lazily restored descriptors) are sparse placeholders of zeros. So eviction
is held off (``mirror.pinned``) from before the stage until its links exist, every placeholder
of the selected buckets is fetched before the gate closes, and a file that is still one when it
is linked (a straggler) is fetched under the gate. Eviction replaces a file by rename, so the
links keep the real bytes once the hold ends; the fetched blocks cost disk space beyond the
cache's size until the backup is published. A fetch that fails fails the backup before anything
reaches the target.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.backup import manifest as mf
from appliance.backup.files import copy_prefix, digest_prefix, sync_tree, walk_files
from appliance.engine import fs_ops
from appliance.engine.models import EngineOptions
from appliance.engine.reserve import RESERVE_FILE
from appliance.errors import ServiceUnavailable

if TYPE_CHECKING:
    from appliance.engine import Storage

log = logging.getLogger(__name__)

STAGING_DIR = ".backup-staging"
AUTH_FILE = ".auth"  # the token store (appliance/auth/tokens.py)
PAUSE_TIMEOUT_SECONDS = 10.0


@dataclass
class Staged:
    """A cut linked into the staging area, waiting to be published."""

    id: str
    cut_us: int
    root: Path
    files: list[tuple[str, int]]
    pause_ms: float
    journal_seq: int | None = None  # first journal frame not in the cut (archiving on)

    @property
    def extra(self) -> dict[str, object]:
        """Manifest fields beyond the common ones."""
        return {} if self.journal_seq is None else {"journal_seq": self.journal_seq}


def clear_staging(data_path: Path) -> None:
    """Remove staging leftovers (a backup that died mid-way; only links to live files)."""
    fs_ops.remove_tree(data_path / STAGING_DIR)


def _sources(data_path: Path, buckets: list[str] | None) -> list[Path]:
    """Top-level files and folders a backup holds: the tokens and the (selected) buckets."""
    found = []
    auth = data_path / AUTH_FILE
    if auth.is_file():
        found.append(auth)
    for child in sorted(data_path.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        if buckets is None or child.name in buckets:
            found.append(child)
    return found


def _selected(data_path: Path, buckets: list[str] | None) -> Iterator[tuple[str, Path]]:
    """``(relative path, path)`` of every file a backup of ``buckets`` holds."""
    for source in _sources(data_path, buckets):
        if source.is_file():
            pairs = [(source.name, source)]
        else:
            pairs = [(f"{source.name}/{rel}", path) for rel, path in walk_files(source)]
        for rel, path in pairs:
            if not path.name.endswith(fs_ops.TMP_SUFFIX):  # a crash leftover
                yield rel, path


def _fetch(mirror: Any, rel: str, path: Path) -> bool:
    """Bring ``path`` back from the bucket if it is a placeholder; whether it was one."""
    try:
        return mirror.materialize([path]) > 0
    except FileNotFoundError:
        if path.exists():
            raise ServiceUnavailable(
                f"backup failed: {rel} is evicted from the local cache and its object is "
                "missing from remote storage; nothing was written to the target"
            ) from None
        return False  # removed meanwhile: not in the cut
    except ServiceUnavailable as exc:
        raise ServiceUnavailable(
            f"backup failed: {rel} is evicted from the local cache and could not be fetched "
            f"from remote storage ({exc.message}); nothing was written to the target"
        ) from None


def _link_tree(
    data_path: Path, root: Path, buckets: list[str] | None, mirror: Any = None
) -> tuple[list[tuple[str, int]], int]:
    """Hard-link every selected file into ``root`` (a placeholder is fetched first);
    ``(relative path, size)`` of each and the number of files fetched."""
    files: list[tuple[str, int]] = []
    fetched = 0
    for rel, path in _selected(data_path, buckets):
        if mirror is not None and _fetch(mirror, rel, path):
            fetched += 1  # a straggler: still (or again) a placeholder under the gate
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            fs_ops.hard_link(path, dst)
        except FileNotFoundError:
            continue  # removed by an in-flight removal that finished before the gate closed
        files.append((rel, dst.stat().st_size))
    return files, fetched


def prefetch(mirror: Any, data_path: Path, buckets: list[str] | None) -> int:
    """Fetch every placeholder of the selected buckets (writes flowing); how many."""
    return sum(_fetch(mirror, rel, path) for rel, path in _selected(data_path, buckets))


def stage(
    storage: Storage,
    data_path: Path,
    buckets: list[str] | None,
    timeout: float = PAUSE_TIMEOUT_SECONDS,
) -> Staged:
    """Pause writes, link the cut into the staging area, resume; the pause is measured."""
    for name in buckets or ():
        storage.get_bucket(name)  # 404 before anything is paused
    staging = data_path / STAGING_DIR
    staging.mkdir(exist_ok=True)
    mirror = getattr(storage.options, "mirror", None)  # data on S3: the folder is a cache
    with mirror.pinned() if mirror is not None else nullcontext():
        ahead = 0 if mirror is None else prefetch(mirror, data_path, buckets)
        started = time.perf_counter()
        with storage.pause_writes(timeout):
            cut_us = time.time_ns() // 1000
            position = storage.journal_position()
            journal_seq = None
            if position is not None:
                # Every frame in the cut is at or before the cut's instant (frame times are
                # bumped to stay strictly increasing, so they may run a few µs ahead of the clock).
                journal_seq, cut_us = position[0], max(cut_us, position[1])
            bid = mf.backup_id(cut_us)
            root = staging / bid
            root.mkdir()
            try:
                files, late = _link_tree(data_path, root, buckets, mirror)
            except BaseException:
                fs_ops.remove_tree(root)  # a failed fetch: no staged cut is left behind
                raise
        pause_ms = (time.perf_counter() - started) * 1000
    log.info("backup %s: cut taken, writes paused %.1f ms (%d files)", bid, pause_ms, len(files))
    if mirror is not None:
        log.info("backup %s: %d placeholder(s) fetched before the cut, %d under it", bid, ahead, late)
    return Staged(bid, cut_us, root, files, pause_ms, journal_seq)


def _previous(target: Path) -> tuple[Path, dict[str, mf.FileRecord]] | None:
    """The newest complete backup in ``target`` and its files by path (None if there is none)."""
    if not target.is_dir():
        return None
    for folder in sorted((p for p in target.iterdir() if mf.ID_PATTERN.match(p.name)), reverse=True):
        try:
            found = mf.read(folder)
        except Exception:  # noqa: BLE001 - a damaged manifest: not a base to share with
            continue
        if found is not None:
            return folder, {f.path: f for f in found.files}
    return None


def is_wal(rel: str) -> bool:
    """True for a WAL segment (always copied: recovery may truncate it)."""
    return "/.wal/" in rel


def finalize(data: Path) -> None:
    """Run the engine's startup recovery on a backup copy and close it: no WAL is left."""
    from appliance.engine import Storage  # late: keeps `import appliance.backup` cheap

    # Integrity checks on: the live index may lag its descriptors (a normal crash state).
    storage = Storage.open(EngineOptions(data_path=data, integrity_checks=True, min_free_space=0))
    storage.close()
    # The engine's own housekeeping files are not data: the free-space reserve (recreated by
    # any instance that opens the folder) and emptied removals.
    fs_ops.remove_file(data / RESERVE_FILE)
    fs_ops.remove_tree(data / fs_ops.REMOVING_DIR)


def manifest_of(
    staged: Staged,
    instance: str,
    generation: int,
    buckets: list[str] | None,
    records: list[mf.FileRecord],
    new_bytes: int,
    **extra: object,
) -> mf.Manifest:
    """The manifest of a staged snapshot once its files are at the target (any kind of target;
    ``extra``: what that target adds, e.g. the S3 object map)."""
    return mf.Manifest(
        id=staged.id,
        cut_us=staged.cut_us,
        instance=instance,
        generation=generation,
        buckets=None if buckets is None else tuple(sorted(buckets)),
        files=tuple(records),
        new_bytes=new_bytes,
        pause_ms=round(staged.pause_ms, 3),
        extra={**extra, **staged.extra},
    )


def publish(
    staged: Staged,
    target: Path,
    *,
    instance: str,
    generation: int,
    buckets: list[str] | None,
) -> mf.Manifest:
    """Copy (or share) the staged files into ``target/<id>/``, finalize, write the manifest."""
    previous = _previous(target)
    folder = target / staged.id
    data = folder / mf.DATA_DIR
    data.mkdir(parents=True)
    shared: dict[str, tuple[mf.FileRecord, int]] = {}
    for rel, size in staged.files:
        src = staged.root / rel
        dst = data / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        old = previous[1].get(rel) if previous is not None else None
        if old is not None and old.size == size and not is_wal(rel):
            base = previous[0] / mf.DATA_DIR / rel  # type: ignore[index]
            if digest_prefix(src, size)[1] == old.sha256:
                try:
                    fs_ops.hard_link(base, dst)
                    shared[rel] = (old, dst.stat().st_ino)
                    continue
                except OSError:
                    pass  # another file system, or the base vanished: copy
        copy_prefix(src, dst, size)
    finalize(data)
    records: list[mf.FileRecord] = []
    new_bytes = 0
    for rel, path in walk_files(data):
        st = path.stat()
        known = shared.get(rel)
        if known is not None and known[1] == st.st_ino:
            records.append(known[0])  # the very inode of the base backup: unchanged
            continue
        crc, sha = digest_prefix(path, st.st_size)
        records.append(mf.FileRecord(rel, st.st_size, crc, sha))
        new_bytes += st.st_size
    sync_tree(folder)
    result = manifest_of(staged, instance, generation, buckets, records, new_bytes)
    mf.write(folder, result)
    fs_ops.remove_tree(staged.root)
    return result
