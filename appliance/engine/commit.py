"""Group commit: many concurrent writers share one round of fsyncs (ARCHITECTURE §3 durability).

With ``sync_writes`` a write is acknowledged only once its payload and WAL frame are on stable
storage. Each writer calls ``commit(handles)`` after its WAL append. Writers take a ticket; the
first one to find no flush in progress becomes the leader, takes *every* handle queued so far,
fsyncs each file once and publishes the highest ticket it covered. A writer whose ticket is
already covered returns without another fsync; the others wait on the condition variable and
one of them leads the next round. Under load N writers cost about N / (writers per round)
rounds instead of N.

A round flushes payload files first, then WAL files (a WAL frame should not reach the disk
before its bytes). Within each phase the fsyncs run in parallel on a few threads: writers of
different entries touch different files, and concurrent fsyncs let the filesystem journal
commit them together instead of one after another.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from appliance import metrics
from appliance.engine.fd_cache import FileHandle

WAL_SUFFIX = ".wal"
SYNC_THREADS = 8


class GroupCommitter:
    """Coalesces fsync requests of concurrent writers into shared flush rounds."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._pending: dict[int, FileHandle] = {}
        self._next_ticket = 0
        self._flushed_ticket = -1
        self._flushing = False
        # (first ticket, last ticket, error) of the most recent failed round
        self._failure: tuple[int, int, BaseException] | None = None
        self._pool: ThreadPoolExecutor | None = None
        self.rounds = 0
        self.fsyncs = 0

    def commit(self, handles: Iterable[FileHandle]) -> None:
        """Return once every handle passed (and everything queued before) has been fsynced."""
        with self._cond:
            ticket = self._next_ticket
            self._next_ticket += 1
            for handle in handles:
                self._pending[id(handle)] = handle
            while self._flushed_ticket < ticket:
                if self._flushing:
                    self._cond.wait()
                    continue
                self._lead_round_locked()
            failure = self._failure
        if failure is not None and failure[0] <= ticket <= failure[1]:
            cause = failure[2]
            # Keep the errno (ENOSPC, EIO...): the engine's I/O boundary maps it to a status.
            code = cause.errno if isinstance(cause, OSError) else None
            reason = getattr(cause, "strerror", None) or cause
            raise OSError(code, f"group commit failed: {reason}") from cause

    def _lead_round_locked(self) -> None:
        """Flush everything queued so far; called with the condition held, releases it meanwhile."""
        batch = list(self._pending.values())
        first = self._flushed_ticket + 1
        covered = self._next_ticket - 1
        self._pending = {}
        self._flushing = True
        error: BaseException | None = None
        self._cond.release()
        started = time.perf_counter()
        try:
            data = [h for h in batch if not h.path.endswith(WAL_SUFFIX)]
            wal = [h for h in batch if h.path.endswith(WAL_SUFFIX)]
            self._sync_all(data)
            self._sync_all(wal)
        except BaseException as exc:  # noqa: BLE001 - reported to every writer of the round
            error = exc
        finally:
            metrics.wal_sync_seconds(time.perf_counter() - started)
            self._cond.acquire()
        self.rounds += 1
        self.fsyncs += len(batch)
        if error is not None:
            self._failure = (first, covered, error)
        self._flushed_ticket = covered
        self._flushing = False
        self._cond.notify_all()

    def _sync_all(self, handles: list[FileHandle]) -> None:
        """fsync every handle, in parallel when there are several; raise the first error."""
        if len(handles) <= 1:
            for handle in handles:
                handle.sync()
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(SYNC_THREADS, thread_name_prefix="engine-fsync")
        futures = [self._pool.submit(handle.sync) for handle in handles]
        errors = [f.exception() for f in futures]
        for exc in errors:
            if exc is not None:
                raise exc

    def close(self) -> None:
        """Stop the fsync threads (idempotent)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
