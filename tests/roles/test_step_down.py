"""``roles/step_down.py``: the order of a step-down (halt at once, teardown, exit or rejoin)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from appliance.roles.lease import LeaseLost
from appliance.roles.role import RoleStatus
from appliance.roles.step_down import StepDown
from appliance.settings import InstanceRole

STEPPED_DOWN = RoleStatus(InstanceRole.PRIMARY, "STEPPED_DOWN", False, 0, "lease lost: tampered")
HOLDING = RoleStatus(InstanceRole.PRIMARY, "HOLDING", True, 1, "")


class FakeRole:
    """A lease role whose listener the test calls; ``must_exit`` decides abort vs proceed."""

    def __init__(self, must_exit: int | None, log: list[str]) -> None:
        self.must_exit = must_exit
        self.listeners: list[Any] = []
        self.log = log

    def add_listener(self, listener: Any) -> None:
        self.listeners.append(listener)

    def status(self) -> RoleStatus:
        return STEPPED_DOWN

    async def rejoin(self) -> None:
        self.log.append("rejoin")


class FakeServing:
    """Records every hook in order."""

    def __init__(self, log: list[str]) -> None:
        self.closed = False
        self.log = log
        self.tasks: list[asyncio.Task[None]] = []
        self.failed: tuple[str, BaseException, int] | None = None
        self.halt_thread: int | None = None

    def halt(self) -> None:
        self.halt_thread = threading.get_ident()
        self.log.append("halt")

    async def teardown(self) -> None:
        self.log.append("teardown")

    def fail(self, message: str, exc: BaseException, code: int) -> None:
        self.failed = (message, exc, code)
        self.log.append("fail")

    def suspend(self) -> None:
        self.log.append("suspend")

    def reopen(self) -> None:
        self.log.append("reopen")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        self.tasks.append(asyncio.create_task(coro, name=name))


async def _step_down_from_a_thread(role: FakeRole, serving: FakeServing) -> None:
    StepDown(role, serving).bind(asyncio.get_running_loop())
    [listener] = role.listeners
    thread = threading.Thread(target=listener, args=(STEPPED_DOWN,))
    thread.start()
    thread.join()
    assert serving.halt_thread == thread.ident  # at once, in the thread that noticed
    for _ in range(100):
        if serving.tasks:
            break
        await asyncio.sleep(0.01)
    await asyncio.gather(*serving.tasks)


async def test_step_down_with_abort_halts_tears_down_and_fails_with_the_exit_code() -> None:
    log: list[str] = []
    role, serving = FakeRole(1, log), FakeServing(log)
    await _step_down_from_a_thread(role, serving)
    assert log == ["halt", "teardown", "fail"]
    assert serving.failed is not None
    message, exc, code = serving.failed
    assert code == 1 and isinstance(exc, LeaseLost) and "tampered" in message


async def test_step_down_with_proceed_rejoins_and_reopens() -> None:
    log: list[str] = []
    role, serving = FakeRole(None, log), FakeServing(log)
    await _step_down_from_a_thread(role, serving)
    assert log == ["halt", "teardown", "suspend", "rejoin", "reopen"]


async def test_other_states_and_a_closing_instance_do_nothing() -> None:
    log: list[str] = []
    role, serving = FakeRole(1, log), FakeServing(log)
    StepDown(role, serving).bind(asyncio.get_running_loop())
    [listener] = role.listeners
    listener(HOLDING)
    serving.closed = True
    listener(STEPPED_DOWN)
    await asyncio.sleep(0.02)
    assert log == [] and serving.tasks == []
