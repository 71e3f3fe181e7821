"""The mirror: keeps the engine's local folder (a bounded cache) in step with an object store.

ARCHITECTURE §4. The engine keeps talking to local files; this module is the only engine code
that calls the ``Backend`` for data. What it does:

- **Upload.** ``sync`` walks the cache and uploads every file whose (size, mtime) differs from
  what was last uploaded, commits the manifest (below), then deletes the objects of files that
  disappeared (removals, WAL segments folded into descriptors). Order makes each pass
  self-consistent: the
  small metadata files (descriptors, WAL segments, indexes, settings, tokens) are read into
  memory *first*, then data files are uploaded, then the metadata snapshot: every record a
  snapshotted WAL frame or descriptor names was written before the snapshot, so its bytes are
  in the data object uploaded after it. The manifest, then deletions, go last.
- **Evict.** When the cache holds more than ``cache_size`` bytes, the least recently opened
  *clean* data files (``.blk``, uploaded and unchanged since) that no one has open are replaced
  by sparse placeholders of the same length (no disk blocks; recovery's size checks still
  hold). A dirty file is never evicted. The evicted set is saved before any file is replaced.
- **Fetch.** ``open_local`` (called by the fd cache under ``lock`` before opening a file) and
  ``ensure_local`` download an evicted file back in place.
- **Commit point.** Each pass ends with one PUT of the bucket's *manifest* (``.manifest``
  beside ``r/``: every live file with its object key, size and ETag), conditional on the ETag
  the writer last saw (a writer that was replaced gets 412 and stops). Only then are the
  objects the manifest no longer names deleted. Restore and replicas read only the manifest, so
  a crash anywhere in a pass leaves the previous or the next committed state, never a mix, and
  objects no manifest names (a crashed pass's uploads) are ignored, then deleted by the next
  writer's first pass (one listing). A bucket written before the manifest existed is listed
  once and gets one at the first pass.
- **Rename and removal.** The engine tells the mirror (``moving``/``retiring``) when a bucket
  or entry folder is renamed or removed. A renamed file keeps its object (the manifest maps the
  new name to the old key: nothing is copied, an evicted file stays evicted); a removed one
  drops out of the next manifest at once. A new file whose natural key is still named by the
  committed manifest gets a fresh key, so no upload ever changes an object the committed
  manifest means for another file.
- **Restore.** ``restore`` at startup: with no local state (a new node, a replaced disk) the
  manifest is read, the metadata objects the engine needs to open are fetched (one GET each)
  and every other object becomes a sparse placeholder of its size, fetched on use. With
  ``lazy_descriptors`` (``RS_ENGINE_ENABLE_INTEGRITY_CHECKS=false`` on a node without a lease)
  block descriptors are placeholders too: the engine opens entries from their indexes and
  fetches a descriptor the first time it reads that block.
- **Sync interval 0.** ``commit`` is called after every acknowledged write: concurrent writers
  share one sync pass (group commit); a failed pass fails the write with a 503.

Keys are ``r/<path relative to the cache>`` (as ReductStore; a renamed file keeps its old key,
a reused name may get ``~<hex>`` before its suffix); the manifest is ``.manifest`` and the lease's
objects sit beside ``r/`` under the same prefix; the lease's are never touched here. Backend
errors become ``ServiceUnavailable`` with our own wording: no botocore text reaches a client.
"""


from __future__ import annotations

import gzip
import json
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.base import Backend, ObjectInfo
from backends.errors import BackendError, ObjectNotFound, PreconditionFailed
from appliance import metrics
from appliance.engine import fs_ops
from appliance.errors import ServiceUnavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "r/"
REMOTE_MANIFEST = ".manifest"  # the commit point, beside r/ (never listed with the data)
MANIFEST_FORMAT = 1
STATE_DIR = ".mirror"
MANIFEST = "manifest.json"  # the local state (what was uploaded), not the bucket's manifest
MOVE_INTENT = "move.json"  # a folder rename in flight (see ``moving``)
RESTORING = "restoring"  # a restore from the bucket in flight: a crash in it wipes the cache
DATA_SUFFIX = ".blk"
DESCRIPTOR_SUFFIX = ".meta"
# Top-level names that are never mirrored: local bookkeeping, removals in flight, the removal
# reserve, quarantined damage, the filesystem lease's files, a backup's staged links (hard
# links of the data: uploading them would copy the whole dataset to the bucket once more).
EXCLUDED_TOP = frozenset(
    {STATE_DIR, ".removing", ".reserve", ".quarantine", ".lock", ".generation", ".generations",
     ".in-use", ".backup-staging", "lost+found"}
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
REPLACED = "the bucket's manifest was changed by another writer"


def _rank(rel: str) -> int:
    return _META_ORDER.get(os.path.splitext(rel)[1], 3)


# The S3 API call behind each backend method, for /metrics (a download is HEAD + GET).
S3_OPERATIONS = {
    "write": "PutObject",
    "upload": "PutObject",
    "create_if_absent": "PutObject",
    "replace_if_unchanged": "PutObject",
    "download": "GetObject",
    "read": "GetObject",
    "list": "ListObjectsV2",
    "delete": "DeleteObject",
    "stat": "HeadObject",
    "init": "HeadBucket",
}


@dataclass
class FileState:
    """What the bucket holds of one local file: its local (size, mtime) when last uploaded (or
    of its placeholder when ``evicted``) and its object key when not ``r/<path>``."""

    size: int
    mtime_ns: int
    evicted: bool = False
    key: str | None = None


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


def encode_manifest(files: dict[str, list[Any]], seq: int, writer: str) -> bytes:
    """The bucket manifest's bytes (gzip'd JSON; ``seq`` and ``writer`` make every ETag new)."""
    body = {"format": MANIFEST_FORMAT, "seq": seq, "writer": writer, "files": files}
    return gzip.compress(json.dumps(body, separators=(",", ":")).encode(), mtime=0)


def decode_manifest(data: bytes) -> dict[str, Any]:
    """Parse a bucket manifest; BackendError if it is not one this version understands."""
    try:
        body = json.loads(gzip.decompress(data))
        if body.get("format") != MANIFEST_FORMAT or not isinstance(body.get("files"), dict):
            raise ValueError(f"format {body.get('format')!r}")
    except (OSError, ValueError, EOFError, AttributeError) as exc:
        raise BackendError(f"unreadable manifest {REMOTE_MANIFEST}: {exc}") from None
    return body



def _rewritten_here(rel: str, state: FileState, st: os.stat_result) -> bool:
    """Whether a lazily restored descriptor placeholder was rewritten locally since (then it is
    real and newer than its object); data files are never rewritten while evicted."""
    if rel.endswith(DATA_SUFFIX):
        return False
    return (st.st_size, st.st_mtime_ns) != (state.size, state.mtime_ns)

class Mirror:
    """Local cache folder ``root`` mirrored to ``backend`` (thread-safe)."""

    def __init__(
        self,
        backend: Backend,
        root: Path,
        cache_size: int,
        sync_interval: float,
        read_only: bool = False,
        lazy_descriptors: bool = False,
    ) -> None:
        self.backend = CountingBackend(backend)
        self.root = root
        self.cache_size = cache_size
        self.sync_interval = sync_interval
        self.read_only = read_only
        # Restore makes block descriptors placeholders (integrity checks off, no lease): the
        # engine then opens entries from their indexes alone.
        self.lazy_descriptors = lazy_descriptors
        # Held by the fd cache around "fetch if evicted, then open", and by eviction: a file is
        # never replaced by its placeholder between those two steps.
        self.lock = threading.RLock()
        # Held by a whole sync pass and by folder renames/removals: a pass never mixes them.
        self._sync_lock = threading.RLock()
        # Fetches outside ``lock`` (``fetch_ahead``): one download of a file at a time.
        self._fetch_locks = [threading.Lock() for _ in range(64)]
        self._state: dict[str, FileState] = {}
        self._access: dict[str, float] = {}
        self._etags: dict[str, str] = {}  # object ETags as last seen
        self._idle_check: Any = None  # callable(path) -> bool: closed if idle (the fd cache)
        # The bucket's committed manifest as last read or written: {path: key}, its ETag, seq.
        self._committed: dict[str, str] = {}
        self._committed_files: dict[str, list[Any]] | None = None
        self._manifest_etag: str | None = None
        self._manifest_seq = 0
        self._writer_id = uuid.uuid4().hex
        self._garbage: set[str] = set()  # keys no committed manifest names, to delete
        self._gc_pending = False  # list the bucket once for a crashed pass's leftovers
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
        self._pins = 0  # ``pinned`` sections in progress: no eviction while > 0

    # --- keys and paths ---------------------------------------------------------------------

    def _rel(self, path: str | Path) -> str:
        return os.path.relpath(path, self.root).replace(os.sep, "/")

    @staticmethod
    def key(rel: str) -> str:
        """Natural object key of a cache-relative path."""
        return KEY_PREFIX + rel

    def _key_of(self, rel: str) -> str:
        """The object key of a known file (caller holds ``lock``)."""
        state = self._state.get(rel)
        return state.key if state is not None and state.key else self.key(rel)

    @staticmethod
    def _mirrored(rel: str) -> bool:
        top = rel.split("/", 1)[0]
        return top not in EXCLUDED_TOP and not rel.endswith(EXCLUDED_SUFFIXES)

    def _lazy(self, rel: str) -> bool:
        """Whether restore makes ``rel`` a placeholder instead of fetching it."""
        return rel.endswith(DATA_SUFFIX) or (
            self.lazy_descriptors and not self.read_only and rel.endswith(DESCRIPTOR_SUFFIX)
        )

    # --- startup ------------------------------------------------------------------------------

    def restore(self) -> None:
        """Load the local state, or rebuild the cache from the bucket's manifest (BackendError
        if unreachable); a bucket without a manifest is listed once."""
        self.backend.init()
        state_dir = self.root / STATE_DIR
        if (state_dir / RESTORING).exists():
            log.warning("remote cache: an interrupted restore is started over")
            self.wipe()
        state_dir.mkdir(parents=True, exist_ok=True)
        remote = self._read_remote_manifest()
        local = state_dir / MANIFEST
        if local.exists() and not self.read_only:
            self._load_state(local)
            self._finish_move()
            if remote is None:
                self._adopt_listing()  # written before the manifest existed
            else:
                self._adopt_committed(remote)
            self._gc_pending = True
            self._save_manifest()
            log.info("remote cache: %d file(s) known from the local state", len(self._state))
            return
        (state_dir / RESTORING).touch()
        if remote is None:
            self._refresh_listing()
        else:
            self._apply(remote["files"])
            self._adopt_committed(remote)
        self._gc_pending = not self.read_only
        self._save_manifest()
        (state_dir / RESTORING).unlink(missing_ok=True)

    def _load_state(self, local: Path) -> None:
        raw = json.loads(local.read_text())
        self._state = {}
        for rel, values in raw.items():
            size, mtime_ns, evicted = values[:3]
            key = values[3] if len(values) > 3 else None
            self._state[rel] = FileState(size, mtime_ns, evicted, key)
            if len(values) > 4 and values[4]:
                self._etags[rel] = values[4]

    def _adopt_committed(self, remote: dict[str, Any]) -> None:
        """Take the bucket's manifest as the committed state (etags of files we lack them for)."""
        files = remote["files"]
        self._committed_files = files
        self._committed = {rel: value[0] or self.key(rel) for rel, value in files.items()}
        self._manifest_etag = remote["etag"]
        self._manifest_seq = int(remote.get("seq", 0))
        with self.lock:
            for rel, state in list(self._state.items()):
                value = files.get(rel)
                if rel in self._etags or value is None:
                    continue
                if (value[0] or self.key(rel)) == (state.key or self.key(rel)):
                    self._etags[rel] = value[2]
            self._forget_unknown()

    def _adopt_listing(self) -> None:
        """Upgrade: fill the etags of known files from one listing (no manifest yet)."""
        with self.lock:
            by_key = {self._key_of(rel): rel for rel in self._state}
        for info in self.backend.list(KEY_PREFIX):
            rel = by_key.get(info.key)
            if rel is not None and rel not in self._etags:
                self._etags[rel] = info.etag
        with self.lock:
            self._forget_unknown()
        self._committed = {}
        self._committed_files = None
        self._manifest_etag = None

    def _forget_unknown(self) -> None:
        """Drop files the bucket does not hold (caller holds ``lock``): uploaded again as new."""
        for rel in [r for r in self._state if r not in self._etags]:
            if self._state.pop(rel).evicted:
                # A placeholder of an object that is not there: never upload its zeros.
                log.error("remote cache: %s is neither local nor in the bucket", rel)
                (self.root / rel).unlink(missing_ok=True)

    def _read_remote_manifest(self) -> dict[str, Any] | None:
        """The bucket's manifest with its ``etag`` (HEAD + GET pinned to it), None if absent."""
        path = self.root / STATE_DIR / "remote-manifest"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            info = self.backend.download(REMOTE_MANIFEST, path)
        except ObjectNotFound:
            return None
        body = decode_manifest(path.read_bytes())
        body["etag"] = info.etag
        return body

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
        """A replica's poll: one HEAD of the manifest; when it changed, apply the new one.

        Metadata objects that changed are fetched, changed data objects become placeholders,
        files the manifest no longer names are deleted. Without a manifest (a bucket written
        before it existed) the bucket is listed. Returns the number of files changed.
        """
        try:
            head = self.backend.stat(REMOTE_MANIFEST)
        except ObjectNotFound:
            return self._refresh_listing()
        if head.etag == self._manifest_etag:
            return 0
        remote = self._read_remote_manifest()
        if remote is None:
            return self._refresh_listing()
        changed = self._apply(remote["files"])
        self._adopt_committed(remote)
        return changed

    def _apply(self, files: dict[str, list[Any]]) -> int:
        """Make the cache hold what ``files`` (a manifest's) names; the number changed."""
        return self._bring([(rel, v[0] or self.key(rel), v[1], v[2]) for rel, v in files.items()])

    def _refresh_listing(self) -> int:
        """The bucket as one listing of ``r/`` shows it (no manifest)."""
        objects = []
        for info in self.backend.list(KEY_PREFIX):
            objects.append((info.key[len(KEY_PREFIX):], info.key, info.size, info.etag))
        return self._bring(objects)

    def _bring(self, objects: list[tuple[str, str, int, str]]) -> int:
        changed = 0
        seen: set[str] = set()
        fetch: list[tuple[str, str, str]] = []
        for rel, key, size, etag in objects:
            if not self._mirrored(rel):
                continue
            seen.add(rel)
            path = self.root / rel
            own_key = None if key == self.key(rel) else key
            with self.lock:
                known = self._state.get(rel)
                if self.read_only:
                    if (
                        known is not None
                        and self._etags.get(rel) == etag
                        and known.key == own_key
                    ):
                        continue  # unchanged since the last poll
                    self._access.pop(rel, None)
                elif known is not None or path.exists():
                    continue  # a writer's own files win: they are uploaded when dirty
                path.parent.mkdir(parents=True, exist_ok=True)
                if self._lazy(rel):
                    self._idle_close(path)  # a replica's reader must not keep an old version
                    self._placeholder(path, size)
                    st = path.stat()
                    self._state[rel] = FileState(size, st.st_mtime_ns, True, own_key)
                    self._etags[rel] = etag
                else:
                    fetch.append((rel, key, etag))
                changed += 1
        self._parallel(fetch, self._fetch_metadata)
        if self.read_only:
            for rel in [r for r in self._state if r not in seen]:
                with self.lock:
                    self._state.pop(rel, None)
                    self._etags.pop(rel, None)
                    (self.root / rel).unlink(missing_ok=True)
                    changed += 1
        self._save_manifest()
        return changed

    def _fetch_metadata(self, item: tuple[str, str, str]) -> None:
        """One GET of a metadata object (its size and ETag are known from the manifest)."""
        rel, key, etag = item
        path = self.root / rel
        data = self.backend.read(key)
        self._write_local(path, data)
        st = path.stat()
        with self.lock:
            self._state[rel] = FileState(
                st.st_size, st.st_mtime_ns, key=None if key == self.key(rel) else key
            )
            self._etags[rel] = etag

    @staticmethod
    def _write_local(path: Path, data: bytes) -> None:
        tmp = path.with_name(path.name + ".mirror.tmp")
        tmp.write_bytes(data)
        fs_ops.replace(tmp, path, sync=False)  # the bucket has it: no local durability needed

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
        try:
            st = os.stat(path)
        except FileNotFoundError:
            st = None
        if st is not None and _rewritten_here(rel, state, st):
            return  # a descriptor rewritten here since it became a placeholder: newer
        key = self._key_of(rel)
        for attempt in range(FETCH_ATTEMPTS):
            try:
                if rel.endswith(DATA_SUFFIX):
                    etag = self.backend.download(key, Path(path)).etag
                else:  # a descriptor restored lazily: small, one GET
                    self._write_local(Path(path), self.backend.read(key))
                    etag = self._etags.get(rel, "")
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
        self._state[rel] = FileState(st.st_size, st.st_mtime_ns, key=state.key)
        self._etags[rel] = etag
        self.cache_bytes += st.st_size
        if self.cache_bytes > self.cache_size:
            self.evict(keep=rel)  # the cache stays bounded between background passes

    def ensure_local(self, path: str | Path) -> None:
        """``open_local`` for code that opens files outside the fd cache."""
        self.fetch_ahead(path)
        with self.lock:
            self.open_local(path)

    def is_placeholder(self, path: str | Path) -> bool:
        """Whether ``path`` (absolute, or relative to the cache) holds a placeholder, not its bytes."""
        full = self.root / path
        rel = self._rel(full)
        with self.lock:
            state = self._state.get(rel)
            if state is None or not state.evicted:
                return False
            if rel.endswith(DATA_SUFFIX):
                return True
            try:
                st = os.stat(full)
            except FileNotFoundError:
                return False
            return not _rewritten_here(rel, state, st)

    def materialize(self, paths: list[Path]) -> int:
        """Fetch each of ``paths`` that is a placeholder (ServiceUnavailable if S3 fails,
        FileNotFoundError if its object is gone); how many were fetched."""
        fetched = 0
        for path in paths:
            if self.is_placeholder(path):
                self.ensure_local(self.root / path)
                fetched += 1
        return fetched

    @contextmanager
    def pinned(self) -> Iterator[None]:
        """No eviction inside: a backup fetches every block, then hard-links them (the cache
        may exceed ``cache_size`` meanwhile). Eviction replaces a file by rename, so a link
        taken before keeps the real bytes afterwards."""
        with self.lock:
            self._pins += 1
        try:
            yield
        finally:
            with self.lock:
                self._pins -= 1

    @contextmanager
    def moving(self, src: Path, dst: Path) -> Iterator[None]:
        """Around the engine's rename of folder ``src`` to ``dst``: its files keep their objects.

        The intent is saved first, so a crash between the rename and the state update is
        finished by ``restore``; no sync pass runs meanwhile. The next pass's manifest commits
        the new names (one PUT: a crash before it leaves the old ones in the bucket).
        """
        old, new = self._rel(src), self._rel(dst)
        with self._sync_lock:
            intent = self.root / STATE_DIR / MOVE_INTENT
            intent.parent.mkdir(parents=True, exist_ok=True)
            tmp = intent.with_name(MOVE_INTENT + ".tmp")
            tmp.write_text(json.dumps([old, new]))
            fs_ops.replace(tmp, intent)
            try:
                yield
            except BaseException:
                intent.unlink(missing_ok=True)
                raise
            self._move_state(old, new)
            self._save_manifest()
            intent.unlink(missing_ok=True)

    def _finish_move(self) -> None:
        """Apply a folder rename whose state update a crash cut off (startup)."""
        intent = self.root / STATE_DIR / MOVE_INTENT
        try:
            old, new = json.loads(intent.read_text())
        except FileNotFoundError:
            return
        if (self.root / new).exists() and not (self.root / old).exists():
            self._move_state(old, new)
            self._save_manifest()
        intent.unlink(missing_ok=True)

    def _move_state(self, old: str, new: str) -> None:
        with self.lock:
            for rel in [r for r in self._state if r == old or r.startswith(old + "/")]:
                moved = new + rel[len(old):]
                state = self._state.pop(rel)
                key = state.key or self.key(rel)
                state.key = None if key == self.key(moved) else key
                self._state[moved] = state
                for table in (self._access, self._etags):
                    if rel in table:
                        table[moved] = table.pop(rel)
            self._missing_before = {
                r for r in self._missing_before if not (r == old or r.startswith(old + "/"))
            }

    @contextmanager
    def retiring(self, path: Path) -> Iterator[None]:
        """Around the engine taking folder ``path`` out (bucket or entry removal): no pass
        walks the folder half gone; the next manifest drops all of its files at once, then
        their objects are deleted."""
        gone = self._rel(path)
        with self._sync_lock:
            yield
            with self.lock:
                for rel in [r for r in self._state if r == gone or r.startswith(gone + "/")]:
                    del self._state[rel]
                    self._access.pop(rel, None)
                    self._etags.pop(rel, None)
                self._save_manifest()

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
            unchanged = known is not None and (known.size, known.mtime_ns) == (
                st.st_size,
                st.st_mtime_ns,
            )
            if known is not None and known.evicted and (unchanged or rel.endswith(DATA_SUFFIX)):
                continue  # a placeholder (a data file is always fetched before it changes)
            total += st.st_size
            if not unchanged:
                dirty.append((rel, st))
        self.cache_bytes = total
        self.unsynced_bytes = sum(st.st_size for _, st in dirty)
        metrics.set_s3_unsynced_bytes(self.unsynced_bytes)
        # A file is dropped from the manifest one pass after it was first seen gone: the walk
        # is not atomic, so a WAL segment deleted by a compaction may be seen gone while the
        # descriptor that replaced it was stat'ed before its rewrite. By the next pass that
        # descriptor is uploaded first (replaying a leftover segment is idempotent). Folder
        # renames and removals do not wait: the engine reports them (``moving``/``retiring``).
        missing = {rel for rel in state if rel not in current}
        gone = sorted(missing & self._missing_before)
        self._missing_before = missing
        keys = self._assign_keys([rel for rel, _ in dirty], state)
        # 1. metadata snapshot first (see the module docstring for why)
        meta: list[tuple[str, os.stat_result, bytes, str]] = []
        for rel, st in dirty:
            if rel.endswith(DATA_SUFFIX):
                continue
            try:
                meta.append((rel, st, (self.root / rel).read_bytes(), keys[rel]))
            except FileNotFoundError:
                continue
        # 2. data files, each a copy of its first `size` bytes (it may grow meanwhile)
        self._parallel(
            [(rel, st, keys[rel]) for rel, st in dirty if rel.endswith(DATA_SUFFIX)],
            lambda item: self._upload_data(*item),
        )
        # 3. the metadata snapshot, a group at a time: segments, descriptors, indexes, the rest
        for rank in sorted({_rank(item[0]) for item in meta}):
            self._parallel(
                [item for item in meta if _rank(item[0]) == rank], self._upload_snapshot
            )
        with self.lock:
            for rel in gone:
                if rel in self._state and not (self.root / rel).exists():
                    del self._state[rel]
                    self._access.pop(rel, None)
                    self._etags.pop(rel, None)
        # 4. the commit point: one PUT of the manifest
        self._commit_manifest()
        # 5. objects no committed manifest names any more, and a crashed pass's leftovers
        try:
            self._collect_garbage()
        except BackendError as exc:
            # The commit stands (a writer waiting on it gets its 200); a later pass retries.
            log.warning(
                "remote storage: %d unreferenced object(s) not deleted yet: %s",
                len(self._garbage),
                type(exc).__name__,
            )
        self.unsynced_bytes = 0
        metrics.set_s3_unsynced_bytes(0)
        self._save_manifest()

    def _assign_keys(self, rels: list[str], state: dict[str, FileState]) -> dict[str, str]:
        """Object keys of the files about to be uploaded: a known file keeps its key; a new
        one gets ``r/<path>`` unless the committed manifest or another file still names it
        (a removed or renamed folder's file): then a fresh key, so the upload cannot change
        an object some committed state reads."""
        keys: dict[str, str] = {}
        taken: set[str] | None = None
        for rel in rels:
            known = state.get(rel)
            if known is not None:
                keys[rel] = known.key or self.key(rel)
                continue
            key = self.key(rel)
            if taken is None:
                taken = set(self._committed.values()) | self._garbage
                taken |= {s.key or self.key(r) for r, s in state.items()}
            stem, suffix = os.path.splitext(self.key(rel))
            while key in taken:  # the suffix stays last: a block keeps its storage class
                key = f"{stem}~{uuid.uuid4().hex[:8]}{suffix}"
            taken.add(key)
            keys[rel] = key
        return keys

    def _manifest_files(self) -> dict[str, list[Any]]:
        with self.lock:
            return {
                rel: [state.key, state.size, self._etags[rel]]
                for rel, state in sorted(self._state.items())
                if rel in self._etags
            }

    def _commit_manifest(self) -> None:
        """PUT the manifest if it changed, conditional on the last one we saw (the fence)."""
        files = self._manifest_files()
        if files == self._committed_files and self._manifest_etag is not None:
            return
        seq = self._manifest_seq + 1
        data = encode_manifest(files, seq, self._writer_id)
        self._fenced()
        try:
            if self._manifest_etag is None:
                info = self.backend.create_if_absent(REMOTE_MANIFEST, data)
            else:
                info = self.backend.replace_if_unchanged(REMOTE_MANIFEST, data, self._manifest_etag)
        except PreconditionFailed:
            # botocore retries a PUT whose answer was lost; the retry then fails on our own
            # write. Only a manifest this writer did not write means another writer took over.
            remote = self._read_remote_manifest()
            if remote is not None and (remote.get("writer"), remote.get("seq")) == (
                self._writer_id,
                seq,
            ):
                info = ObjectInfo(REMOTE_MANIFEST, len(data), time.time(), remote["etag"])
            elif self.fence is not None:
                # A lease holder that still passes its fence: the other commit came from a
                # deposed holder inside the fence's margin. Ours replaces it (once: a second
                # 412 means yet another writer, and the pass fails).
                self._fenced()
                if remote is None:
                    info = self.backend.create_if_absent(REMOTE_MANIFEST, data)
                else:
                    info = self.backend.replace_if_unchanged(
                        REMOTE_MANIFEST, data, remote["etag"]
                    )
            else:
                self._error(REPLACED)
                raise ServiceUnavailable(f"{UNAVAILABLE}: {REPLACED}") from None
        before = set(self._committed.values())
        self._committed = {rel: value[0] or self.key(rel) for rel, value in files.items()}
        self._committed_files = files
        self._manifest_etag = info.etag
        self._manifest_seq = seq
        self._garbage |= before - set(self._committed.values())
        self._garbage -= set(self._committed.values())

    def _collect_garbage(self) -> None:
        if self._gc_pending:
            named = set(self._committed.values())
            self._garbage |= {
                info.key for info in self.backend.list(KEY_PREFIX) if info.key not in named
            }
            self._gc_pending = False
        if self._garbage:
            self._parallel(sorted(self._garbage), self._delete)

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

    def _upload_snapshot(self, item: tuple[str, os.stat_result, bytes, str]) -> None:
        rel, st, data, key = item
        self._fenced()
        info = self.backend.write(key, data)
        self._mark_clean(rel, st, info.etag, key)

    def _delete(self, key: str) -> None:
        self._fenced()
        self.backend.delete(key)
        self._garbage.discard(key)

    def _upload_data(self, rel: str, st: os.stat_result, key: str) -> None:
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
        info = self.backend.upload(key, tmp)
        tmp.unlink(missing_ok=True)
        self._mark_clean(rel, st, info.etag, key)

    def _mark_clean(self, rel: str, st: os.stat_result, etag: str, key: str) -> None:
        with self.lock:
            known = self._state.get(rel)
            if known is not None and known.evicted and rel.endswith(DATA_SUFFIX):
                return
            if known is None and not (self.root / rel).exists():
                return  # its folder was removed while it went up: no manifest may name it
            self._state[rel] = FileState(
                st.st_size, st.st_mtime_ns, key=None if key == self.key(rel) else key
            )
            self._etags[rel] = etag

    # --- eviction -----------------------------------------------------------------------------

    def evict(self, keep: str | None = None) -> int:
        """Replace least recently used clean data files by placeholders until under the limit
        (never ``keep``: the file just fetched, about to be opened)."""
        if self.cache_bytes <= self.cache_size:
            return 0
        evicted = 0
        with self.lock:
            if self._pins:
                return 0  # a backup is linking real files (``pinned``; checked under the lock)
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
            raw = {
                rel: [s.size, s.mtime_ns, s.evicted, s.key, self._etags.get(rel)]
                for rel, s in self._state.items()
            }
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
