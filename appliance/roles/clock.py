"""The clock the roles read: a monotonic clock for every decision, a wall clock for humans.

Lease staleness, renewal age and the write fence are judged on the *observer's* monotonic
clock (``spec/leases.md`` §3.3), so safety needs a bounded clock rate, not synchronised clocks.
Wall-clock time is only written into records for operators to read. Tests inject
``ManualClock`` and advance it instead of sleeping (STYLE item 8, 18).
"""

from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    """Two time sources: ``monotonic()`` for decisions, ``wall()`` for display."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (arbitrary origin)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch, informational only."""
        ...


class SystemClock:
    """The process clocks: ``time.monotonic`` (system-wide on Linux) and ``time.time``."""

    def monotonic(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def wall(self) -> float:
        """``time.time()``."""
        return time.time()


class ManualClock:
    """A clock that moves only when told to; thread-safe, for tests and simulations."""

    def __init__(self, monotonic: float = 1000.0, wall: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._monotonic = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        """The current fake monotonic time."""
        with self._lock:
            return self._monotonic

    def wall(self) -> float:
        """The current fake wall time."""
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        """Move both clocks forward by ``seconds`` (never backwards)."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        with self._lock:
            self._monotonic += seconds
            self._wall += seconds


SYSTEM_CLOCK = SystemClock()
