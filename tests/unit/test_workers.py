"""``Workers``: the one way into the engine threads (``run``, ``start_then``, ``run_through``)."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from appliance.workers import Workers


@pytest.fixture
def svc() -> Any:
    workers = Workers(ThreadPoolExecutor(1))
    yield workers
    workers.shutdown()


async def test_hop_returns_the_result_from_a_worker_thread(svc: Any) -> None:
    main = threading.get_ident()
    assert await svc.run(lambda a, b: (a + b, threading.get_ident() != main), 2, 3) == (5, True)


async def test_hop_raises_the_worker_exception(svc: Any) -> None:
    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await svc.run(fail)


async def test_hop_cancelled_before_start_never_runs(svc: Any) -> None:
    release = threading.Event()
    ran: list[str] = []
    blocker = asyncio.ensure_future(svc.run(release.wait))  # occupies the only worker
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(svc.run(ran.append, "late"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await blocker is True
    await svc.run(lambda: None)  # the queue has drained
    assert ran == []


async def test_hop_cancelled_while_running_lets_the_call_finish(svc: Any) -> None:
    started, release = threading.Event(), threading.Event()
    done: list[int] = []

    def work() -> int:
        started.set()
        release.wait()
        done.append(1)
        return 1

    task = asyncio.ensure_future(svc.run(work))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await svc.run(lambda: None)
    assert done == [1]


async def test_run_through_cancelled_waits_for_the_thread_and_hands_over_the_result(svc: Any) -> None:
    started, release = threading.Event(), threading.Event()
    handed: list[str] = []

    def work() -> str:
        started.set()
        release.wait()
        return "writer"

    task = asyncio.ensure_future(svc.run_through(work, on_cancel=handed.append))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    task.cancel()
    await asyncio.sleep(0.01)
    assert not task.done()  # still waiting for its thread: the caller's clean-up cannot race it
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert handed == ["writer"]


async def test_run_through_returns_the_result(svc: Any) -> None:
    assert await svc.run_through(lambda a: a * 2, 21) == 42


async def test_start_then_hands_over_the_result_before_the_work_after_it(svc: Any) -> None:
    """The future is done while ``then`` still runs, in the same worker thread."""
    release = threading.Event()
    threads: list[int] = []

    def then() -> None:
        threads.append(threading.get_ident())
        release.wait(5)

    def fn(value: int) -> tuple[int, Any]:
        threads.append(threading.get_ident())
        return value * 2, then

    fut = svc.start_then(fn, 21)
    assert await asyncio.wait_for(fut, 5) == 42
    assert not release.is_set()  # then() is still waiting: the result did not wait for it
    release.set()
    assert await svc.run(lambda: "after") == "after"  # the only worker is free again
    assert len(threads) == 2 and threads[0] == threads[1]


async def test_start_then_errors(svc: Any, caplog: pytest.LogCaptureFixture) -> None:
    """An error of ``fn`` goes to the future; one of ``then`` only to the debug log."""

    def fail() -> tuple[int, Any]:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await svc.start_then(fail)

    def broken_then() -> None:
        raise ValueError("late")

    caplog.set_level("DEBUG", logger="appliance.workers")
    assert await svc.start_then(lambda: (7, broken_then)) == 7
    assert await svc.start_then(lambda: (8, None)) == 8
    assert await svc.run(lambda: "still serving") == "still serving"
    assert any("late" in (r.exc_text or "") or r.exc_info for r in caplog.records)
