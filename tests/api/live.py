"""A real Hypercorn serving the app on 127.0.0.1 inside the test's event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from appliance.app import create_app
from appliance.services import Services
from appliance.settings import Settings


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@asynccontextmanager
async def live_server(settings: Settings) -> AsyncIterator[tuple[str, Services]]:
    """Serve an app for ``settings`` on loopback; yields (base url, services)."""
    services = Services(settings)
    app = create_app(settings, services)
    port = free_port()
    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 1
    config.include_server_header = False  # the app sends ReductStore's Server header
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            break
        except OSError:
            await asyncio.sleep(0.02)
    await services.wait_open()
    try:
        yield f"http://127.0.0.1:{port}", services
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def raw_request(port: int, data: bytes, *, close_after: bool = True) -> bytes:
    """Send raw bytes to the server and return whatever it answers before closing."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    if close_after:
        writer.close()
        return b""
    out = await asyncio.wait_for(reader.read(65536), 5)
    writer.close()
    return out


def port_of(url: str) -> int:
    """The port of a ``http://127.0.0.1:<port>`` url."""
    return int(url.rsplit(":", 1)[1])


__all__ = ["Any", "free_port", "live_server", "port_of", "raw_request"]
