"""The write gate: pauses new mutations so a backup can take a consistent cut (issue 12).

Every engine mutation (record reservation and completion, label updates, removals,
compaction, entry and bucket changes) runs inside ``gate.shared()``; a backup takes
``gate.exclusive()``: new mutations wait, the ones in flight finish, and while the backup holds
the gate no file of the data folder changes except payload bytes streamed into records that are
still STARTED (those do not exist in the cut: a STARTED record never survives a restart).

Shared holds are re-entrant per thread (a write that removes an old ``$meta`` record, a rename
that compacts) and a waiting backup blocks new shared holders (writer preference), so a steady
stream of writes cannot starve the backup. Every caller takes the gate *before* any engine lock,
so a thread inside the gate never waits for a lock held by a thread waiting at the gate.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from appliance.errors import ServiceUnavailable


class WriteGate:
    """Reader/writer gate: many concurrent mutations, or one pause."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._active = 0
        self._paused = False
        self._waiting = 0
        self._local = threading.local()

    @contextmanager
    def shared(self) -> Iterator[None]:
        """Hold the gate for one mutation (waits while a pause is pending or held)."""
        depth = getattr(self._local, "depth", 0)
        if depth == 0:
            with self._cond:
                while self._paused or self._waiting:
                    self._cond.wait()
                self._active += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if depth == 0:
                with self._cond:
                    self._active -= 1
                    if self._active == 0:
                        self._cond.notify_all()

    def try_enter(self) -> bool:
        """Take a shared hold without waiting (the event loop's inline writes): False while a
        pause is pending or held, or while another thread holds the gate's own lock. A True
        must be paired with ``leave``; the calling thread must not hold the gate already."""
        if getattr(self._local, "depth", 0) or not self._cond.acquire(blocking=False):
            return False
        try:
            if self._paused or self._waiting:
                return False
            self._active += 1
        finally:
            self._cond.release()
        self._local.depth = 1
        return True

    def leave(self) -> None:
        """End a hold taken by ``try_enter`` (may wake a waiting backup)."""
        self._local.depth = 0
        with self._cond:
            self._active -= 1
            if self._active == 0:
                self._cond.notify_all()

    @contextmanager
    def exclusive(self, timeout: float) -> Iterator[float]:
        """Pause mutations; yields the seconds spent waiting for in-flight ones to finish.

        ServiceUnavailable when they do not finish within ``timeout`` (the pause is lifted).
        """
        if getattr(self._local, "depth", 0):
            raise RuntimeError("a mutation cannot pause the write gate")
        started = time.perf_counter()
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._paused:  # one pause at a time
                if not self._cond.wait(max(deadline - time.monotonic(), 0)):
                    raise ServiceUnavailable("another backup is taking its snapshot")
            self._waiting += 1
            try:
                while self._active:
                    left = deadline - time.monotonic()
                    if left <= 0 or not self._cond.wait(left) and self._active:
                        raise ServiceUnavailable(
                            f"writes in flight did not finish within {timeout:g} s; "
                            "backup not taken"
                        )
                self._paused = True
            finally:
                self._waiting -= 1
                if not self._paused:
                    self._cond.notify_all()
        try:
            yield time.perf_counter() - started
        finally:
            with self._cond:
                self._paused = False
                self._cond.notify_all()

    @property
    def paused(self) -> bool:
        """True while a backup holds the gate."""
        return self._paused


F = TypeVar("F", bound=Callable[..., Any])


def gated(method: F) -> F:
    """Run an engine mutation method inside its context's write gate (``self._ctx.gate``)."""

    @functools.wraps(method)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        with self._ctx.gate.shared():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]
