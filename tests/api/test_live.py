"""The app behind a real Hypercorn on loopback, driven by reduct-py, httpx and raw sockets:
what an in-process client cannot show (HEAD framing, disconnects, the official client)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from reduct import Batch, BucketSettings, Client, QuotaType, RecordBatch

from appliance.engine.models import RecordState
from appliance.settings import Settings
from tests.api.live import live_server, port_of, raw_request

TOKEN = "live-token"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_path=tmp_path / "data", engine_compaction_interval=0, api_token=TOKEN)


async def test_live_reduct_py_end_to_end(settings: Settings) -> None:
    async with live_server(settings) as (url, _):
        async with Client(url, api_token=TOKEN) as client:
            info = await client.info()
            assert info.version == "1.21.0"
            bucket = await client.create_bucket(
                "bkt", BucketSettings(quota_type=QuotaType.NONE), exist_ok=True
            )
            await client.create_bucket("bkt", exist_ok=True)
            await bucket.write("e", b"one", timestamp=1_000_000, labels={"a": "1"},
                               content_type="text/plain")
            await bucket.write("e", b"two", timestamp=2_000_000, labels={"a": "2"})
            async with bucket.read("e", timestamp=1_000_000) as record:
                assert await record.read_all() == b"one"
                assert record.labels == {"a": "1"}
                assert record.content_type == "text/plain"
            async with bucket.read("e", head=True) as record:
                assert record.size == 3 and record.timestamp == 2_000_000
            batch = Batch()
            for i in range(200):
                batch.add(3_000_000 + i, b"x" * 10, labels={"i": str(i)})
            assert await bucket.write_batch("e", batch) == {}
            records = [r async for r in bucket.query("e", start=3_000_000)]
            assert len(records) == 200
            assert [r.labels["i"] for r in records[:3]] == ["0", "1", "2"]
            heads = [r async for r in bucket.query("e", head=True)]
            assert len(heads) == 202 and heads[0].size == 3
            rb = RecordBatch()
            rb.add("a/x", 10_000_000, b"ax", labels={"k": "v"})
            rb.add("b", 10_000_001, b"b")
            rb.add("a/x", 10_000_002, b"ax2")
            assert await bucket.write_record_batch(rb) == {}
            got = [(r.entry, r.timestamp, await r.read_all())
                   async for r in bucket.query(["a/x", "b"])]
            assert got == [("a/x", 10_000_000, b"ax"), ("b", 10_000_001, b"b"),
                           ("a/x", 10_000_002, b"ax2")]
            when = {"&i": {"$lt": 5}}
            assert len([r async for r in bucket.query("e", when=when)]) == 5
            await bucket.update("e", 1_000_000, {"a": "", "b": "3"})
            async with bucket.read("e", timestamp=1_000_000) as record:
                assert record.labels == {"b": "3"}
            assert await bucket.remove_query("e", start=3_000_000, stop=3_000_100) == 100
            await bucket.remove_record("e", 2_000_000)
            entries = await bucket.get_entry_list()
            assert {e.name for e in entries} >= {"e", "a", "a/x", "b"}
            await bucket.rename_entry("b", "c")
            await bucket.remove_entry("c")
            assert await client.get_replications() == []
            me = await client.me()
            assert me.name == "init-token"


async def test_live_attachments(settings: Settings) -> None:
    async with live_server(settings) as (url, _):
        async with Client(url, api_token=TOKEN) as client:
            bucket = await client.create_bucket("att")
            await bucket.write("cam", b"frame", timestamp=1)
            await bucket.write_attachments("cam", {"calib": {"fx": 1.5}})
            await asyncio.sleep(0.002)
            await bucket.write_attachments("cam", {"calib": {"fx": 2.5}, "$odd": [1]})
            assert await bucket.read_attachments("cam") == {"calib": {"fx": 2.5}, "$odd": [1]}
            await bucket.remove_attachments("cam", ["$odd"])
            assert await bucket.read_attachments("cam") == {"calib": {"fx": 2.5}}
            await bucket.remove_attachments("cam")
            assert await bucket.read_attachments("cam") == {}
            names = [e.name for e in await bucket.get_entry_list()]
            assert names == ["cam"]


async def test_live_subscribe_continuous(settings: Settings) -> None:
    async with live_server(settings) as (url, _):
        async with Client(url, api_token=TOKEN) as client:
            bucket = await client.create_bucket("sub")
            await bucket.write("e", b"0", timestamp=1)
            seen: list[int] = []

            async def consume() -> None:
                async for record in bucket.subscribe("e", start=1, poll_interval=0.5):
                    seen.append(record.timestamp)
                    if len(seen) == 3:
                        return

            task = asyncio.create_task(consume())
            await asyncio.sleep(0.3)
            await bucket.write("e", b"1", timestamp=2)
            await bucket.write("e", b"2", timestamp=3)
            await asyncio.wait_for(task, 5)
            assert seen == [1, 2, 3]


async def test_live_head_content_length_with_httpx(settings: Settings) -> None:
    async with live_server(settings) as (url, _):
        auth = {"Authorization": f"Bearer {TOKEN}"}
        async with httpx.AsyncClient(base_url=url + "/api/v1", headers=auth) as http:
            assert (await http.post("/b/h")).status_code == 200
            r = await http.post("/b/h/e?ts=1", content=b"123456789")
            assert r.status_code == 200
            r = await http.head("/b/h/e?ts=1")
            assert r.headers["content-length"] == "9"
            assert "transfer-encoding" not in r.headers
            r = await http.get("/b/h/e?ts=1")
            assert r.headers["content-length"] == "9" and r.content == b"123456789"
            r = await http.post("/b/h/e/q", json={"query_type": "QUERY"})
            qid = r.json()["id"]
            r = await http.head(f"/b/h/e/batch?q={qid}")
            assert r.headers["content-length"] == "9"
            assert r.headers["x-reduct-api"] == "1.21"
            r = await http.get("/nope")
            assert r.status_code == 404 and r.headers["x-reduct-api"] == "1.21"


async def test_live_client_disconnect_mid_body(settings: Settings) -> None:
    async with live_server(settings) as (url, services):
        port = port_of(url)
        async with httpx.AsyncClient(base_url=url + "/api/v1",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            await http.post("/b/d")
        for size, ts in ((1000, 1), (8 * 1024 * 1024, 2)):
            head = (
                f"POST /api/v1/b/d/e?ts={ts} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {TOKEN}\r\nContent-Length: {size}\r\n\r\n"
            ).encode()
            await raw_request(port, head + b"x" * (size // 2), close_after=True)
        deadline = time.monotonic() + 5
        entry = None
        while time.monotonic() < deadline:
            try:
                entry = services.engine.get_bucket("d").get_entry("e")
                states = [_state(entry, ts) for ts in (1, 2)]
                if all(s in (None, RecordState.ERRORED) for s in states):
                    break
            except Exception:  # noqa: BLE001 - entry not created yet
                pass
            await asyncio.sleep(0.05)
        assert entry is not None
        assert all(_state(entry, ts) != RecordState.FINISHED for ts in (1, 2))
        assert all(_state(entry, ts) != RecordState.STARTED for ts in (1, 2))
        async with httpx.AsyncClient(base_url=url + "/api/v1",
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            r = await http.post("/b/d/e?ts=3", content=b"after")
            assert r.status_code == 200
            assert (await http.get("/b/d/e?ts=3")).content == b"after"


def _state(entry: object, ts: int) -> RecordState | None:
    try:
        return entry.get_record(ts).state  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001
        return None
