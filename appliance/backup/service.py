"""The running instance's side of backups: create on request or on schedule, retention,
list/verify/delete through the API, and lifting the restored read-only mark (issue 12).

One backup at a time (an asyncio lock); the work runs on its own thread so the engine's pool
keeps serving. A backup started by a request finishes even if the client goes away (the CLI
killed mid-backup): the result is in the target either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from appliance import metrics
from appliance.backup import folder as ft
from appliance.backup.targets import Target, open_target
from appliance.errors import Forbidden
from appliance.workers import Workers
from appliance.backup import instance, snapshot
from appliance.backup import manifest as mf

if TYPE_CHECKING:
    from appliance.engine import Storage
    from appliance.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class BackupResult:
    """What ``POST /api/v1/backups`` answers."""

    manifest: mf.Manifest
    removed: list[str]

    def to_json(self) -> dict[str, object]:
        """``{"id", "cut_us", "pause_ms", "files", "bytes", ...}``."""
        m = self.manifest
        return {
            "id": m.id,
            "cut_us": m.cut_us,
            "pause_ms": m.pause_ms,
            "files": len(m.files),
            "bytes": m.bytes,
            "new_bytes": m.new_bytes,
            "removed": self.removed,
        }


def resolve_target(value: str | None, default: str) -> Target:
    """The target named by a request or ``RS_BACKUP_TARGET`` (422 if neither)."""
    return open_target(value or default or "")


class BackupService:
    """Backups of one instance (owned by ``Services``)."""

    def __init__(self, settings: Settings, storage: Callable[[], Storage], generation: Callable[[], int]):
        self.settings = settings
        self._storage = storage
        self._generation = generation
        # One backup at a time, off the engine pool (a long backup must not starve requests).
        self._workers = Workers(ThreadPoolExecutor(1, thread_name_prefix="backup"))
        self._lock = asyncio.Lock()
        self.restored_from: str | None = None
        self.last: BackupResult | None = None
        self.last_error: str | None = None
        self.archived_until_us: int | None = None
        self.archive_error: str | None = None

    def prepare(self) -> None:
        """At startup (blocking): clear staging leftovers, read the restored mark."""
        snapshot.clear_staging(self.settings.data_path)
        self.restored_from = instance.restored_from(self.settings.data_path)
        if self.restored_from is not None:
            log.warning("%s", instance.read_only_message(self.restored_from))

    def _create(self, target: Target, buckets: list[str] | None) -> BackupResult:
        storage = self._storage()
        data = self.settings.data_path
        try:
            with target.locked():
                staged = snapshot.stage(storage, data, buckets)
                try:
                    made = target.publish(
                        staged,
                        instance=self.settings.effective_instance_name,
                        generation=self._generation(),
                        buckets=buckets,
                    )
                except BaseException:
                    snapshot.clear_staging(data)
                    raise
                removed = target.apply_retention(
                    self.settings.backup_keep_last, self.settings.backup_max_age, made.id
                )
                if removed:
                    from appliance.backup import pitr

                    pitr.prune_archive(target)  # journal only dropped backups needed
        finally:
            target.close()
        log.info(
            "backup %s written to %s: %d file(s), %d byte(s), %d new, pause %.1f ms%s",
            made.id, target.name, len(made.files), made.bytes, made.new_bytes, made.pause_ms,
            f", retention removed {', '.join(removed)}" if removed else "",
        )
        return BackupResult(made, removed)

    async def create(self, target: str | None = None, buckets: list[str] | None = None) -> BackupResult:
        """Take a backup now; finishes even if the caller is cancelled."""
        if self._storage().options.read_only:  # 503 while starting, before queueing
            raise Forbidden("a read-only replica takes no backups: back up the instance that writes")
        chosen = resolve_target(target, self.settings.backup_target)
        task = asyncio.ensure_future(self._create_locked(chosen, buckets))
        return await asyncio.shield(task)

    async def _create_locked(self, target: Target, buckets: list[str] | None) -> BackupResult:
        async with self._lock:
            try:
                result = await self._workers.run(self._create, target, buckets)
            except Exception as exc:
                self.last_error = str(exc)
                metrics.backup_finished(False)
                raise
            metrics.backup_finished(True)
            self.last, self.last_error = result, None
            return result

    def _on_target(self, raw: str | None, fn: Callable[..., T], *args: Any) -> T:
        target = resolve_target(raw, self.settings.backup_target)
        try:
            return fn(target, *args)
        finally:
            target.close()

    async def list(self, target: str | None) -> list[ft.BackupInfo]:
        """Backups in the target."""
        return await self._workers.run(self._on_target, target, lambda t: t.list_backups())

    async def verify(self, backup: str, target: str | None) -> ft.VerifyReport:
        """Verify one backup (manifest and scrub)."""
        mf.check_id(backup)
        return await self._workers.run(self._on_target, target, lambda t: t.verify(backup))

    async def delete(self, backup: str, target: str | None) -> None:
        """Delete one backup."""
        mf.check_id(backup)

        await self._workers.run(self._on_target, target, lambda t: t.delete(backup))

    async def set_read_write(self) -> bool:
        """Lift the restored read-only mark; whether the instance was read-only."""
        was = self.restored_from is not None
        await self._workers.run(instance.clear_restored, self.settings.data_path)
        self.restored_from = None
        if was:
            log.warning("restored instance set read-write")
        return was

    async def schedule(self) -> None:
        """Back up every ``RS_BACKUP_INTERVAL`` to ``RS_BACKUP_TARGET`` (a background task)."""
        interval = self.settings.backup_interval
        while True:
            await asyncio.sleep(interval)
            started = time.monotonic()
            try:
                await self.create()
            except Exception as exc:  # noqa: BLE001 - a failed backup must not stop the schedule
                log.error("scheduled backup failed: %s", exc)
            else:
                log.info("scheduled backup took %.1f s", time.monotonic() - started)

    def _ship(self) -> int:
        """Close the open journal segment and ship every closed one (blocking)."""
        from appliance.backup import pitr

        target = resolve_target(None, self.settings.backup_target)
        try:
            shipped = pitr.ship(self._storage().rotate_journal(), target)
        finally:
            target.close()
        self.archived_until_us = time.time_ns() // 1000
        return shipped

    async def ship_on_stop(self) -> None:
        """A clean stop ships what is journaled, so it loses nothing (best effort)."""
        if self.settings.backup_archive_interval > 0 and self.settings.backup_target:
            try:
                await asyncio.to_thread(self._ship)
            except Exception as exc:  # noqa: BLE001 - shipped at the next start instead
                log.error("archiving the journal at shutdown failed: %s", exc)

    async def archive(self) -> None:
        """Continuous archiving: ship the journal every ``RS_BACKUP_ARCHIVE_INTERVAL``."""
        interval = self.settings.backup_archive_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.to_thread(self._ship)  # not behind a long backup
                self.archive_error = None
            except Exception as exc:  # noqa: BLE001 - segments stay local; retried next time
                self.archive_error = str(exc)
                log.error("archiving the journal failed (will retry): %s", exc)

    def info(self) -> dict[str, object]:
        """The ``backup`` object of ``/api/v1/info``."""
        last = self.last.manifest if self.last is not None else None
        return {
            "read_only": self.restored_from is not None,
            "restored_from": self.restored_from,
            "target": self.settings.backup_target or None,
            "interval": self.settings.backup_interval,
            "last_backup": None if last is None else last.id,
            "last_pause_ms": None if last is None else last.pause_ms,
            "last_error": self.last_error,
            "archive_interval": self.settings.backup_archive_interval,
            "archived_until_us": self.archived_until_us,
            "archive_error": self.archive_error,
        }

    def close(self) -> None:
        """Wait for a backup in progress, then stop the thread."""
        self._workers.shutdown()
