"""``streaming.hop``: the lean worker-thread hop of the hot request paths."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from appliance.api.streaming import hop


@pytest.fixture
def svc() -> Any:
    executor = ThreadPoolExecutor(1)
    yield SimpleNamespace(executor=executor)
    executor.shutdown(wait=True)


async def test_hop_returns_the_result_from_a_worker_thread(svc: Any) -> None:
    main = threading.get_ident()
    assert await hop(svc, lambda a, b: (a + b, threading.get_ident() != main), 2, 3) == (5, True)


async def test_hop_raises_the_worker_exception(svc: Any) -> None:
    def fail() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await hop(svc, fail)


async def test_hop_cancelled_before_start_never_runs(svc: Any) -> None:
    release = threading.Event()
    ran: list[str] = []
    blocker = asyncio.ensure_future(hop(svc, release.wait))  # occupies the only worker
    await asyncio.sleep(0.01)
    waiting = asyncio.ensure_future(hop(svc, ran.append, "late"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    assert await blocker is True
    await hop(svc, lambda: None)  # the queue has drained
    assert ran == []


async def test_hop_cancelled_while_running_lets_the_call_finish(svc: Any) -> None:
    started, release = threading.Event(), threading.Event()
    done: list[int] = []

    def work() -> int:
        started.set()
        release.wait()
        done.append(1)
        return 1

    task = asyncio.ensure_future(hop(svc, work))
    await asyncio.get_running_loop().run_in_executor(None, started.wait)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    await hop(svc, lambda: None)
    assert done == [1]
