"""The lifecycle policies of the instance: CRUD (API and provisioning), persistence, schedule.

Policies live in ``<data>/.lifecycles`` (JSON, replaced atomically), provisioned ones with their
flag: the API answers 409 on update/remove (mode changes are allowed, as for replications), and
a policy that leaves the provisioning is kept as an ordinary one, never deleted. Each enabled or
dry-run policy runs shortly after it is created or the instance starts, then every
``interval``; a run goes to the engine's thread pool through ``run_blocking`` and never
overlaps another run of the same policy. The last run's report is the policy's diagnostics,
and every run is also handed to ``on_run`` (the ``$system`` bucket records it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from appliance.engine.fs_ops import atomic_write
from appliance.errors import Conflict, NotFound
from appliance.lifecycle.policy import LifecyclePolicy, parse_mode, parse_policy
from appliance.lifecycle.runner import RunReport, run_policy

if TYPE_CHECKING:
    from appliance.engine import Storage

log = logging.getLogger(__name__)

FILE_NAME = ".lifecycles"
FILE_VERSION = 1
FIRST_RUN_DELAY = 1.0  # seconds after creation / start before the first run


def _rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@dataclass
class _Entry:
    """One policy and its run state."""

    policy: LifecyclePolicy
    is_provisioned: bool = False
    is_running: bool = False
    last_run: float | None = None
    last_report: RunReport | None = None
    cursors: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    wake: asyncio.Event | None = None


class LifecycleManager:
    """All lifecycle policies; API calls come from the event loop, runs from worker threads."""

    def __init__(
        self,
        data_path: Path,
        run_blocking: Callable[..., Awaitable[Any]],
        storage: Callable[[], Storage],
        *,
        on_run: Callable[[str, RunReport], None] | None = None,
        clock: Callable[[], float] = time.time,
        first_run_delay: float = FIRST_RUN_DELAY,
    ) -> None:
        self._path = data_path / FILE_NAME
        self._run_blocking = run_blocking
        self._storage = storage
        self._on_run = on_run
        self._clock = clock
        self._first_delay = first_run_delay
        self._items: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        self._started = False

    # --- persistence ------------------------------------------------------------------------

    def load(self) -> None:
        """Read the policies file (blocking); a missing file is an empty list."""
        if not self._path.exists():
            return
        raw = json.loads(self._path.read_text())
        for item in raw.get("lifecycles", []):
            try:
                policy = parse_policy(item["settings"])
            except Exception as exc:  # noqa: BLE001 - one bad item must not lose the others
                log.error("lifecycle '%s' in %s skipped: %s", item.get("name"), self._path, exc)
                continue
            self._items[item["name"]] = _Entry(
                policy, bool(item.get("is_provisioned")), last_run=item.get("last_run")
            )

    def _save(self) -> None:
        items = [
            {
                "name": name,
                "is_provisioned": e.is_provisioned,
                "last_run": e.last_run,
                "settings": e.policy.to_json(),
            }
            for name, e in sorted(self._items.items())
        ]
        data = json.dumps({"version": FILE_VERSION, "lifecycles": items}, indent=1).encode()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path, data)

    # --- read side --------------------------------------------------------------------------

    def info(self, name: str) -> dict[str, Any]:
        """ReductStore's ``LifecycleInfo`` of ``name``."""
        e = self._get(name)
        return {
            "name": name,
            "is_provisioned": e.is_provisioned,
            "is_running": e.is_running,
            "type": e.policy.type,
            "mode": e.policy.mode,
            "last_run": _rfc3339(e.last_run),
        }

    def list(self) -> list[dict[str, Any]]:
        """Every policy's info, sorted by name."""
        return [self.info(name) for name in sorted(self._items)]

    def detail(self, name: str) -> dict[str, Any]:
        """``{"info", "settings", "diagnostics"}`` (the last run's report, null before one)."""
        e = self._get(name)
        report = e.last_report
        return {
            "info": self.info(name),
            "settings": e.policy.to_json(),
            "diagnostics": {"last_run": None if report is None else report.to_json()},
        }

    def policy(self, name: str) -> LifecyclePolicy | None:
        """The current settings of ``name`` (None if it was removed)."""
        e = self._items.get(name)
        return None if e is None else e.policy

    def names(self) -> list[str]:
        """Names of every policy."""
        return sorted(self._items)

    def _get(self, name: str) -> _Entry:
        e = self._items.get(name)
        if e is None:
            raise NotFound(f"Lifecycle '{name}' does not exist")
        return e

    # --- API mutations (blocking: they write the file; call from a worker thread) -------------

    def create(self, name: str, policy: LifecyclePolicy) -> None:
        """Add a policy; 409 if the name exists, 404 if its bucket does not."""
        self._storage().get_bucket(policy.bucket)
        with self._lock:
            if name in self._items:
                raise Conflict(f"Lifecycle '{name}' already exists")
            self._items[name] = _Entry(policy)
            self._save()

    def update(self, name: str, policy: LifecyclePolicy) -> None:
        """Replace a policy's settings; 404 missing, 409 provisioned."""
        self._storage().get_bucket(policy.bucket)
        with self._lock:
            e = self._get(name)
            if e.is_provisioned:
                raise Conflict(f"Can't update provisioned lifecycle '{name}'")
            e.policy = policy
            e.cursors.clear()
            self._save()

    def set_mode(self, name: str, mode: str) -> None:
        """Change only the mode (allowed for provisioned policies too)."""
        with self._lock:
            e = self._get(name)
            e.policy = e.policy.with_mode(parse_mode(mode))
            self._save()

    def remove(self, name: str) -> None:
        """Delete a policy; 404 missing, 409 provisioned."""
        with self._lock:
            e = self._get(name)
            if e.is_provisioned:
                raise Conflict(f"Can't remove provisioned lifecycle '{name}'")
            del self._items[name]
            self._save()
        if e.task is not None:
            e.task.get_loop().call_soon_threadsafe(e.task.cancel)

    # --- provisioning -----------------------------------------------------------------------

    def provision(
        self, desired: Mapping[str, LifecyclePolicy], mode_unset: frozenset[str] = frozenset()
    ) -> list[str]:
        """Make the provisioned policies equal ``desired`` (blocking); returns problems.

        New names are created, existing ones replaced; an existing policy named in
        ``mode_unset`` (its provisioning sets no mode) keeps its current mode, as ReductStore
        does. Policies no longer provisioned stay as ordinary ones. A policy whose bucket is
        missing is skipped with a problem line.
        """
        problems: list[str] = []
        storage = self._storage()
        with self._lock:
            for name, policy in desired.items():
                try:
                    storage.get_bucket(policy.bucket)
                except NotFound as exc:
                    problems.append(f"lifecycle '{name}': {exc.message}")
                    continue
                e = self._items.get(name)
                if e is None:
                    self._items[name] = _Entry(policy, is_provisioned=True)
                else:
                    if name in mode_unset:
                        policy = policy.with_mode(e.policy.mode)
                    if e.policy != policy:
                        e.cursors.clear()
                    e.policy, e.is_provisioned = policy, True
            for name, e in self._items.items():
                if e.is_provisioned and name not in desired:
                    e.is_provisioned = False
            self._save()
        return problems

    # --- schedule ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the run loops (on the event loop); later creations start their own."""
        self._started = True
        self.sync_tasks()

    def sync_tasks(self) -> None:
        """A loop for every policy that has none (after create, provision or start)."""
        if not self._started:
            return
        for name, e in list(self._items.items()):
            if e.task is None or e.task.done():
                e.wake = asyncio.Event()
                e.task = asyncio.create_task(self._loop(name, e), name=f"lifecycle-{name}")

    async def stop(self) -> None:
        """Cancel every loop and wait for running passes to finish."""
        self._started = False
        tasks = [e.task for e in self._items.values() if e.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass

    async def _loop(self, name: str, e: _Entry) -> None:
        delay = self._first_delay
        while self._items.get(name) is e:
            assert e.wake is not None
            try:
                await asyncio.wait_for(e.wake.wait(), delay)
            except TimeoutError:
                pass
            e.wake.clear()
            if self._items.get(name) is not e:
                return
            if e.policy.mode != "disabled":
                try:
                    await self.run_now(name)
                except Exception as exc:  # noqa: BLE001 - not serving (503) or a bug: next time
                    log.warning("lifecycle '%s' did not run: %s", name, exc)
            delay = e.policy.interval_seconds

    async def run_now(self, name: str) -> RunReport:
        """Run ``name`` once, now (the loop's step; tests call it directly)."""
        e = self._get(name)
        policy = e.policy
        e.is_running = True
        try:
            now_us = int(self._clock() * 1_000_000)
            report = await self._run_blocking(run_policy, self._storage(), policy, e.cursors, now_us)
        finally:
            e.is_running = False
        e.last_run = self._clock()
        e.last_report = report
        level = logging.WARNING if report.errors else logging.INFO
        log.log(
            level,
            "lifecycle '%s' (%s): %d records %s in %d entries%s",
            name, policy.mode, report.matched if policy.mode == "dry_run" else report.removed,
            "would be removed" if policy.mode == "dry_run" else "removed", report.entries,
            f"; errors: {'; '.join(report.errors)}" if report.errors else "",
        )
        if self._on_run is not None:
            self._on_run(name, report)
        return report
