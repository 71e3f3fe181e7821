"""The copier between in-process apps (``httpx.ASGITransport``), with injected faults.

The real-process tier (``tests/e2e/test_cp.py``) covers the CLI end to end; here the copy runs
in the test's event loop so that a transport can fail on cue: a lost connection or a 503
mid-copy must be resumed without losing or duplicating a record, a refusal must stop only its
entry, and a corrupt payload in a local folder must never reach the destination.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.engine import Storage
from appliance.engine.models import EngineOptions
from appliance.hotcopy import copier as copier_module
from appliance.hotcopy.copier import Copier, CopyOptions
from appliance.hotcopy.filters import CopyFilter
from appliance.hotcopy.local import LocalSource
from appliance.hotcopy.progress import PlainReporter
from appliance.hotcopy.remote import Remote
from tests.api.conftest import Harness

COUNT = 120


class Faulty(httpx.AsyncBaseTransport):
    """Forwards to an app; ``fail(method, path_suffix)`` decides a fault per request."""

    def __init__(
        self, app: Any, fail: Callable[[httpx.Request, int], httpx.Response | Exception | None]
    ):
        self.inner = httpx.ASGITransport(app=app)
        self.fail = fail
        self.calls = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Inject the fault, if any, else forward."""
        self.calls += 1
        fault = self.fail(request, self.calls)
        if isinstance(fault, Exception):
            raise fault
        if fault is not None:
            return fault
        return await self.inner.handle_async_request(request)


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retries without waiting."""
    monkeypatch.setattr(copier_module, "RETRY_BACKOFF_SECONDS", (0.0,))


@pytest.fixture
async def apps(
    harness_factory: Callable[..., Awaitable[Harness]],
) -> AsyncIterator[tuple[Harness, Harness]]:
    """A source app with bucket ``b`` (entries e0..e2, COUNT records each) and an empty one."""
    src = await harness_factory()
    dst = await harness_factory()
    storage = src.services.storage
    bucket = storage.create_bucket("b")
    for entry in ("e0", "e1", "e2"):
        for ts in range(1, COUNT + 1):
            bucket.write_record(
                entry, ts, f"{entry}-{ts}".encode() * 30, "text/plain", {"n": str(ts % 4)}
            )
    yield src, dst


def timestamps(harness: Harness, bucket: str = "b") -> dict[str, list[int]]:
    """Every destination record's timestamp per entry, read through the engine."""
    found = harness.services.storage.get_bucket(bucket)
    return {
        info.name: [m.timestamp for m in found.get_entry(info.name).iter_records(0, 2**63)]
        for info in found.entries()
    }


async def copy(src: Any, dst: Remote, **options: Any) -> Copier:
    """Run one copy and close both ends."""
    copier = Copier(src, dst, CopyOptions(**options), PlainReporter(interval=3600))
    try:
        await copier.run()
    finally:
        await src.aclose()
        await dst.aclose()
    return copier


def remote(harness: Harness, role: str, fail: Any = None) -> Remote:
    """A Remote talking to an in-process app, through a fault injector."""
    transport = Faulty(harness.app, fail or (lambda request, n: None))
    return Remote("http://test", "", "b", role, transport=transport)


async def test_copier_resumes_after_lost_connections_without_duplicates(
    apps: tuple[Harness, Harness],
) -> None:
    src, dst = apps
    writes = {"n": 0}

    def fail(request: httpx.Request, n: int) -> Exception | None:
        if request.method == "POST" and request.url.path.endswith("/batch"):
            writes["n"] += 1
            if writes["n"] in (2, 3):
                return httpx.ConnectError("connection reset by peer")
        return None

    copier = await copy(remote(src, "source"), remote(dst, "destination", fail), parallel=1)
    assert copier.ok, copier.stats.errors
    assert copier.stats.copied == 3 * COUNT and copier.stats.skipped == 0
    assert timestamps(dst) == {e: list(range(1, COUNT + 1)) for e in ("e0", "e1", "e2")}


async def test_copier_resumes_after_a_503_on_read(apps: tuple[Harness, Harness]) -> None:
    src, dst = apps

    def fail(request: httpx.Request, n: int) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/e1/batch") and n % 3 == 0:
            return httpx.Response(503, headers={"x-reduct-error": "The server is starting up"})
        return None

    copier = await copy(remote(src, "source", fail), remote(dst, "destination"), parallel=2)
    assert copier.ok, copier.stats.errors
    assert copier.stats.copied == 3 * COUNT
    assert timestamps(dst)["e1"] == list(range(1, COUNT + 1))


async def test_copier_gives_up_after_the_retries_and_reports(apps: tuple[Harness, Harness]) -> None:
    src, dst = apps

    def fail(request: httpx.Request, n: int) -> Exception | None:
        if request.method == "POST" and request.url.path.endswith("/e2/batch"):
            return httpx.ReadTimeout("timed out")
        return None

    copier = await copy(remote(src, "source"), remote(dst, "destination", fail), retries=2)
    assert not copier.ok and copier.entry_errors == 1
    assert any("entry 'e2'" in e and "ReadTimeout" in e for e in copier.stats.errors)
    assert copier.stats.copied == 2 * COUNT  # the other entries went through
    assert "e2" not in timestamps(dst)


async def test_copier_refusal_stops_only_its_entry(apps: tuple[Harness, Harness]) -> None:
    src, dst = apps

    def fail(request: httpx.Request, n: int) -> httpx.Response | None:
        if request.method == "POST" and request.url.path.endswith("/e0/batch"):
            return httpx.Response(
                403, headers={"x-reduct-error": "Token 'x' doesn't have write access to bucket 'b'"}
            )
        return None

    copier = await copy(remote(src, "source"), remote(dst, "destination", fail), retries=5)
    assert not copier.ok and copier.entry_errors == 1
    assert any("403 Token 'x' doesn't have write access" in e for e in copier.stats.errors)
    assert set(timestamps(dst)) == {"e1", "e2"}


async def test_copier_limit_and_labels_in_process(apps: tuple[Harness, Harness]) -> None:
    src, dst = apps
    flt = CopyFilter(entries=("e1",), include={"n": "3"}, limit=5, start=10)
    copier = await copy(remote(src, "source"), remote(dst, "destination"), filter=flt)
    assert copier.ok
    assert timestamps(dst) == {"e1": [11, 15, 19, 23, 27]}


async def test_copier_never_sends_a_corrupt_local_record(
    tmp_path: Path,
    harness_factory: Callable[..., Awaitable[Harness]],
) -> None:
    folder = tmp_path / "edge"
    storage = Storage.open(EngineOptions(data_path=folder))
    bucket = storage.create_bucket("b")
    big = bytes(range(256)) * 4096  # 1 MiB: streamed in chunks, not read whole
    bucket.write_record("e", 1, b"small-one" * 10, "application/octet-stream", {})
    bucket.write_record("e", 2, big, "application/octet-stream", {"big": "1"})
    bucket.write_record("e", 3, b"small-two" * 10, "application/octet-stream", {})
    bucket.write_record("e", 4, b"small-3rd" * 10, "application/octet-stream", {})
    storage.close()
    block = next((folder / "b" / "e").glob("*.blk"))
    raw = bytearray(block.read_bytes())
    raw[raw.index(big) + len(big) - 1] ^= 0xFF  # the big record's last byte
    raw[raw.index(b"small-two")] ^= 0xFF
    block.write_bytes(bytes(raw))
    dst = await harness_factory()
    copier = await copy(LocalSource(folder, "b"), remote(dst, "destination"))
    assert not copier.ok
    assert copier.stats.failed == 2 and copier.stats.copied == 2
    assert timestamps(dst) == {"e": [1, 4]}
    assert any("record 2 of entry 'e'" in e and "checksum" in e for e in copier.stats.errors)


async def test_copier_recreates_an_expired_query(apps: tuple[Harness, Harness]) -> None:
    src, dst = apps
    reads = {"n": 0}

    def fail(request: httpx.Request, n: int) -> httpx.Response | None:
        if request.method == "GET" and request.url.path.endswith("/batch"):
            reads["n"] += 1
            if reads["n"] == 2:
                message = (
                    "Query 7 not found and it might have expired. Check TTL in your query request."
                )
                return httpx.Response(404, headers={"x-reduct-error": message})
        return None

    copier = await copy(remote(src, "source", fail), remote(dst, "destination"), parallel=1)
    assert copier.ok, copier.stats.errors
    assert copier.stats.copied == 3 * COUNT


async def test_copier_copies_live_attachments_from_a_local_folder(
    tmp_path: Path, harness_factory: Callable[..., Awaitable[Harness]]
) -> None:
    folder = tmp_path / "edge"
    storage = Storage.open(EngineOptions(data_path=folder))
    bucket = storage.create_bucket("b")
    bucket.write_record("e", 1, b"record", "application/octet-stream", {})
    bucket.write_record("e/$meta", 10, b'{"a": 1}', "application/json", {"key": "calib"})
    bucket.write_record("e/$meta", 11, b'"v2"', "application/json", {"key": "model"})
    bucket.get_entry("e/$meta").update_labels(11, {"remove": "true"}, set())
    storage.close()
    dst = await harness_factory()
    copier = await copy(LocalSource(folder, "b"), remote(dst, "destination"))
    assert copier.ok, copier.stats.errors
    assert timestamps(dst) == {"e": [1]}  # $meta entries are not listed
    meta = dst.services.storage.get_bucket("b").get_entry("e/$meta")
    assert [(m.timestamp, dict(m.labels)) for m in meta.iter_records(0, 2**63)] == [
        (10, {"key": "calib"})
    ]  # the removed attachment (remove=true) stayed behind
