"""The one way into the engine's worker threads.

The engine is blocking code (files, fsync, locks); the event loop must never wait on it. Every
call from async code into the engine goes through one ``Workers`` object, modelled on Datasette's
``execute_fn`` / ``execute_write_fn`` pair:

- ``run(fn, ...)``: run this in a worker thread and give me the result. A cancelled caller
  stops a call that has not started yet; one already running finishes in its thread unobserved.
- ``run_through(fn, ..., on_cancel=...)``: run this and finish it even if the client goes away.
  The caller waits for the thread even when cancelled, so its clean-up never races the
  still-running call; ``on_cancel`` receives the result the caller will never see (e.g. a
  just-opened record writer to abort).
- ``start(fn, ...)`` and ``start_then(fn, ...)``: start this now and give me its future, for a
  caller that keeps the future and awaits it later (the batch of a query collected ahead);
  with ``start_then``, ``fn`` hands over its result first and then goes on with work that
  only gives later calls a head start, in the same thread.

Not through here, on purpose: the lease's own I/O (``appliance.roles``) uses
``asyncio.to_thread``, so a pool saturated by slow engine calls never delays a lease renewal
or the fence. ``appliance cp``'s local source and the backups have their own small
``Workers`` (a long backup must not starve requests); the journal shipping of continuous
archiving uses ``asyncio.to_thread`` so it never waits behind a backup.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


def _deliver(fut: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if not fut.done():
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


def _work(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], fn: Callable[..., Any], args: Any
) -> None:
    try:
        result = fn(*args)
    except BaseException as exc:  # handed to the awaiting task, like run_in_executor does
        loop.call_soon_threadsafe(_deliver, fut, False, exc)
    else:
        loop.call_soon_threadsafe(_deliver, fut, True, result)


def _work_then(
    loop: asyncio.AbstractEventLoop, fut: asyncio.Future[Any], fn: Callable[..., Any], args: Any
) -> None:
    try:
        result, then = fn(*args)
    except BaseException as exc:  # handed to the awaiting task, like run_in_executor does
        loop.call_soon_threadsafe(_deliver, fut, False, exc)
        return
    loop.call_soon_threadsafe(_deliver, fut, True, result)
    if then is not None:
        try:
            then()
        except Exception:  # noqa: BLE001 - nobody awaits it: only a head start for later calls
            log.debug("work after a result was handed over failed", exc_info=True)


class Workers:
    """The engine thread pool behind the calls async code may use (see the module doc)."""

    def __init__(self, pool: ThreadPoolExecutor) -> None:
        self.pool = pool

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` in a worker thread and await its result.

        The worker hands its result straight to an asyncio future (no concurrent-future
        chaining, one loop callback less per call than ``run_in_executor``: this is on every
        hot request path). Cancelling the caller drops a call not yet started.
        """
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        job = self.pool.submit(_work, loop, fut, fn, args)
        try:
            return await fut
        except asyncio.CancelledError:
            job.cancel()
            raise

    def start(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Start ``fn`` in a worker thread now; its future completes once it has run.

        Cheaper than ``run_through`` (no task, no executor future) for a caller that keeps
        the future and always awaits it to the end: await it through ``asyncio.shield`` so a
        cancelled caller does not mark it done while the thread still runs.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self.pool.submit(_work, loop, fut, fn, args)
        return fut

    def start_then(
        self, fn: Callable[..., tuple[T, Callable[[], Any] | None]], *args: Any
    ) -> asyncio.Future[T]:
        """``start``, for an ``fn`` that returns ``(result, then)``: the future gets
        ``result`` at once, and ``then()`` (unless None) runs afterwards in the same thread,
        unobserved (work that only gives later calls a head start; its errors are logged at
        debug level)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self.pool.submit(_work_then, loop, fut, fn, args)
        return fut

    async def run_through(
        self,
        fn: Callable[..., T],
        *args: Any,
        on_cancel: Callable[[T], Any] | None = None,
    ) -> T:
        """Run ``fn`` in a worker thread; if cancelled, still wait for the thread to finish.

        A cancelled caller must not race its own still-running call (e.g. abort a RecordWriter
        while a write is in flight). ``on_cancel`` runs in a thread with the result the caller
        will never see.
        """
        loop = asyncio.get_running_loop()
        fut = loop.run_in_executor(self.pool, fn, *args)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            await asyncio.wait([fut])
            if on_cancel is not None and not fut.cancelled() and fut.exception() is None:
                await asyncio.wait([loop.run_in_executor(self.pool, on_cancel, fut.result())])
            raise

    def shutdown(self) -> None:
        """Wait for the running calls and stop the threads (end of the lifespan)."""
        self.pool.shutdown(wait=True)
