"""The framework floor for batched reads: captured responses replayed through Hypercorn.

Like ``replay_server.py`` (same capture, same answers), but behind the appliance's own server
stack: Hypercorn with the appliance's config on uvloop, and either a bare ASGI callable
(``asgi``: the headers handed over as pre-encoded byte pairs, as ``RawResponse`` does) or a
Quart app (``quart``: a route returning a ``Response``). No engine, no query: what is left is
what the HTTP stack costs per batch. ``asgi-tuned`` is ``asgi`` with the server process's own
tuning as ``server.serve`` applies it (the one-pass headers of ``appliance.http1``, the
receive size, reason phrases, closed-connection release, GC and malloc settings): the floor of
the stack the appliance itself runs on. Usage:
``python tests/bench/replay_asgi.py PORT CAPTURE asgi|asgi-tuned|quart``.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from quart import Quart, Response

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.server import (  # noqa: E402
    add_reason_phrases,
    hypercorn_config,
    install_http1,
    release_closed_connections,
    run,
    tune_gc,
    tune_malloc,
)
from appliance.settings import Settings  # noqa: E402

SKIP = ("content-length", "x-reduct-last", "connection", "date", "server")
API = (b"x-reduct-api", b"1.21")
QUERY_ID = b'{"id":1}'


def load(capture: Path) -> list[tuple[list[tuple[bytes, bytes]], bytes]]:
    """The captured batches as (ASGI header pairs with the content length, body)."""
    captured: list[tuple[int, list[tuple[str, str]], bytes]] = pickle.loads(capture.read_bytes())
    batches = []
    for _, headers, body in captured:
        pairs = [(k.lower().encode(), v.encode("latin-1")) for k, v in headers if k.lower() not in SKIP]
        pairs += [API, (b"content-length", str(len(body)).encode())]
        batches.append((pairs, body))
    return batches


class Replayer:
    """Answers like ``replay_server.Replay``: the next captured batch for every read."""

    def __init__(self, batches: list[tuple[list[tuple[bytes, bytes]], bytes]]) -> None:
        self.batches = batches
        self.next = 0

    def answer(self, path: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
        """Header pairs (content length included) and body for a request of ``path``."""
        if path.endswith(("/read", "/batch")):
            pairs, body = self.batches[self.next % len(self.batches)]
            self.next += 1
            return list(pairs), body
        if path.endswith("/q"):
            return [API, (b"content-type", b"application/json"), (b"content-length", b"8")], QUERY_ID
        return [API, (b"content-length", b"0")], b""

    async def asgi(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A bare ASGI app (lifespan handled, request bodies drained)."""
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        while (await receive()).get("more_body"):
            pass
        pairs, body = self.answer(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": pairs})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})

    def quart(self) -> Quart:
        """The same answers from a Quart route."""
        app = Quart(__name__)

        @app.route("/<path:rest>", methods=["GET", "HEAD", "POST"])
        async def anything(rest: str) -> Response:
            pairs, body = self.answer("/" + rest)
            headers = [(k.decode(), v.decode("latin-1")) for k, v in pairs if k != b"content-length"]
            return Response(body, 200, headers)

        return app


if __name__ == "__main__":
    replayer = Replayer(load(Path(sys.argv[2])))
    mode = sys.argv[3]
    if mode == "asgi-tuned":  # as ``server.serve`` tunes the appliance's process
        tune_gc()
        tune_malloc()
        add_reason_phrases()
        release_closed_connections()
        install_http1()
    app: Any = replayer.quart() if mode == "quart" else replayer.asgi
    settings = Settings(host="127.0.0.1", port=int(sys.argv[1]))
    run(serve(app, hypercorn_config(settings)))
