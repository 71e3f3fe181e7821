"""The role manager: one object the services ask "may I serve?" (ARCHITECTURE §5); "may I
write?" is the write fence built on it (``write_fence.py``).

``build_role_manager(settings, backend)`` returns one of:

- ``StandaloneRole``: no lease; always ready and writable.
- ``LeaseRole`` (PRIMARY/SECONDARY): ready only while holding a fresh lease *and* after its
  generation marker is recorded; writable while the lease fence passes (503 when fenced).
- ``ReplicaRole``: never writes (403 with a message naming the replica); ready after the first
  successful refresh of the read-only view.

Lifecycle the services follow (``appliance.services``): ``start()`` → ``await wait_serving()``
(returns the generation to open the engine with; for a lease it also records "generation N
began" *before* the engine recovers or writes) → open the engine →
``attach_refresh(storage.reload)`` on a replica → serve → on shutdown flush the engine, then
``await close()`` (releases the lease, so the standby takes over within one poll). ``must_exit``
tells the server to exit 1: lease timeout with ``abort``, or a lost lease with ``abort``; with
``proceed`` a lost lease leaves the node up, fenced and not ready, and the services may
``rejoin()`` after abandoning the engine.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from appliance.errors import ServiceUnavailable
from appliance.roles.clock import SYSTEM_CLOCK, Clock
from appliance.roles.fencing import GenerationLog, SegmentBoundary, snapshot_wal
from appliance.roles.lease import LeaseLost
from appliance.roles.replica import ReplicaRefresher
from appliance.roles.lease_manager import (
    LeaseConfig,
    LeaseManager,
    LeaseState,
)
from appliance.settings import InstanceRole, LockFailureAction, Settings
from backends.base import Backend
from backends.errors import BackendError

log = logging.getLogger(__name__)

EXIT_FAILURE = 1


@dataclass(frozen=True, slots=True)
class RoleStatus:
    """A snapshot of the role for listeners, logs and ``/info``-style diagnostics."""

    role: InstanceRole
    state: str
    ready: bool
    generation: int
    detail: str


StatusListener = Callable[[RoleStatus], None]


class RoleManager(Protocol):
    """What the services need from a role."""

    role: InstanceRole

    @property
    def read_only(self) -> bool:
        """True if this instance never writes the dataset."""
        ...

    @property
    def is_ready(self) -> bool:
        """The role's part of ``/api/v1/ready``."""
        ...

    @property
    def generation(self) -> int:
        """The generation to stamp into WAL and index commits (0 = no lease)."""
        ...

    @property
    def must_exit(self) -> int | None:
        """An exit code the server should exit with now, or None."""
        ...

    def status(self) -> RoleStatus:
        """A snapshot of the role."""
        ...

    def deposed(self, reason: str) -> None:
        """The engine found a newer generation's file: step down now (no I/O, never raises)."""
        ...

    async def rejoin(self) -> None:
        """After a step-down with action proceed: compete for the lease again."""
        ...

    def add_listener(self, listener: StatusListener) -> None:
        """Call ``listener(status)`` whenever the role's state changes."""
        ...

    def attach_refresh(self, refresh: Callable[[], object]) -> None:
        """Give a replica its reload callable (no-op for other roles)."""
        ...

    async def start(self) -> None:
        """Start background loops."""
        ...

    async def wait_serving(self) -> int:
        """Wait until the engine may open; return the generation to open it with."""
        ...

    async def close(self) -> None:
        """Stop loops and release what the role holds; call after flushing the engine."""
        ...


class StandaloneRole:
    """No lease, no replica: always ready and writable."""

    role = InstanceRole.STANDALONE
    read_only = False
    is_ready = True
    generation = 0
    must_exit: int | None = None

    def status(self) -> RoleStatus:
        """Always ready."""
        return RoleStatus(self.role, "STANDALONE", True, 0, "no lease")

    def deposed(self, reason: str) -> None:
        """No lease: nothing to step down from."""

    async def rejoin(self) -> None:
        """No lease: nothing to rejoin."""

    def add_listener(self, listener: StatusListener) -> None:
        """The state never changes: nothing to notify."""

    def attach_refresh(self, refresh: Callable[[], object]) -> None:
        """Not a replica: ignored."""

    async def start(self) -> None:
        """Nothing to start."""

    async def wait_serving(self) -> int:
        """Serve at once, generation 0."""
        return 0

    async def close(self) -> None:
        """Nothing to release."""


class ReplicaRole:
    """Read-only view of the shared dataset, refreshed every update interval."""

    role = InstanceRole.REPLICA
    read_only = True
    generation = 0
    must_exit: int | None = None

    def __init__(self, refresher: ReplicaRefresher) -> None:
        self.refresher = refresher
        self._listeners: list[StatusListener] = []
        refresher.on_ready(self._notify)
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._started = False

    @property
    def is_ready(self) -> bool:
        """Ready after the first successful refresh."""
        return self.refresher.is_ready

    def status(self) -> RoleStatus:
        """Refresh bookkeeping as a status."""
        staleness = self.refresher.staleness_s
        detail = "never refreshed" if staleness is None else f"refreshed {staleness:.1f}s ago"
        if self.refresher.last_error is not None:
            detail += f"; last refresh failed: {self.refresher.last_error}"
        state = "READY" if self.is_ready else "WAITING"
        return RoleStatus(self.role, state, self.is_ready, 0, detail)

    def deposed(self, reason: str) -> None:
        """No lease: nothing to step down from."""

    async def rejoin(self) -> None:
        """No lease: nothing to rejoin."""

    def add_listener(self, listener: StatusListener) -> None:
        """Called once, when the replica first becomes ready."""
        self._listeners.append(listener)

    def _notify(self) -> None:
        status = self.status()
        for listener in list(self._listeners):
            listener(status)

    def attach_refresh(self, refresh: Callable[[], object]) -> None:
        """Set the engine's reload and start refreshing (at once, then every interval)."""
        self.refresher.attach(refresh)
        if self._started:
            self._start_loop()

    async def start(self) -> None:
        """Refreshing starts once ``attach_refresh`` gives the reload."""
        self._started = True
        if self.refresher.attached:
            self._start_loop()

    def _start_loop(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.refresher.run(self._stop), name="replica")

    async def wait_serving(self) -> int:
        """Open the engine (read-only) at once."""
        return 0

    async def close(self) -> None:
        """Stop refreshing."""
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None


class LeaseRole:
    """PRIMARY/SECONDARY: the lease manager, its loop, and the generation marker."""

    read_only = False

    def __init__(
        self,
        manager: LeaseManager,
        generations: GenerationLog,
        *,
        snapshot: Callable[[], Mapping[str, SegmentBoundary]] | None = None,
    ) -> None:
        self.manager = manager
        self.role = manager.config.role
        self.generations = generations
        self._snapshot = snapshot or (lambda: snapshot_wal(manager.backend))
        self._began = 0
        self._closing = False
        self._listeners: list[StatusListener] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        manager.add_listener(lambda _old, _new: self._notify())

    @property
    def generation(self) -> int:
        """The generation we hold and have recorded (0 otherwise)."""
        return self._began if self._began == self.manager.generation else 0

    @property
    def is_ready(self) -> bool:
        """Holding a fresh lease whose marker is recorded."""
        return self.generation > 0 and self.manager.is_ready

    @property
    def must_exit(self) -> int | None:
        """1 after a lease timeout (abort), or a lost lease with action abort."""
        state = self.manager.state
        if state is LeaseState.FAILED:
            return EXIT_FAILURE
        abort = self.manager.config.failure_action is LockFailureAction.ABORT
        if state is LeaseState.STEPPED_DOWN and abort and not self._closing:
            return EXIT_FAILURE
        return None

    def status(self) -> RoleStatus:
        """The lease state and why."""
        m = self.manager
        return RoleStatus(self.role, m.state.value, self.is_ready, self.generation, m.reason)

    def deposed(self, reason: str) -> None:
        """Step down: the engine found a file of a newer generation (we were taken over)."""
        self.manager.step_down(LeaseLost(reason))

    def add_listener(self, listener: StatusListener) -> None:
        """Called on every lease state change."""
        self._listeners.append(listener)

    def attach_refresh(self, refresh: Callable[[], object]) -> None:
        """Not a replica: ignored."""

    async def start(self) -> None:
        """Start the standby loop."""
        if self._task is None:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self.manager.run(self._stop), name="lease")

    async def wait_serving(self) -> int:
        """Wait for the lease, record "generation N began", return N (LeaseError if never)."""
        while True:
            generation = await self.manager.wait_holding()
            try:
                await asyncio.to_thread(self._record, generation)
            except LeaseLost as exc:
                self.manager.step_down(exc)
                raise
            except ServiceUnavailable:
                continue  # fenced while recording: wait_holding() says why
            except BackendError as exc:
                log.warning("cannot record generation %d yet: %s", generation, exc)
                await asyncio.sleep(self.manager.config.poll_s)
                continue
            self._notify()
            return generation

    def _record(self, generation: int) -> None:
        # Snapshot first, then re-check the fence: the marker must be written by the holder.
        wal = self._snapshot()
        self.manager.confirm()
        self.generations.record_began(generation, self.manager.owner, wal)
        self._began = generation
        log.info("generation began", extra={"role": self.role.value, "generation": generation})

    async def rejoin(self) -> None:
        """After a step-down (action proceed): wait for the lease again; engine closed first."""
        await self._stop_loop()
        self.manager.rejoin()
        self._began = 0
        await self.start()

    async def close(self) -> None:
        """Stop the loop and release the lease (call after the engine has flushed)."""
        self._closing = True
        await self._stop_loop()
        await asyncio.to_thread(self.manager.release)

    async def _stop_loop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await self._task
            self._task = None

    def _notify(self) -> None:
        status = self.status()
        for listener in list(self._listeners):
            try:
                listener(status)
            except Exception:  # noqa: BLE001 - a listener must not break the lease
                log.exception("role listener failed")


def build_role_manager(
    settings: Settings, backend: Backend, *, clock: Clock = SYSTEM_CLOCK
) -> RoleManager:
    """The role manager for ``RS_INSTANCE_ROLE``, over the backend holding the shared data."""
    role = settings.instance_role
    if role is InstanceRole.STANDALONE:
        return StandaloneRole()
    if role is InstanceRole.REPLICA:
        return ReplicaRole(
            ReplicaRefresher(interval_s=settings.engine_replica_update_interval, clock=clock)
        )
    manager = LeaseManager(backend, LeaseConfig.from_settings(settings), clock=clock)
    return LeaseRole(manager, GenerationLog(backend, clock=clock))
