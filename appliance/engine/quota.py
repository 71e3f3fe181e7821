"""Write admission of one bucket: storage limit, quota and free disk (spec engine §5, §11).

``Quota.admit`` runs before anything of a write touches the disk, with ReductStore's checks in
its order: ``max_storage_size`` across all buckets (500), the bucket quota (HARD refuses with
400; FIFO drops the oldest blocks of non-``$meta`` entries until the record fits, or fails with
500), then free disk (507); the admitted bytes are reserved with the disk tracker. With a quota,
check-and-reserve runs under one lock (``guard``) so two writers cannot both fit into the last
free bytes; without one there is nothing to serialise and no lock is taken.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

from appliance.engine.context import EngineContext
from appliance.engine.models import BucketSettings, QuotaType
from appliance.errors import BadRequest, InsufficientStorage, InternalError

if TYPE_CHECKING:
    from appliance.engine.entry import Entry

_NO_LOCK: AbstractContextManager[object] = nullcontext()


class Quota:
    """The admission checks of one bucket; ``used`` and ``evictable`` read the bucket's state."""

    def __init__(
        self,
        ctx: EngineContext,
        bucket: str,
        used: Callable[[], int],
        evictable: Callable[[], Iterable[Entry]],
    ) -> None:
        self._ctx = ctx
        self._bucket = bucket
        self._used = used  # bytes the bucket holds now
        self._evictable = evictable  # entries FIFO may take blocks from (never ``$meta``)
        self._lock = threading.Lock()

    def guard(self, settings: BucketSettings) -> AbstractContextManager[object]:
        """Serialise check-and-reserve when a quota is enforced (two writers can't both fit)."""
        return self._lock if settings.quota_type != QuotaType.NONE else _NO_LOCK

    def check_storage_limit(self, size: int, pending: int) -> None:
        """500 when ``size`` more bytes would pass ``max_storage_size`` (all buckets)."""
        limit = self._ctx.options.max_storage_size
        if limit is not None and self._ctx.storage_usage() + pending + size > limit:
            raise InternalError("storage limit exceeded")

    def admit(self, settings: BucketSettings, size: int, pending: int, free: int) -> None:
        """Quota (HARD refuses, FIFO evicts) and free-disk checks for ``size`` more bytes."""
        if settings.quota_type == QuotaType.HARD:
            if self._used() + pending + size > settings.quota_size:
                raise BadRequest(f"Quota of '{self._bucket}' exceeded")
        elif settings.quota_type == QuotaType.FIFO:
            while self._used() + pending + size > settings.quota_size:
                if not self._evict_oldest_block():
                    raise InternalError(f"Failed to keep quota of '{self._bucket}'")
        if free - pending - size < self._ctx.options.min_free_space:
            raise InsufficientStorage(
                f"Not enough disk space to write {size} bytes into bucket '{self._bucket}'"
            )
        self._ctx.disk.consume(size)

    def admit_all(self, settings: BucketSettings, total: int, free: int) -> bool:
        """Admit a whole batch of ``total`` bytes at once when nothing can refuse a part of it
        (no quota, no storage limit, room on the disk for all): then ``admit`` record by record
        would accept every record. False: the caller admits record by record."""
        if (
            settings.quota_type != QuotaType.NONE
            or self._ctx.options.max_storage_size is not None
            or free - total < self._ctx.options.min_free_space
        ):
            return False
        self._ctx.disk.consume(total)
        return True

    def _evict_oldest_block(self) -> bool:
        """Drop the oldest block of the entry with the oldest record; False if none is left."""
        for entry in sorted(self._evictable(), key=lambda e: e.oldest_record):
            if entry.remove_oldest_block():
                return True
        return False
