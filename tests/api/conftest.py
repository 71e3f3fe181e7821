"""Fixtures of the in-process API tier: an app on ``tmp_path``, started, with a test client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.app import create_app
from appliance.services import Services
from appliance.settings import Settings

TOKEN = "s3cret-init-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Harness:
    """A started app, its services and a test client."""

    def __init__(self, app: Any, test_app: Any, services: Services) -> None:
        self.app = app
        self.test_app = test_app
        self.services = services
        self.client = test_app.test_client()


def _open_storage() -> Any:
    from appliance.engine import Storage

    return Storage.open


@pytest.fixture
async def harness_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Harness]]]:
    """Like make_harness but closes the apps at teardown (async fixture)."""
    started: list[Any] = []

    async def factory(*, wait: bool = True, **overrides: Any) -> Harness:
        values: dict[str, Any] = {
            "data_path": tmp_path / f"data{len(started)}",
            "engine_compaction_interval": 0,
        }
        values.update(overrides)
        settings = Settings(**values)
        services = Services(settings, open_storage=_open_storage())
        app = create_app(settings, services)
        test_app = app.test_app()
        await test_app.__aenter__()
        started.append(test_app)
        if wait:
            await services.wait_open()
        return Harness(app, test_app, services)

    yield factory
    for test_app in started:
        await test_app.__aexit__(None, None, None)


@pytest.fixture
async def h(harness_factory: Callable[..., Awaitable[Harness]]) -> Harness:
    """A started app with auth off on the real engine."""
    return await harness_factory()


@pytest.fixture
async def ha(harness_factory: Callable[..., Awaitable[Harness]]) -> Harness:
    """A started app with auth on (``RS_API_TOKEN``) on the real engine."""
    return await harness_factory(api_token=TOKEN)


def asgi_scope(
    method: str, path: str, *, query: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
    http_version: str = "1.1",
) -> dict[str, Any]:
    """The HTTP scope a server hands an ASGI app for one request from 127.0.0.1."""
    return {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": http_version,
        "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
        "query_string": query, "root_path": "", "headers": list(headers or []),
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8383), "extensions": {},
    }


async def request_at_once(
    app: Any, method: str, path: str, query: bytes, body: bytes,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> int:
    """One request whose body came with its head (as a small body usually does over TCP,
    unlike ``asgi_call``, which hands each message over after a loop turn); its status.
    ``content-length`` is added to ``headers``."""
    import asyncio

    length = (b"content-length", str(len(body)).encode())
    scope = asgi_scope(method, path, query=query, headers=[*(headers or []), length])
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop()
        await asyncio.Event().wait()  # the next request on the connection: never here
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return int(sent[0]["status"])


async def asgi_sent(
    app: Any,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    chunks: list[bytes] | None = None,
    disconnect: bool = False,
    query: str = "",
) -> list[dict[str, Any]]:
    """Call the ASGI app directly and return every message it sent, as sent.

    ``disconnect=True`` sends ``http.disconnect`` after the given body chunks, as a server does
    when the client goes away mid-body.
    """
    import asyncio

    pending: list[dict[str, Any]] = []
    for i, chunk in enumerate(chunks or [b""]):
        more = disconnect or i < len(chunks or [b""]) - 1
        pending.append({"type": "http.request", "body": chunk, "more_body": more})
    if disconnect:
        pending.append({"type": "http.disconnect"})
    never = asyncio.Event()

    async def receive() -> dict[str, Any]:
        if pending:
            await asyncio.sleep(0)
            return pending.pop(0)
        await never.wait()
        return {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    scope = asgi_scope(method, path, query=query.encode(), headers=raw)
    await app(scope, receive, send)
    return sent


async def asgi_call(
    app: Any,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    chunks: list[bytes] | None = None,
    disconnect: bool = False,
    query: str = "",
) -> tuple[int, dict[str, str], bytes]:
    """Call the ASGI app directly and return exactly what it sent (status, headers, body).

    Quart's test client rebuilds responses (and recomputes Content-Length for HEAD); this
    does not. ``disconnect=True``: see ``asgi_sent``.
    """
    sent = await asgi_sent(app, method, path, headers=headers, chunks=chunks,
                           disconnect=disconnect, query=query)
    status = 0
    out_headers: dict[str, str] = {}
    body = b""
    for message in sent:
        if message["type"] == "http.response.start":
            status = message["status"]
            out_headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            body += message.get("body", b"")
    return status, out_headers, body
