"""Record removal of one entry: by timestamp, by range and predicate, and FIFO block drops.

Part of ``Entry`` (``entry.py`` is the facade; this is a mixin so the lock and block state
stay in one object).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from appliance.engine.blockset import BlockSet
from appliance.engine.context import EngineContext
from appliance.engine.entry_folder import EntryFiles
from appliance.engine.gate import gated
from appliance.engine.ioerrors import boundary
from appliance.engine.models import RecordMeta
from appliance.errors import ApplianceError, NotFound, UnprocessableEntity

log = logging.getLogger("appliance.engine.entry")


class EntryRemoval:
    """``Entry``'s removals (mixed into ``Entry``)."""

    # Provided by ``Entry``: the entry lock, its blocks, its folder, the shared context.
    _lock: threading.Lock
    _blocks: BlockSet
    _ctx: EngineContext
    files: EntryFiles
    bucket: str
    name: str
    is_meta: bool
    removed: bool
    changes: int

    if TYPE_CHECKING:  # Entry's

        def _check_alive(self) -> None: ...

        def iter_records(self, start: int, stop: int) -> Iterator[RecordMeta]: ...

    @boundary("remove the records")
    def remove_records(self, timestamps: Iterable[int]) -> dict[int, ApplianceError]:
        """Remove records by timestamp; per-timestamp errors (404). 422 for ``$meta`` entries."""
        self._refuse_meta()
        return self.remove_unchecked(timestamps)

    @boundary("remove the records")
    def remove_where(
        self, start: int, stop: int, predicate: Callable[[RecordMeta], bool] | None
    ) -> int:
        """Remove FINISHED records in [start, stop) matching ``predicate``; return how many."""
        self._refuse_meta()
        doomed = [
            r.timestamp for r in self.iter_records(start, stop) if predicate is None or predicate(r)
        ]
        return len(doomed) - len(self.remove_unchecked(doomed))

    def _refuse_meta(self) -> None:
        if self.is_meta:
            raise UnprocessableEntity(
                f"Can't delete records from system entry '{self.name}'; "
                "use label update with remove=true"
            )

    @boundary("remove the records")
    @gated
    def remove_unchecked(self, timestamps: Iterable[int]) -> dict[int, ApplianceError]:
        """Remove records (also from ``$meta`` entries: the upsert-by-key path)."""
        self._ctx.check_writable()
        errors: dict[int, ApplianceError] = {}
        with self._ctx.removing(), self._lock:
            self._check_alive()
            by_block: dict[int, list[int]] = {}
            for ts in timestamps:
                try:
                    block, _ = self._blocks.locate(ts)
                except NotFound as exc:
                    errors[ts] = exc
                    continue
                by_block.setdefault(block.block_id, []).append(ts)
            blocks = self._blocks
            gone: list[int] = []
            for block_id, doomed in by_block.items():
                block = blocks.make_live(block_id)
                for ts in doomed:
                    old = block.remove(ts)
                    if old is not None:
                        blocks.size -= old.size + old.meta_size
                        blocks.count -= 1
                        gone.append(ts)
                blocks.persist_removal(block)
            if gone:
                self.changes += 1
            if gone and self._ctx.journal is not None:
                self._ctx.journal.append("remove", b=self.bucket, e=self.name, tss=gone)
        return errors

    @gated
    def remove_oldest_block(self) -> int:
        """Drop the oldest block (FIFO quota); return the bytes freed, 0 if none could go."""
        with self._lock:
            blocks = self._blocks
            if self.removed or not blocks.ids:
                return 0
            block_id = blocks.ids[0]
            live = blocks.live.get(block_id)
            if live is not None and live.pending:
                return 0  # a writer is streaming into it
            freed, _ = blocks.totals(block_id)
            doomed = list(blocks.get(block_id).records) if self._ctx.journal is not None else []
            blocks.drop(block_id)
            self.changes += 1
            if self._ctx.journal is not None:
                self._ctx.journal.append("remove", b=self.bucket, e=self.name, tss=doomed)
            log.info("fifo quota removed block %s/%s/%s", self.bucket, self.name, block_id)
            return freed
