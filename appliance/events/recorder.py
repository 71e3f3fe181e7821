"""Recording events into ``$system`` without slowing or failing the requests that cause them.

Every producer (the request hook, the log handler, the lifecycle manager, replication) only
appends to an in-memory queue: no I/O, no lock held for long, nothing that can raise into the
caller. A flush task drains the queue every ``RS_SYSTEM_EVENTS_FLUSH_INTERVAL`` seconds and
writes it in one worker-thread hop. When the queue is full (``MAX_QUEUED`` events: a flush is
stuck or the disk is slow) new events are dropped and counted, never waited for; the count is
written with the next usage record (``dropped_events``).

Entries, all under ``<instance>`` = ``RS_INSTANCE_NAME`` (or the host name):

``audit/<instance>/<token>``   one record per token and flush: JSON list of the requests
                               (method, path, status, client IP, duration); 401s under
                               ``unauthorized``, link downloads under ``anonymous``;
                               ``/alive`` and ``/ready`` are not audited
``usage/<instance>[/<bucket>]`` one record per flush with traffic: requests, ingress and
                               egress bytes (instance total, and per bucket touched)
``logs/<instance>/messages``   one record per own log line at ``RS_SYSTEM_EVENTS_LOG_LEVEL``
                               (default WARN) or above; labels ``level`` and ``logger``
``lifecycles/<instance>/<name>`` one record per lifecycle run (its report)
``replications/<instance>/<name>`` ``replication_sync`` events of a task (aggregated by
                               ``replication.diagnostics.SyncEvents``; label ``status``)

The bucket is created on the first flush with a FIFO quota of ``RS_SYSTEM_EVENTS_QUOTA_SIZE``
(re-applied at every start), is provisioned (the API cannot change, rename or remove it) and
only tokens with full access or ``$system`` in their read list can read it. A replica and a
non-holder never write (the flush is skipped while the instance is read-only).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from appliance.engine.models import BucketSettings, NewRecord, QuotaType
from appliance.errors import ApplianceError, NotFound

if TYPE_CHECKING:
    from appliance.engine import Storage

log = logging.getLogger(__name__)

SYSTEM_BUCKET = "$system"
MAX_QUEUED = 50_000
MAX_AUDIT_PER_RECORD = 2_000
UNAUTHORIZED = "unauthorized"
ANONYMOUS = "anonymous"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_LEVELS = {"TRACE": 5, "DEBUG": 10, "INFO": 20, "WARN": 30, "WARNING": 30, "ERROR": 40}
_BUCKET_PATH = re.compile(r"/api/v1/(?:b|io)/([^/]+)")


def segment(text: str) -> str:
    """``text`` as one valid entry-name segment (unsafe characters become ``_``)."""
    return _UNSAFE.sub("_", text) or "_"


class _LogHandler(logging.Handler):
    """Hands the instance's own log lines to the recorder (never its own lines: no loop)."""

    def __init__(self, events: SystemEvents, level: int) -> None:
        super().__init__(level)
        self._events = events

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(__name__.rsplit(".", 1)[0]):
            return
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            message = str(record.msg)
        self._events.enqueue(
            f"logs/{self._events.instance}/messages",
            message.encode(errors="replace"),
            {"level": record.levelname, "logger": record.name},
            "text/plain",
        )


class SystemEvents:
    """The queue of events and its flush into ``$system``."""

    def __init__(
        self,
        *,
        enabled: bool,
        instance: str,
        quota_size: int,
        log_level: str,
        flush_interval: float,
        storage: Callable[[], Storage | None],
        run_blocking: Callable[..., Awaitable[Any]],
        writable: Callable[[], bool],
    ) -> None:
        self.enabled = enabled
        self.instance = segment(instance)
        self._quota = quota_size
        self._level = _LEVELS.get(log_level.upper())  # OFF / invalid: no log capture
        self._interval = flush_interval
        self._storage = storage
        self._run = run_blocking
        self._writable = writable
        self._queue: deque[tuple[str, int, bytes, dict[str, str], str]] = deque()
        self._audit: dict[str, list[dict[str, Any]]] = {}
        self._usage: dict[str, list[int]] = {}  # bucket ("" = instance) -> [req, in, out]
        self._lock = threading.Lock()
        self._last_ts: dict[str, int] = {}
        self.dropped = 0
        self.written = 0
        self._handler: _LogHandler | None = None
        self._task: Any = None
        self._bucket_ready = False

    # --- producers: cheap, never raise --------------------------------------------------------

    def enqueue(self, entry: str, payload: bytes, labels: dict[str, str], ctype: str) -> None:
        """Queue one record for ``entry`` (dropped and counted if the queue is full)."""
        if not self.enabled:
            return
        if len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            return
        self._queue.append((entry, time.time_ns() // 1000, payload, labels, ctype))

    def request_done(
        self, token: str | None, method: str, path: str, status: int, ip: str | None,
        ingress: int, egress: int, seconds: float,
    ) -> None:
        """Account one answered request (audit + usage)."""
        if not self.enabled or path.endswith(("/alive", "/ready")):
            return
        # No token: a 401, or an anonymous endpoint (a query link download).
        name = token if token is not None else ANONYMOUS
        if status == 401:
            name = UNAUTHORIZED
        event = {"ts": time.time_ns() // 1000, "method": method, "path": path,
                 "status": status, "ip": ip, "duration_ms": round(seconds * 1000, 3)}
        match = _BUCKET_PATH.search(path)
        with self._lock:
            items = self._audit.setdefault(name, [])
            if len(items) < MAX_AUDIT_PER_RECORD:
                items.append(event)
            else:
                self.dropped += 1
            for key in ("", match.group(1)) if match else ("",):
                counters = self._usage.setdefault(key, [0, 0, 0])
                counters[0] += 1
                counters[1] += ingress
                counters[2] += egress

    def diagnostic(self, kind: str, name: str, payload: dict[str, Any],
                   labels: dict[str, str] | None = None) -> None:
        """Queue a diagnostics record (``kind``: ``lifecycles`` or ``replications``)."""
        self.enqueue(f"{segment(kind)}/{self.instance}/{segment(name)}",
                     json.dumps(payload, separators=(",", ":")).encode(), labels or {},
                     "application/json")

    # --- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Capture log lines and start the flush loop (on the event loop)."""
        import asyncio

        if not self.enabled:
            return
        if self._level is not None and self._handler is None:
            self._handler = _LogHandler(self, self._level)
            logging.getLogger().addHandler(self._handler)
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="system-events")

    async def stop(self) -> None:
        """Stop capturing, flush what is queued (best effort)."""
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler = None
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except BaseException:  # noqa: BLE001 - cancelled, or a flush error already logged
                pass
        await self.flush()

    async def _loop(self) -> None:
        import asyncio

        while True:
            await asyncio.sleep(self._interval)
            await self.flush()

    async def flush(self) -> int:
        """Write what is queued (one worker-thread hop); returns how many records."""
        if not self.enabled or self._storage() is None or not self._writable():
            return 0
        batch = self._drain()
        if not batch:
            return 0
        try:
            return int(await self._run(self._write, batch))
        except Exception as exc:  # noqa: BLE001 - events are best effort; say so once per flush
            self.dropped += len(batch)
            log.warning("writing %d system events failed: %s", len(batch), exc)
            return 0

    def _drain(self) -> list[tuple[str, int, bytes, dict[str, str], str]]:
        items = []
        while self._queue:
            items.append(self._queue.popleft())
        now = time.time_ns() // 1000
        with self._lock:
            audit, self._audit = self._audit, {}
            usage, self._usage = self._usage, {}
            dropped, self.dropped = self.dropped, 0
        for token, events in audit.items():
            items.append((f"audit/{self.instance}/{segment(token)}", now,
                          json.dumps(events, separators=(",", ":")).encode(),
                          {"requests": str(len(events))}, "application/json"))
        for bucket, (requests, ingress, egress) in usage.items():
            entry = f"usage/{self.instance}" + (f"/{segment(bucket)}" if bucket else "")
            body: dict[str, Any] = {"requests": requests, "ingress_bytes": ingress,
                                    "egress_bytes": egress}
            if not bucket:
                body["dropped_events"] = dropped
            items.append((entry, now, json.dumps(body).encode(),
                          {"ingress": str(ingress), "egress": str(egress)}, "application/json"))
        return items

    # --- the writer (worker thread) ------------------------------------------------------------

    def ensure_bucket(self, *, create: bool = True) -> None:
        """(Re)apply the FIFO quota of ``$system``, creating it if ``create`` (blocking).

        At start the quota is re-applied to an existing bucket; the bucket itself is created
        lazily, by the first flush that has something to write."""
        storage = self._storage()
        if storage is None:
            return
        settings = {"quota_type": QuotaType.FIFO, "quota_size": self._quota}
        try:
            storage.get_bucket(SYSTEM_BUCKET).update_settings(**settings)
        except NotFound:
            if not create:
                return
            storage.create_bucket(SYSTEM_BUCKET, BucketSettings(**settings), internal=True)
        self._bucket_ready = True

    def _write(self, items: list[tuple[str, int, bytes, dict[str, str], str]]) -> int:
        storage = self._storage()
        if storage is None:
            return 0
        if not self._bucket_ready:
            self.ensure_bucket()
        bucket = storage.get_bucket(SYSTEM_BUCKET)
        by_entry: dict[str, list[NewRecord]] = {}
        for entry, ts, payload, labels, ctype in sorted(items, key=lambda i: (i[0], i[1])):
            last = self._last_ts.get(entry, 0)
            ts = max(ts, last + 1)  # one record per µs and entry: bump collisions forward
            self._last_ts[entry] = ts
            by_entry.setdefault(entry, []).append(NewRecord(ts, payload, ctype, labels))
        written = 0
        for entry, records in by_entry.items():
            try:
                errors = bucket.write_batch(entry, records)
            except ApplianceError as exc:
                self.dropped += len(records)
                log.warning("system events for %s dropped: %s", entry, exc.message)
                continue
            written += len(records) - len(errors)
        self.written += written
        return written
