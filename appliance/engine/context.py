"""Shared state of one open storage: options, caches of fds and blocks, the group committer."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from appliance.engine import fs_ops
from appliance.engine.block import BlockCache
from appliance.engine.commit import GroupCommitter
from appliance.engine.fd_cache import FileCache, fd_budget
from appliance.engine.gate import WriteGate
from appliance.engine.journal import JOURNAL_DIR, Journal
from appliance.engine.models import EngineOptions
from appliance.engine.reserve import RESERVE_BYTES, RemovalReserve
from appliance.errors import Forbidden, ServiceUnavailable

QUARANTINE_DIR = ".quarantine"
FREE_SPACE_REFRESH_SECONDS = 1.0
READ_ONLY_MESSAGE = "Cannot perform this operation in read-only mode"
ABANDONED_MESSAGE = "This instance no longer holds the storage lease; writes are refused"

log = logging.getLogger(__name__)
_uids = itertools.count(1)


class DiskSpace:
    """Free bytes of the data filesystem, re-read at most once a second (statvfs per record
    costs more than the record) and always when the estimate comes near the reserve."""

    def __init__(self, path: Path, reserve: int) -> None:
        self._path = path
        self._reserve = reserve
        self._free = 0
        self._read_at = -FREE_SPACE_REFRESH_SECONDS

    def free(self, wanted: int) -> int:
        """Current estimate of free bytes, fresh if ``wanted`` more would approach the reserve."""
        now = time.monotonic()
        stale = now - self._read_at >= FREE_SPACE_REFRESH_SECONDS
        if stale or self._free - wanted < 2 * self._reserve:
            self._free = fs_ops.free_bytes(self._path)
            self._read_at = now
        return self._free

    def invalidate(self) -> None:
        """Re-read free space at the next ``free`` (space was freed: a removal)."""
        self._read_at = -FREE_SPACE_REFRESH_SECONDS

    def consume(self, size: int) -> None:
        """Account for bytes admitted since the last statvfs."""
        self._free -= size


@dataclass
class EngineContext:
    """Everything buckets and entries share; built once by ``Storage.open``."""

    options: EngineOptions
    files: FileCache
    blocks: BlockCache
    committer: GroupCommitter | None
    disk: DiskSpace
    reserve: RemovalReserve | None = None
    storage_usage: Callable[[], int] = field(default=lambda: 0)
    # Set when a lease holder stepped down: nothing of this storage may touch the disk again.
    abandoned: bool = False
    # Every mutation passes it; a backup closes it for its snapshot (``gate.py``).
    gate: WriteGate = field(default_factory=WriteGate)
    # The mutation journal of point-in-time recovery (None unless archiving is on).
    journal: Journal | None = None

    @classmethod
    def create(cls, options: EngineOptions) -> EngineContext:
        """A context for ``options`` (committer only when writes are synced)."""
        return cls(
            options=options,
            files=FileCache(
                capacity=fd_budget(),
                sync_on_close=options.sync_writes,
                read_only=options.read_only,
                mirror=options.mirror,
            ),
            blocks=BlockCache(),
            committer=GroupCommitter() if options.sync_writes else None,
            disk=DiskSpace(options.data_path, options.min_free_space),
            journal=(
                Journal(options.data_path / JOURNAL_DIR)
                if options.journal and not options.read_only
                else None
            ),
            reserve=None
            if options.read_only
            else RemovalReserve(options.data_path, RESERVE_BYTES, options.min_free_space),
        )

    def __post_init__(self) -> None:
        if self.options.mirror is not None:
            self.options.mirror.attach(self.files.drop_if_idle)

    def local(self, path: Path) -> None:
        """Make a file local before opening it outside the fd cache (data on S3)."""
        if self.options.mirror is not None:
            self.options.mirror.ensure_local(path)

    @contextmanager
    def moving(self, src: Path, dst: Path) -> Iterator[None]:
        """Around the rename of a bucket or entry folder (data on S3: the mirror keeps its
        objects and commits the new names at once)."""
        if self.options.mirror is None:
            yield
            return
        with self.options.mirror.moving(src, dst):
            yield

    @contextmanager
    def retiring(self, path: Path) -> Iterator[None]:
        """Around taking a bucket or entry folder out (data on S3: its objects go as one)."""
        if self.options.mirror is None:
            yield
            return
        with self.options.mirror.retiring(path):
            yield

    @contextmanager
    def removing(self) -> Iterator[None]:
        """Around a removal: free the reserve first on a full disk, refill it afterwards."""
        if self.reserve is not None:
            self.reserve.make_room()
        try:
            yield
        finally:
            self.disk.invalidate()
            if self.reserve is not None:
                self.reserve.refill()

    @property
    def data_path(self) -> Path:
        """Root of the data folder."""
        return self.options.data_path

    @property
    def generation(self) -> int:
        """Lease generation stamped into WAL frames and index commits."""
        return self.options.generation

    @property
    def sync(self) -> bool:
        """Whether writes are fsynced before they are acknowledged."""
        return self.options.sync_writes

    def quarantine_path(self, bucket: str, entry: str) -> Path:
        """Where damaged files of one entry are moved."""
        return self.data_path / QUARANTINE_DIR / bucket / entry

    def check_writable(self) -> None:
        """Refuse mutations: read-only instance (403), deposed lease holder (503)."""
        if self.options.read_only:
            raise Forbidden(READ_ONLY_MESSAGE)
        if self.abandoned:
            raise ServiceUnavailable(ABANDONED_MESSAGE)
        fence = self.options.fence
        if fence is not None:
            fence.check()
        mirror = self.options.mirror
        if mirror is not None:
            mirror.admit()

    def deposed(self, reason: str) -> ServiceUnavailable:
        """A newer generation wrote here: abandon the storage, step down; the error to raise."""
        self.abandoned = True
        log.error("newer lease generation found, refusing to write: %s", reason)
        fence = self.options.fence
        if fence is not None:
            fence.deposed(reason)
        return ServiceUnavailable(ABANDONED_MESSAGE)

    @staticmethod
    def new_uid() -> int:
        """A process-unique id for an entry incarnation (block cache keys)."""
        return next(_uids)
