"""The sender's wire protocol against a scripted destination (httpx.MockTransport): bucket
creation, protocol choice, compression, and how failures are classified."""

from __future__ import annotations

import gzip
from collections.abc import Callable

import httpx
import pytest

from appliance.replication.models import Compression
from appliance.replication.remote import Outgoing, Rejected, RemoteBucket, Unavailable

Handler = Callable[[httpx.Request], httpx.Response]


def remote(handler: Handler, compression: Compression = Compression.NONE) -> RemoteBucket:
    """A RemoteBucket for ``dst`` at a fake host, answered by ``handler``."""
    return RemoteBucket("http://dest:8383/prefix/", "dst", "tok", compression=compression,
                        transport=httpx.MockTransport(handler))


RECORDS = [Outgoing("cam/1", ts, 3, "text/plain", {"a": "x,y"}) for ts in (1000, 1001)]


async def body() -> object:
    yield b"abc"
    yield b"def"


def bucket_then(api: str, write: Handler, seen: list[httpx.Request]) -> Handler:
    """GET bucket → 404, POST → 200 (created), then ``write`` for everything else."""

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path == "/prefix/api/v1/b/dst":
            status = 404 if request.method == "GET" and len(seen) == 1 else 200
            return httpx.Response(status, headers={"x-reduct-api": api})
        return write(request)

    return handle


async def test_creates_the_bucket_and_sends_v2_with_the_token() -> None:
    seen: list[httpx.Request] = []

    def write(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"x-reduct-error-0-1": "500,disk on fire"})

    r = remote(bucket_then("1.21", write, seen))
    errors = await r.write(RECORDS, b"abcdef")
    assert [(q.method, q.url.path) for q in seen] == [
        ("GET", "/prefix/api/v1/b/dst"), ("POST", "/prefix/api/v1/b/dst"),
        ("POST", "/prefix/api/v1/io/dst/write")]
    sent = seen[-1]
    assert sent.headers["authorization"] == "Bearer tok"
    assert sent.headers["x-reduct-entries"] == "cam%2F1"
    assert sent.headers["content-length"] == "6" and sent.content == b"abcdef"
    assert errors == {1001: (500, "disk on fire")}
    await r.close()


async def test_old_destination_gets_v1_and_no_compression() -> None:
    seen: list[httpx.Request] = []
    r = remote(bucket_then("1.17", lambda q: httpx.Response(200), seen), Compression.GZIP)
    await r.write(RECORDS, body())
    sent = seen[-1]
    assert sent.url.path == "/prefix/api/v1/b/dst/cam/1/batch"
    assert "content-encoding" not in sent.headers
    assert sent.headers["x-reduct-time-1000"] == '3,text/plain,a="x,y"'
    await r.close()


async def test_compressed_batches_use_v1_with_content_encoding() -> None:
    seen: list[httpx.Request] = []
    r = remote(bucket_then("1.21", lambda q: httpx.Response(200), seen), Compression.GZIP)
    await r.write(RECORDS, body())
    sent = seen[-1]
    assert sent.url.path == "/prefix/api/v1/b/dst/cam/1/batch"
    assert sent.headers["content-encoding"] == "gzip"
    assert gzip.decompress(sent.read()) == b"abcdef"
    await r.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [(503, Unavailable), (502, Unavailable), (429, Unavailable), (500, Unavailable),
     (404, Unavailable), (422, Rejected), (400, Rejected)],
)
async def test_whole_batch_failures_are_classified(status: int, kind: type) -> None:
    seen: list[httpx.Request] = []
    write = lambda q: httpx.Response(status, headers={"x-reduct-error": "nope"})  # noqa: E731
    r = remote(bucket_then("1.21", write, seen))
    with pytest.raises(kind) as exc:
        await r.write(RECORDS, b"abcdef")
    assert (exc.value.code, exc.value.message) == (status, "nope")
    await r.close()


async def test_wrong_token_and_dead_host_are_unavailable_not_dropped() -> None:
    r = remote(lambda q: httpx.Response(401, headers={"x-reduct-error": "Invalid token"}))
    with pytest.raises(Unavailable) as exc:
        await r.write(RECORDS, b"abcdef")
    assert (exc.value.code, exc.value.message) == (401, "Invalid token")

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    dead = remote(refuse)
    with pytest.raises(Unavailable) as exc:
        await dead.ensure()
    assert exc.value.code == -3
    await r.close()
    await dead.close()


async def test_update_of_a_missing_entry_asks_for_whole_records() -> None:
    seen: list[httpx.Request] = []
    r = remote(bucket_then("1.21", lambda q: httpx.Response(404), seen))
    errors = await r.update("cam/1", RECORDS)
    assert set(errors) == {1000, 1001}
    assert seen[-1].method == "PATCH"
    assert seen[-1].headers["x-reduct-time-1001"] == '0,,a="x,y"'
    await r.close()
