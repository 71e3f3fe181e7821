"""Read-only replica: a refresh step every ``RS_ENGINE_REPLICA_UPDATE_INTERVAL``.

``ReplicaRefresher.step()`` calls an injected ``refresh()`` (the engine's reload of bucket list,
settings, entries and block indexes: ``Storage.reload_replica``) and keeps the bookkeeping the
app needs: ready after the first successful refresh, the time of the last one (staleness), and
the last error. ``run()`` only wraps ``step()`` in interval sleeps (STYLE item 8); interval 0
disables the loop, as in ReductStore, but ``run()`` still does the first refresh so the replica
becomes ready.

Fault model: a failed refresh keeps the previous view (reads keep working on it), is logged,
and is retried on the next interval; readiness is never withdrawn once given, matching
ReductStore, but ``staleness_s`` grows so an operator can alert on it. The replica never writes
to the shared folder: the refresher does no I/O of its own, and the write fence
(``write_fence.py``) refuses with 403.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from appliance.roles.clock import SYSTEM_CLOCK, Clock

log = logging.getLogger(__name__)

# ReductStore's read-only message, plus why (the engine uses the first half on its own).
REPLICA_MESSAGE = (
    "Cannot perform this operation in read-only mode: this instance is a read-only replica"
)


class ReplicaRefresher:
    """Periodic reload of the shared dataset's view, with readiness and staleness."""

    def __init__(
        self,
        refresh: Callable[[], object] | None = None,
        *,
        interval_s: float = 60.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self._refresh = refresh
        self.interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self.refresh_count = 0
        self.failure_count = 0
        self.last_success_mono: float | None = None
        self.last_success_wall: float | None = None
        self.last_error: BaseException | None = None
        self._ready = threading.Event()
        self._on_ready: list[Callable[[], None]] = []

    def attach(self, refresh: Callable[[], object]) -> None:
        """Set the reload callable (the engine exists only after it opened)."""
        self._refresh = refresh

    @property
    def attached(self) -> bool:
        """True once a reload callable is set."""
        return self._refresh is not None

    def on_ready(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, after the first successful refresh."""
        self._on_ready.append(callback)

    @property
    def is_ready(self) -> bool:
        """True once a refresh has succeeded."""
        return self._ready.is_set()

    @property
    def staleness_s(self) -> float | None:
        """Seconds since the last successful refresh (None before the first)."""
        last = self.last_success_mono
        return None if last is None else self._clock.monotonic() - last

    def step(self) -> bool:
        """Refresh once; True on success. Failures are recorded, logged, and not raised."""
        refresh = self._refresh
        if refresh is None:
            return False  # nothing attached yet: not ready, nothing to do
        with self._lock:  # one refresh at a time, even if a caller steps beside the loop
            try:
                refresh()
            except Exception as exc:  # noqa: BLE001 - keep the old view, retry next interval
                self.failure_count += 1
                self.last_error = exc
                log.warning("replica refresh failed: %s", exc, extra={"role": "REPLICA"})
                return False
            self.refresh_count += 1
            self.last_error = None
            self.last_success_mono = self._clock.monotonic()
            self.last_success_wall = self._clock.wall()
            first = not self._ready.is_set()
            self._ready.set()
        if first:
            for callback in list(self._on_ready):
                try:
                    callback()
                except Exception:  # noqa: BLE001 - a listener must not fail the refresh
                    log.exception("replica ready listener failed")
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Refresh now, then every ``interval_s`` until ``stop`` (interval 0: only once)."""
        while not stop.is_set():
            await asyncio.to_thread(self.step)
            if self.interval_s <= 0 and self.is_ready:
                return
            # Before the first success, retry at least every second: /ready waits on it.
            delay = self.interval_s if self.is_ready else min(self.interval_s or 1.0, 1.0)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass
