"""The sender's wire protocol against a scripted destination (an aiohttp test server on
127.0.0.1): bucket creation, protocol choice, compression, and how failures are classified."""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from appliance.replication.models import Compression
from appliance.replication.remote import Outgoing, Rejected, RemoteBucket, Unavailable
from tests.e2e.server import free_port


@dataclass
class Seen:
    """One request the scripted destination received."""

    method: str
    path: str
    headers: dict[str, str]
    content: bytes


class Response:
    """A scripted answer."""

    def __init__(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.status, self.headers = status, headers or {}


Handler = Callable[[Seen], Response]
SERVERS: list[TestServer] = []


@pytest.fixture(autouse=True)
async def _close_servers() -> AsyncIterator[None]:
    yield
    while SERVERS:
        await SERVERS.pop().close()


async def remote(handler: Handler, compression: Compression = Compression.NONE) -> RemoteBucket:
    """A RemoteBucket for ``dst`` at a local server (under ``/prefix/``) run by ``handler``."""

    async def serve(request: web.Request) -> web.Response:
        seen = Seen(request.method, request.path,
                    {k.lower(): v for k, v in request.headers.items()}, await request.read())
        answer = handler(seen)
        return web.Response(status=answer.status, headers=answer.headers)

    app = web.Application(handler_args={"auto_decompress": False})  # see the wire bytes
    app.router.add_route("*", "/{tail:.*}", serve)
    server = TestServer(app, host="127.0.0.1", port=free_port())
    await server.start_server()
    SERVERS.append(server)
    return RemoteBucket(f"http://127.0.0.1:{server.port}/prefix/", "dst", "tok",
                        compression=compression)


RECORDS = [Outgoing("cam/1", ts, 3, "text/plain", {"a": "x,y"}) for ts in (1000, 1001)]


async def body() -> AsyncIterator[bytes]:
    yield b"abc"
    yield b"def"


def bucket_then(api: str, write: Handler, seen: list[Seen]) -> Handler:
    """GET bucket → 404, POST → 200 (created), then ``write`` for everything else."""

    def handle(request: Seen) -> Response:
        seen.append(request)
        path = request.path
        if path == "/prefix/api/v1/b/dst":
            status = 404 if request.method == "GET" and len(seen) == 1 else 200
            return Response(status, headers={"x-reduct-api": api})
        return write(request)

    return handle


async def test_creates_the_bucket_and_sends_v2_with_the_token() -> None:
    seen: list[Seen] = []

    def write(request: Seen) -> Response:
        return Response(200, headers={"x-reduct-error-0-1": "500,disk on fire"})

    r = await remote(bucket_then("1.21", write, seen))
    errors = await r.write(RECORDS, b"abcdef")
    assert [(q.method, q.path) for q in seen] == [
        ("GET", "/prefix/api/v1/b/dst"), ("POST", "/prefix/api/v1/b/dst"),
        ("POST", "/prefix/api/v1/io/dst/write")]
    sent = seen[-1]
    assert sent.headers["authorization"] == "Bearer tok"
    assert sent.headers["x-reduct-entries"] == "cam%2F1"
    assert sent.headers["content-length"] == "6" and sent.content == b"abcdef"
    assert errors == {1001: (500, "disk on fire")}
    await r.close()


async def test_old_destination_gets_v1_and_no_compression() -> None:
    seen: list[Seen] = []
    r = await remote(bucket_then("1.17", lambda q: Response(200), seen), Compression.GZIP)
    await r.write(RECORDS, body())
    sent = seen[-1]
    assert sent.path == "/prefix/api/v1/b/dst/cam/1/batch"
    assert "content-encoding" not in sent.headers
    assert sent.headers["x-reduct-time-1000"] == '3,text/plain,a="x,y"'
    await r.close()


async def test_compressed_batches_use_v1_with_content_encoding() -> None:
    seen: list[Seen] = []
    r = await remote(bucket_then("1.21", lambda q: Response(200), seen), Compression.GZIP)
    await r.write(RECORDS, body())
    sent = seen[-1]
    assert sent.path == "/prefix/api/v1/b/dst/cam/1/batch"
    assert sent.headers["content-encoding"] == "gzip"
    assert gzip.decompress(sent.content) == b"abcdef"
    await r.close()


@pytest.mark.parametrize(
    ("status", "kind"),
    [(503, Unavailable), (502, Unavailable), (429, Unavailable), (500, Unavailable),
     (404, Unavailable), (422, Rejected), (400, Rejected)],
)
async def test_whole_batch_failures_are_classified(status: int, kind: type) -> None:
    seen: list[Seen] = []
    write = lambda q: Response(status, headers={"x-reduct-error": "nope"})  # noqa: E731
    r = await remote(bucket_then("1.21", write, seen))
    with pytest.raises(kind) as exc:
        await r.write(RECORDS, b"abcdef")
    assert (exc.value.code, exc.value.message) == (status, "nope")
    await r.close()


async def test_wrong_token_and_dead_host_are_unavailable_not_dropped() -> None:
    r = await remote(lambda q: Response(401, headers={"x-reduct-error": "Invalid token"}))
    with pytest.raises(Unavailable) as exc:
        await r.write(RECORDS, b"abcdef")
    assert (exc.value.code, exc.value.message) == (401, "Invalid token")

    dead = RemoteBucket(f"http://127.0.0.1:{free_port()}/", "dst", None)  # nobody listens
    with pytest.raises(Unavailable) as exc:
        await dead.ensure()
    assert exc.value.code == -3
    await r.close()
    await dead.close()


async def test_update_of_a_missing_entry_asks_for_whole_records() -> None:
    seen: list[Seen] = []
    r = await remote(bucket_then("1.21", lambda q: Response(404), seen))
    errors = await r.update("cam/1", RECORDS)
    assert set(errors) == {1000, 1001}
    assert seen[-1].method == "PATCH"
    assert seen[-1].headers["x-reduct-time-1001"] == '0,,a="x,y"'
    await r.close()


async def test_a_destination_with_smaller_limits_gets_smaller_batches_nothing_dropped(
    harness_factory: object,
) -> None:
    import asyncio

    delivered: list[int] = []

    def destination(seen: Seen) -> Response:
        if seen.path == "/prefix/api/v1/b/dst":
            return Response(200, {"x-reduct-api": "1.21"})
        records = [k for k in seen.headers if k.startswith("x-reduct-0-")]
        if len(records) > 2:
            return Response(413, {"x-reduct-error": "Payload too large"})
        start = int(seen.headers["x-reduct-start-ts"])
        errors = {}
        for key in records:  # as a real destination: a timestamp it has is a 409
            delta = key.rpartition("-")[2]
            if start + int(delta) in delivered:
                errors[f"x-reduct-error-0-{delta}"] = "409,exists"
            else:
                delivered.append(start + int(delta))
        return Response(200, errors)

    probe = await remote(destination)
    host = probe.host
    h = await harness_factory(replication_timeout=0.05)  # type: ignore[operator]
    await h.client.post("/api/v1/b/src")
    body = {"src_bucket": "src", "dst_bucket": "dst", "dst_host": host}
    assert (await h.client.post("/api/v1/replications/r", json=body)).status_code == 200
    headers = {f"x-reduct-time-{ts}": "1,," for ts in range(1, 8)}
    await h.client.post("/api/v1/b/src/e/batch", data=b"x" * 7, headers=headers)
    for _ in range(200):
        detail = await (await h.client.get("/api/v1/replications/r")).get_json()
        if detail["info"]["pending_records"] == 0:
            break
        await asyncio.sleep(0.05)
    assert detail["info"]["pending_records"] == 0
    assert sorted(delivered) == list(range(1, 8))
    errors = detail["diagnostics"]["hourly"]["errors"]
    assert "413" in errors and "409" not in errors  # a resent record is delivered, not an error


async def test_a_writers_records_travel_in_full_batches_and_a_short_tail_still_goes(
    harness_factory: object, monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    import appliance.replication.task as task_module

    # Long enough that the second write always lands while the first one's records wait.
    monkeypatch.setattr(task_module, "LINGER_SECONDS", 1.0)
    batches: list[list[int]] = []

    def destination(seen: Seen) -> Response:
        if seen.path == "/prefix/api/v1/b/dst":
            return Response(200, {"x-reduct-api": "1.21"})
        start = int(seen.headers["x-reduct-start-ts"])
        batches.append(sorted(start + int(k.rpartition("-")[2])
                              for k in seen.headers if k.startswith("x-reduct-0-")))
        return Response(200)

    host = (await remote(destination)).host
    h = await harness_factory()  # type: ignore[operator]
    await h.client.post("/api/v1/b/src")
    body = {"src_bucket": "src", "dst_bucket": "dst", "dst_host": host}
    assert (await h.client.post("/api/v1/replications/r", json=body)).status_code == 200
    for first in (1, 51):  # two writes of 50: not a batch each, but 85 then the tail of 15
        headers = {f"x-reduct-time-{ts}": "1,," for ts in range(first, first + 50)}
        await h.client.post("/api/v1/b/src/e/batch", data=b"x" * 50, headers=headers)
    for _ in range(100):
        detail = await (await h.client.get("/api/v1/replications/r")).get_json()
        if detail["info"]["pending_records"] == 0:
            break
        await asyncio.sleep(0.05)
    assert detail["info"]["pending_records"] == 0
    assert [len(b) for b in batches] == [85, 15]
    assert [ts for b in batches for ts in b] == list(range(1, 101))
