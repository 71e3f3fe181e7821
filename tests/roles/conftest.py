"""Fixtures for the roles tests: a fake clock, both local backends, a call-counting wrapper."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.roles.clock import ManualClock
from appliance.roles.lease import OwnerId
from appliance.roles.lease_manager import LeaseConfig, LeaseManager
from appliance.settings import InstanceRole, LockFailureAction
from backends.base import Backend
from backends.filesystem import FilesystemBackend
from backends.memory import MemoryBackend


class CountingBackend:
    """Delegates to a backend and counts every call by method name."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return target(*args, **kwargs)

        return counted

    @property
    def total(self) -> int:
        """Calls so far, all methods."""
        return sum(self.calls.values())


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["memory", "filesystem"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """Every test using this runs on the reference backend and on a real folder."""
    if request.param == "memory":
        yield MemoryBackend()
    else:
        fs = FilesystemBackend(tmp_path / "data")
        fs.init()
        yield fs


def owner(name: str, pid: int = 100, *, boot_id: str = "", pid_ns: str = "") -> OwnerId:
    """A fixed owner id for tests."""
    return OwnerId(host=name, pid=pid, uuid=f"uuid-{name}-{pid}", boot_id=boot_id, pid_ns=pid_ns)


MakeManager = Callable[..., LeaseManager]


@pytest.fixture
def make_manager(clock: ManualClock) -> MakeManager:
    """Build a LeaseManager on the given backend with the fake clock; ReductStore defaults."""

    def make(
        backend: Backend,
        name: str,
        *,
        role: InstanceRole = InstanceRole.PRIMARY,
        ttl_s: float = 30.0,
        poll_s: float = 10.0,
        timeout_s: float = 60.0,
        action: LockFailureAction = LockFailureAction.ABORT,
        who: OwnerId | None = None,
        alive: Callable[[int], bool] = lambda pid: True,
    ) -> LeaseManager:
        config = LeaseConfig(
            role=role, ttl_s=ttl_s, poll_s=poll_s, timeout_s=timeout_s, failure_action=action
        )
        return LeaseManager(
            backend, config, clock=clock, owner=who or owner(name), is_process_alive=alive
        )

    return make
