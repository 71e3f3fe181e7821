"""Composition root: builds the engine, the token store, the query registry, provisioning and
the background loops.

``create_app`` owns one ``Services``. The engine opens in a background task started when the
app starts serving, so HTTP answers at once (``/alive`` 200, everything else 503 until open).
Every engine call goes through ``workers`` (``workers.py``, a dedicated thread pool): the
engine is blocking code and nothing may block the event loop (ARCHITECTURE §3 "Concurrency").

Startup order in that task: the role (a PRIMARY/SECONDARY waits for the lease and records
"generation N began"), token store, engine, provisioning ``boot()`` (buckets, then tokens),
and only then "open": no client ever sees a half-provisioned instance. If the engine cannot be
opened or the provisioning is refused, the instance cannot serve: ``failed`` is set with an
exit code (2 for a configuration error, 1 otherwise) and ``appliance.server`` shuts down and
exits with it, so systemd or docker see a dead service, not one stuck answering 503.

Roles (``appliance.roles``, ARCHITECTURE §5): ``ready`` needs the role's consent (lease held,
or the replica's first refresh). A REPLICA opens the engine read-only, refreshes it every
``RS_ENGINE_REPLICA_UPDATE_INTERVAL`` and runs neither compaction nor provisioning. A lease
holder that steps down (lost or tampered lease, a newer generation's file) abandons the engine
without writing anything (``roles/step_down.py`` decides, the hooks below act); with
``RS_LOCK_FILE_FAILURE_ACTION=abort`` the process exits 1, with ``proceed`` it competes for the lease again and re-opens (recovering) once it holds it. On
shutdown the holder flushes the engine while it still holds the lease, then releases it, so
the standby takes over within one polling interval.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any

from appliance import metrics
from appliance.auth import Permissions, TokenStore
from appliance.backup import instance as backup_instance
from appliance.backup.service import BackupService
from appliance.engine.models import BucketSettings, EngineOptions
from appliance.errors import ConfigError, ServiceUnavailable
from appliance.events import SystemEvents
from appliance.inuse import FolderInUse, InUseLock, identity
from appliance.lifecycle import LifecycleManager
from appliance.lifecycle.runner import RunReport
from appliance.query.registry import QueryRegistry
from appliance.replication import ReplicationManager, TaskOptions
from appliance.replication import provision as provision_replications
from appliance import remote
from appliance.engine.mirror import KEY_PREFIX as DATA_KEY_PREFIX
from appliance.roles.fencing import load_wal_fence, snapshot_wal
from appliance.roles.lease import LeaseError, LeaseLost
from appliance.roles.role import LeaseRole, RoleManager, build_role_manager
from appliance.roles.step_down import StepDown
from appliance.roles.write_fence import WriteFence
from appliance.settings import Settings
from appliance.workers import Workers
from backends.base import Backend
from backends.errors import BackendError
from backends.filesystem import FilesystemBackend
from provisioning import (
    DesiredState,
    Provisioner,
    ProvisioningState,
    TokenPermissions,
    TokenSkipped,
)

if TYPE_CHECKING:
    from appliance.engine import Storage

log = logging.getLogger(__name__)

STARTING_MESSAGE = "The server is starting up, please try again later"
# Enough threads that a slow disk write does not stall reads of other entries, few enough
# that a 2-core edge box does not thrash.
ENGINE_THREADS = 8
# Token last_access times reach the .auth file at most this often (and at shutdown).
LAST_ACCESS_FLUSH_SECONDS = 30.0
EXIT_RUNTIME = 1  # exit codes of `appliance serve` (cli/main.py)
EXIT_CONFIG = 2
# A lease CAS waits at most this long for another writer's key lock (a stopped holder's
# lock is taken over sooner, see ``backends.key_lock``); the next poll retries.
MAX_LOCK_WAIT_SECONDS = 5.0


def lease_backend(settings: Settings) -> Backend:
    """The backend holding ``.lock``, ``.generation`` and ``.generations``: the data folder,
    or with the data on S3 the bucket (beside ``r/`` under ``RS_REMOTE_PREFIX``)."""
    if settings.remote_enabled:
        return remote.remote_backend(settings)  # type: ignore[return-value]
    ttl = settings.lock_file_ttl
    bound = min(settings.lock_file_polling_interval, ttl / 4 if ttl > 0 else MAX_LOCK_WAIT_SECONDS)
    return FilesystemBackend(
        settings.data_path, lock_timeout_seconds=max(0.05, min(bound, MAX_LOCK_WAIT_SECONDS))
    )


def engine_options(settings: Settings, **role: Any) -> EngineOptions:
    """The engine's options derived from the settings (``role``: generation, fences...)."""
    return EngineOptions(
        data_path=settings.data_path,
        integrity_checks=settings.engine_enable_integrity_checks,
        sync_writes=settings.engine_sync_writes,
        min_free_space=settings.engine_min_free_space,
        max_storage_size=settings.engine_max_storage_size,
        bucket_defaults=bucket_defaults(settings),
        journal=settings.backup_archive_interval > 0,
        **role,
    )


def bucket_defaults(settings: Settings) -> BucketSettings:
    """Bucket settings used where a request leaves a field out (``RS_DEFAULTS_BUCKET_*``)."""
    return BucketSettings(
        quota_type=settings.defaults_bucket_quota_type,
        quota_size=settings.defaults_bucket_quota_size,
        max_block_size=settings.defaults_bucket_max_block_size,
        max_block_records=settings.defaults_bucket_max_block_records,
    )


class ProvisionedTokens:
    """The token store as provisioning's ``TokenProvisioner``."""

    def __init__(self, store: TokenStore) -> None:
        self._store = store

    def provision_token(
        self,
        name: str,
        value: str,
        permissions: TokenPermissions,
        expires_at: datetime | None,
    ) -> None:
        """Create or replace ``name`` as a provisioned token; skipped while auth is off."""
        if not self._store.enabled:
            # As ReductStore: tokens mean nothing without authentication; say so, go on.
            raise TokenSkipped(f"authentication is disabled; token '{name}' is not created")
        perms = Permissions(permissions.full_access, permissions.read, permissions.write)
        expires = None if expires_at is None else expires_at.timestamp()
        self._store.provision(name, value, perms, expires)

    def unprovision_token(self, name: str) -> None:
        """Keep token ``name`` as an ordinary token."""
        self._store.unprovision(name)

    def provisioned_token_names(self) -> Iterable[str]:
        """Tokens the store holds as provisioned (never ``init-token``)."""
        return self._store.provisioned_names()


class ProvisionedReplications:
    """The replication manager as provisioning's ``ReplicationProvisioner`` (called from the
    provisioning thread; the work runs on the event loop that owns the tasks)."""

    def __init__(self, manager: ReplicationManager, loop: asyncio.AbstractEventLoop) -> None:
        self._manager = manager
        self._loop = loop

    def provision_replications(self, desired: Mapping[str, Any], origins: Mapping[str, str]) -> Any:
        """Apply the provisioned tasks (blocking, any thread, the loop's own included: senders
        are started and stopped on the loop without waiting for them)."""

        def schedule(coro: Any) -> None:
            asyncio.run_coroutine_threadsafe(coro, self._loop)

        return provision_replications(self._manager, desired, origins, schedule)


def _open_storage(options: EngineOptions) -> Storage:
    from appliance.engine import Storage  # late: keeps `import appliance.app` cheap

    return Storage.open(options)


class Services:
    """Everything the HTTP layer talks to; started and stopped with the serving lifespan."""

    def __init__(
        self,
        settings: Settings,
        *,
        desired: DesiredState | None = None,
        environ: Mapping[str, str] | None = None,
        watch_provisioning: bool = True,
        open_storage: Callable[[EngineOptions], Storage] = _open_storage,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Args:
        desired: the provisioning the entrypoint loaded to build ``settings`` (applied at boot
            as is, so Settings and objects come from one read); None: loaded at boot.
        environ: the process environment: ``RS_BUCKET_*``/``RS_TOKEN_*`` groups and the
            ``${VAR}`` values of the YAML at ``settings.provisioning_path``. None: empty.
        watch_provisioning: reload the YAML on change (tests turn it off and call
            ``provisioner.reload_once()``).
        """
        self.settings = settings
        self.defaults = bucket_defaults(settings)
        self.tokens = TokenStore(
            settings.data_path,
            settings.api_token_value,
            init_token=settings.init_api_token_value,
        )
        self.queries = QueryRegistry(clock=clock)
        # Replication tasks: built when the engine opens on a writable node, None otherwise.
        self.replications: ReplicationManager | None = None
        self._booting_storage: Storage | None = None  # the engine provisioning boots against
        # $system: audit, usage, own log lines, diagnostics; queued, flushed in the background.
        # The one way into the engine threads (run / run_through): see workers.py.
        self.workers = Workers(ThreadPoolExecutor(ENGINE_THREADS, thread_name_prefix="engine"))
        self.events = SystemEvents(
            enabled=settings.system_events_enabled,
            instance=settings.effective_instance_name,
            quota_size=settings.system_events_quota_size,
            log_level=settings.system_events_log_level,
            flush_interval=settings.system_events_flush_interval,
            storage=lambda: self.storage,
            run_blocking=self.workers.run,
            writable=lambda: self.ready and not self.role.read_only,
        )
        self.lifecycles = LifecycleManager(
            settings.data_path,
            self.workers.run,
            self._lifecycle_storage,
            on_run=self._lifecycle_ran,
        )
        self.storage: Storage | None = None
        self.in_use = InUseLock(settings.data_path)
        self.open_error: BaseException | None = None
        # STANDALONE, lease (PRIMARY/SECONDARY) or REPLICA: readiness and the write fence.
        self.lease_backend = lease_backend(settings)
        self.role: RoleManager = build_role_manager(settings, self.lease_backend)
        if settings.remote_enabled and isinstance(self.role, LeaseRole):
            backend = self.lease_backend
            # On S3 the engine's files are the objects under "r/": the WAL boundaries of a new
            # generation are keyed as the engine (the cache folder) names them.
            self.role._snapshot = lambda: {  # noqa: SLF001 - the one place that knows the layout
                key[len(DATA_KEY_PREFIX) :]: boundary
                for key, boundary in snapshot_wal(backend).items()
                if key.startswith(DATA_KEY_PREFIX)
            }
        self._loop: asyncio.AbstractEventLoop | None = None
        # What is provisioned (API 409s, is_provisioned, /info); filled by the provisioner.
        self.provisioning = ProvisioningState()
        self.provisioner: Provisioner | None = None
        self._desired = desired
        self._environ = dict(environ or {})
        self._watch_provisioning = watch_provisioning
        # Set when the instance cannot serve (engine or provisioning refused at startup).
        self.exit_code: int | None = None
        self._failed = asyncio.Event()
        self._open_storage = open_storage
        self._clock = clock
        self._started_at = clock()
        self._tasks: list[asyncio.Task[None]] = []
        self._compaction: asyncio.Task[None] | None = None
        self._housekeeping: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._closed = False
        # Backups (issue 12): snapshots, retention, schedule, the restored read-only mark.
        self.backups = BackupService(settings, lambda: self.engine, lambda: self.role.generation)
        # May this process write? One fence, argued in roles/write_fence.py.
        self.fence = WriteFence(self.role, self._restored_reason)
        # Data on S3 (RS_REMOTE_*): the engine's folder is a cache kept by the mirror.
        self.mirror = remote.build_mirror(
            settings, read_only=self.role.read_only, lease=self.fence.timed
        )
        if self.mirror is not None and self.fence.timed:
            self.mirror.fence = self.fence.check  # uploads are fenced like writes (with I/O)
        self._instance_lock: int | None = None
        # A holder that steps down stops writing, then exits or rejoins (roles/step_down.py).
        self.step_down = StepDown(self.role, self)

    # --- state ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when requests can be served: engine open and the role agrees."""
        return self.storage is not None and self.role.is_ready

    @property
    def engine(self) -> Storage:
        """The open storage; 503 while starting up."""
        storage = self.storage
        if storage is None:
            raise ServiceUnavailable(STARTING_MESSAGE)
        return storage

    @property
    def uptime_seconds(self) -> int:
        """Seconds since the services were built."""
        return int(self._clock() - self._started_at)

    def _lifecycle_ran(self, name: str, report: RunReport) -> None:
        """Each lifecycle run's report goes to ``$system`` (lifecycle diagnostics)."""
        policy = self.lifecycles.policy(name)
        labels = {"mode": policy.mode if policy else "", "removed": str(report.removed)}
        self.events.diagnostic("lifecycles", name, report.to_json(), labels)

    def _lifecycle_storage(self) -> Storage:
        # Provisioning applies lifecycles before the engine is published (bucket checks).
        storage = self.storage or self._booting_storage
        if storage is None:
            raise ServiceUnavailable(STARTING_MESSAGE)
        return storage

    # --- lifespan ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the role, begin opening the engine in the background, start the loops."""
        if not self.tokens.enabled:
            log.warning(
                "authentication is disabled: every client has full access "
                "(set RS_API_TOKEN or RS_INIT_API_TOKEN to require a token)"
            )
        self._loop = asyncio.get_running_loop()
        self.step_down.bind(self._loop)
        if self.mirror is not None and self.fence.timed:
            try:
                await self.workers.run(remote.probe_conditional_writes, self.lease_backend)
            except remote.ConditionalWritesUnsupported as exc:
                self._fail(str(exc), exc, EXIT_CONFIG)
                return
            except BackendError as exc:  # unreachable: the lease will wait and say so
                log.warning("remote storage: conditional-write probe skipped: %s", exc)
        await self.role.start()
        self._tasks.append(asyncio.create_task(self._open(), name="engine-open"))

    async def wait_open(self) -> None:
        """Wait until the engine is open (or failed to open: see ``open_error``)."""
        await self._opened.wait()

    async def wait_failed(self) -> None:
        """Wait until startup fails for good (``exit_code`` says how); never returns otherwise."""
        await self._failed.wait()

    def _fail(self, message: str, exc: BaseException, code: int) -> None:
        self.open_error = exc
        self.exit_code = code
        log.critical("%s", message)
        self._opened.set()
        self._failed.set()

    def _make_replications(self, storage: Storage) -> ReplicationManager:
        s = self.settings
        options = TaskOptions(
            data_path=s.data_path,
            log_size=s.replication_log_size,
            timeout=s.replication_timeout,
            verify_ssl=s.replication_verify_ssl,
            ca_path=str(s.replication_ca_path) if s.replication_ca_path else None,
            batch_records=s.io_batch_max_records,
            batch_size=s.io_batch_max_size,
            batch_metadata=s.io_batch_max_metadata_size,
        )
        return ReplicationManager(
            options, storage=lambda: storage, run=self.workers.run, own_port=s.port,
            events=lambda name, payload, labels: self.events.diagnostic(
                "replications", name, payload, labels
            ),
        )

    def replicates(self, bucket: str) -> bool:
        """True if a replication task watches ``bucket`` (writers notify only then)."""
        manager = self.replications
        return manager is not None and manager.watches(bucket)

    def notify_records(
        self, bucket: str, entry: str, items: list[tuple[int, int, Mapping[str, str]]]
    ) -> None:
        """Hand written/updated records ``(kind, ts, labels)`` to the replication tasks.

        Called in the writer's worker thread before the 200 leaves; never raises."""
        manager = self.replications
        if manager is not None:
            manager.notify(bucket, entry, items)

    def _make_provisioner(
        self, storage: Storage, replications: ReplicationManager | None = None
    ) -> Provisioner:
        return Provisioner(
            environ=self._environ,
            path=self.settings.provisioning_path,
            storage=storage,
            tokens=ProvisionedTokens(self.tokens),
            bucket_defaults=self.defaults,
            initial=self._desired,
            state=self.provisioning,
            watch_enabled=self._watch_provisioning,
            replications=None if replications is None else ProvisionedReplications(
                replications, self._loop_or_raise()
            ),
            on_applied=self._provision_lifecycles,
        )

    def _loop_or_raise(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "start() sets the loop before the engine opens"
        return self._loop

    def _provision_lifecycles(self, desired: DesiredState) -> list[str]:
        """Provisioning hook (worker thread): apply the provisioned lifecycle policies."""
        policies = {name: spec.policy() for name, spec in desired.lifecycles.items()}
        keep_mode = frozenset(n for n, spec in desired.lifecycles.items() if spec.mode is None)
        problems = self.lifecycles.provision(policies, keep_mode)
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.lifecycles.sync_tasks)
        return problems

    async def _open(self) -> None:
        try:
            generation = await self.role.wait_serving()
        except LeaseError as exc:
            if self.role.must_exit or not isinstance(exc, LeaseLost):
                self._fail(f"cannot take the storage lease: {exc}", exc, EXIT_RUNTIME)
            return  # lost while recording (proceed): the role listener rejoins
        if self.mirror is not None and not await self.workers.run(
            remote.restore_mirror, self.mirror, lambda: self._closed, time.sleep,
            self.fence.timed,
        ):
            return  # stopped while S3 was unreachable (/ready stayed 503)
        try:
            started = time.perf_counter()
            await self.workers.run(self._mark_in_use)
            await self.workers.run(self._hold_data_folder)
            await self.workers.run(self.tokens.load)
            options = await self.workers.run(self._role_options, generation)
            storage = await self.workers.run(self._open_storage, options)
        except LeaseLost as exc:  # a newer generation began before we could open
            self.in_use.release()
            self.role.deposed(str(exc))
            return
        except FolderInUse as exc:
            path = self.settings.data_path
            message = f"cannot open the storage at {path}: it is locked by {exc}"
            self._fail(message, exc, EXIT_RUNTIME)
            return
        except Exception as exc:  # noqa: BLE001 - the instance cannot serve: exit
            path = self.settings.data_path
            self._fail(f"cannot open the storage at {path}: {exc}", exc, EXIT_RUNTIME)
            return
        if self._closed or (generation and self.role.generation != generation):
            await self.workers.run(storage.abandon if generation else storage.close)
            return  # stopped, or stepped down while recovering
        if self.role.read_only:
            await self._serve_replica(storage)
            return
        replications = self._make_replications(storage)
        await self.workers.run(replications.load)
        provisioner = self._make_provisioner(storage, replications)
        self._booting_storage = storage
        await self.workers.run(self.lifecycles.load)
        boot = asyncio.ensure_future(self.workers.run(provisioner.boot))
        try:
            await asyncio.shield(boot)
        except asyncio.CancelledError:
            # Stopped while booting: boot still uses the engine in its thread; close after it.
            await asyncio.wait([boot])
            await self.workers.run(storage.close)
            raise
        except Exception as exc:  # noqa: BLE001 - refused provisioning stops startup
            self._booting_storage = None
            await self.workers.run(storage.close)
            code = EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_RUNTIME
            self._fail(f"provisioning refused, not starting: {exc}", exc, code)
            return
        self.storage = storage
        self._booting_storage = None  # from now on only `storage` (None after a step-down)
        self.provisioner = provisioner
        self.replications = replications
        metrics.corruption("recovery", len(storage.recovery.damage))
        self.events.start()  # capture from the first served request on
        self._opened.set()
        log.info("storage open", extra={"seconds": round(time.perf_counter() - started, 3)})
        await provisioner.start()  # the watcher (boot already ran)
        self.lifecycles.start()
        await replications.start()  # standalone or lease holder: this node sends
        if self.events.enabled:
            try:
                # The quota is re-applied at every start (the bucket is created lazily).
                await self.workers.run(functools.partial(self.events.ensure_bucket, create=False))
            except Exception:  # noqa: BLE001 - events are best effort; the instance serves
                log.exception("preparing the $system bucket failed")
        if self._housekeeping is None:
            self._housekeeping = asyncio.create_task(self._housekeeping_loop(), name="tokens")
            self._tasks.append(self._housekeeping)
        self._start_backup_schedule()
        if self.settings.engine_compaction_interval > 0 and self._compaction is None:
            self._compaction = asyncio.create_task(self._compaction_loop(), name="compaction")
            self._tasks.append(self._compaction)  # one loop, kept across a rejoin

    def _mark_in_use(self) -> None:
        """Hold ``<data>/.in-use`` (shared) while the storage is open: ``appliance check``
        refuses to repair under a running instance, and we do not open under a repair."""
        if not self.role.read_only:
            try:
                self.settings.data_path.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # Storage.open reports an unusable folder with the full reason
        what = f"appliance serve ({self.settings.instance_role.value}, port {self.settings.port})"
        self.in_use.acquire(exclusive=False, who=identity(what), read_only=self.role.read_only)
    def _hold_data_folder(self) -> None:
        """Take the shared instance lock (offline restore refuses a held folder), clear backup
        staging leftovers and read the restored read-only mark (blocking)."""
        if self._instance_lock is None and not self.role.read_only:
            self.settings.data_path.mkdir(parents=True, exist_ok=True)
            self._instance_lock = backup_instance.hold(self.settings.data_path)
        if not self.role.read_only:
            self.backups.prepare()

    def _start_backup_schedule(self) -> None:
        """The scheduled backups of ``RS_BACKUP_INTERVAL`` (once, kept across a rejoin)."""
        if any(t.get_name() == "backup-schedule" for t in self._tasks):
            return
        if self.settings.backup_interval > 0 and self.settings.backup_target:
            self._tasks.append(asyncio.create_task(self.backups.schedule(), name="backup-schedule"))
        if self.settings.backup_archive_interval > 0 and self.settings.backup_target:
            self._tasks.append(asyncio.create_task(self.backups.archive(), name="backup-archive"))

    def _role_options(self, generation: int) -> EngineOptions:
        """Engine options for the role (blocking: reads the generation log of a lease)."""
        if self.role.read_only:
            return engine_options(self.settings, read_only=True, mirror=self.mirror)
        if not generation:
            return engine_options(self.settings, mirror=self.mirror)
        wal_fence = load_wal_fence(self.lease_backend, generation)  # LeaseLost if stale
        return engine_options(
            self.settings,
            generation=generation,
            fence=self.fence,
            wal_fence=wal_fence,
            mirror=self.mirror,
        )

    async def _serve_replica(self, storage: Storage) -> None:
        """Serve the read-only view; refreshed (with the tokens) every update interval."""

        def refresh() -> None:
            if self.mirror is not None:
                self.mirror.refresh()  # new and changed objects of the bucket (S3)
            storage.reload_replica()
            self.tokens.load()  # token changes of the primary, at most once per interval

        self.storage = storage
        self._opened.set()
        self.role.attach_refresh(refresh)
        log.info(
            "read-only replica: provisioning and compaction are skipped",
            extra={"interval": self.settings.engine_replica_update_interval},
        )

    async def _compaction_loop(self) -> None:
        interval = self.settings.engine_compaction_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.workers.run(self.compact_step)
            except ServiceUnavailable as exc:
                log.warning("compaction skipped: %s", exc.message)
            except Exception:  # noqa: BLE001 - a failed pass must not stop the loop
                log.exception("compaction failed")

    # --- role changes -----------------------------------------------------------------------

    async def _housekeeping_loop(self) -> None:
        """Persist token ``last_access`` times, throttled (never a write per request)."""
        while True:
            await asyncio.sleep(LAST_ACCESS_FLUSH_SECONDS)
            await self._flush_last_access()

    async def _flush_last_access(self) -> None:
        if self.storage is None or self.role.read_only:
            return  # a replica or a holder that stepped down writes nothing
        try:
            await self.workers.run(self.tokens.flush_last_access)
        except Exception:  # noqa: BLE001 - a failed write is retried at the next tick
            log.exception("saving token last_access failed")

    def _restored_reason(self) -> str | None:
        """Clients may not write a data folder restored from a backup until it is accepted."""
        restored = self.backups.restored_from
        return None if restored is None else backup_instance.read_only_message(restored)

    # --- the step-down hooks (roles/step_down.py decides when and in which order) ----------

    @property
    def closed(self) -> bool:
        """True once ``stop`` began."""
        return self._closed

    def halt(self) -> None:
        """Stop the engine writing (any thread): only a flag, safe under any lock."""
        storage = self.storage
        if storage is not None:
            storage.mark_abandoned()

    async def teardown(self) -> None:
        """Stop provisioning, abandon the engine (no flush), drop open queries."""
        storage, self.storage = self.storage, None
        provisioner, self.provisioner = self.provisioner, None
        if provisioner is not None:
            await provisioner.stop()
        replications, self.replications = self.replications, None
        if replications is not None:
            await replications.stop()  # the new holder sends from the shared logs
        if storage is not None:
            if self.mirror is not None:
                self.mirror.abandoned = True  # a deposed holder uploads nothing more
            await self.workers.run(storage.abandon)
        self.in_use.release()
        self.queries.clear()

    def fail(self, message: str, exc: BaseException, code: int) -> None:
        """Give up serving with exit ``code``."""
        self._fail(message, exc, code)

    def suspend(self) -> None:
        """Not open any more (until ``reopen`` succeeds)."""
        self._opened.clear()

    def reopen(self) -> None:
        """Open (recover) the engine again, in a task."""
        self.spawn(self._open(), "engine-reopen")

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        """Run ``coro`` as a task that ``stop`` cancels."""
        self._tasks.append(asyncio.create_task(coro, name=name))

    def compact_step(self) -> None:
        """One compaction pass (WAL → descriptors and index); no-op until the engine is open."""
        if self.storage is not None:
            started = time.perf_counter()
            self.storage.compact()
            metrics.compaction_seconds(time.perf_counter() - started)

    def metrics_snapshot(self) -> dict[str, Any]:
        """The per-instance values ``/metrics`` reports (blocking: reads bucket sizes)."""
        status = self.role.status()
        manager = getattr(self.role, "manager", None)
        snap: dict[str, Any] = {
            "ready": self.ready,
            "uptime": self.uptime_seconds,
            "role": self.settings.instance_role.value,
            "state": status.state,
            "generation": status.generation,
            "renewal_age": getattr(manager, "renewal_age_s", None),
        }
        storage = self.storage
        if storage is not None:
            buckets = []
            for name in storage.bucket_names():
                try:
                    info = storage.get_bucket(name).info()
                except Exception:  # noqa: BLE001 - removed concurrently
                    continue
                buckets.append((name, info.size, info.entry_count))
            snap["buckets"] = buckets
            snap["cache_hits"], snap["cache_misses"] = storage.cache_stats()
        replications = self.replications
        if replications is not None:
            replications.report_metrics()  # backlog and lag as of this scrape
        return snap

    async def stop(self) -> None:
        """Stop the loops and close the engine (flushes the WAL); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self.lifecycles.stop()  # before the engine closes: a run may be removing records
        await self.events.stop()  # the last events, while the engine is still open
        provisioner, self.provisioner = self.provisioner, None
        if provisioner is not None:
            await provisioner.stop()  # before the engine closes: a reload may be running
        replications, self.replications = self.replications, None
        if replications is not None:
            try:
                await replications.stop()  # the logs keep the backlog for the next start
            except Exception:  # noqa: BLE001 - shutdown must finish
                log.exception("stopping the replication tasks failed")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks.clear()
        self.queries.clear()
        await self._flush_last_access()
        await asyncio.to_thread(self.backups.close)  # a backup in progress still uses the engine
        if self.storage is not None and not self.role.read_only:
            await self.backups.ship_on_stop()
        storage, self.storage = self.storage, None
        if storage is not None:
            try:
                # Flushes only while the lease is still ours (the engine checks the fence).
                await self.workers.run(storage.close)
            except Exception:  # noqa: BLE001 - shutdown must finish
                log.exception("closing the storage failed")
        if self.mirror is not None:
            # Uploads what the close flushed while the lease is still ours (not after a
            # step-down: then the mirror is abandoned and uploads nothing).
            await self.workers.run(self.mirror.close)
        self.in_use.release()
        try:
            await self.role.close()  # release the lease last: the standby recovers our WAL
        except Exception:  # noqa: BLE001 - shutdown must finish
            log.exception("releasing the role failed")
        self.workers.shutdown()
        backup_instance.release(self._instance_lock)
        self._instance_lock = None
