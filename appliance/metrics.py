"""Prometheus metrics: every metric of the appliance, and the small API subsystems feed them with.

``GET {RS_API_BASE_PATH}metrics`` renders ``REGISTRY`` (process-wide counters, histograms and
the gauges that other subsystems set) followed by the per-instance gauges an ``InstanceCollector``
reads from the running ``Services`` at scrape time (role, lease, storage usage, block cache).

How a subsystem reports (all calls are cheap, thread-safe and never raise):

- HTTP (``api/connection.py``): ``observe_request(method, route, status, seconds)``; ``route``
  is the URL rule template (``/api/v1/b/<bucket>``), never the concrete path.
- Engine: ``records_written(count, nbytes)``, ``records_read(count, nbytes)``,
  ``batch_records(direction, count)``, ``wal_append_seconds(s)``, ``wal_sync_seconds(s)``,
  ``compaction_seconds(s)``,
  ``corruption(source)``. The block cache keeps plain hit/miss integers read at scrape time.
- Replication: ``set_replication(task, pending_records=, lag_seconds=)`` whenever a task's
  state is known (the services call it for every task at each scrape, before rendering),
  ``replication_error(task)`` per failed attempt, ``remove_replication(task)`` when a task is
  removed.
- Backups: ``backup_finished(ok, when=None)`` after every backup run; the age of the last
  successful one is computed at scrape time (``reduct_backup_last_success_age_seconds``,
  absent until a backup succeeded in this process or ``backup_finished`` was told an older
  success with ``when``).
- S3: ``s3_request(operation, ok)`` per request, ``set_s3_unsynced_bytes(n)`` whenever the
  amount of data not yet uploaded changes. ``backends/`` may not import ``appliance`` (the
  import-direction test): the code that builds a backend hands it these two functions as
  callbacks.

Cardinality stays bounded: labels take values from closed sets (methods, route templates,
status codes, operation names from code) and every free-form name (bucket, replication task) goes
through a ``LabelCap``: the first ``MAX_NAMED`` distinct names are kept, later ones are reported
as ``_other``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_NAMED = 100  # distinct free-form label values per metric before `_other`
OTHER = "_other"
UNMATCHED_ROUTE = "(unmatched)"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

disable_created_metrics()  # the `_created` twin of every counter only doubles the output
REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)


class LabelCap:
    """Keeps at most ``limit`` distinct free-form label values; the rest become ``_other``."""

    def __init__(self, limit: int = MAX_NAMED) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        """``value`` if it is (or can still become) one of the kept values, else ``_other``."""
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) < self._limit:
                self._seen.add(value)
                return value
        return OTHER


# --- HTTP ------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "reduct_http_requests",
    "HTTP requests answered, by method, route template and status code",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "reduct_http_request_duration_seconds",
    "Time from the request head to the last byte of the response, by method and route template",
    ["method", "route"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
_routes = LabelCap(200)  # route templates are a closed set; the cap only guards against bugs
_http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def observe_request(method: str, route: str | None, status: int, seconds: float) -> None:
    """Count one answered request and its latency (route: the URL rule template)."""
    key = (method, route or UNMATCHED_ROUTE, status)
    children = _http_children.get(key)
    if children is None:
        m = method if method in _METHODS else "OTHER"
        r = _routes(route or UNMATCHED_ROUTE)
        children = (HTTP_REQUESTS.labels(m, r, str(status)), HTTP_LATENCY.labels(m, r))
        if len(_http_children) < 10_000:
            _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


# --- engine ----------------------------------------------------------------------------------



class _Tally(Collector):
    """Plain counters behind one lock, rendered as Prometheus counters at scrape time.

    The engine counts every record it writes or reads; one lock and integer additions cost a
    fraction of two ``prometheus_client.Counter.inc`` calls (each checks and locks on its own).
    """

    NAMES = {
        "records_written": ("reduct_records_written", "Records written"),
        "bytes_written": ("reduct_bytes_written", "Payload bytes written"),
        "records_read": ("reduct_records_read", "Records read (payloads, checksums verified)"),
        "bytes_read": ("reduct_bytes_read", "Payload bytes read"),
    }

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.values = dict.fromkeys(self.NAMES, 0)
        self.wal = [0, 0.0]  # appends, seconds

    def wal_append(self, seconds: float) -> None:
        """One WAL append took ``seconds``."""
        with self._lock:
            wal = self.wal
            wal[0] += 1
            wal[1] += seconds

    def add(self, records_key: str, bytes_key: str, count: int, nbytes: int) -> None:
        """Add ``count`` records and ``nbytes`` bytes."""
        with self._lock:
            values = self.values
            values[records_key] += count
            values[bytes_key] += nbytes

    def describe(self) -> Iterable[Any]:
        """No fixed description (auto_describe would call collect)."""
        return []

    def collect(self) -> Iterator[Any]:
        """The counters now."""
        with self._lock:
            values = dict(self.values)
            appends, seconds = self.wal
        for key, (name, documentation) in self.NAMES.items():
            family = CounterMetricFamily(name, documentation)
            family.add_metric([], values[key])
            yield family
        yield SummaryMetricFamily(
            "reduct_wal_append_duration_seconds",
            "WAL appends (one framed write per record or batch) and the time they took",
            count_value=appends,
            sum_value=seconds,
        )


TALLY = _Tally()
REGISTRY.register(TALLY)
BATCH_RECORDS = Histogram(
    "reduct_batch_records",
    "Records per batched request, by direction (read, write, update, remove)",
    ["direction"],
    buckets=(1, 2, 5, 10, 20, 50, 85, 100, 200, 500, 1000, 5000),
    registry=REGISTRY,
)
WAL_SYNC = Histogram(
    "reduct_wal_sync_duration_seconds",
    "Duration of one group-commit fsync round (RS_ENGINE_SYNC_WRITES=true)",
    buckets=(0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
COMPACTION = Histogram(
    "reduct_compaction_duration_seconds",
    "Duration of one compaction pass (WAL entries folded into descriptors and indexes)",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 60),
    registry=REGISTRY,
)
CORRUPTION = Counter(
    "reduct_corruption_events",
    "Corrupt data detected, by where it was found (read, recovery, check)",
    ["source"],
    registry=REGISTRY,
)
_BATCH_DIRECTIONS = frozenset({"read", "write", "update", "remove"})
_CORRUPTION_SOURCES = frozenset({"read", "recovery", "check"})


def records_written(count: int, nbytes: int) -> None:
    """``count`` records with ``nbytes`` of payload were stored."""
    TALLY.add("records_written", "bytes_written", count, nbytes)


def records_read(count: int, nbytes: int) -> None:
    """``count`` payloads with ``nbytes`` in total were read (checksums verified)."""
    TALLY.add("records_read", "bytes_read", count, nbytes)


def wal_append_seconds(seconds: float) -> None:
    """One WAL append (a framed ``write``, no fsync) took ``seconds``."""
    TALLY.wal_append(seconds)


_batch_children: dict[str, Any] = {}  # by direction, as ``_http_children``


def batch_records(direction: str, count: int) -> None:
    """One batched request carried ``count`` records (``direction``: read/write/update/remove)."""
    child = _batch_children.get(direction)
    if child is None:  # ``labels()`` costs as much as the observation itself (~2 µs)
        child = BATCH_RECORDS.labels(direction if direction in _BATCH_DIRECTIONS else OTHER)
        if direction in _BATCH_DIRECTIONS:
            _batch_children[direction] = child
    child.observe(count)


def wal_sync_seconds(seconds: float) -> None:
    """One group-commit fsync round took ``seconds``."""
    WAL_SYNC.observe(seconds)


def compaction_seconds(seconds: float) -> None:
    """One compaction pass took ``seconds``."""
    COMPACTION.observe(seconds)


def corruption(source: str, count: int = 1) -> None:
    """Corrupt data was found (``source``: read, recovery or check)."""
    if count > 0:
        CORRUPTION.labels(source if source in _CORRUPTION_SOURCES else OTHER).inc(count)


# --- replication (fed by the replication subsystem) -------------------------------------------

REPLICATION_PENDING = Gauge(
    "reduct_replication_pending_records",
    "Records waiting to be replicated, by task",
    ["task"],
    registry=REGISTRY,
)
REPLICATION_LAG = Gauge(
    "reduct_replication_lag_seconds",
    "Age of the oldest record not yet replicated, by task (0 when caught up)",
    ["task"],
    registry=REGISTRY,
)
REPLICATION_ERRORS = Counter(
    "reduct_replication_errors", "Failed replication attempts, by task", ["task"], registry=REGISTRY
)
_tasks = LabelCap()


def set_replication(task: str, *, pending_records: int, lag_seconds: float) -> None:
    """The current backlog of replication task ``task``."""
    label = _tasks(task)
    REPLICATION_PENDING.labels(label).set(pending_records)
    REPLICATION_LAG.labels(label).set(lag_seconds)


def replication_error(task: str) -> None:
    """One replication attempt of ``task`` failed."""
    REPLICATION_ERRORS.labels(_tasks(task)).inc()


def remove_replication(task: str) -> None:
    """Task ``task`` is gone: stop reporting its gauges."""
    label = _tasks(task)
    if label == OTHER:
        return
    for metric in (REPLICATION_PENDING, REPLICATION_LAG, REPLICATION_ERRORS):
        try:
            metric.remove(label)
        except KeyError:
            pass


# --- backups (fed by the backup subsystem) -----------------------------------------------------

BACKUP_RUNS = Counter(
    "reduct_backup_runs", "Backup runs, by result (ok, failed)", ["result"], registry=REGISTRY
)
_backup = {"last_success": None}  # epoch seconds of the last successful backup


def backup_finished(ok: bool, when: float | None = None) -> None:
    """A backup run finished (``when``: its epoch time, default now)."""
    BACKUP_RUNS.labels("ok" if ok else "failed").inc()
    if ok:
        _backup["last_success"] = time.time() if when is None else when


def last_backup_success() -> float | None:
    """Epoch seconds of the last successful backup this process knows of."""
    return _backup["last_success"]


# --- S3 (fed by the S3 backend) ------------------------------------------------------------------

S3_REQUESTS = Counter(
    "reduct_s3_requests", "S3 requests, by operation", ["operation"], registry=REGISTRY
)
S3_ERRORS = Counter(
    "reduct_s3_errors", "S3 requests that failed, by operation", ["operation"], registry=REGISTRY
)
S3_UNSYNCED = Gauge(
    "reduct_s3_unsynced_bytes",
    "Bytes written locally and not yet uploaded to S3",
    registry=REGISTRY,
)
_operations = LabelCap(50)


def s3_request(operation: str, ok: bool = True) -> None:
    """One S3 request (``operation``: the API name, e.g. PutObject) and whether it succeeded."""
    label = _operations(operation)
    S3_REQUESTS.labels(label).inc()
    if not ok:
        S3_ERRORS.labels(label).inc()


def set_s3_unsynced_bytes(nbytes: int) -> None:
    """The amount of data not yet uploaded."""
    S3_UNSYNCED.set(nbytes)


# --- per-instance gauges, read at scrape time ---------------------------------------------------


class InstanceCollector(Collector):
    """Gauges of one running instance, computed from ``snapshot()`` at every scrape.

    ``snapshot`` returns a dict with: ``ready`` (bool), ``uptime`` (s), ``role``, ``state``,
    ``generation``, ``renewal_age`` (s or None), ``buckets`` (list of (name, size, records)),
    ``cache_hits``, ``cache_misses``, and optionally ``storage_unsynced`` (bytes).
    """

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self._snapshot = snapshot
        self._buckets = LabelCap()

    def describe(self) -> Iterable[Any]:
        """No fixed description: the families are built per scrape."""
        return []

    def collect(self) -> Iterator[Any]:
        """The instance's gauges now."""
        snap = self._snapshot()
        yield _gauge("reduct_ready", "1 when /api/v1/ready answers 200", int(snap["ready"]))
        yield _gauge("reduct_uptime_seconds", "Seconds since the server started", snap["uptime"])
        state = GaugeMetricFamily(
            "reduct_role_state",
            "1 for the instance's role and its current state (lease: WAITING, HOLDING, "
            "STEPPED_DOWN, FAILED)",
            labels=["role", "state"],
        )
        state.add_metric([snap["role"], snap["state"]], 1)
        yield state
        yield _gauge(
            "reduct_lease_generation", "Generation of the lease held (0: none)", snap["generation"]
        )
        if snap.get("renewal_age") is not None:
            yield _gauge(
                "reduct_lease_renewal_age_seconds",
                "Seconds since the last successful lease renewal was sent",
                snap["renewal_age"],
            )
        buckets = snap.get("buckets")
        if buckets is not None:
            yield _gauge("reduct_buckets", "Buckets", len(buckets))
            yield _gauge("reduct_usage_bytes", "Bytes stored", sum(b[1] for b in buckets))
            size = GaugeMetricFamily(
                "reduct_bucket_usage_bytes",
                f"Bytes stored per bucket (after {MAX_NAMED} names: _other)",
                labels=["bucket"],
            )
            totals: dict[str, float] = {}
            for name, nbytes, _ in buckets:
                label = self._buckets(name)
                totals[label] = totals.get(label, 0) + nbytes
            for label, nbytes in sorted(totals.items()):
                size.add_metric([label], nbytes)
            yield size
        hits = CounterMetricFamily(
            "reduct_block_cache_hits", "Block lookups served from the block cache"
        )
        hits.add_metric([], snap.get("cache_hits", 0))
        yield hits
        misses = CounterMetricFamily(
            "reduct_block_cache_misses", "Block lookups that had to read a descriptor"
        )
        misses.add_metric([], snap.get("cache_misses", 0))
        yield misses
        last = last_backup_success()
        if last is not None:
            yield _gauge(
                "reduct_backup_last_success_age_seconds",
                "Seconds since the last successful backup",
                max(0.0, time.time() - last),
            )


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def render(instance: CollectorRegistry | None = None) -> bytes:
    """The text exposition of every process-wide metric and of ``instance``'s collectors."""
    # The instance collectors run first: their snapshot sets gauges of REGISTRY (replication
    # backlog and lag), which this very scrape must show.
    tail = generate_latest(instance) if instance is not None else b""
    return generate_latest(REGISTRY) + tail


def instance_registry(snapshot: Callable[[], dict[str, Any]]) -> CollectorRegistry:
    """A registry holding one ``InstanceCollector`` over ``snapshot`` (one per Services)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(InstanceCollector(snapshot))
    return registry
