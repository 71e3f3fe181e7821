"""The write fence: the one place that decides whether this process may still write.

``WriteFence(role)`` is built once by the services and is the engine's ``WriteFence``
(``engine/models.py``). Its one question, ``check``, is asked in three places, and the safety
argument needs exactly these:

1. **In the engine, before every mutation, compaction and flush** (``check()``, worker thread,
   may do I/O). This is the check that keeps two nodes from writing the shared dataset: a lease
   holder passes only if its last successful renewal was *sent* less than ``ttl/2`` ago
   (monotonic), and a contender breaks a lease only after seeing that very version unchanged for
   a full ``ttl``; otherwise it renews first (a compare-and-swap on the version it wrote, proving
   nobody changed ``.lock``) and steps down with 503 if the lease is gone
   (``LeaseManager.confirm``). A process resumed from SIGSTOP always takes the renewing path,
   because its monotonic clock kept running while it was stopped.
2. **After a mutation, before its 2xx leaves** (``await check_async()``, the app's after-request
   hook). A write that passed (1) may have been slow; checking again after it means an
   acknowledged write was made before any takeover, or the client gets 503 instead of the
   acknowledgement (issue #5). Without it a write could be acknowledged by a deposed holder.
3. **Before a mutating request** (``await check_async()`` in the before-request hook, and the
   no-I/O ``check(io=False)`` in the handlers). Not needed for safety, (1) and (2) are: it
   answers early and in a fixed order (auth 401/403, names 422, then 403 replica / 503 not the
   holder / 403 restored backup, then 409 provisioned) before a body is read, and gives a
   replica its 403. A data folder restored from a backup and not yet accepted refuses client
   writes here too (``read_only_reason``); the instance's own writers are not fenced by it.

``check_async`` keeps the renewal's I/O off the event loop (fast path inline, slow path in a
thread). Only a lease holder has a timing part (``timed``): the hooks skip the other roles.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from appliance.errors import Forbidden, ServiceUnavailable
from appliance.roles.lease_manager import NOT_HOLDER_MESSAGE, LeaseManager
from appliance.roles.replica import REPLICA_MESSAGE
from appliance.roles.role import LeaseRole, RoleManager


async def confirm_off_loop(manager: LeaseManager) -> None:
    """``manager.confirm()`` for the event loop: the fast path inline, the renewal in a thread."""
    if not manager.surely_holding():
        await asyncio.to_thread(manager.confirm)


class WriteFence:
    """The fence of one role (see the module doc for where and why it is checked)."""

    def __init__(
        self, role: RoleManager, read_only_reason: Callable[[], str | None] = lambda: None
    ) -> None:
        self.role = role
        # Why clients may not write for a reason outside the role (a restored backup), or None.
        self.read_only_reason = read_only_reason

    @property
    def timed(self) -> bool:
        """True for a lease holder: its fence depends on time and may need I/O."""
        return isinstance(self.role, LeaseRole)

    def check(self, *, io: bool = True) -> None:
        """Raise unless a write may happen: 403 replica, 503 not (surely) the lease holder.

        ``io=False`` (event loop, handlers) skips the timing part and never does I/O, and adds
        the client-only refusal of a restored backup (403).
        """
        role = self.role
        if role.read_only:
            raise Forbidden(REPLICA_MESSAGE)
        if isinstance(role, LeaseRole):
            if not role.generation:
                raise ServiceUnavailable(NOT_HOLDER_MESSAGE if io else role.manager.refusal())
            if io:
                role.manager.confirm()
        if not io:
            reason = self.read_only_reason()
            if reason is not None:
                raise Forbidden(reason)

    async def check_async(self) -> None:
        """``check()`` with the lease renewal (if needed) in a thread, off the event loop."""
        role = self.role
        if not isinstance(role, LeaseRole):
            self.check(io=False)
            return
        if not role.generation:
            raise ServiceUnavailable(NOT_HOLDER_MESSAGE)
        await confirm_off_loop(role.manager)

    def deposed(self, reason: str) -> None:
        """The engine found a newer generation's file: step down now (no I/O, never raises)."""
        self.role.deposed(reason)
