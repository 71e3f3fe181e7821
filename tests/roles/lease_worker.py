"""Child process for the real-process lease tests: one LeaseManager on a shared folder.

Run as ``python -m tests.roles.lease_worker ROOT NAME ROLE TTL POLL``. It runs the real
``LeaseManager.run()`` loop and a "writer" that calls the fence every 10 ms, and prints one
JSON line per event on stdout (times are ``time.monotonic()``, which on Linux is one clock
for every process on the host, so the parent can compare them with its own):

    {"event": "state", "state": "HOLDING", "generation": 2, "t": ..., "step_started": ...}
    {"event": "ack", "t_start": ..., "t_end": ...}      the fence passed: a write could be acked
    {"event": "refused", "t_start": ..., "error": ...}  the fence refused (503)

SIGTERM stops the loop, releases the lease and exits 0 after printing ``released``.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import threading
import time
from typing import Any

from appliance.errors import ServiceUnavailable
from appliance.roles.lease_manager import LeaseConfig, LeaseManager, LeaseState
from appliance.roles.write_fence import confirm_off_loop
from appliance.settings import InstanceRole, LockFailureAction
from backends.filesystem import FilesystemBackend

FENCE_PERIOD_SECONDS = 0.01


_EMIT_LOCK = threading.Lock()


def emit(**fields: Any) -> None:
    """One JSON line per event; locked because the lease thread and the loop both emit (two
    unlocked prints can interleave into one line the reader cannot parse)."""
    line = json.dumps(fields) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


async def main(root: str, name: str, role: str, ttl_s: float, poll_s: float) -> int:
    config = LeaseConfig(
        role=InstanceRole(role), ttl_s=ttl_s, poll_s=poll_s, timeout_s=0,
        failure_action=LockFailureAction.PROCEED,
    )
    manager = LeaseManager(FilesystemBackend(root), config)
    step_started = [0.0]
    plain_step = manager.step

    def timed_step() -> LeaseState:
        step_started[0] = time.monotonic()
        return plain_step()

    manager.step = timed_step  # type: ignore[method-assign]  # record when each poll began

    def on_change(old: LeaseState, new: LeaseState) -> None:
        emit(event="state", name=name, state=new.value, old=old.value,
             generation=manager.lease.generation, t=time.monotonic(),
             step_started=step_started[0], reason=manager.reason)

    manager.add_listener(on_change)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    emit(event="started", name=name, owner=manager.owner, t=time.monotonic())

    async def writer() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                await confirm_off_loop(manager)
            except ServiceUnavailable as exc:
                emit(event="refused", name=name, t_start=started, error=str(exc))
            else:
                emit(event="ack", name=name, t_start=started, t_end=time.monotonic())
            await asyncio.sleep(FENCE_PERIOD_SECONDS)

    writing = asyncio.create_task(writer())
    looping = asyncio.create_task(manager.run(stop))
    await stop.wait()
    await looping
    await writing
    released = await asyncio.to_thread(manager.release)
    emit(event="released", name=name, released=released, t=time.monotonic())
    return 0


if __name__ == "__main__":
    root, name, role, ttl, poll = sys.argv[1:6]
    sys.exit(asyncio.run(main(root, name, role, float(ttl), float(poll))))
