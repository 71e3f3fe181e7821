"""LeaseManager: step() per role, the write fence, timeouts, release, loss (fake clock)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from appliance.errors import ServiceUnavailable
from appliance.roles.clock import ManualClock, SystemClock
from appliance.roles.lease import LOCK_KEY, LeaseLost, LeaseRecord
from appliance.roles.lease_manager import LeaseConfig, LeaseState, LeaseTimeout
from appliance.roles.write_fence import confirm_off_loop
from appliance.settings import InstanceRole, LockFailureAction, load_settings
from backends.base import Backend
from backends.errors import BackendUnavailable
from backends.memory import MemoryBackend
from tests.roles.conftest import CountingBackend, MakeManager, owner

P, S = InstanceRole.PRIMARY, InstanceRole.SECONDARY


def test_standby_primary_takes_a_free_lease_on_first_step(
    backend: Backend, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a")
    assert a.state is LeaseState.WAITING and not a.is_ready and a.generation == 0
    assert a.step() is LeaseState.HOLDING
    assert a.is_ready and a.generation == 1
    assert LeaseRecord.decode(backend.read(LOCK_KEY)).owner == a.owner


def test_standby_secondary_waits_for_staleness_then_takes_over(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a")
    b = make_manager(backend, "b", role=S, timeout_s=0)
    a.step()
    for _ in range(100):  # a keeps renewing: b never sees it stale
        assert b.step() is LeaseState.WAITING
        clock.advance(10)
        a.step()
    assert "held by a:100" in b.reason
    # a dies (no more steps); b polls every 10 s
    died = clock.monotonic()
    while b.step() is LeaseState.WAITING:
        clock.advance(10)
    assert clock.monotonic() - died == 30  # ttl, measured on b's clock
    assert b.generation == 2


@pytest.mark.parametrize("phase", [0.0, 2.5, 5.0, 9.9])
@pytest.mark.parametrize("died_after", [0.0, 3.3, 9.9])
def test_standby_takeover_after_kill_within_ttl_plus_two_polls(
    clock: ManualClock, make_manager: MakeManager, phase: float, died_after: float
) -> None:
    backend = MemoryBackend()
    ttl, poll = 30.0, 10.0
    a = make_manager(backend, "a", ttl_s=ttl, poll_s=poll)
    b = make_manager(backend, "b", role=S, ttl_s=ttl, poll_s=poll, timeout_s=0)
    a.step()
    # Simulate both loops in 0.1 s ticks: a renews every renew interval, b polls every poll,
    # offset by ``phase``; a dies ``died_after`` seconds after a renewal at t = 60.
    tick, t = 0.1, 0.0
    next_a, next_b, death = a.config.renew_interval_s, phase, 60.0 + died_after
    took_over = None
    while took_over is None and t < 200:
        if t >= next_a - 1e-9 and t < death:
            a.step()
            next_a += a.config.renew_interval_s
        if t >= next_b - 1e-9:
            if b.step() is LeaseState.HOLDING:
                took_over = t
            next_b += poll
        clock.advance(tick)
        t = round(t + tick, 6)
    assert took_over is not None
    assert took_over - death <= ttl + 2 * poll + 1e-6


def test_standby_holder_renews_at_min_of_poll_and_a_third_of_ttl() -> None:
    assert LeaseConfig(P, ttl_s=30, poll_s=10).renew_interval_s == 10
    assert LeaseConfig(P, ttl_s=30, poll_s=20).renew_interval_s == 10
    assert LeaseConfig(P, ttl_s=1, poll_s=0.2).renew_interval_s == 0.2
    assert LeaseConfig(P, ttl_s=0, poll_s=5).renew_interval_s == 5
    assert LeaseConfig(P, ttl_s=30).fence_window_s == 15
    with pytest.raises(ValueError):
        LeaseConfig(InstanceRole.STANDALONE)


def test_standby_config_from_settings() -> None:
    settings = load_settings({
        "RS_INSTANCE_ROLE": "secondary", "RS_LOCK_FILE_TTL": "5s",
        "RS_LOCK_FILE_POLLING_INTERVAL": "500ms", "RS_LOCK_FILE_TIMEOUT": "0",
        "RS_LOCK_FILE_FAILURE_ACTION": "Proceed",
    })
    config = LeaseConfig.from_settings(settings)
    assert config == LeaseConfig(S, 5.0, 0.5, 0.0, LockFailureAction.PROCEED)


def test_standby_next_interval_depends_on_state(
    backend: Backend, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a", ttl_s=9, poll_s=10)
    assert a.next_interval_s() == 10
    a.step()
    assert a.next_interval_s() == 3


def test_standby_primary_takes_over_at_once_when_same_host_holder_is_dead(
    backend: Backend, make_manager: MakeManager
) -> None:
    ids = {"boot_id": "boot", "pid_ns": "pid:[1]"}
    dead = make_manager(backend, "x", who=owner("host", 41, **ids))
    dead.step()
    b = make_manager(backend, "b", role=S, who=owner("host", 42, **ids), alive=lambda _: False)
    assert b.step() is LeaseState.WAITING  # a SECONDARY waits for staleness regardless
    a = make_manager(backend, "a", who=owner("host", 43, **ids), alive=lambda pid: pid != 41)
    assert a.step() is LeaseState.HOLDING and a.generation == 2  # no TTL wait


def test_standby_primary_does_not_take_a_live_or_foreign_host_holder(
    backend: Backend, make_manager: MakeManager
) -> None:
    ids = {"boot_id": "boot", "pid_ns": "pid:[1]"}
    make_manager(backend, "x", who=owner("host", 41, **ids)).step()
    alive = make_manager(backend, "a", who=owner("host", 43, **ids), alive=lambda _: True)
    assert alive.step() is LeaseState.WAITING
    elsewhere = make_manager(
        backend, "c", who=owner("other", 44, **ids), alive=lambda _: False
    )
    assert elsewhere.step() is LeaseState.WAITING


def test_standby_tampered_lock_steps_down_within_one_poll(
    backend: Backend, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a")
    events: list[tuple[LeaseState, LeaseState]] = []
    a.add_listener(lambda old, new: events.append((old, new)))
    a.step()
    backend.write(LOCK_KEY, LeaseRecord("mallory:1:x", "n", 7, 0, 30.0, 0, 0).encode())
    assert a.step() is LeaseState.STEPPED_DOWN
    assert events == [
        (LeaseState.WAITING, LeaseState.HOLDING), (LeaseState.HOLDING, LeaseState.STEPPED_DOWN)
    ]
    assert not a.is_ready and a.generation == 0 and "mallory" in a.reason
    with pytest.raises(ServiceUnavailable, match="no longer holds"):
        a.confirm()
    assert a.step() is LeaseState.STEPPED_DOWN  # terminal until rejoin()


def test_standby_fence_fast_path_does_no_io(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    counting = CountingBackend(backend)
    a = make_manager(counting, "a")  # type: ignore[arg-type]
    a.step()
    before = counting.total
    for _ in range(1000):
        a.confirm()
        clock.advance(0.014)  # 14 s in all: still inside ttl/2 = 15 s
    asyncio.run(confirm_off_loop(a))
    assert counting.total == before


def test_standby_fence_slow_path_reverifies_then_fast_again(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    counting = CountingBackend(backend)
    a = make_manager(counting, "a")  # type: ignore[arg-type]
    a.step()
    clock.advance(15)  # renewal now ttl/2 old: the loop is late
    assert not a.is_ready
    counting.calls.clear()
    a.confirm()
    assert counting.calls["replace_if_unchanged"] == 1  # the CAS proves nobody changed .lock
    assert LeaseRecord.decode(backend.read(LOCK_KEY)).renew_seq == 1
    counting.calls.clear()
    a.confirm()
    assert counting.total == 0 and a.is_ready


def test_standby_paused_holder_is_fenced_after_takeover(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    # SIGSTOP in fake time: a stops stepping, the monotonic clock keeps running.
    a = make_manager(backend, "a")
    b = make_manager(backend, "b", role=S, timeout_s=0)
    a.step()
    a.confirm()
    while b.step() is LeaseState.WAITING:
        clock.advance(10)
    # SIGCONT: the first write a tries is refused, and a never believes it holds again.
    with pytest.raises(ServiceUnavailable):
        a.confirm()
    assert a.state is LeaseState.STEPPED_DOWN and not a.is_ready
    assert a.step() is LeaseState.STEPPED_DOWN
    with pytest.raises(ServiceUnavailable):
        asyncio.run(confirm_off_loop(a))
    assert b.state is LeaseState.HOLDING and b.generation == 2
    b.confirm()


def test_standby_fence_refuses_while_waiting(backend: Backend, make_manager: MakeManager) -> None:
    make_manager(backend, "a").step()
    b = make_manager(backend, "b", role=S)
    b.step()
    with pytest.raises(ServiceUnavailable, match="starting up"):
        b.confirm()


class Flaky:
    """A backend that raises BackendUnavailable on every call while ``down``."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target) or not self.down:
            return target

        def fail(*args: Any, **kwargs: Any) -> Any:
            raise BackendUnavailable("EIO", backend="flaky")

        return fail


def test_standby_renewal_io_errors_keep_holding_but_fence_refuses(
    clock: ManualClock, make_manager: MakeManager
) -> None:
    flaky = Flaky(MemoryBackend())
    a = make_manager(flaky, "a")  # type: ignore[arg-type]
    a.step()
    flaky.down = True
    clock.advance(10)
    assert a.step() is LeaseState.HOLDING and isinstance(a.last_error, BackendUnavailable)
    a.confirm()  # 10 s < ttl/2: fast path
    clock.advance(5)
    with pytest.raises(ServiceUnavailable, match="cannot be verified"):
        a.confirm()
    assert a.state is LeaseState.HOLDING and not a.is_ready
    flaky.down = False
    a.confirm()
    assert a.is_ready


def test_standby_waiting_io_errors_are_retried(
    clock: ManualClock, make_manager: MakeManager
) -> None:
    flaky = Flaky(MemoryBackend())
    a = make_manager(flaky, "a")  # type: ignore[arg-type]
    flaky.down = True
    assert a.step() is LeaseState.WAITING and isinstance(a.last_error, BackendUnavailable)
    flaky.down = False
    assert a.step() is LeaseState.HOLDING


@pytest.mark.parametrize("role", [P, S])
def test_standby_timeout_with_abort_fails(
    backend: Backend, clock: ManualClock, make_manager: MakeManager, role: InstanceRole
) -> None:
    holder = make_manager(backend, "a")
    holder.step()
    b = make_manager(backend, "b", role=role, timeout_s=60)
    for _ in range(6):
        assert b.step() is LeaseState.WAITING
        clock.advance(10)
        holder.step()
    with pytest.raises(LeaseTimeout, match="abort"):
        b.step()
    assert b.state is LeaseState.FAILED
    assert b.step() is LeaseState.FAILED
    with pytest.raises(LeaseTimeout):
        asyncio.run(b.wait_holding())


def test_standby_timeout_with_proceed_primary_takes_over_after_the_fence_closes(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    holder = make_manager(backend, "a")
    holder.step()
    b = make_manager(backend, "b", timeout_s=60, action=LockFailureAction.PROCEED)
    started = clock.monotonic()
    while True:
        holder.step()  # renews right before b's poll: its fence is as fresh as it gets
        assert b.step() is LeaseState.WAITING
        if b.lease.held is not None:
            break
        clock.advance(10)
    forced = clock.monotonic()
    assert forced - started == 60
    # The old holder is slow (no more steps) but its fence fast path is still open: b must
    # not serve until it has closed, so at no instant do both pass the fence.
    while b.step() is not LeaseState.HOLDING:
        assert holder.is_ready or clock.monotonic() - forced < 15
        clock.advance(1)
    assert clock.monotonic() - forced == 15 and b.generation == 2
    assert not holder.is_ready
    with pytest.raises(ServiceUnavailable):
        holder.confirm()  # slow path: the CAS fails, it steps down
    assert holder.state is LeaseState.STEPPED_DOWN


def test_standby_lock_deleted_under_a_live_holder_waits_for_its_fence(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a")
    a.step()
    b = make_manager(backend, "b", role=S)
    backend.delete(LOCK_KEY)  # an operator "cleans up" while a is alive
    assert b.step() is LeaseState.WAITING and b.lease.held is not None
    assert "serving after 15s" in b.reason
    clock.advance(10)
    assert b.step() is LeaseState.WAITING
    a.confirm()  # a's fast path: still legitimately open
    clock.advance(5)
    assert b.step() is LeaseState.HOLDING
    with pytest.raises(ServiceUnavailable):
        a.confirm()


def test_standby_release_during_a_forced_takeover_hands_over(
    backend: Backend, make_manager: MakeManager
) -> None:
    make_manager(backend, "a").step()
    backend.delete(LOCK_KEY)
    b = make_manager(backend, "b", role=S)
    b.step()
    assert b.state is LeaseState.WAITING and b.lease.held is not None
    assert b.release() is True and b.state is LeaseState.STEPPED_DOWN
    assert make_manager(backend, "c", role=S).step() is LeaseState.HOLDING


def test_standby_fresh_dataset_needs_no_grace(backend: Backend, make_manager: MakeManager) -> None:
    assert make_manager(backend, "a").step() is LeaseState.HOLDING


def test_standby_timeout_with_proceed_secondary_keeps_waiting(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    holder = make_manager(backend, "a")
    holder.step()
    b = make_manager(backend, "b", role=S, timeout_s=60, action=LockFailureAction.PROCEED)
    for _ in range(30):
        assert b.step() is LeaseState.WAITING
        clock.advance(10)
        holder.step()


def test_standby_timeout_zero_waits_forever(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    holder = make_manager(backend, "a")
    holder.step()
    b = make_manager(backend, "b", timeout_s=0)
    for _ in range(500):
        assert b.step() is LeaseState.WAITING
        clock.advance(10)
        holder.step()


def test_standby_release_hands_over_on_the_next_poll(
    backend: Backend, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a")
    b = make_manager(backend, "b", role=S)
    a.step()
    b.step()
    assert a.release() is True
    assert a.state is LeaseState.STEPPED_DOWN and a.reason == "released"
    assert b.step() is LeaseState.HOLDING  # no TTL wait
    assert a.release() is False


def test_standby_rejoin_waits_again_under_a_new_owner(
    backend: Backend, clock: ManualClock, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a")
    a.step()
    old_owner = a.owner
    backend.write(LOCK_KEY, b"tampered")
    a.step()
    with pytest.raises(RuntimeError):
        make_manager(backend, "z").rejoin()  # only from STEPPED_DOWN
    a.rejoin()
    assert a.state is LeaseState.WAITING and a.owner != old_owner
    a.step()
    clock.advance(30)
    assert a.step() is LeaseState.HOLDING and a.generation == 2


def test_standby_step_down_on_request(backend: Backend, make_manager: MakeManager) -> None:
    a = make_manager(backend, "a")
    a.step()
    a.step_down(LeaseLost("generation 5 began"))
    assert a.state is LeaseState.STEPPED_DOWN and "generation 5" in a.reason


async def test_standby_wait_holding_wakes_when_another_thread_acquires(
    backend: Backend, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a")
    waiter = asyncio.create_task(a.wait_holding())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    await asyncio.to_thread(a.step)
    assert await asyncio.wait_for(waiter, 5) == 1


async def test_standby_wait_holding_raises_when_stepped_down(
    backend: Backend, make_manager: MakeManager
) -> None:
    a = make_manager(backend, "a")
    a.step()
    a.release()
    with pytest.raises(LeaseLost):
        await a.wait_holding()


async def test_standby_run_loop_acquires_renews_and_stops(backend: Backend) -> None:
    from appliance.roles.lease_manager import LeaseManager

    config = LeaseConfig(P, ttl_s=0.3, poll_s=0.02, timeout_s=0)
    a = LeaseManager(backend, config, clock=SystemClock(), owner=owner("a"))
    stop = asyncio.Event()
    loop = asyncio.create_task(a.run(stop))
    assert await asyncio.wait_for(a.wait_holding(), 5) == 1
    for _ in range(250):  # renewals every poll; a loaded CI box may take longer than 0.2 s
        await asyncio.sleep(0.02)
        if LeaseRecord.decode(backend.read(LOCK_KEY)).renew_seq >= 3:
            break
    assert LeaseRecord.decode(backend.read(LOCK_KEY)).renew_seq >= 3
    assert a.is_ready
    await confirm_off_loop(a)
    stop.set()
    await asyncio.wait_for(loop, 5)
    assert a.state is LeaseState.HOLDING  # stopping the loop does not release by itself
    assert a.release()


async def test_standby_run_loop_ends_on_failure(backend: Backend) -> None:
    from appliance.roles.lease_manager import LeaseManager

    holder = LeaseManager(backend, LeaseConfig(P, ttl_s=30, poll_s=1), owner=owner("a"))
    holder.step()
    config = LeaseConfig(S, ttl_s=30, poll_s=0.01, timeout_s=0.05)
    b = LeaseManager(backend, config, owner=owner("b"))
    await asyncio.wait_for(b.run(asyncio.Event()), 5)
    assert b.state is LeaseState.FAILED and isinstance(b.last_error, LeaseTimeout)
