"""Composition root: builds the engine, the token store, the query registry and background loops.

``create_app`` owns one ``Services``. The engine opens in a background task started when the
app starts serving, so HTTP answers at once (``/alive`` 200, everything else 503 until open).
Every engine call goes through ``run`` (a dedicated thread pool): the engine is blocking code and
nothing may block the event loop (ARCHITECTURE §3 "Concurrency").
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

from appliance.auth import TokenStore
from appliance.engine.models import BucketSettings, EngineOptions
from appliance.errors import ServiceUnavailable
from appliance.query.registry import QueryRegistry
from appliance.settings import Settings

if TYPE_CHECKING:
    from appliance.engine import Storage

log = logging.getLogger(__name__)

T = TypeVar("T")
STARTING_MESSAGE = "The server is starting up, please try again later"
# Enough threads that a slow disk write does not stall reads of other entries, few enough
# that a 2-core edge box does not thrash.
ENGINE_THREADS = 8


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


def _open_storage(options: EngineOptions) -> Storage:
    from appliance.engine import Storage  # late: keeps `import appliance.app` cheap

    return Storage.open(options)


class Services:
    """Everything the HTTP layer talks to; started and stopped with the serving lifespan."""

    def __init__(
        self,
        settings: Settings,
        *,
        open_storage: Callable[[EngineOptions], Storage] = _open_storage,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
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

    async def _open(self) -> None:
        try:
            started = time.perf_counter()
            await self.run(self.tokens.load)
            storage = await self.run(self._open_storage, engine_options(self.settings))
        except Exception as exc:  # noqa: BLE001 - logged and kept: /ready stays 503
            self.open_error = exc
            log.critical("cannot open the storage at %s: %s", self.settings.data_path, exc)
            self._opened.set()
            return
        if self._closed:
            await self.run(storage.close)
            return
        self.storage = storage
        self._opened.set()
        log.info("storage open", extra={"seconds": round(time.perf_counter() - started, 3)})
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
