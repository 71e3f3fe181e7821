"""Server endpoints, the common headers, the error shape, startup gating, CORS, base path."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

from appliance.app import create_app
from appliance.services import Services
from appliance.settings import Settings
from tests.api.conftest import AUTH, TOKEN, Harness, asgi_call

API = "/api/v1"


def assert_common(response: Any) -> None:
    assert response.headers["x-reduct-api"] == "1.21"
    assert response.headers["Server"].startswith("ReductStore 1.21")


async def test_server_alive_and_ready(h: Harness) -> None:
    for path in ("/alive", "/ready"):
        r = await h.client.get(API + path)
        assert r.status_code == 200
        assert_common(r)
        r = await h.client.head(API + path)
        assert r.status_code == 200


async def test_server_info_quirks_without_buckets(h: Harness) -> None:
    r = await h.client.get(API + "/info")
    assert r.status_code == 200
    body = await r.get_json()
    assert body["version"] == "1.21.0"
    assert body["bucket_count"] == 0
    assert body["oldest_record"] == 2**64 - 1
    assert body["latest_record"] == 0
    assert body["license"] is None
    assert body["instance_role"] == "STANDALONE"
    assert body["defaults"]["bucket"] == {
        "quota_type": "NONE", "quota_size": 0, "max_block_size": 64000000,
        "max_block_records": 1024,
    }


async def test_server_info_counts_buckets_and_empty_bucket_forces_zero(h: Harness) -> None:
    await h.client.post(API + "/b/full")
    await h.client.post(API + "/b/empty")
    r = await h.client.post(
        API + "/b/full/e?ts=1000", data=b"abc", headers={"Content-Length": "3"}
    )
    assert r.status_code == 200
    body = await (await h.client.get(API + "/info")).get_json()
    assert body["bucket_count"] == 2
    assert body["oldest_record"] == 0  # quirk: the empty bucket reports 0
    assert body["latest_record"] == 1000
    assert body["usage"] >= 3


async def test_server_list_sorted(h: Harness) -> None:
    for name in ("b2", "a1"):
        await h.client.post(API + f"/b/{name}")
    body = await (await h.client.get(API + "/list")).get_json()
    assert [b["name"] for b in body["buckets"]] == ["a1", "b2"]
    assert set(body["buckets"][0]) == {
        "name", "entry_count", "size", "oldest_record", "latest_record", "is_provisioned",
        "status",
    }


async def test_server_me_with_auth_disabled(h: Harness) -> None:
    body = await (await h.client.get(API + "/me")).get_json()
    assert body["name"] == "AUTHENTICATION-DISABLED"
    assert body["permissions"]["full_access"] is True


async def test_server_replications_and_lifecycles_are_empty(h: Harness) -> None:
    assert await (await h.client.get(API + "/replications")).get_json() == {"replications": []}
    assert await (await h.client.get(API + "/lifecycles")).get_json() == {"lifecycles": []}


async def test_server_unknown_get_path_is_404_with_error_header(h: Harness) -> None:
    r = await h.client.get(API + "/nothing/here")
    assert r.status_code == 404
    assert r.headers["x-reduct-error"] == "Not found"
    assert_common(r)


async def test_server_unknown_path_other_method_is_405_with_message(h: Harness) -> None:
    r = await h.client.post(API + "/nothing")
    assert r.status_code == 405
    # ReductStore's 405 is bare; clients then show an empty message (issue 13): ours says it.
    assert r.headers["x-reduct-error"] == "Method not allowed"
    assert await r.get_data() == b""
    assert_common(r)


async def test_server_known_route_wrong_method_is_405_with_message(h: Harness) -> None:
    r = await h.client.put(API + "/info")
    assert r.status_code == 405
    assert r.headers["x-reduct-error"] == "Method not allowed"
    assert_common(r)


async def test_server_base_redirects_to_console(h: Harness) -> None:
    r = await h.client.get("/")
    assert r.status_code == 302
    assert r.headers["Location"] == "/ui/"
    assert_common(r)


async def test_server_error_shape(h: Harness) -> None:
    r = await h.client.get(API + "/b/missing")
    assert r.status_code == 404
    assert r.headers["x-reduct-error"] == "Bucket 'missing' is not found"
    assert json.loads(await r.get_data()) == {"detail": "Bucket 'missing' is not found"}
    assert_common(r)


async def test_server_unexpected_exception_is_500_without_traceback(h: Harness) -> None:
    def boom() -> list[str]:
        raise RuntimeError("secret internals")

    h.services.storage.bucket_names = boom  # type: ignore[union-attr, method-assign]
    r = await h.client.get(API + "/info")
    assert r.status_code == 500
    assert "secret" not in r.headers["x-reduct-error"]
    assert "Traceback" not in (await r.get_data()).decode()
    assert_common(r)


async def test_server_503_until_engine_open(tmp_path: Any) -> None:
    gate = threading.Event()

    def slow_open(options: Any) -> Any:
        from tests.api.conftest import _open_storage

        gate.wait(10)
        return _open_storage()(options)

    settings = Settings(data_path=tmp_path, engine_compaction_interval=0)
    services = Services(settings, open_storage=slow_open)
    app = create_app(settings, services)
    async with app.test_app() as test_app:
        client = test_app.test_client()
        r = await client.get(API + "/alive")
        assert r.status_code == 200
        for path in ("/ready", "/info", "/b/x", "/nothing"):
            r = await client.get(API + path)
            assert r.status_code == 503, path
            assert r.headers["x-reduct-error"] == (
                "The server is starting up, please try again later"
            )
            assert_common(r)
        gate.set()
        await services.wait_open()
        assert (await client.get(API + "/ready")).status_code == 200
    assert services.storage is None  # closed on shutdown
    await services.stop()  # idempotent


async def test_server_head_content_length_kept_on_204(h: Harness) -> None:
    await h.client.post(API + "/b/b")
    r = await h.client.post(API + "/io/b/q", json={"query_type": "QUERY"})
    qid = (await r.get_json())["id"]
    status, headers, body = await asgi_call(
        h.app, "GET", API + "/io/b/read", headers={"x-reduct-query-id": str(qid)}
    )
    assert status == 204
    assert headers["x-reduct-api"] == "1.21"
    assert headers["x-reduct-error"] == "No content"
    assert body == b""


async def test_server_cors(harness_factory: Any) -> None:
    h = await harness_factory(cors_allow_origin="http://a.example, http://b.example")
    r = await h.client.get(API + "/info", headers={"Origin": "http://a.example"})
    assert r.headers["Access-Control-Allow-Origin"] == "http://a.example"
    r = await h.client.get(API + "/info", headers={"Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in r.headers
    assert r.status_code == 200
    r = await h.client.options(API + "/b/x", headers={"Origin": "http://b.example"})
    assert r.status_code == 200
    assert r.headers["Access-Control-Allow-Methods"] == "*"
    assert r.headers["Access-Control-Allow-Headers"] == "*"


async def test_server_no_cors_headers_by_default(h: Harness) -> None:
    r = await h.client.get(API + "/info", headers={"Origin": "http://a.example"})
    assert "Access-Control-Allow-Origin" not in r.headers


async def test_server_base_path(harness_factory: Any) -> None:
    h = await harness_factory(api_base_path="/reduct")
    assert (await h.client.get("/reduct/api/v1/info")).status_code == 200
    r = await h.client.get("/reduct/")
    assert r.status_code == 302 and r.headers["Location"] == "/reduct/ui/"
    assert (await h.client.get("/api/v1/info")).status_code == 404


async def test_server_auth_errors(ha: Harness) -> None:
    r = await ha.client.get(API + "/info")
    assert r.status_code == 401
    assert r.headers["x-reduct-error"] == "No bearer token in request header"
    r = await ha.client.get(API + "/info", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401
    assert r.headers["x-reduct-error"] == "Invalid token"
    r = await ha.client.get(API + "/info", headers=AUTH)
    assert r.status_code == 200
    body = await (await ha.client.get(API + "/me", headers=AUTH)).get_json()
    assert body["name"] == "init-token"
    assert body["is_provisioned"] is True
    assert body["value"] == ""
    assert (await ha.client.get(API + "/alive")).status_code == 200  # anonymous
    listing = await (await ha.client.get(API + "/tokens", headers=AUTH)).get_data()
    assert TOKEN not in listing.decode()


async def test_server_compaction_step_and_loop(harness_factory: Any) -> None:
    h = await harness_factory(engine_compaction_interval=0.05)
    calls = []
    storage = h.services.storage
    original = storage.compact
    storage.compact = lambda: calls.append(1) or original()  # type: ignore[method-assign]
    await asyncio.sleep(0.3)
    assert calls
    h.services.compact_step()


async def test_server_lifespan_does_not_leak(tmp_path: Any) -> None:
    import os

    def counts() -> tuple[int, int]:
        return threading.active_count(), len(os.listdir("/proc/self/fd"))

    async def cycle() -> None:
        settings = Settings(data_path=tmp_path / "leak", engine_compaction_interval=0.01)
        services = Services(settings)
        app = create_app(settings, services)
        async with app.test_app() as test_app:
            await services.wait_open()
            client = test_app.test_client()
            await client.post(API + "/b/b")
            await client.post(API + "/b/b/e?ts=1", data=b"x", headers={"Content-Length": "1"})

    await cycle()
    before = counts()
    for _ in range(20):
        await cycle()
    after = counts()
    assert after[0] <= before[0] + 1
    assert after[1] <= before[1] + 4
