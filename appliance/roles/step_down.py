"""What a lease holder does when it steps down: stop writing at once, then exit or compete again.

A holder steps down when its lease is lost or tampered with, or when the engine finds a file of
a newer generation (``deposed``). The role notices it in any thread; from then on:

1. at once, in that thread: ``halt()`` the engine (a flag, no I/O: no flush, no index write,
   the successor recovers our WAL);
2. on the event loop: ``teardown()`` whatever serves (provisioning, the abandoned engine, open
   queries);
3. with ``RS_LOCK_FILE_FAILURE_ACTION=abort`` (``role.must_exit``) ``fail`` with that exit code;
   with ``proceed``: ``suspend()`` (not open any more), ``role.rejoin()`` (wait for the lease
   again) and ``reopen()`` (recover and serve once we hold it).

The services supply the hooks (``Serving``); the order and the decision live here.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from appliance.roles.lease import LeaseLost
from appliance.roles.role import RoleManager, RoleStatus

log = logging.getLogger(__name__)


class Serving(Protocol):
    """What the services let a step-down do to them."""

    @property
    def closed(self) -> bool:
        """True once the services are stopping (a step-down then does nothing more)."""
        ...

    def halt(self) -> None:
        """Stop the engine writing at once (any thread, no I/O)."""
        ...

    async def teardown(self) -> None:
        """Stop provisioning, abandon the engine, drop open queries."""
        ...

    def fail(self, message: str, exc: BaseException, code: int) -> None:
        """Give up serving: the server exits with ``code``."""
        ...

    def suspend(self) -> None:
        """No longer open (readiness waits for the re-open)."""
        ...

    def reopen(self) -> None:
        """Start opening (recovering) the engine again."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task the services cancel when they stop."""
        ...


class StepDown:
    """The role listener that turns STEPPED_DOWN into the steps of the module doc."""

    def __init__(self, role: RoleManager, serving: Serving) -> None:
        self.role = role
        self.serving = serving
        self._loop: asyncio.AbstractEventLoop | None = None
        role.add_listener(self._role_changed)

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """The event loop the teardown runs on (set when the services start)."""
        self._loop = loop

    def _role_changed(self, status: RoleStatus) -> None:
        """Role listener (any thread): a holder that stepped down stops writing at once."""
        if status.state != "STEPPED_DOWN" or self.serving.closed:
            return
        self.serving.halt()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        if not self.serving.closed:
            self.serving.spawn(self._step_down(), "step-down")

    async def _step_down(self) -> None:
        """Abandon the engine; exit (abort) or compete for the lease again (proceed)."""
        await self.serving.teardown()
        code = self.role.must_exit
        if code is not None:
            detail = self.role.status().detail
            self.serving.fail(f"storage lease lost, exiting: {detail}", LeaseLost(detail), code)
            return
        if self.serving.closed:
            return
        log.warning("storage lease lost; waiting to take it again (failure action proceed)")
        self.serving.suspend()
        await self.role.rejoin()
        self.serving.reopen()
