"""Composition root: builds the engine, the token store, the query registry, provisioning and
the background loops.

``create_app`` owns one ``Services``. The engine opens in a background task started when the
app starts serving, so HTTP answers at once (``/alive`` 200, everything else 503 until open).
Every engine call goes through ``run`` (a dedicated thread pool): the engine is blocking code and
nothing may block the event loop (ARCHITECTURE §3 "Concurrency").

Startup order in that task: token store, engine, provisioning ``boot()`` (buckets, then tokens),
and only then "open": no client ever sees a half-provisioned instance. If the engine cannot be
opened or the provisioning is refused, the instance cannot serve: ``failed`` is set with an
exit code (2 for a configuration error, 1 otherwise) and ``appliance.server`` shuts down and
exits with it, so systemd or docker see a dead service, not one stuck answering 503.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.auth import Permissions, TokenStore
from appliance.engine.models import BucketSettings, EngineOptions
from appliance.errors import ConfigError, ServiceUnavailable
from appliance.query.registry import QueryRegistry
from appliance.settings import Settings
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

T = TypeVar("T")
STARTING_MESSAGE = "The server is starting up, please try again later"
# Enough threads that a slow disk write does not stall reads of other entries, few enough
# that a 2-core edge box does not thrash.
ENGINE_THREADS = 8
EXIT_RUNTIME = 1  # exit codes of `appliance serve` (cli/main.py)
EXIT_CONFIG = 2


def engine_options(settings: Settings) -> EngineOptions:
    """The engine's options derived from the settings."""
    return EngineOptions(
        data_path=settings.data_path,
        integrity_checks=settings.engine_enable_integrity_checks,
        sync_writes=settings.engine_sync_writes,
        min_free_space=settings.engine_min_free_space,
        max_storage_size=settings.engine_max_storage_size,
        bucket_defaults=bucket_defaults(settings),
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
        token = settings.api_token.get_secret_value() if settings.api_token else None
        self.tokens = TokenStore(settings.data_path, token)
        self.queries = QueryRegistry(clock=clock)
        self.executor = ThreadPoolExecutor(ENGINE_THREADS, thread_name_prefix="engine")
        self.storage: Storage | None = None
        self.open_error: BaseException | None = None
        # Hook for the roles issue: called before every mutation; raises ServiceUnavailable
        # (fenced) or Forbidden (replica / read-only) to refuse it.
        self.write_check: Callable[[], None] | None = None
        # Extra readiness condition (lease held...); None means "ready once the engine is open".
        self.ready_check: Callable[[], bool] | None = None
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
        self._opened = asyncio.Event()
        self._closed = False

    # --- state ------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when requests can be served (engine open and, if set, the role agrees)."""
        if self.storage is None:
            return False
        return self.ready_check() if self.ready_check is not None else True

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

    def check_writable(self) -> None:
        """Raise if this instance may not accept mutations right now (roles hook)."""
        if self.write_check is not None:
            self.write_check()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking ``fn`` in the engine thread pool and await its result."""
        loop = asyncio.get_running_loop()
        if kwargs:
            fn = functools.partial(fn, **kwargs)
        return await loop.run_in_executor(self.executor, fn, *args)

    async def run_ctx(self, fn: Callable[..., T], *args: Any) -> T:
        """Like ``run`` but keeps context variables (for code that logs with request context)."""
        ctx = contextvars.copy_context()
        return await self.run(ctx.run, fn, *args)

    # --- lifespan ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin opening the engine in the background and start the loops."""
        if not self.tokens.enabled:
            log.warning("authentication is disabled: set RS_API_TOKEN")
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

    def _make_provisioner(self, storage: Storage) -> Provisioner:
        return Provisioner(
            environ=self._environ,
            path=self.settings.provisioning_path,
            storage=storage,
            tokens=ProvisionedTokens(self.tokens),
            bucket_defaults=self.defaults,
            initial=self._desired,
            state=self.provisioning,
            watch_enabled=self._watch_provisioning,
        )

    async def _open(self) -> None:
        try:
            started = time.perf_counter()
            await self.run(self.tokens.load)
            storage = await self.run(self._open_storage, engine_options(self.settings))
        except Exception as exc:  # noqa: BLE001 - the instance cannot serve: exit
            path = self.settings.data_path
            self._fail(f"cannot open the storage at {path}: {exc}", exc, EXIT_RUNTIME)
            return
        if self._closed:
            await self.run(storage.close)
            return
        provisioner = self._make_provisioner(storage)
        boot = asyncio.ensure_future(self.run(provisioner.boot))
        try:
            await asyncio.shield(boot)
        except asyncio.CancelledError:
            # Stopped while booting: boot still uses the engine in its thread; close after it.
            await asyncio.wait([boot])
            await self.run(storage.close)
            raise
        except Exception as exc:  # noqa: BLE001 - refused provisioning stops startup
            await self.run(storage.close)
            code = EXIT_CONFIG if isinstance(exc, ConfigError) else EXIT_RUNTIME
            self._fail(f"provisioning refused, not starting: {exc}", exc, code)
            return
        self.storage = storage
        self.provisioner = provisioner
        self._opened.set()
        log.info("storage open", extra={"seconds": round(time.perf_counter() - started, 3)})
        await provisioner.start()  # the watcher (boot already ran)
        if self.settings.engine_compaction_interval > 0:
            self._tasks.append(asyncio.create_task(self._compaction_loop(), name="compaction"))

    async def _compaction_loop(self) -> None:
        interval = self.settings.engine_compaction_interval
        while True:
            await asyncio.sleep(interval)
            try:
                await self.run(self.compact_step)
            except Exception:  # noqa: BLE001 - a failed pass must not stop the loop
                log.exception("compaction failed")

    def compact_step(self) -> None:
        """One compaction pass (WAL → descriptors and index); no-op until the engine is open."""
        if self.storage is not None:
            self.storage.compact()

    async def stop(self) -> None:
        """Stop the loops and close the engine (flushes the WAL); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        provisioner, self.provisioner = self.provisioner, None
        if provisioner is not None:
            await provisioner.stop()  # before the engine closes: a reload may be running
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
        self._tasks.clear()
        self.queries.clear()
        storage, self.storage = self.storage, None
        if storage is not None:
            try:
                await self.run(storage.close)
            except Exception:  # noqa: BLE001 - shutdown must finish
                log.exception("closing the storage failed")
        self.executor.shutdown(wait=True)
