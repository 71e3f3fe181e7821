"""The ceiling for batched reads: a bare HTTP/1.1 server that replays pre-built responses.

``bench_api.py`` captures the batched-read responses of a real query against the appliance
(status, headers, body), pickles them and starts this server on them. The server answers a
query (``POST .../q``) with ``{"id":1}`` and every ``GET|HEAD .../read`` (or v1 ``.../batch``)
with the next captured batch, cycling forever (the ``x-reduct-last`` header is dropped, so the
client's own count or time budget ends the case); anything else gets an empty 200. Responses are
encoded once up front and written with one ``transport.write``, so what it measures is what
reduct-py can receive and parse. Usage: ``python tests/bench/replay_server.py PORT CAPTURE``.
"""

from __future__ import annotations

import asyncio
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from appliance.server import run  # noqa: E402

API = b"x-reduct-api: 1.21\r\n"


def encode(status: int, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """One complete HTTP/1.1 response (keep-alive, explicit content-length)."""
    lines = [f"HTTP/1.1 {status} OK\r\n".encode()]
    for name, value in headers:
        if name.lower() in ("content-length", "x-reduct-last", "connection", "date", "server"):
            continue
        lines.append(f"{name}: {value}\r\n".encode("latin-1"))
    lines.append(API)
    lines.append(f"content-length: {len(body)}\r\n\r\n".encode())
    return b"".join(lines) + body


class Replay(asyncio.Protocol):
    """Parses request heads just enough (method, path, content-length) and replays."""

    def __init__(self, batches: list[bytes]) -> None:
        self._batches = batches
        self._next = 0
        self._buffer = b""
        self._skip = 0  # request body bytes still to drop
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport."""
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        """Answer every complete request in the buffer."""
        self._buffer += data
        while True:
            if self._skip:
                dropped = min(self._skip, len(self._buffer))
                self._buffer = self._buffer[dropped:]
                self._skip -= dropped
                if self._skip:
                    return
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            lines = head.split(b"\r\n")
            method, target = lines[0].split(b" ")[:2]
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    self._skip = int(value)
            assert self._transport is not None
            self._transport.write(self._answer(method, target))

    def _answer(self, method: bytes, target: bytes) -> bytes:
        path = target.split(b"?")[0]
        if method == b"POST" and path.endswith(b"/q"):
            return encode(200, [("content-type", "application/json")], b'{"id":1}')
        if method in (b"GET", b"HEAD") and path.endswith((b"/read", b"/batch")):
            response = self._batches[self._next % len(self._batches)]
            self._next += 1
            return response
        return encode(200, [], b"")


async def main(port: int, capture: Path) -> None:
    """Serve the captured batches on 127.0.0.1:``port`` until killed."""
    captured: list[tuple[int, list[tuple[str, str]], bytes]] = pickle.loads(capture.read_bytes())
    batches = [encode(status, headers, body) for status, headers, body in captured]
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Replay(batches), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    run(main(int(sys.argv[1]), Path(sys.argv[2])))
