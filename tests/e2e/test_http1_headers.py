"""The real process serves HTTP/1 with ``appliance.http1``'s one-pass header handling, and
answers exactly as with h11's own (``APPLIANCE_HTTP_PARSER=h11``)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from reduct import Batch, Client

from appliance.http1 import PARSER_ENV, _versions_verified
from tests.e2e.server import ServerProcess

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not _versions_verified(), reason="h11/Hypercorn version not verified for appliance.http1"
    ),
]

RAW_REQUESTS = [
    b"GET /api/v1/alive HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /api/v1/info HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET /api/v1/b/missing HTTP/1.1\r\nHost: a\r\nX-A:\t spaced \t\r\nx-b:\r\n\r\n",
    b"GET /api/v1/alive HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",  # space before the colon
    b"GET /api/v1/alive HTTP/1.1\r\nHost: a\r\nX: a\r\n folded\r\n\r\n",  # obs-fold
    b"GET /api/v1/alive HTTP/1.1\r\nX: no host\r\n\r\n",
    b"GET /api/v1/alive HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET /api/v1/alive HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
    b"POST /api/v1/b/x HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    b"POST /api/v1/b/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"GET /api/v1/alive HTTP/1.1\nHost: a\n\n",
]


def exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a new connection; the response head (status line and headers
    other than Date) as received."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    status, *lines = data.split(b"\r\n\r\n")[0].split(b"\r\n")
    kept = sorted(line for line in lines if not line.lower().startswith(b"date:"))
    return b"\r\n".join([status, *kept])


@pytest.fixture
def stock_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """An appliance on h11's own header handling."""
    proc = ServerProcess(tmp_path / "stock", env={PARSER_ENV: "h11"}).start()
    yield proc
    proc.kill()


def test_one_pass_headers_answer_as_h11(server: ServerProcess, stock_server: ServerProcess) -> None:
    assert "HTTP/1 headers: one-pass reader and writer" in server.log_path.read_text()
    assert "HTTP/1 headers: h11's own parser" in stock_server.log_path.read_text()
    answers = {r: exchange(server.port, r) for r in RAW_REQUESTS}
    assert answers == {r: exchange(stock_server.port, r) for r in RAW_REQUESTS}
    assert answers[RAW_REQUESTS[0]].startswith(b"HTTP/1.1 200 OK")
    assert answers[RAW_REQUESTS[4]].startswith(b"HTTP/1.1 200 OK")  # h11 unfolds it
    for malformed in (RAW_REQUESTS[3], *RAW_REQUESTS[5:9]):
        assert answers[malformed].startswith(b"HTTP/1.1 400"), malformed
    assert answers[RAW_REQUESTS[9]].startswith(b"HTTP/1.1 501")


async def test_batch_of_1000_records_round_trips(server: ServerProcess) -> None:
    """Heads of 1,000 headers in, batched-read responses of ~85 headers out."""
    async with Client(server.url) as client:
        bucket = await client.create_bucket("heads")
        batch = Batch()
        for i in range(1_000):
            batch.add(1 + i, bytes([i % 256]) * 32, labels={"i": str(i), "s": "a b"})
        assert await bucket.write_batch("e", batch) == {}
        seen = 0
        async for record in bucket.query("e"):
            assert record.timestamp == 1 + seen
            assert record.labels == {"i": str(seen), "s": "a b"}
            assert await record.read_all() == bytes([seen % 256]) * 32
            seen += 1
        assert seen == 1_000
