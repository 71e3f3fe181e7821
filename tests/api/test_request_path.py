"""The per-request path (issue 15): small single writes stored on the event loop when that
cannot wait, the worker hop otherwise; the audit record read from the raw request still
carries the same fields (token, method, path, status, client IP through trusted proxies,
duration, ingress and egress)."""

from __future__ import annotations

import asyncio
import gc
import json
from pathlib import Path
from typing import Any

import pytest
import uvloop

from appliance.api import access
from appliance.api.connection import ApplianceRequest, BoundedBody
from appliance.app import create_app
from appliance.engine import Storage
from appliance.services import Services
from appliance.settings import Settings
from tests.api.conftest import AUTH, TOKEN, Harness, asgi_call, request_at_once

API = "/api/v1"


def count_hops(h: Harness) -> list[Any]:
    """Record every function the app hands to the engine's worker threads."""
    calls: list[Any] = []
    workers = h.services.workers
    original = workers.run

    async def run(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await original(fn, *args, **kwargs)

    workers.run = run  # type: ignore[method-assign]
    return calls


async def write(h: Harness, ts: int, body: bytes, **headers: str) -> int:
    r = await h.client.post(
        f"{API}/b/data/e?ts={ts}", data=body,
        headers={"Content-Length": str(len(body)), "x-reduct-label-n": str(ts), **headers},
    )
    return r.status_code


async def test_small_writes_skip_the_worker_hop_once_the_block_is_open(h: Harness) -> None:
    assert (await h.client.post(API + "/b/data")).status_code == 200
    hops = count_hops(h)
    assert await write(h, 1, b"first") == 200  # new entry, new block: the worker creates them
    assert [f.__name__ for f in hops] == ["_write_small"]
    for ts in range(2, 12):
        assert await write(h, ts, b"x" * ts) == 200
    assert [f.__name__ for f in hops] == ["_write_small"]  # ten writes, no further hop
    r = await h.client.get(f"{API}/b/data/e?ts=7")
    assert r.status_code == 200 and await r.get_data() == b"x" * 7
    assert r.headers["x-reduct-label-n"] == "7"
    # Out of time order and duplicates take the hop, whose answers are unchanged.
    assert await write(h, 5, b"dup") == 409
    assert await write(h, 0, b"early") == 200
    assert [f.__name__ for f in hops][-2:] == ["_write_small", "_write_small"]
    # Bigger than INLINE_WRITE_BYTES: the hop as before.
    assert await write(h, 20, b"y" * (17 * 1024)) == 200
    assert hops[-1].__name__ == "_write_small"
    info = await (await h.client.get(f"{API}/b/data")).get_json()
    assert info["info"]["entry_count"] == 1 and info["entries"][0]["record_count"] == 13


@pytest.mark.parametrize("overrides", [{"engine_sync_writes": True}])
async def test_synced_writes_always_take_the_worker_hop(
    harness_factory: Any, overrides: dict[str, Any]
) -> None:
    h = await harness_factory(**overrides)
    assert (await h.client.post(API + "/b/data")).status_code == 200
    hops = count_hops(h)
    for ts in range(1, 6):
        assert await write(h, ts, b"z") == 200
    assert [f.__name__ for f in hops] == ["_write_small"] * 5  # the fsync never on the loop


async def test_inline_write_errors_keep_their_answers(h: Harness) -> None:
    assert (await h.client.post(API + "/b/data")).status_code == 200
    assert await write(h, 1, b"a") == 200
    r = await h.client.post(f"{API}/b/data/e?ts=18446744073709551616", data=b"b",
                            headers={"Content-Length": "1"})
    assert r.status_code == 422
    assert await write(h, 2, b"b") == 200


@pytest.fixture
async def hs(harness_factory: Any) -> Harness:
    """Auth on, events on, flushed by hand."""
    return await harness_factory(api_token=TOKEN, system_events_flush_interval=3600,
                                 instance_name="edge-1", system_events_quota_size="5MB")


async def audit(h: Harness, token: str) -> list[dict[str, Any]]:
    """The audit events of ``token`` written to ``$system`` so far."""
    await h.services.events.flush()
    bucket = h.services.storage.get_bucket("$system")  # type: ignore[union-attr]
    entry = bucket.get_entry(f"audit/edge-1/{token}")
    out: list[dict[str, Any]] = []
    for meta in entry.iter_records(0, 2**64 - 1):
        out.extend(json.loads(entry.read_payload(meta)))
    return out


async def test_audit_records_keep_their_fields(hs: Harness) -> None:
    assert (await hs.client.post(API + "/b/data", headers=AUTH)).status_code == 200
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Length": "5"}
    # The test peer is 127.0.0.1, a trusted proxy: the forwarded client is recorded.
    status, _, _ = await asgi_call(hs.app, "POST", API + "/b/data/e", query="ts=1",
                                   headers={**auth, "X-Forwarded-For": "10.1.2.3, 10.0.0.1"},
                                   chunks=[b"12345"])
    assert status == 200
    status, _, _ = await asgi_call(hs.app, "POST", API + "/b/data/e", query="ts=2",
                                   headers={**auth, "Forwarded": 'for="[2001:db8::7]:99"'},
                                   chunks=[b"12345"])
    assert status == 200
    status, _, _ = await asgi_call(hs.app, "GET", API + "/b/data/e", query="ts=1",
                                   headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    status, _, refusal = await asgi_call(hs.app, "GET", API + "/b/data/e", query="ts=1",
                                         headers={"Authorization": "Bearer nope"})
    assert status == 401 and refusal
    events = [e for e in await audit(hs, "init-token") if e["path"] == API + "/b/data/e"]
    assert [(e["method"], e["status"], e["ip"]) for e in events] == [
        ("POST", 200, "10.1.2.3"), ("POST", 200, "2001:db8::7"), ("GET", 200, "127.0.0.1")]
    assert all(0 <= e["duration_ms"] < 5000 and e["ts"] > 0 for e in events)
    (refused,) = await audit(hs, "unauthorized")
    assert (refused["method"], refused["status"], refused["ip"]) == ("GET", 401, "127.0.0.1")
    bucket = hs.services.storage.get_bucket("$system")  # type: ignore[union-attr]
    entry = bucket.get_entry("usage/edge-1/data")
    usage = [json.loads(entry.read_payload(m)) for m in entry.iter_records(0, 2**64 - 1)]
    # Two 5-byte bodies in, one 5-byte record and the 401's error body out.
    assert usage[-1]["ingress_bytes"] == 10 and usage[-1]["egress_bytes"] == 5 + len(refusal)
    assert usage[-1]["requests"] == 5  # the bucket creation, two writes, two reads


def test_client_ip_through_proxies_from_the_raw_scope() -> None:
    def scope(peer: str | None, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
        return {"client": (peer, 1) if peer else None, "headers": list(headers)}

    xff = (b"x-forwarded-for", b"10.1.2.3, 192.168.0.1")
    fwd = (b"forwarded", b'for=198.51.100.4;proto=https, for=10.0.0.1')
    assert access.scope_client_ip(scope("8.8.4.4", xff)) == "8.8.4.4"  # untrusted peer
    assert access.scope_client_ip(scope("10.0.0.2", xff)) == "10.1.2.3"
    assert access.scope_client_ip(scope("127.0.0.1", fwd, xff)) == "198.51.100.4"  # Forwarded 1st
    assert access.scope_client_ip(scope("fe80::1", (b"x-forwarded-for", b"[::1]:80"))) == "::1"
    assert access.scope_client_ip(scope("127.0.0.1")) == "127.0.0.1"
    assert access.scope_client_ip(scope(None, xff)) is None
    assert access.scope_client_ip(scope("not-an-ip", xff)) == "not-an-ip"


async def post_at_once(app: Any, query: bytes, body: bytes) -> int:
    """A single write whose body came with its head; its status."""
    return await request_at_once(app, "POST", API + "/b/data/e", query, body)


def test_a_request_leaves_no_cycle_for_the_garbage_collector(tmp_path: Path) -> None:
    """The request and its connection are freed by reference counting when the request ends:
    cyclic garbage waits for the collector, whose pauses stop the event loop (each young
    collection took milliseconds; a request left ~60 such objects before). On uvloop, as the
    server runs (asyncio's own loop keeps cancelled timers, and their contexts, a while)."""

    async def main() -> list[object]:
        settings = Settings(data_path=tmp_path / "data", disable_auth=True)
        services = Services(settings, open_storage=Storage.open)
        app = create_app(settings, services)
        running = app.test_app()
        await running.__aenter__()
        try:
            await services.wait_open()
            assert (await asgi_call(app, "POST", API + "/b/data"))[0] == 200
            gc.collect()
            gc.disable()
            for ts in range(1, 21):
                assert await post_at_once(app, f"ts={ts}".encode(), b"x") == 200
            for _ in range(3):
                await asyncio.sleep(0)  # let the cancelled body receivers finish
            gc.set_debug(gc.DEBUG_SAVEALL)  # keep what the collection finds unreachable
            gc.collect()
            return [o for o in gc.garbage if isinstance(o, ApplianceRequest | BoundedBody)]
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
            await running.__aexit__(None, None, None)

    assert uvloop.run(main()) == []
