"""Hourly diagnostics of a task: 60 one-minute frames (spec replication §1.12).

``ok`` and ``errored`` are extrapolated to an hour while fewer than 60 frames exist (one frame:
×60), as ReductStore reports them; ``errors[code].count`` is the raw sum. Frames advance only
when something is counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FRAME_SECONDS = 60.0
FRAMES = 60


@dataclass
class _Frame:
    ok: int = 0
    errored: int = 0
    errors: dict[int, list[Any]] = field(default_factory=dict)  # code -> [count, message]


class Diagnostics:
    """The counter behind ``diagnostics.hourly``; thread-safe."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._frames: list[_Frame] = [_Frame()]
        self._frame_start = clock()
        self._lock = threading.Lock()

    def _advance(self) -> _Frame:
        now = self._clock()
        passed = int((now - self._frame_start) // FRAME_SECONDS)
        if passed > 0:
            self._frames.extend(_Frame() for _ in range(min(passed, FRAMES)))
            del self._frames[:-FRAMES]
            self._frame_start = now
        return self._frames[-1]

    def ok(self, count: int) -> None:
        """Count ``count`` records delivered."""
        if count:
            with self._lock:
                self._advance().ok += count

    def error(self, code: int, message: str, count: int = 1) -> None:
        """Count ``count`` records that failed with ``code`` (HTTP status or negative)."""
        if count:
            with self._lock:
                frame = self._advance()
                frame.errored += count
                slot = frame.errors.setdefault(code, [0, ""])
                slot[0] += count
                slot[1] = message

    def to_json(self) -> dict[str, Any]:
        """``{"ok", "errored", "errors": {"<code>": {"count", "last_message"}}}``."""
        with self._lock:
            frames = list(self._frames)
        scale = len(frames) / FRAMES
        errors: dict[str, dict[str, Any]] = {}
        for frame in frames:
            for code, (count, message) in frame.errors.items():
                item = errors.setdefault(str(code), {"count": 0, "last_message": ""})
                item["count"] += count
                item["last_message"] = message
        return {
            "ok": round(sum(f.ok for f in frames) / scale),
            "errored": round(sum(f.errored for f in frames) / scale),
            "errors": errors,
        }


# `$system` sync events (spec replication §1.12): one aggregated record per status run.
IDLE_FLUSH_SECONDS = 5.0  # flushed after this long without activity
MAX_EVENT_SECONDS = 60.0  # and at the latest this long after the aggregate began

Emit = Callable[[dict[str, Any], dict[str, str]], None]


class SyncEvents:
    """Aggregates a task's passes into ``replication_sync`` events for ``$system``.

    Only the sender loop calls it (one thread), so no lock; ``emit`` only queues (the
    recorder never does I/O on the caller's thread), so the sender is never slowed.
    """

    def __init__(self, emit: Emit | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._clock = clock
        self._status: int | None = None
        self._began = self._last = 0.0
        self._written = self._failed = self._bytes = 0
        self._busy = 0.0

    def record(self, status: int, written: int, failed: int, nbytes: int, seconds: float,
               pending: int) -> None:
        """One pass (or failed attempt) with ``status`` (200, or the error code)."""
        if self._emit is None:
            return
        if self._status is not None and status != self._status:
            self.flush(pending)  # a status change closes the running aggregate
        now = self._clock()
        if self._status is None:
            self._status, self._began = status, now
        self._last = now
        self._written += written
        self._failed += failed
        self._bytes += nbytes
        self._busy += seconds

    def flush_due(self, pending: Callable[[], int]) -> None:
        """Flush when idle for ``IDLE_FLUSH_SECONDS`` or older than ``MAX_EVENT_SECONDS``."""
        if self._status is None:
            return
        now = self._clock()
        if now - self._last >= IDLE_FLUSH_SECONDS or now - self._began >= MAX_EVENT_SECONDS:
            self.flush(pending())

    def flush(self, pending: int) -> None:
        """Hand the running aggregate to ``$system`` (if any) and start afresh."""
        if self._status is None or self._emit is None:
            return
        payload = {
            "type": "replication_sync",
            "status": self._status,
            "pending_records": pending,
            "written_records": self._written,
            "failed_records": self._failed,
            "replicated_data_size": self._bytes,
            "duration": round(self._busy, 6),
        }
        labels = {"status": str(self._status)}
        self._status = None
        self._written = self._failed = self._bytes = 0
        self._busy = 0.0
        try:
            self._emit(payload, labels)
        except Exception:  # noqa: BLE001 - diagnostics must never stop the sender
            pass
