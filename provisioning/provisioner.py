"""The provisioner: boot-time provisioning, live reloads, and the state the API reads.

``Provisioner.start()`` applies the desired state once (an invalid provisioning raises
ConfigError, which stops startup) and then, unless disabled, runs the watch loop, whose single
step is ``reload_once()``: read the files again, reconcile, and on any error log one line,
record it in ``state`` and keep the last good state in force. Env groups are read once: the
environment of a running process does not change.

Instance settings are not applied here (``Settings`` is frozen and built at the entrypoint);
a reload that changes one logs "requires restart" and lists it in ``state.restart_required``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from appliance.engine.models import BucketSettings
from appliance.errors import ConfigError
from appliance.settings import env_name
from provisioning.env import EnvGroups, load_env_groups
from provisioning.instance import (
    YAML_KEYS,
    describe_change,
    env_overridden,
    instance_overrides,
    restart_required,
)
from provisioning.merge import load_desired
from provisioning.models import DesiredState
from provisioning.reconcile import ReconcileResult, StorageLike, TokenProvisioner, reconcile
from provisioning.replications import ReplicationProvisioner
from provisioning.state import ProvisioningState
from provisioning.watcher import DEFAULT_DEBOUNCE_MS, DEFAULT_POLL_INTERVAL_S, watch

log = logging.getLogger(__name__)

STOP_TIMEOUT_S = 5.0


def report_loaded(desired: DesiredState, environ: Mapping[str, str]) -> None:
    """Log what loading ``desired`` found: skipped env groups (warnings) and YAML ``instance:``
    keys that an explicit ``RS_*`` variable overrides (info)."""
    for warning in desired.warnings:
        log.warning("provisioning: %s", warning)
    for field in env_overridden(instance_overrides(desired), environ):
        log.info("provisioning: %s is overridden by %s", YAML_KEYS[field], env_name(field))


class Provisioner:
    """Applies provisioning at boot and on every change of the YAML files."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str],
        path: Path | None,
        storage: StorageLike,
        tokens: TokenProvisioner,
        bucket_defaults: BucketSettings | None = None,
        initial: DesiredState | None = None,
        state: ProvisioningState | None = None,
        watch_enabled: bool = True,
        debounce_ms: int = DEFAULT_DEBOUNCE_MS,
        poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
        force_polling: bool | None = None,
        replications: ReplicationProvisioner | None = None,
        on_applied: Callable[[DesiredState], list[str]] | None = None,
    ) -> None:
        """``initial``: the state already loaded to build Settings (avoids a second read); its
        warnings and env overrides were reported by whoever loaded it, so boot does not repeat
        them. ``on_applied(desired)`` runs after every successful reconcile (lifecycles are
        applied there) and returns problems to log."""
        self._on_applied = on_applied
        self._environ = dict(environ)
        self._path = path
        self._storage = storage
        self._tokens = tokens
        self._replications = replications
        self._bucket_defaults = bucket_defaults
        self._initial = initial
        self.state = state or ProvisioningState()
        self._watch_enabled = watch_enabled
        self._debounce_ms = debounce_ms
        self._poll_interval_s = poll_interval_s
        self._force_polling = force_polling
        self._env_groups: EnvGroups | None = None
        self._desired: DesiredState | None = None
        self._baseline: dict[str, Any] = {}  # instance overrides the running Settings came from
        self._fingerprint: str | None = None
        self._lock = threading.Lock()  # one reload at a time (watch loop vs. direct calls)
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._booted = False

    @property
    def desired(self) -> DesiredState | None:
        """The desired state now in force (None before boot)."""
        return self._desired

    # --- boot ---------------------------------------------------------------------------

    def boot(self) -> ReconcileResult:
        """Load and apply the provisioning once; ConfigError stops startup."""
        with self._lock:
            self._env_groups = load_env_groups(self._environ)
            desired = self._initial
            if desired is None:
                desired = load_desired(self._environ, self._path, env_groups=self._env_groups)
                report_loaded(desired, self._environ)
            self._baseline = instance_overrides(desired)
            try:
                result = self._apply(desired)
            except ConfigError as exc:
                self.state.record_rejected(str(exc))
                raise
            self._booted = True
            log.info("provisioning applied from %s: %s", desired.source, result.summary())
            return result

    async def start(self) -> None:
        """Boot (in a worker thread) unless ``boot()`` already ran, then start the watch loop
        if enabled and a path is set."""
        if not self._booted:
            await asyncio.to_thread(self.boot)
        if self._watch_enabled and self._path is not None and self._task is None:
            self._stop = asyncio.Event()
            self._task = asyncio.create_task(self._watch_loop(), name="provisioning-watch")

    async def stop(self) -> None:
        """Stop the watch loop; safe to call twice or without start."""
        task, self._task = self._task, None
        if task is None:
            return
        assert self._stop is not None
        self._stop.set()
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # --- the step -----------------------------------------------------------------------

    def reload_once(self) -> ReconcileResult | None:
        """Re-read the YAML and reconcile; on error log it, record it, keep the last good state."""
        if self._path is None:
            return None
        with self._lock:
            try:
                desired = load_desired(self._environ, self._path, env_groups=self._env_groups)
                result = self._apply(desired)
            except ConfigError as exc:
                log.error("provisioning rejected, previous state stays in force: %s", exc)
                self.state.record_rejected(str(exc))
                return None
            except Exception as exc:  # a storage failure must not kill the watch loop
                log.exception("provisioning reload failed, previous state stays in force")
                self.state.record_rejected(f"reload failed: {exc}")
                return None
            self._report_instance_changes(desired)
            if result.changed or result.errors:
                log.info("provisioning reloaded from %s: %s", desired.source, result.summary())
            return result

    def _apply(self, desired: DesiredState) -> ReconcileResult:
        result = reconcile(
            desired,
            self._storage,
            self._tokens,
            self.state,
            bucket_defaults=self._bucket_defaults,
            replications=self._replications,
        )
        self._desired = desired
        self._fingerprint = desired.fingerprint
        if self._on_applied is not None:
            for problem in self._on_applied(desired):  # objects kept outside reconcile
                log.error("provisioning: %s", problem)
                self.state.record_rejected(problem)
        return result

    def _report_instance_changes(self, desired: DesiredState) -> None:
        new = instance_overrides(desired)
        fields = restart_required(self._baseline, new, self._environ)
        if tuple(fields) != self.state.restart_required:
            for field in fields:
                log.warning(
                    "provisioning: instance setting %s requires restart; the running value "
                    "stays until then",
                    describe_change(field, self._baseline, new),
                )
        self.state.record_restart_required(fields)

    async def _watch_loop(self) -> None:
        assert self._path is not None and self._stop is not None
        await watch(
            self._path,
            lambda: asyncio.to_thread(self.reload_once),
            stop_event=self._stop,
            initial_fingerprint=self._fingerprint,
            debounce_ms=self._debounce_ms,
            poll_interval_s=self._poll_interval_s,
            force_polling=self._force_polling,
        )
