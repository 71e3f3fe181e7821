"""Hot standby: PRIMARY/SECONDARY competing for the lease, and the write fence of the holder.

``LeaseManager.step()`` is one poll; ``run()`` only wraps it in interval sleeps (STYLE item 8),
so tests drive ``step()`` with a ``ManualClock`` and never sleep.

States::

    WAITING ──acquire/break──▶ HOLDING ──lost / tampered / released──▶ STEPPED_DOWN
       │                                                                  │ rejoin()
       └──timeout + abort──▶ FAILED (the server exits 1)     WAITING ◀───┘

WAITING, per poll (every ``RS_LOCK_FILE_POLLING_INTERVAL``):

- absent or released → take it at once (both roles). ReductStore's SECONDARY re-checks absence
  for 3 extra intervals because its acquire is not atomic; ours is (create-if-absent / CAS), so
  the confirmation would only slow failover down. Deliberate simplification.
- held or unparseable and unchanged for TTL on *our* monotonic clock → break it (both roles).
- PRIMARY only: a holder on this host (same boot id and pid namespace) whose pid is gone is
  broken at once: "a PRIMARY may take over a lease whose holder is gone".
- still waiting after ``RS_LOCK_FILE_TIMEOUT`` (> 0): ``abort`` → FAILED and ``LeaseTimeout``
  (the server exits 1); ``proceed`` → a PRIMARY takes the lease anyway (the old holder loses
  its next renewal and steps down); a SECONDARY keeps waiting with a fresh timer, as
  ReductStore's does (otherwise a SECONDARY with ``proceed`` would depose a healthy primary
  every TIMEOUT seconds).
- a takeover that does not prove the old holder fenced (``proceed``, or ``.lock`` deleted
  under a holder) keeps renewing but becomes HOLDING only ``ttl/2`` later, when the old
  holder's fence fast path has certainly closed: two nodes never both pass the fence.

HOLDING: renew every ``min(poll, ttl/3)``, so the fence below stays on its fast path. A renewal
that finds a foreign owner, or no lock, steps down within that one poll (tamper detection);
a transient backend error keeps HOLDING and lets the fence decide.

The lease side of the write fence is ``confirm()``: no I/O while the last renewal was sent
less than ``ttl/2`` ago (``surely_holding``), else a renewal by CAS; if the lease is gone it
steps down, notifies listeners and raises ``ServiceUnavailable`` (503). Why that is safe, and
where it is checked: ``appliance/roles/write_fence.py`` (the argument is written there once).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import uuid
from collections.abc import Callable

from appliance.errors import ServiceUnavailable
from appliance.roles.clock import SYSTEM_CLOCK, Clock
from appliance.roles.lease import (
    Lease,
    LeaseError,
    LeaseHeld,
    LeaseLost,
    LockState,
    Observation,
    OwnerId,
)
from appliance.roles.policy import (
    LeaseConfig,
    LeaseState,
    LeaseTimeout,
    process_exists,
)
from appliance.settings import InstanceRole, LockFailureAction

__all__ = [
    "FENCED_MESSAGE",
    "NOT_HOLDER_MESSAGE",
    "LeaseConfig",
    "LeaseManager",
    "LeaseState",
    "LeaseTimeout",
    "process_exists",
]
from backends.base import Backend
from backends.errors import BackendError

log = logging.getLogger(__name__)

NOT_HOLDER_MESSAGE = "The server is starting up, please try again later"
FENCED_MESSAGE = "This instance no longer holds the storage lease; writes are refused"
PROCEED_REASON = "timeout, failure action proceed"


Listener = Callable[[LeaseState, LeaseState], None]


class LeaseManager:
    """The lease state machine of one PRIMARY/SECONDARY process (the standby loop)."""

    def __init__(
        self,
        backend: Backend,
        config: LeaseConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        owner: OwnerId | None = None,
        is_process_alive: Callable[[int], bool] = process_exists,
    ) -> None:
        self.backend = backend
        self.config = config
        self._clock = clock
        self._is_alive = is_process_alive
        self._owner = owner or OwnerId.current()
        self.lease = self._new_lease(self._owner)
        # ``_lock`` serialises lease I/O (step, fence slow path, release); ``_state_lock`` only
        # guards state changes and waiters, so the event loop never waits behind backend I/O.
        self._lock = threading.RLock()
        self._state_lock = threading.Lock()
        self._state = LeaseState.WAITING
        self._waiting_since: float | None = None
        self._grace_until: float | None = None  # set while taking a lease over by force
        self._listeners: list[Listener] = []
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self.last_observation: Observation | None = None
        self.last_error: BaseException | None = None
        self.reason = "waiting for the lease"

    def _new_lease(self, owner: OwnerId) -> Lease:
        return Lease(
            self.backend, owner, ttl_s=self.config.ttl_s, clock=self._clock,
            skew_margin_s=self.config.skew_margin_s,
        )

    # --- what the app reads -----------------------------------------------------------------

    @property
    def state(self) -> LeaseState:
        """The current state."""
        return self._state

    @property
    def owner(self) -> str:
        """Our owner id, as written in ``.lock``."""
        return str(self.lease.owner)

    @property
    def generation(self) -> int:
        """The generation we hold (0 while not holding)."""
        return self.lease.generation if self._state is LeaseState.HOLDING else 0

    @property
    def renewal_age_s(self) -> float | None:
        """Seconds since the last successful renewal was sent (None if not holding)."""
        sent = self.lease.renewed_mono
        return None if sent is None else self._clock.monotonic() - sent

    @property
    def is_ready(self) -> bool:
        """HOLDING with a renewal younger than the fence window (spec §3.4 step 5)."""
        age = self.renewal_age_s
        return (
            self._state is LeaseState.HOLDING
            and age is not None
            and age < self.config.fence_window_s
        )

    def next_interval_s(self) -> float:
        """How long ``run`` sleeps after a step in the current state."""
        if self._state is LeaseState.HOLDING or self._grace_until is not None:
            return self.config.renew_interval_s
        return self.config.poll_s

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(old, new)`` on every state change (from whichever thread made it)."""
        self._listeners.append(listener)

    # --- one poll ---------------------------------------------------------------------------

    def step(self) -> LeaseState:
        """One poll: acquire/observe/break while WAITING, renew while HOLDING."""
        with self._lock:
            if self._state is LeaseState.WAITING:
                self._step_waiting()
            elif self._state is LeaseState.HOLDING:
                self._step_holding()
            return self._state

    def _step_waiting(self) -> None:
        now = self._clock.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if self._grace_until is not None:
            self._step_grace(now)
            return
        try:
            seen = self.lease.observe()
            self.last_observation = seen
            force, why = self._should_force(seen, now)
            if seen.free or force or self.lease.expired(seen):
                record = self.lease.acquire(force=force)
                self.last_error = None
                log.info(
                    "lease acquired",
                    extra={"role": self.config.role.value, "generation": record.generation,
                           "previous": seen.owner, "why": why or seen.state.value},
                )
                # Taken from a holder that may be alive (timeout + proceed), or from a lock
                # someone deleted: that holder's fence may pass writes for up to ttl/2 after
                # its last renewal, so we keep renewing but do not serve until it has closed.
                # Expired and released locks need no wait: their holder is already fenced.
                alive = why == PROCEED_REASON
                deleted = seen.state is LockState.ABSENT and record.generation > 1
                sent = self.lease.renewed_mono
                if (alive or deleted) and sent is not None:
                    self._grace_until = sent + self.config.fence_window_s
                    self.reason = (
                        f"took generation {record.generation} from {seen.owner}; serving after "
                        f"{self.config.fence_window_s:g}s, when its fence has closed"
                    )
                    return
                self._set_state(LeaseState.HOLDING, f"holding generation {record.generation}")
                return
            raise seen.held_error(self.config.ttl_s)
        except LeaseHeld as exc:
            self.last_error = exc
            self.reason = str(exc)
        except BackendError as exc:
            self.last_error = exc
            log.warning("lease poll failed: %s", exc, extra={"role": self.config.role.value})
        self._check_timeout(now)

    def _step_grace(self, now: float) -> None:
        """Renew a lease we took by force; serve once the previous holder's fence closed."""
        assert self._grace_until is not None
        try:
            record = self.lease.renew()
        except LeaseLost as exc:
            self._grace_until = None
            self.last_error = exc
            self.reason = f"lost the lease while taking it over: {exc.reason}"
            return
        except BackendError as exc:
            self.last_error = exc
            return
        if now >= self._grace_until:
            self._grace_until = None
            self._set_state(LeaseState.HOLDING, f"holding generation {record.generation}")

    def _should_force(self, seen: Observation, now: float) -> tuple[bool, str]:
        """Whether to take a live-looking lease now, and why."""
        if seen.free or self.lease.expired(seen):
            return False, ""
        primary = self.config.role is InstanceRole.PRIMARY
        record = seen.record
        if primary and record is not None and seen.state is LockState.HELD:
            pid = record.pid
            if (
                pid is not None
                and self.lease.owner.shares_pid_space(record)
                and not self._is_alive(pid)
            ):
                return True, f"holder pid {pid} is gone"
        if primary and self._timed_out(now) and (
            self.config.failure_action is LockFailureAction.PROCEED
        ):
            return True, PROCEED_REASON
        return False, ""

    def _timed_out(self, now: float) -> bool:
        timeout = self.config.timeout_s
        since = self._waiting_since
        return timeout > 0 and since is not None and now - since >= timeout

    def _check_timeout(self, now: float) -> None:
        if not self._timed_out(now):
            return
        if self.config.failure_action is LockFailureAction.ABORT:
            message = (
                f"Another instance is holding the lock ({self.reason}); "
                f"gave up after {self.config.timeout_s:g}s (RS_LOCK_FILE_FAILURE_ACTION=abort)"
            )
            self.last_error = LeaseTimeout(message)
            self._set_state(LeaseState.FAILED, message)
            raise self.last_error
        # proceed on a SECONDARY (a PRIMARY has forced the lease before getting here)
        log.warning("lease wait timed out; still waiting", extra={"role": self.config.role.value})
        self._waiting_since = now

    def _step_holding(self) -> None:
        try:
            self.lease.renew()
            self.last_error = None
        except LeaseLost as exc:
            self._step_down(exc)
        except BackendError as exc:
            # Keep HOLDING: the fence refuses writes once the renewal is older than ttl/2,
            # and the next renewal's CAS tells us whether someone broke the lease meanwhile.
            self.last_error = exc
            log.warning("lease renewal failed: %s", exc, extra={"role": self.config.role.value})

    def step_down(self, exc: LeaseLost) -> None:
        """Give up a lease we found we no longer own (e.g. a newer generation began)."""
        with self._lock:
            if self._state is LeaseState.HOLDING:
                self._step_down(exc)

    def _step_down(self, exc: LeaseLost) -> None:
        self.last_error = exc
        self.lease.forget()
        log.error(
            "lease lost, stepping down: %s", exc.reason,
            extra={"role": self.config.role.value, "found": exc.found_owner},
        )
        self._set_state(LeaseState.STEPPED_DOWN, f"lease lost: {exc.reason}")

    # --- the fence --------------------------------------------------------------------------

    def confirm(self) -> None:
        """Raise ServiceUnavailable unless we surely still hold the lease (may do I/O).

        The lease side of the fence; why it is safe: ``appliance/roles/write_fence.py``.
        """
        if self.surely_holding():
            return
        with self._lock:
            if self.surely_holding():
                return  # another caller renewed while we waited for the lock
            if self._state is not LeaseState.HOLDING:
                raise ServiceUnavailable(self.refusal())
            try:
                self.lease.renew()
            except LeaseLost as exc:
                self._step_down(exc)
                raise ServiceUnavailable(FENCED_MESSAGE) from exc
            except BackendError as exc:
                self.last_error = exc
                raise ServiceUnavailable(
                    f"The storage lease cannot be verified: {exc}"
                ) from exc

    def surely_holding(self) -> bool:
        """The fence's fast path (no I/O): holding, and renewed less than ``ttl/2`` ago."""
        if self._state is not LeaseState.HOLDING:
            return False
        sent = self.lease.renewed_mono
        return sent is not None and self._clock.monotonic() - sent < self.config.fence_window_s

    def refusal(self) -> str:
        """Why writes are refused right now (not holding, or stepped down)."""
        if self._state is LeaseState.STEPPED_DOWN:
            return FENCED_MESSAGE
        return NOT_HOLDER_MESSAGE

    # --- lifecycle --------------------------------------------------------------------------

    def release(self) -> bool:
        """Give the lease up on clean shutdown (flush first!); True if the marker landed."""
        with self._lock:
            # Also while taking over by force (WAITING, lease written, grace not over).
            if self.lease.held is None or self._state is not (
                LeaseState.HOLDING if self._grace_until is None else LeaseState.WAITING
            ):
                return False
            self._grace_until = None
            try:
                released = self.lease.release()
            except BackendError as exc:
                log.warning("lease release failed: %s", exc)
                released = False
            self._set_state(LeaseState.STEPPED_DOWN, "released")
            return released

    def rejoin(self) -> None:
        """After stepping down: wait for the lease again, under a fresh owner id."""
        with self._lock:
            if self._state is not LeaseState.STEPPED_DOWN:
                raise RuntimeError(f"cannot rejoin from {self._state.value}")
            # A new uuid: nothing we wrote under the old identity may be mistaken for ours.
            self._owner = dataclasses.replace(self._owner, uuid=uuid.uuid4().hex)
            self.lease = self._new_lease(self._owner)
            self._waiting_since = None
            self._grace_until = None
            self._set_state(LeaseState.WAITING, "waiting for the lease")

    async def wait_holding(self) -> int:
        """Wait until HOLDING; return the generation. LeaseError if FAILED/STEPPED_DOWN."""
        while True:
            state = self._state
            if state is LeaseState.HOLDING:
                return self.lease.generation
            if state is LeaseState.FAILED:
                raise self.last_error if isinstance(self.last_error, LeaseError) else (
                    LeaseTimeout(self.reason)
                )
            if state is LeaseState.STEPPED_DOWN:
                raise LeaseLost(self.reason)
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            with self._state_lock:
                if self._state is not state:
                    continue
                self._waiters.append((loop, future))
            await future

    async def run(self, stop: asyncio.Event) -> None:
        """Call ``step`` every interval until ``stop`` is set, FAILED, or STEPPED_DOWN."""
        while not stop.is_set():
            try:
                state = await asyncio.to_thread(self.step)
            except LeaseTimeout:
                return  # FAILED: listeners and wait_holding() carry the error
            except Exception:  # noqa: BLE001 - a failed poll must not end the loop
                log.exception("lease step failed")
                state = self._state
            if state in (LeaseState.FAILED, LeaseState.STEPPED_DOWN):
                return
            try:
                await asyncio.wait_for(stop.wait(), self.next_interval_s())
            except TimeoutError:
                pass

    def _set_state(self, new: LeaseState, reason: str) -> None:
        with self._state_lock:
            old, self._state, self.reason = self._state, new, reason
            if old is new:
                return
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)
        for listener in list(self._listeners):
            try:
                listener(old, new)
            except Exception:  # noqa: BLE001 - one bad listener must not break the lease
                log.exception("lease listener failed")


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
