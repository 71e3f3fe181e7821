"""Serving the app with Hypercorn: config from Settings (host, port, TLS) and graceful SIGTERM.

Only this module and ``cli/`` install signal handlers. SIGTERM/SIGINT set an event that Hypercorn's
``shutdown_trigger`` waits on, so a systemd or docker stop drains in-flight requests for up to
``GRACEFUL_TIMEOUT_SECONDS`` and then runs the app's shutdown (engine flushed and closed).
The same trigger fires when the services fail to start (engine unusable, provisioning refused):
the server shuts down and ``serve`` returns the services' exit code.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, TypeVar

import h11
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.protocol.h11 import H11Protocol

from appliance import http1
from appliance.errors import ConfigError
from appliance.settings import Settings
from appliance.units import KIB, MIB

# Soft limit to use when the hard limit is unlimited (a kernel still caps it at nr_open).
OPEN_FILES_WITHOUT_LIMIT = 65536

if TYPE_CHECKING:
    from provisioning import DesiredState

log = logging.getLogger(__name__)
T = TypeVar("T")
# `asyncio` forces the standard event loop (for comparisons); anything else uses uvloop if present.
LOOP_ENV = "APPLIANCE_EVENT_LOOP"

RECV_ENV = "APPLIANCE_RECV_BYTES"
RECV_BYTES = 64 * KIB  # Hypercorn's own; see ``set_receive_size``
# glibc ``mallopt`` parameters and values (see ``tune_malloc``).
MALLOC_ENV = "APPLIANCE_MALLOC"
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's own ceiling for the threshold (64-bit): above every batch-sized buffer (read spans
# and in-memory batch bodies, up to 16 MiB), which an 8 MiB threshold sent to fresh mappings.
MALLOC_MMAP_BYTES = 32 * MIB
MALLOC_TRIM_BYTES = 32 * MIB

GRACEFUL_TIMEOUT_SECONDS = 10.0
GC_YOUNG_THRESHOLD = 50_000  # see ``tune_gc``
# h11 refuses requests whose head exceeds this; batch requests carry one header per record, so
# follow RS_IO_BATCH_MAX_METADATA_SIZE as ReductStore does (its HTTP/1 max buffer size), plus
# room for the ordinary headers: a batch just over the limit then gets the app's clear 413
# instead of h11's bare 400.
MIN_HEADER_BYTES = 64 * KIB
HEAD_SLACK_BYTES = 64 * KIB


@functools.lru_cache(maxsize=256)
def _reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def add_reason_phrases() -> None:
    """Make Hypercorn's HTTP/1.1 status lines carry the reason phrase (``HTTP/1.1 200 OK``, as
    ReductStore sends) instead of an empty one; idempotent.

    Hypercorn builds ``h11.Response`` without a reason; its one place of sending is wrapped
    (a private method: pinned by a test that reads the raw status line). The reason is set on
    the event in place, as h11's own constructor sets its fields: building the event again
    would validate every header a second time, on every response.
    """
    original = H11Protocol._send_h11_event
    if getattr(original, "adds_reason", False):
        return

    async def send_with_reason(self: H11Protocol, event: Any) -> None:
        if isinstance(event, h11.Response | h11.InformationalResponse) and not event.reason:
            object.__setattr__(event, "reason", _reason(event.status_code))  # frozen dataclass
        await original(self, event)

    send_with_reason.adds_reason = True  # type: ignore[attr-defined]
    H11Protocol._send_h11_event = send_with_reason  # type: ignore[method-assign]


def hypercorn_config(settings: Settings) -> Config:
    """A Hypercorn Config for ``settings``; ConfigError when TLS files are missing or partial."""
    config = Config()
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    config.bind = [f"{host}:{settings.port}"]
    config.graceful_timeout = GRACEFUL_TIMEOUT_SECONDS
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    head_bytes = max(MIN_HEADER_BYTES, settings.io_batch_max_metadata_size + HEAD_SLACK_BYTES)
    config.h11_max_incomplete_size = head_bytes
    config.h2_max_header_list_size = head_bytes
    config.keep_alive_timeout = 75
    # The app sends ReductStore's `Server` header; Hypercorn's own would make it appear twice.
    config.include_server_header = False
    if (settings.cert_path is None) != (settings.cert_key_path is None):
        raise ConfigError(
            "invalid setting: RS_CERT_PATH and RS_CERT_KEY_PATH must be set together for TLS"
        )
    if settings.cert_path is not None and settings.cert_key_path is not None:
        tls_files = (
            ("RS_CERT_PATH", settings.cert_path),
            ("RS_CERT_KEY_PATH", settings.cert_key_path),
        )
        for name, path in tls_files:
            if not path.is_file():
                raise ConfigError(f"invalid setting {name}={str(path)!r}: file not found")
        config.certfile = str(settings.cert_path)
        config.keyfile = str(settings.cert_key_path)
    return config


def release_closed_connections() -> None:
    """Make Hypercorn close a connection as soon as the client has closed it.

    Hypercorn's asyncio ``TCPServer`` stops reading at EOF but then waits for its task group,
    which still holds the keep-alive idle timer: the socket sat in CLOSE-WAIT, holding a file
    descriptor, for ``keep_alive_timeout`` (75 s) after every client that closed first; 1,000
    short connections exhausted a 1,024-descriptor limit. Closing right after the read loop
    ends (EOF, reset or read timeout) stops the timer and frees the socket at once; a request
    still running was already told the client is gone (``http.disconnect``). Idempotent, and
    a no-op on a Hypercorn without the method (a later release may fix this itself).
    """
    from hypercorn.asyncio.tcp_server import TCPServer

    read_data = getattr(TCPServer, "_read_data", None)
    if read_data is None or getattr(read_data, "_appliance_patched", False):
        return

    async def _read_data_then_close(self: Any) -> None:
        try:
            await read_data(self)
        finally:
            await self._close()

    _read_data_then_close._appliance_patched = True  # type: ignore[attr-defined]
    TCPServer._read_data = _read_data_then_close  # type: ignore[method-assign]


def set_receive_size(nbytes: int | None = None) -> int:
    """Make Hypercorn read up to ``nbytes`` (default ``RECV_BYTES``, its own 64 KiB) from a
    socket at a time; returns the size in force. ``APPLIANCE_RECV_BYTES`` overrides (a
    benchmarking knob, not an ``RS_*`` setting; the empty-handler ceiling honours it too).

    The server passes ``http1.receive_bytes()``: with the ``ChunkReader`` a transport's whole
    chunk (256 KiB), which it hands on without a copy; cut into 64 KiB reads each chunk would be
    copied once more. On asyncio's stock reader 256 KiB had cut the server's CPU per MiB
    received by ~7 % here and the ceiling's by ~25 %, but gained no measurable throughput and
    lengthened the p99 of small writes beside a streaming 1 GiB record, so the stock path (and
    the stock ceiling) keeps 64 KiB."""
    from hypercorn.asyncio import tcp_server

    env = os.environ.get(RECV_ENV, "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError(f"invalid {RECV_ENV}={env!r}: a positive number of bytes")
        size = int(env)
    else:
        size = nbytes or RECV_BYTES
    tcp_server.MAX_RECV = size
    return size


def install_http1() -> bool:
    """``http1.install()``, then Hypercorn's read size for what it installed (256 KiB with the
    chunk reader, else 64 KiB); returns whether ``appliance.http1`` is in use."""
    installed = http1.install()
    set_receive_size(http1.receive_bytes())
    return installed


def tune_malloc() -> bool:
    """Keep memory freed by request bodies in the C heap for the next ones (glibc ``mallopt``);
    returns whether it applied. ``APPLIANCE_MALLOC=default`` leaves glibc's own policy (a
    benchmarking knob).

    A large body's chunks (a socket read each, up to 256 KiB) live until a worker thread has
    written them, so several MiB are freed at once; glibc then gives the top of its heap back to the
    kernel and the next chunks fault fresh pages in, which on a VM costs ~0.2-0.3 ms of system
    time per MiB received (the empty-handler ceiling frees each chunk at once and never paid
    it). Allocations up to ``MALLOC_MMAP_BYTES`` come from the heap, and up to
    ``MALLOC_TRIM_BYTES`` of free heap is kept: the memory bound of a request is unchanged,
    what the process keeps after a burst grows by at most that much.

    The threshold is above the largest buffer a batch needs (``PRELOAD_BATCH_BYTES``): the
    body of a batched read of eight 1 MiB records is one 8 MiB+ ``pread`` span, and at an
    8 MiB threshold each was a fresh mapping whose ~2,000 pages faulted in (~55 faults and
    ~90 µs of system time per 1 MiB record read); from the heap it is reused. (glibc's own
    policy raises its threshold the same way after the first such buffer; a fixed one does
    not.)"""
    if os.environ.get(MALLOC_ENV, "").strip().lower() == "default":
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False  # not glibc (musl, macOS): its allocator's own policy
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_BYTES)
    )


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop the server runs on: uvloop when installed (less per-request overhead in
    the loop, cheaper wake-ups from the engine threads), else asyncio's default loop."""
    if os.environ.get(LOOP_ENV, "").strip().lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` on the loop of ``loop_factory`` (the CLI and the benchmark ceiling)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


async def _first_of(*waits: Awaitable[object]) -> None:
    """Return as soon as one of ``waits`` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def tune_gc() -> None:
    """Collect the young generation every ``GC_YOUNG_THRESHOLD`` allocations instead of
    CPython's 700: a batch of 1,000 records allocates ~10 objects a record, which triggered ~15
    young collections per request, and the resulting older-generation passes walk every record
    the block caches hold. Acyclic garbage is still freed at once by reference counting; only
    cycles wait a little longer. Measured on the engine's batch path: 10.1–10.4 → 8.6–9.2 µs of
    CPU per 1 KiB record."""
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard limit (issue 8); return (soft, hard) after.

    Sockets and the engine's file cache share the limit; the cache sizes itself from it
    (``engine.fd_cache.fd_budget``), so this runs before the engine opens.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, OPEN_FILES_WITHOUT_LIMIT)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:
            log.warning("can't raise the open-file limit from %d to %d: %s", soft, target, exc)
    log.info("open-file limit %d (hard %d)", soft, hard)
    return soft, hard


async def serve(
    settings: Settings,
    *,
    desired: DesiredState | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Serve the appliance until SIGTERM or SIGINT, then drain and shut down; the exit code.

    ``desired`` and ``environ`` are the provisioning loaded by the CLI and the environment it
    came from (``Services``). Returns 0 after a requested stop, else the services' exit code.
    """
    from appliance.app import create_app  # imported late: the CLI's `check` needs no Quart
    from appliance.services import Services

    raise_open_file_limit()
    tune_gc()
    tune_malloc()
    config = hypercorn_config(settings)
    add_reason_phrases()
    release_closed_connections()
    install_http1()
    services = Services(settings, desired=desired, environ=environ)
    app = create_app(settings, services)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    scheme = "https" if config.certfile else "http"
    log.info(
        "listening on %s://%s:%d%s", scheme, settings.host, settings.port, settings.api_base_path
    )
    await hypercorn_serve(
        app,
        config,
        shutdown_trigger=lambda: _first_of(stop.wait(), services.wait_failed()),
    )
    code = services.exit_code or 0
    log.info("stopped" if code == 0 else f"stopped: startup failed (exit code {code})")
    return code
