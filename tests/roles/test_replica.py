"""ReplicaRefresher: step() bookkeeping, readiness, staleness, the loop, the 403."""

from __future__ import annotations

import asyncio

import pytest

from appliance.errors import Forbidden
from appliance.roles.clock import ManualClock
from appliance.roles.replica import REPLICA_MESSAGE, ReplicaRefresher
from appliance.roles.role import ReplicaRole
from appliance.roles.write_fence import WriteFence


class Reload:
    """A fake engine reload that fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.failing = False

    def __call__(self) -> None:
        self.calls += 1
        if self.failing:
            raise OSError("index unreadable")


def test_replica_step_without_refresh_is_not_ready(clock: ManualClock) -> None:
    refresher = ReplicaRefresher(clock=clock)
    assert refresher.step() is False and not refresher.is_ready and not refresher.attached
    assert refresher.staleness_s is None


def test_replica_ready_after_first_successful_refresh(clock: ManualClock) -> None:
    reload = Reload()
    reload.failing = True
    refresher = ReplicaRefresher(reload, clock=clock)
    became_ready: list[bool] = []
    refresher.on_ready(lambda: became_ready.append(True))
    assert refresher.step() is False and not refresher.is_ready
    assert isinstance(refresher.last_error, OSError) and refresher.failure_count == 1
    reload.failing = False
    assert refresher.step() is True and refresher.is_ready and refresher.last_error is None
    refresher.step()
    assert became_ready == [True] and refresher.refresh_count == 2


def test_replica_failure_keeps_readiness_and_grows_staleness(clock: ManualClock) -> None:
    reload = Reload()
    refresher = ReplicaRefresher(reload, clock=clock)
    refresher.step()
    clock.advance(60)
    assert refresher.staleness_s == 60
    reload.failing = True
    clock.advance(60)
    assert refresher.step() is False
    assert refresher.is_ready and refresher.staleness_s == 120
    assert refresher.last_success_wall is not None


def test_replica_write_fence_is_403_naming_the_replica() -> None:
    with pytest.raises(Forbidden) as refused:
        WriteFence(ReplicaRole(ReplicaRefresher())).check()
    assert refused.value.status == 403 and str(refused.value) == REPLICA_MESSAGE
    assert "read-only replica" in REPLICA_MESSAGE


async def test_replica_run_refreshes_every_interval_until_stopped() -> None:
    reload = Reload()
    refresher = ReplicaRefresher(reload, interval_s=0.02)
    stop = asyncio.Event()
    loop = asyncio.create_task(refresher.run(stop))
    await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert reload.calls >= 4 and refresher.is_ready


async def test_replica_interval_zero_refreshes_once() -> None:
    reload = Reload()
    refresher = ReplicaRefresher(reload, interval_s=0)
    await asyncio.wait_for(refresher.run(asyncio.Event()), 5)
    assert reload.calls == 1 and refresher.is_ready
