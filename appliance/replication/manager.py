"""The replication tasks of an instance: create/update/remove/mode, persistence, notification.

Task definitions are kept in ``<RS_DATA_PATH>/.replications`` (JSON, rewritten atomically after
every change; it holds the destination tokens, like ReductStore's file, so it stays inside the
data folder). At start-up each stored task is re-validated; one whose source bucket is gone is
dropped with an error line, as ReductStore does.

``notify`` is the writers' entry point (any thread): it hands the written records to every task
whose source is that bucket. Tasks send only while the manager is started, which the services
do on a standalone node or a lease holder once the engine is open; a replica or a standby never
starts them, and a holder that steps down stops them.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from appliance import metrics
from appliance.engine.fs_ops import atomic_write
from appliance.errors import Conflict, NotFound, UnprocessableEntity
from appliance.replication.models import Mode, ReplicationSettings, host_port
from appliance.replication.task import ReplicationTask, Runner, TaskOptions
from appliance.replication.txlog import UPDATE, WRITE

if TYPE_CHECKING:
    from appliance.engine import Storage

log = logging.getLogger(__name__)

FILE_NAME = ".replications"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "0.0.0.0"})
MAX_NAME = 128

__all__ = ["UPDATE", "WRITE", "ReplicationManager"]


class ReplicationManager:
    """Every task of the instance; CRUD on the event loop, ``notify`` from any thread."""

    def __init__(
        self,
        options: TaskOptions,
        *,
        storage: Callable[[], Storage | None],
        run: Runner,
        own_port: int,
        events: Callable[[str, dict[str, Any], dict[str, str]], None] | None = None,
    ) -> None:
        self.options = options
        self._events = events  # (task, payload, labels) -> `$system` (queues only)
        self._storage = storage
        self._run = run
        self._own_port = own_port
        self._tasks: dict[str, ReplicationTask] = {}
        self._by_bucket: Mapping[str, tuple[ReplicationTask, ...]] = {}
        self.provisioned: set[str] = set()
        self.started = False

    @property
    def path(self):  # noqa: ANN201 - Path
        """The file holding the task definitions."""
        return self.options.data_path / FILE_NAME

    # --- reading -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        """Task names, sorted."""
        return sorted(self._tasks)

    def get(self, name: str) -> ReplicationTask:
        """Task ``name``; 404 ``Replication 'x' does not exist``."""
        task = self._tasks.get(name)
        if task is None:
            raise NotFound(f"Replication '{name}' does not exist")
        return task

    def is_provisioned(self, name: str) -> bool:
        """True if ``name`` comes from provisioning (API update/remove → 409)."""
        return name in self.provisioned

    def list_json(self) -> list[dict[str, Any]]:
        """``ReplicationInfo`` of every task."""
        return [self._tasks[n].info_json(n in self.provisioned) for n in self.names()]

    def detail_json(self, name: str) -> dict[str, Any]:
        """``GET /replications/{name}``: info, settings (no token), hourly diagnostics."""
        task = self.get(name)
        return {
            "info": task.info_json(name in self.provisioned),
            "settings": task.settings.to_json(),
            "diagnostics": {"hourly": task.diagnostics.to_json()},
        }

    # --- writers -----------------------------------------------------------------------------

    def watches(self, bucket: str) -> bool:
        """True if some task replicates ``bucket`` (cheap: writers skip work otherwise)."""
        return bucket in self._by_bucket

    def notify(
        self, bucket: str, entry: str, items: Sequence[tuple[int, int, Mapping[str, str]]]
    ) -> None:
        """Records ``(kind, ts, labels)`` of ``bucket/entry`` were written or updated."""
        for task in self._by_bucket.get(bucket, ()):
            try:
                task.notify(entry, items)
            except Exception:  # noqa: BLE001 - a write must never fail because of replication
                log.exception("replication '%s': cannot log records of %s", task.name, entry)

    def _reindex(self) -> None:
        index: dict[str, list[ReplicationTask]] = {}
        for task in self._tasks.values():
            index.setdefault(task.settings.src_bucket, []).append(task)
        self._by_bucket = {k: tuple(v) for k, v in index.items()}  # swapped whole: thread-safe

    # --- validation and persistence ---------------------------------------------------------

    def _validate(self, name: str, settings: ReplicationSettings) -> None:
        storage = self._storage()
        if storage is None or settings.src_bucket not in storage.bucket_names():
            raise NotFound(
                f"Source bucket '{settings.src_bucket}' for replication '{name}' does not exist"
            )
        host, port = host_port(settings.dst_host)
        if (
            settings.src_bucket == settings.dst_bucket
            and host in LOCAL_HOSTS
            and port == self._own_port
        ):
            raise UnprocessableEntity("Source and destination buckets must be different")

    def save(self) -> None:
        """Rewrite the definitions file (blocking)."""
        items = [
            {"name": n, "settings": self._tasks[n].settings.to_json(with_token=True)}
            for n in self.names()
        ]
        data = json.dumps({"version": 1, "replications": items}, indent=1).encode()
        atomic_write(self.path, data)
        self.path.chmod(0o600)  # it holds the destination tokens

    def load(self) -> None:
        """Load the stored tasks (blocking); invalid ones are dropped with an error line."""
        if not self.path.exists():
            return
        try:
            document = json.loads(self.path.read_bytes())
            items = document["replications"]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("cannot read %s (%s): no replication task loaded", self.path, exc)
            return
        for item in items:
            name = item.get("name", "?") if isinstance(item, dict) else "?"
            try:
                check_name(name)
                settings = ReplicationSettings.from_json(item["settings"])
                self._validate(name, settings)
            except Exception as exc:  # noqa: BLE001 - one bad task must not stop the others
                log.error("replication '%s' is dropped: %s", name, exc)
                continue
            self._tasks[name] = self._new_task(name, settings)
        self._reindex()
        log.info("replication tasks loaded: %s", ", ".join(self.names()) or "none")

    def _new_task(self, name: str, settings: ReplicationSettings) -> ReplicationTask:
        events = self._events
        emit = None if events is None else functools.partial(events, name)
        return ReplicationTask(
            name, settings, self.options, storage=self._storage, run=self._run, events=emit
        )

    def report_metrics(self) -> None:
        """Set every task's pending-records and lag gauges (blocking: reads the log fronts)."""
        now_us = time.time_ns() // 1000
        for name, task in list(self._tasks.items()):
            oldest = task.oldest_pending()
            lag = 0.0 if oldest is None else max(0.0, (now_us - oldest) / 1e6)
            metrics.set_replication(name, pending_records=task.pending_records, lag_seconds=lag)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every task's sender (a standalone node or the lease holder)."""
        self.started = True
        for task in list(self._tasks.values()):
            await task.start()
        if self._tasks:
            log.info("replication tasks started: %s", ", ".join(self.names()))

    async def stop(self) -> None:
        """Stop every sender; the logs keep the backlog for the next start."""
        self.started = False
        for task in list(self._tasks.values()):
            await task.stop()

    # --- changes (event loop) ----------------------------------------------------------------

    def create_now(self, name: str, settings: ReplicationSettings) -> ReplicationTask:
        """The blocking part of ``create`` (checks, insert, save); the caller starts the task."""
        check_name(name)
        if name in self._tasks:
            raise Conflict(f"Replication '{name}' already exists")
        self._validate(name, settings)
        task = self._new_task(name, settings)
        self._tasks[name] = task
        self._reindex()
        self.save()
        log.info("replication '%s' created: %s -> %s", name, settings.src_bucket, _target(settings))
        return task

    async def create(self, name: str, settings: ReplicationSettings) -> None:
        """Create task ``name``; 409 if it exists, 404/422 for bad settings."""
        task = self.create_now(name, settings)
        if self.started:
            await task.start()

    def update_now(
        self, name: str, settings: ReplicationSettings, *, force: bool = False
    ) -> tuple[ReplicationTask, ReplicationTask]:
        """The blocking part of ``update``: the new task is in place and saved; the caller
        finishes with ``finish_update(old, new)``."""
        old = self.get(name)
        if name in self.provisioned and not force:
            raise Conflict(f"Can't update provisioned replication '{name}'")
        settings = settings.keeping_token(old.settings)
        self._validate(name, settings)
        task = self._new_task(name, settings)
        if old.settings.src_bucket == settings.src_bucket:
            task.adopt_logs(old)  # the backlog survives the update (ReductStore)
        self._tasks[name] = task
        self._reindex()  # writers now reach the new task
        self.save()
        log.info("replication '%s' updated: %s -> %s", name, settings.src_bucket, _target(settings))
        return old, task

    async def finish_update(self, old: ReplicationTask, new: ReplicationTask) -> None:
        """Stop the replaced sender and start the new one."""
        same_source = old.settings.src_bucket == new.settings.src_bucket
        await old.stop(close_logs=not same_source)
        if not same_source:
            # the old source's backlog means nothing now
            await self._run(functools.partial(old.remove_logs, every_source=False))
        if self.started:
            await new.start()

    async def update(self, name: str, settings: ReplicationSettings, *, force: bool = False) -> None:
        """Replace the settings (token kept when none is given); 409 for a provisioned task."""
        old, new = self.update_now(name, settings, force=force)
        await self.finish_update(old, new)

    async def remove(self, name: str, *, force: bool = False) -> None:
        """Remove the task and its logs; 409 for a provisioned task."""
        task = self.get(name)
        if name in self.provisioned and not force:
            raise Conflict(f"Can't remove provisioned replication '{name}'")
        del self._tasks[name]
        self.provisioned.discard(name)
        self._reindex()
        await task.stop()
        await self._run(task.remove_logs)
        await self._run(self.save)
        metrics.remove_replication(name)
        log.info("replication '%s' removed", name)

    async def set_mode(self, name: str, mode: Mode) -> None:
        """Change only the mode (allowed on provisioned tasks too) and persist it."""
        task = self.get(name)
        task.set_mode(mode)
        await self._run(self.save)
        log.info("replication '%s' mode: %s", name, mode.value)


def check_name(name: str) -> str:
    """``name`` if it can name a task (it names a folder of logs too), else 422."""
    if not isinstance(name, str) or name.strip() in ("", ".", "..") or len(name) > MAX_NAME:
        raise UnprocessableEntity(f"Invalid replication name '{name}'")
    return name


def _target(settings: ReplicationSettings) -> str:
    """``host bucket`` for logs: never the token."""
    return f"{settings.dst_host} bucket '{settings.dst_bucket}'"


class ProvisionOutcome:
    """What applying the provisioned tasks did (for the reconcile summary)."""

    def __init__(self) -> None:
        self.created: list[str] = []
        self.updated: list[str] = []
        self.unchanged: list[str] = []
        self.unprovisioned: list[str] = []
        self.errors: list[str] = []


def provision(
    manager: ReplicationManager,
    desired: Mapping[str, tuple[ReplicationSettings, bool]],
    origins: Mapping[str, str],
    schedule: Callable[[Coroutine[Any, Any, None]], object],
) -> ProvisionOutcome:
    """Make the provisioned tasks match ``desired`` (name -> (settings, mode given)).

    Blocking and callable from any thread: task senders are started and stopped through
    ``schedule`` (which hands a coroutine to the event loop without waiting for it). A task
    that exists (from the file or an earlier provisioning) is updated, keeping its persisted
    mode unless the provisioning sets one; tasks that leave the provisioning are only unmarked
    (kept, and their backlog with them).
    """
    outcome = ProvisionOutcome()
    marked = set()
    for name, (settings, mode_given) in sorted(desired.items()):
        try:
            current = manager._tasks.get(name)  # noqa: SLF001 - same package
            if current is None:
                task = manager.create_now(name, settings)
                if manager.started:
                    schedule(task.start())
                outcome.created.append(name)
            else:
                if not mode_given:
                    settings = settings.with_mode(current.settings.mode)
                if settings != current.settings:
                    old, new = manager.update_now(name, settings, force=True)
                    schedule(manager.finish_update(old, new))
                    outcome.updated.append(name)
                else:
                    outcome.unchanged.append(name)
            marked.add(name)
        except Exception as exc:  # noqa: BLE001 - one task failing must not stop the others
            message = f"replication '{name}' ({origins.get(name, '?')}): {exc}"
            outcome.errors.append(message)
            log.error("provisioning failed for %s", message)
    for name in sorted(manager.provisioned - set(desired)):
        outcome.unprovisioned.append(name)
        log.warning("replication '%s' is no longer provisioned; it is kept", name)
    manager.provisioned = marked
    return outcome
