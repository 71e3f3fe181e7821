"""The Quart application: blueprints, the one error handler, common headers, the lifespan.

``create_app(settings, services)`` is all the server needs. Every response — success, error,
404 fallback, 503 while starting, 204 — carries ``x-reduct-api`` and ``Server`` (spec §0.1,
added by ``api/connection.py``); every ``ApplianceError`` becomes ReductStore's error shape
(spec §0.3, ARCHITECTURE §7).
"""

from __future__ import annotations

import logging
import mimetypes
import time
from collections.abc import AsyncGenerator
from importlib import resources
from typing import Any

from quart import Quart, request
from werkzeug.exceptions import HTTPException

from appliance import API_VERSION, REDUCTSTORE_VERSION, metrics
from appliance.api import (
    backups,
    batch_v2,
    buckets,
    entries,
    instance,
    lifecycles,
    links,
    params,
    queries,
    replications,
    tokens,
)
from appliance.api.access import SERVICES_KEY, authenticate, client_ip
from appliance.api.connection import (
    POLICY_KEY,
    ApplianceConnection,
    ApplianceRequest,
    HttpPolicy,
    access_log,
)
from appliance.api.protocol_lane import LANE_ENV as PROTOCOL_LANE_ENV
from appliance.api.protocol_lane import ProtocolLane
from appliance.api.read_lane import ReadLane, lane_enabled
from appliance.api.response import ApiResponse as Response
from appliance.api.response import (
    error_response,
    report_error,
    report_unexpected,
    unexpected_response,
)
from appliance.api.write_lane import LANE_ENV as WRITE_LANE_ENV
from appliance.api.write_lane import WriteLane
from appliance.http1.early import EARLY_KEY
from appliance.errors import ApplianceError, NoContent, ServiceUnavailable
from appliance.services import STARTING_MESSAGE, Services
from appliance.settings import Settings

log = logging.getLogger(__name__)

COMMON_HEADERS = {"x-reduct-api": API_VERSION, "Server": f"ReductStore {REDUCTSTORE_VERSION}"}
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ASYNC_CACHE_SIZE = 1024  # functions ``ApplianceQuart.ensure_async`` remembers
CONSOLE_PACKAGE = "appliance.console"
# The console loads nothing from elsewhere and only calls this server's API.
CONSOLE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; "
    "object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)
mimetypes.add_type("text/javascript", ".js")


def console_file(name: str) -> bytes | None:
    """A file of the web console shipped in the package (None if there is no such file)."""
    parts = [p for p in name.split("/") if p]
    if not parts or any(p in (".", "..") or p.startswith(".") for p in parts):
        return None
    node = resources.files(CONSOLE_PACKAGE)
    for part in parts:
        node = node.joinpath(part)
    try:
        return node.read_bytes() if node.is_file() else None
    except OSError:
        return None


def _egress(response: Response) -> int:
    """Bytes a response sends (its Content-Length; 0 when streamed without one)."""
    raw = getattr(response, "raw_headers", None)
    if raw is not None:
        for name, value in raw:
            if name == b"content-length":
                return int(value)
        return 0
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else 0


def _ingress(scope: dict[str, Any]) -> int:
    """Declared request body bytes, as werkzeug's ``content_length`` reads them (0 for a
    chunked body, a missing or a malformed length), from the raw header pairs."""
    raw = scope["headers"]
    if type(raw) is list and len(raw) >= params.COLUMN_LOOKUP_FROM:
        # A batched write's 1,000 headers: C-level scans of the names instead of the loop.
        names = [name for name, _ in raw]
        if b"transfer-encoding" not in names and names.count(b"content-length") <= 1:
            if b"content-length" not in names:
                return 0
            try:
                return max(int(raw[names.index(b"content-length")][1]), 0)
            except ValueError:
                return 0
    length = 0
    for name, value in raw:
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            return 0
        if name == b"content-length" and not length:
            try:
                length = max(int(value), 0)
            except ValueError:
                length = 0
    return length


class ApplianceQuart(Quart):
    """Quart, remembering which handlers and hooks are coroutine functions: Quart asks
    ``ensure_async`` for each of them on every request, and each answer inspects the code
    object again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._async_funcs: dict[Any, Any] = {}

    def ensure_async(self, func: Any) -> Any:  # type: ignore[override]
        """Quart's ``ensure_async``, cached per function (bounded: handlers and hooks)."""
        try:
            return self._async_funcs[func]
        except KeyError:
            wrapped = super().ensure_async(func)
            if len(self._async_funcs) < ASYNC_CACHE_SIZE:
                self._async_funcs[func] = wrapped
            return wrapped
        except TypeError:  # an unhashable callable: nothing to remember
            return super().ensure_async(func)


def create_app(settings: Settings, services: Services | None = None) -> Quart:
    """Build the app for ``settings`` (and the services it serves, built if not given)."""
    svc = services if services is not None else Services(settings)
    app = ApplianceQuart(__name__)
    app.config.update(
        MAX_CONTENT_LENGTH=None,  # Quart's 16 MB default would refuse large records
        BODY_TIMEOUT=settings.io_operation_timeout,
        RESPONSE_TIMEOUT=None,
        PROVIDE_AUTOMATIC_OPTIONS=True,
        JSON_SORT_KEYS=False,
    )
    app.url_map.strict_slashes = False
    app.asgi_http_class = ApplianceConnection  # type: ignore[assignment]
    app.request_class = ApplianceRequest
    app.response_class = Response
    app.extensions[SERVICES_KEY] = svc

    base = settings.api_base_path
    prefix = base + "api/v1"
    for module in (
        instance, buckets, tokens, replications, lifecycles, links, batch_v2, queries, entries,
        backups,
    ):
        app.register_blueprint(module.blueprint, url_prefix=prefix)

    rules = {rule.endpoint: rule.rule for rule in app.url_map.iter_rules()}
    entry_route = rules[f"{entries.blueprint.name}.{entries.dispatch.__name__}"]
    lane = (
        ReadLane(
            svc, prefix, entry_route, rules[f"{batch_v2.blueprint.name}.{batch_v2.read.__name__}"]
        )
        if lane_enabled()
        else None
    )
    write_lane = (
        WriteLane(svc, prefix, entry_route) if lane_enabled(name=WRITE_LANE_ENV) else None
    )
    origins = settings.cors_origins
    app.extensions[POLICY_KEY] = HttpPolicy(
        common=tuple((k.lower().encode(), v.encode()) for k, v in COMMON_HEADERS.items()),
        origins=frozenset(o for o in origins if o != "*"),
        allow_all_origins="*" in origins,
        alive_paths=frozenset({prefix + "/alive", prefix + "/alive/", base}),
        is_ready=lambda: svc.ready,
        starting_message=STARTING_MESSAGE,
        log_access=settings.access_log,
        # Served before the storage is open too: the console signs in and shows "starting",
        # and a standby's lease gauges are what an operator scrapes.
        ungated_prefixes=(base + "ui", base + "metrics"),
        read_lane=lane,
        write_lane=write_lane,
    )
    if lane is not None and lane_enabled(name=PROTOCOL_LANE_ENV):
        app.extensions[EARLY_KEY] = ProtocolLane(app.extensions[POLICY_KEY], lane).answer
    if settings.access_log:
        access_log.setLevel(logging.INFO)  # on whatever RS_LOG_LEVEL says: it was asked for
    instance_metrics = metrics.instance_registry(svc.metrics_snapshot)

    @app.route(base, methods=["GET"], strict_slashes=True)
    async def console_redirect() -> Response:
        """ReductStore's redirect from the root to the web console."""
        return _redirect(base + "ui/")

    @app.route(base + "ui/", methods=["GET", "HEAD"])
    @app.route(base + "ui/<path:name>", methods=["GET", "HEAD"])
    async def console(name: str = "index.html") -> Response:
        """The web console's static files (shipped in the package; the console calls the
        public API like any other client)."""
        if not request.path.endswith("/") and request.path == base + "ui":
            return _redirect(base + "ui/")  # relative asset URLs need the trailing slash
        data = console_file(name)
        if data is None:
            return error_response(404, "Not found", body=request.method != "HEAD")
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/"):
            kind += "; charset=utf-8"
        body = b"" if request.method == "HEAD" else data
        response = Response(body, status=200, content_type=kind)
        response.headers["Content-Length"] = str(len(data))
        response.headers["Cache-Control"] = "no-cache"
        response.headers["Content-Security-Policy"] = CONSOLE_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.route(base + "metrics", methods=["GET"])
    async def metrics_endpoint() -> Response:
        """Prometheus text format; authenticated like /api/v1/info unless RS_METRICS_PUBLIC."""
        if not settings.metrics_public:
            if not svc.ready:
                raise ServiceUnavailable(STARTING_MESSAGE)  # no token store before the open
            authenticate()
        body = await svc.workers.run(metrics.render, instance_metrics)
        return Response(body, status=200, content_type=metrics.CONTENT_TYPE)

    if svc.fence.timed:  # a lease holder (fixed by the role at startup); others skip both

        @app.before_request
        async def fence_before_mutation() -> None:
            """A lease holder checks its lease before a mutation (why: ``roles/write_fence.py``)."""
            if request.method in MUTATING_METHODS:
                await svc.fence.check_async()

        @app.after_request
        async def fence_before_acknowledging(response: Response) -> Response:
            """...and again before a mutation's 2xx leaves: the write happened before any
            takeover, or the client gets 503 instead of an acknowledgement (issue #5)."""
            if request.method in MUTATING_METHODS and response.status_code < 300:
                try:
                    await svc.fence.check_async()
                except ApplianceError as exc:
                    head = request.method == "HEAD"
                    return error_response(exc.status, exc.public_message, body=not head)
            return response

    @app.after_request
    async def record_event(response: Response) -> Response:
        """Audit and usage of this request go to the ``$system`` queue (never fails it)."""
        events = svc.events
        if events.enabled:
            try:
                req = request._get_current_object()  # noqa: SLF001 - one proxy lookup
                scope = req.scope
                now = time.perf_counter()
                events.request_done(
                    req.token_name, scope["method"], req.path, response.status_code,
                    client_ip(), _ingress(scope), _egress(response),
                    now - (req.started or now),
                )
            except Exception:  # noqa: BLE001 - an event must never fail the request
                log.debug("audit event not recorded", exc_info=True)
        return response

    @app.errorhandler(ApplianceError)
    async def appliance_error(error: ApplianceError) -> Response:
        """The one mapping of the error tree to HTTP: the log gets ``message`` (with file and
        offset for corruption), the client ``public_message`` (never a server path)."""
        report_error(error)
        return error_response(error.status, error.public_message, body=request.method != "HEAD")

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        """Quart/werkzeug HTTP errors (unknown path, bad method) in ReductStore's shape."""
        status = error.code or 500
        if status == 404 and request.method not in ("GET", "HEAD"):
            status = 405  # ReductStore answers other methods on unknown paths with a bare 405
        if status == 404:
            return error_response(404, "Not found", body=request.method != "HEAD")
        if status == 405:
            # ReductStore's framework answers a bare 405; clients then show an empty message,
            # so ours says what happened (issue 13), still without a body.
            return error_response(405, "Method not allowed", body=False)
        return error_response(status, error.description or error.name)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        """Anything else: logged with its traceback, answered 500 without one."""
        report_unexpected(request.method, request.path)
        return unexpected_response(error)

    @app.while_serving
    async def lifespan() -> AsyncGenerator[None, None]:
        """Start the services when serving begins, stop them when it ends."""
        await svc.start()
        try:
            yield
        finally:
            await svc.stop()

    return app


def _redirect(location: str) -> Response:
    response = Response(b"", status=302)
    response.headers["Location"] = location
    return response


__all__ = ["NoContent", "create_app", "error_response"]
