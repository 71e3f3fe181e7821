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
