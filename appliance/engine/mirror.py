"""The mirror: keeps the engine's local folder (a bounded cache) in step with an object store.

ARCHITECTURE §4. The engine keeps talking to local files; this module is the only engine code
that calls the ``Backend`` for data. What it does:

- **Upload.** ``sync`` walks the cache and uploads every file whose (size, mtime) differs from
  what was last uploaded, then deletes the objects of files that disappeared (removals,
  renames, WAL segments folded into descriptors). Order makes each pass self-consistent: the
  small metadata files (descriptors, WAL segments, indexes, settings, tokens) are read into
  memory *first*, then data files are uploaded, then the metadata snapshot: every record a
  snapshotted WAL frame or descriptor names was written before the snapshot, so its bytes are
  in the data object uploaded after it. Deletions go last.
- **Evict.** When the cache holds more than ``cache_size`` bytes, the least recently opened
  *clean* data files (``.blk``, uploaded and unchanged since) that no one has open are replaced
  by sparse placeholders of the same length (no disk blocks; recovery's size checks still
  hold). A dirty file is never evicted. The evicted set is saved before any file is replaced.
- **Fetch.** ``open_local`` (called by the fd cache under ``lock`` before opening a file) and
  ``ensure_local`` download an evicted file back in place.
- **Restore.** ``restore`` at startup: with no manifest (a new node, a replaced disk) every
  metadata object is downloaded and every data object becomes a placeholder, fetched on use.
- **Sync interval 0.** ``commit`` is called after every acknowledged write: concurrent writers
  share one sync pass (group commit); a failed pass fails the write with a 503.

Keys are ``r/<path relative to the cache>`` (as ReductStore); the lease's objects sit beside
``r/`` under the same prefix and are never touched here. Backend errors become
``ServiceUnavailable`` with our own wording: no botocore text reaches a client.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import Backend
from backends.errors import BackendError, ObjectNotFound
from appliance import metrics
from appliance.engine import fs_ops
from appliance.errors import ServiceUnavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "r/"
STATE_DIR = ".mirror"
MANIFEST = "manifest.json"
DATA_SUFFIX = ".blk"
# Top-level names that are never mirrored: local bookkeeping, removals in flight, the removal
# reserve, quarantined damage, the filesystem lease's files.
EXCLUDED_TOP = frozenset(
    {STATE_DIR, ".removing", ".reserve", ".quarantine", ".lock", ".generation", ".generations",
     ".in-use", "lost+found"}
)
EXCLUDED_SUFFIXES = (".tmp", ".backend-tmp", ".cas-lock", ".rewrite")
# Metadata goes up in this order within a pass: segments and descriptors before the index.
_META_ORDER = {".wal": 0, ".meta": 1, ".idx": 2}
MIN_TICK_SECONDS = 1.0
FETCH_ATTEMPTS = 3
UPLOAD_THREADS = 8
FETCH_RETRY_SECONDS = 0.2
MAX_BACKOFF_SECONDS = 10.0
UNAVAILABLE = "Remote storage is unavailable"


def _rank(rel: str) -> int:
    return _META_ORDER.get(os.path.splitext(rel)[1], 3)


# The S3 API call behind each backend method, for /metrics (a download is HEAD + GET).
S3_OPERATIONS = {
    "write": "PutObject",
    "upload": "PutObject",
    "download": "GetObject",
    "read": "GetObject",
    "list": "ListObjectsV2",
    "delete": "DeleteObject",
    "stat": "HeadObject",
    "init": "HeadBucket",
}


@dataclass
class FileState:
    """What the bucket holds of one local file: its local (size, mtime) when last uploaded."""

    size: int
    mtime_ns: int
    evicted: bool = False


class CountingBackend:
    """A backend wrapper counting calls per operation (shown in ``/api/v1/info``)."""

    def __init__(self, inner: Backend) -> None:
        self._inner = inner
        self.counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def counted(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.counts[name] = self.counts.get(name, 0) + 1
            try:
                result = attr(*args, **kwargs)
            except BackendError:
                metrics.s3_request(S3_OPERATIONS.get(name, name), ok=False)
                raise
            metrics.s3_request(S3_OPERATIONS.get(name, name))
            return result

        return counted


class Mirror:
    """Local cache folder ``root`` mirrored to ``backend`` (thread-safe)."""

    def __init__(
        self,
        backend: Backend,
        root: Path,
        cache_size: int,
        sync_interval: float,
        read_only: bool = False,
    ) -> None:
        self.backend = CountingBackend(backend)
        self.root = root
        self.cache_size = cache_size
        self.sync_interval = sync_interval
        self.read_only = read_only
        # Held by the fd cache around "fetch if evicted, then open", and by eviction: a file is
        # never replaced by its placeholder between those two steps.
        self.lock = threading.RLock()
        self._sync_lock = threading.Lock()
        # Fetches outside ``lock`` (``fetch_ahead``): one download of a file at a time.
        self._fetch_locks = [threading.Lock() for _ in range(64)]
        self._state: dict[str, FileState] = {}
        self._access: dict[str, float] = {}
        self._etags: dict[str, str] = {}  # object ETags as last seen (a replica's change test)
        self._idle_check: Any = None  # callable(path) -> bool: closed if idle (the fd cache)
        self.unsynced_bytes = 0
        self.cache_bytes = 0
        self.last_sync: float | None = None
        self.last_error: str | None = None
        self.abandoned = False
        # A lease holder's write fence (raises ServiceUnavailable once the lease is not surely
        # ours): checked before every upload and delete, so a deposed holder that resumes
        # cannot overwrite what its successor wrote. None: no lease.
        self.fence: Any = None
        self._missing_before: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Group commit (sync interval 0): passes started / finished.
        self._cond = threading.Condition()
        self._started = 0
        self._done = 0
        self._running = False
        self._failed_pass: set[int] = set()

    # --- keys and paths ---------------------------------------------------------------------

    def _rel(self, path: str | Path) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    @staticmethod
    def key(rel: str) -> str:
        """Object key of a cache-relative path."""
        return KEY_PREFIX + rel

    @staticmethod
    def _mirrored(rel: str) -> bool:
        top = rel.split("/", 1)[0]
        return top not in EXCLUDED_TOP and not rel.endswith(EXCLUDED_SUFFIXES)

    # --- startup ------------------------------------------------------------------------------

    def restore(self) -> None:
        """Load the manifest, or rebuild the cache from the bucket (BackendError if unreachable)."""
        self.backend.init()
        (self.root / STATE_DIR).mkdir(parents=True, exist_ok=True)
        manifest = self.root / STATE_DIR / MANIFEST
        if manifest.exists() and not self.read_only:
            raw = json.loads(manifest.read_text())
            self._state = {rel: FileState(*values) for rel, values in raw.items()}
            log.info("remote cache: %d file(s) known from the manifest", len(self._state))
            return
        self.refresh()

    def wipe(self) -> None:
        """Forget and delete the whole local cache (a lease holder starts from the bucket)."""
        with self.lock:
            self._state.clear()
            self._access.clear()
            self._etags.clear()
            if self.root.exists():
                for child in self.root.iterdir():
                    if child.name == ".in-use":
                        continue  # another process's lock on this folder: never pulled away
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child, ignore_errors=True)
                    else:
                        child.unlink(missing_ok=True)

    def refresh(self) -> int:
        """Fetch metadata objects changed in the bucket; data objects become placeholders.

        A new node's startup, and a replica's poll. Local files the bucket lacks are left
        alone (a writer uploads them as dirty). Returns the number of files changed.
        """
        changed = 0
        seen: set[str] = set()
        fetch: list[tuple[str, str]] = []
        for info in self.backend.list(KEY_PREFIX):
            rel = info.key[len(KEY_PREFIX):]
            if not self._mirrored(rel):
                continue
            seen.add(rel)
            path = self.root / rel
            with self.lock:
                known = self._state.get(rel)
                if self.read_only:
                    if known is not None and self._etags.get(rel) == info.etag:
                        continue  # unchanged since the last poll
                    self._access.pop(rel, None)
                elif known is not None or path.exists():
                    continue  # a writer's own files win: they are uploaded when dirty
                path.parent.mkdir(parents=True, exist_ok=True)
                if rel.endswith(DATA_SUFFIX):
                    self._idle_close(path)  # a replica's reader must not keep an old version
                    self._placeholder(path, info.size)
                    st = path.stat()
                    self._state[rel] = FileState(info.size, st.st_mtime_ns, evicted=True)
                    self._etags[rel] = info.etag
                else:
                    fetch.append((rel, info.etag))
                changed += 1
        self._parallel(fetch, self._fetch_metadata)
        if self.read_only:
            for rel in [r for r in self._state if r not in seen]:
                with self.lock:
                    self._state.pop(rel, None)
                    (self.root / rel).unlink(missing_ok=True)
                    changed += 1
        self._save_manifest()
        return changed

    def _fetch_metadata(self, item: tuple[str, str]) -> None:
        rel, etag = item
        path = self.root / rel
        self.backend.download(self.key(rel), path)
        st = path.stat()
        with self.lock:
            self._state[rel] = FileState(st.st_size, st.st_mtime_ns)
            self._etags[rel] = etag

    def _idle_close(self, path: Path) -> None:
        if self._idle_check is not None:
            self._idle_check(str(path))

    def start(self) -> None:
        """Start the background sync/evict thread."""
        self._thread = threading.Thread(target=self._loop, name="mirror", daemon=True)
        self._thread.start()

    def close(self, flush: bool = True) -> None:
        """Stop the thread; with ``flush`` (and not abandoned) upload what is dirty first."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=MAX_BACKOFF_SECONDS)
        if flush and not self.read_only and not self.abandoned:
            try:
                self.sync()
                self.sync()  # the deletions a pass defers to the next one
            except ServiceUnavailable as exc:
                log.error("remote storage: final sync failed, cache kept: %s", exc.message)
        self._save_manifest()

    # --- the engine's hooks -------------------------------------------------------------------

    def attach(self, idle_check: Any) -> None:
        """Give the mirror the fd cache's "close it if nobody uses it" (eviction asks first)."""
        self._idle_check = idle_check

    def fetch_ahead(self, path: str | Path) -> None:
        """Fetch an evicted data file *before* the caller takes ``lock`` (the fd cache does).

        A fetch may take S3's timeouts x retries; under ``lock`` it would hold up the opening
        of every other file. An evicted file is neither evicted nor uploaded, so it may land
        without ``lock``; one fetch per file at a time. ``open_local`` then finds it local.
        """
        rel = self._rel(path)
        if not rel.endswith(DATA_SUFFIX):
            return
        with self.lock:
            state = self._state.get(rel)
        if state is None or not state.evicted:
            return
        with self._fetch_locks[hash(rel) % len(self._fetch_locks)]:
            self.open_local(path)  # checks again: another reader may have fetched it

    def open_local(self, path: str | Path) -> None:
        """Make ``path`` local before it is opened (caller holds ``lock``, or the file's fetch
        lock in ``fetch_ahead``); fetch if evicted."""
        rel = self._rel(path)
        self._access[rel] = time.monotonic()
        state = self._state.get(rel)
        if state is None or not state.evicted:
            return
        for attempt in range(FETCH_ATTEMPTS):
            try:
                info = self.backend.download(self.key(rel), Path(path))
                break
            except ObjectNotFound:
                raise FileNotFoundError(str(path)) from None  # removed in the bucket meanwhile
            except BackendError as exc:
                # botocore retries a request, not a body cut off mid-stream: we do (the
                # backend never publishes a partial file, so no wrong byte is ever served).
                self._error(f"fetching {rel} failed: {type(exc).__name__}")
                if attempt + 1 == FETCH_ATTEMPTS:
                    raise ServiceUnavailable(
                        f"{UNAVAILABLE}: cannot fetch a block, try again"
                    ) from None
                time.sleep(FETCH_RETRY_SECONDS * (attempt + 1))
        st = os.stat(path)
        self._state[rel] = FileState(st.st_size, st.st_mtime_ns)
        self._etags[rel] = info.etag
        self.cache_bytes += st.st_size
        if self.cache_bytes > self.cache_size:
            self.evict(keep=rel)  # the cache stays bounded between background passes

    def ensure_local(self, path: str | Path) -> None:
        """``open_local`` for code that opens files outside the fd cache."""
        self.fetch_ahead(path)
        with self.lock:
            self.open_local(path)

    def admit(self) -> None:
        """Refuse a write (503) while the unsynced bytes fill the whole cache."""
        if self.unsynced_bytes > self.cache_size:
            raise ServiceUnavailable(
                "The local cache is full of data not yet uploaded to remote storage; "
                "try again later"
            )

    def commit(self) -> None:
        """Return once a sync pass that started after the call has finished (group commit)."""
        with self._cond:
            wanted = self._started + 1
            while self._done < wanted:
                if not self._running:
                    self._running = True
                    self._started += 1
                    number = self._started
                    self._cond.release()
                    failed = False
                    try:
                        self._sync_pass()
                    except ServiceUnavailable:
                        failed = True
                    finally:
                        self._cond.acquire()
                        self._running = False
                        self._done = number
                        if failed:
                            self._failed_pass.add(number)
                        self._cond.notify_all()
                else:
                    self._cond.wait()
            if any(n >= wanted for n in self._failed_pass):
                self._failed_pass = {n for n in self._failed_pass if n > self._done - 64}
                raise ServiceUnavailable(
                    f"{UNAVAILABLE}: the record is stored locally but not yet uploaded"
                )

    # --- sync ---------------------------------------------------------------------------------

    def sync(self) -> None:
        """One upload pass (serialised with ``commit``'s passes)."""
        with self._cond:
            while self._running:
                self._cond.wait()
            self._running = True
            self._started += 1
            number = self._started
        failed = True
        try:
            self._sync_pass()
            failed = False
        finally:
            with self._cond:
                self._running = False
                self._done = number
                if failed:  # a writer waiting in ``commit`` for this pass must not get a 200
                    self._failed_pass.add(number)
                self._cond.notify_all()

    def _scan(self) -> Iterator[tuple[str, os.stat_result]]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            rel_dir = self._rel(dirpath)
            if rel_dir == ".":
                dirnames[:] = [d for d in dirnames if d not in EXCLUDED_TOP]
                rel_dir = ""
            for name in filenames:
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if not self._mirrored(rel):
                    continue
                try:
                    yield rel, os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue

    def _sync_pass(self) -> None:
        if self.read_only or self.abandoned:
            return
        with self._sync_lock:
            try:
                self._upload_changes()
            except BackendError as exc:
                self._error(f"sync failed: {type(exc).__name__}")
                raise ServiceUnavailable(f"{UNAVAILABLE}: sync failed") from None
            self.last_sync = time.time()
            self.last_error = None

    def _upload_changes(self) -> None:
        current = dict(self._scan())
        with self.lock:
            state = dict(self._state)
        dirty: list[tuple[str, os.stat_result]] = []
        total = 0
        for rel, st in current.items():
            known = state.get(rel)
            if known is not None and known.evicted:
                continue
            total += st.st_size
            if known is None or (known.size, known.mtime_ns) != (st.st_size, st.st_mtime_ns):
                dirty.append((rel, st))
        self.cache_bytes = total
        self.unsynced_bytes = sum(st.st_size for _, st in dirty)
        metrics.set_s3_unsynced_bytes(self.unsynced_bytes)
        # A file is deleted from the bucket one pass after it was first seen gone: the walk is
        # not atomic, so a WAL segment deleted by a compaction may be seen gone while the
        # descriptor that replaced it was stat'ed before its rewrite. By the next pass that
        # descriptor is uploaded first (replaying a leftover segment is idempotent).
        missing = {rel for rel in state if rel not in current}
        gone = sorted(missing & self._missing_before)
        self._missing_before = missing
        # 1. metadata snapshot first (see the module docstring for why)
        meta: list[tuple[str, os.stat_result, bytes]] = []
        for rel, st in dirty:
            if rel.endswith(DATA_SUFFIX):
                continue
            try:
                meta.append((rel, st, (self.root / rel).read_bytes()))
            except FileNotFoundError:
                continue
        # 2. data files, each a copy of its first `size` bytes (it may grow meanwhile)
        self._parallel(
            [(rel, st) for rel, st in dirty if rel.endswith(DATA_SUFFIX)],
            lambda item: self._upload_data(*item),
        )
        # 3. the metadata snapshot, a group at a time: segments, descriptors, indexes, the rest
        for rank in sorted({_rank(rel) for rel, _, _ in meta}):
            self._parallel(
                [item for item in meta if _rank(item[0]) == rank], self._upload_snapshot
            )
        # 4. removals last: an object goes only after what replaces it is up
        self._parallel(gone, self._delete)
        self.unsynced_bytes = 0
        metrics.set_s3_unsynced_bytes(0)
        self._save_manifest()

    def _parallel(self, items: list[Any], action: Any) -> None:
        """Run ``action`` over ``items`` on a few threads (S3 latency, not CPU, is the cost);
        the first error is raised once every started call has ended."""
        if len(items) <= 1:
            for item in items:
                action(item)
            return
        with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="mirror") as pool:
            for future in [pool.submit(action, item) for item in items]:
                future.result()

    def _fenced(self) -> None:
        if self.abandoned:
            raise ServiceUnavailable(f"{UNAVAILABLE}: this instance no longer holds the lease")
        if self.fence is not None:
            self.fence()

    def _upload_snapshot(self, item: tuple[str, os.stat_result, bytes]) -> None:
        rel, st, data = item
        self._fenced()
        info = self.backend.write(self.key(rel), data)
        self._mark_clean(rel, st, info.etag)

    def _delete(self, rel: str) -> None:
        self._fenced()
        self.backend.delete(self.key(rel))
        with self.lock:
            if rel in self._state and not (self.root / rel).exists():
                del self._state[rel]
                self._access.pop(rel, None)
                self._etags.pop(rel, None)

    def _upload_data(self, rel: str, st: os.stat_result) -> None:
        tmp = self.root / STATE_DIR / f"upload-{threading.get_ident()}.tmp"
        try:
            with open(self.root / rel, "rb") as src, open(tmp, "wb") as dst:
                left = st.st_size
                while left > 0:
                    chunk = src.read(min(left, 8 * 1024 * 1024))
                    if not chunk:
                        break
                    dst.write(chunk)
                    left -= len(chunk)
        except FileNotFoundError:
            return  # removed meanwhile: the next pass deletes the object
        self._fenced()
        info = self.backend.upload(self.key(rel), tmp)
        tmp.unlink(missing_ok=True)
        self._mark_clean(rel, st, info.etag)

    def _mark_clean(self, rel: str, st: os.stat_result, etag: str) -> None:
        with self.lock:
            known = self._state.get(rel)
            if known is not None and known.evicted:
                return
            self._state[rel] = FileState(st.st_size, st.st_mtime_ns)
            self._etags[rel] = etag

    # --- eviction -----------------------------------------------------------------------------

    def evict(self, keep: str | None = None) -> int:
        """Replace least recently used clean data files by placeholders until under the limit
        (never ``keep``: the file just fetched, about to be opened)."""
        if self.cache_bytes <= self.cache_size:
            return 0
        evicted = 0
        with self.lock:
            candidates = []
            for rel, state in self._state.items():
                if state.evicted or rel == keep or not rel.endswith(DATA_SUFFIX):
                    continue
                path = self.root / rel
                try:
                    st = path.stat()
                except FileNotFoundError:
                    continue
                if (st.st_size, st.st_mtime_ns) != (state.size, state.mtime_ns):
                    continue  # dirty: never evicted before it is uploaded
                candidates.append((self._access.get(rel, 0.0), rel, st.st_size))
            candidates.sort()
            victims = []
            excess = self.cache_bytes - self.cache_size
            for _, rel, size in candidates:
                if excess <= 0:
                    break
                if self._idle_check is not None and not self._idle_check(str(self.root / rel)):
                    continue  # open for a read or a write right now
                victims.append((rel, size))
                excess -= size
            for rel, _ in victims:
                self._state[rel].evicted = True
            self._save_manifest()  # saved (atomic rename) before any file is replaced
            for rel, size in victims:
                self._placeholder(self.root / rel, size)
                self.cache_bytes -= size
                evicted += 1
        return evicted

    @staticmethod
    def _placeholder(path: Path, size: int) -> None:
        tmp = path.with_name(path.name + ".mirror.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, size)  # sparse: the length recovery checks, no disk blocks
        finally:
            os.close(fd)
        fs_ops.replace(tmp, path, sync=False)  # a placeholder needs no durability

    # --- background ---------------------------------------------------------------------------

    def _loop(self) -> None:
        interval = self.sync_interval if self.sync_interval > 0 else MIN_TICK_SECONDS
        tick = min(MIN_TICK_SECONDS, interval)
        next_sync = time.monotonic() + interval
        backoff = 0.0
        while not self._stop.wait(tick):
            now = time.monotonic()
            if self.read_only:
                continue
            pressed = self.cache_bytes > self.cache_size or self.unsynced_bytes > self.cache_size
            if now < next_sync and not (pressed and backoff == 0.0):
                continue
            try:
                self.sync()
                self.evict()
                backoff = 0.0
                next_sync = now + interval
            except ServiceUnavailable:
                backoff = min(MAX_BACKOFF_SECONDS, max(1.0, backoff * 2))
                next_sync = now + backoff
            except OSError as exc:
                self._error(f"local cache error: {exc.strerror or type(exc).__name__}")
                backoff = min(MAX_BACKOFF_SECONDS, max(1.0, backoff * 2))
                next_sync = now + backoff

    def _error(self, message: str) -> None:
        if message != self.last_error:
            log.warning("remote storage: %s", message)
        self.last_error = message

    def _save_manifest(self) -> None:
        if self.read_only:
            return
        folder = self.root / STATE_DIR
        folder.mkdir(parents=True, exist_ok=True)
        with self.lock:
            raw = {rel: [s.size, s.mtime_ns, s.evicted] for rel, s in self._state.items()}
        tmp = folder / (MANIFEST + ".tmp")
        tmp.write_text(json.dumps(raw))
        fs_ops.replace(tmp, folder / MANIFEST, sync=False)  # stale manifest = extra uploads

    def info(self) -> dict[str, Any]:
        """Visible state: unsynced bytes, last sync, last error, request counts, cache use."""
        return {
            "unsynced_bytes": self.unsynced_bytes,
            "cache_bytes": self.cache_bytes,
            "cache_size": self.cache_size,
            "evicted_files": sum(1 for s in self._state.values() if s.evicted),
            "last_sync": None
            if self.last_sync is None
            else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.last_sync)),
            "last_error": self.last_error,
            "requests": dict(self.backend.counts),
        }
