"""The ``$system`` bucket in-process (spec §14): audit, usage, own log lines, lifecycle
diagnostics, protection, permissions, quota, and that recording never slows or fails a request."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import pytest

from appliance.events import recorder
from tests.api.conftest import AUTH, TOKEN, Harness

API = "/api/v1"
SYS = "/b/$system"


@pytest.fixture
async def hs(harness_factory: Any) -> Harness:
    """Auth on, events on, flushed by hand (a long interval keeps the loop out of the way)."""
    return await harness_factory(api_token=TOKEN, system_events_flush_interval=3600,
                                 instance_name="edge-1", system_events_quota_size="5MB")


async def records(h: Harness, entries: list[str]) -> list[dict[str, Any]]:
    """Every record of ``$system`` in ``entries`` (patterns), with labels and JSON bodies."""
    out = []
    bucket = h.services.storage.get_bucket("$system")  # type: ignore[union-attr]
    from appliance.query.patterns import select_entries

    for name in select_entries(entries, bucket.entry_names()):
        entry = bucket.get_entry(name)
        for meta in entry.iter_records(0, 2**64 - 1):
            body = entry.read_payload(meta)
            out.append({"entry": name, "labels": dict(meta.labels), "ts": meta.timestamp,
                        "body": json.loads(body) if meta.content_type.endswith("json")
                        else body.decode()})
    return out


async def test_audit_and_usage_records(hs: Harness) -> None:
    c = hs.client
    r = await c.post(API + "/tokens/writer", headers=AUTH,
                     json={"permissions": {"full_access": False, "write": ["data"]}})
    writer = {"Authorization": f"Bearer {(await r.get_json())['value']}"}
    await c.post(API + "/b/data", headers=AUTH)
    r = await c.post(API + "/b/data/e?ts=1", data=b"12345", headers={**writer, "Content-Length": "5"})
    assert r.status_code == 200
    await c.get(API + "/b/data", headers={"Authorization": "Bearer wrong"})
    await c.get(API + "/alive")
    assert await hs.services.events.flush() > 0
    got = await records(hs, ["**"])
    by_entry = {g["entry"]: g for g in got}
    writer_audit = by_entry["audit/edge-1/writer"]["body"]
    assert [(e["method"], e["path"], e["status"]) for e in writer_audit] == [
        ("POST", "/api/v1/b/data/e", 200)]
    unauthorized = by_entry["audit/edge-1/unauthorized"]["body"]
    assert [(e["method"], e["status"]) for e in unauthorized] == [("GET", 401)]
    init = [e["path"] for e in by_entry["audit/edge-1/init-token"]["body"]]
    assert "/api/v1/alive" not in init and "/api/v1/b/data" in init
    usage = by_entry["usage/edge-1/data"]["body"]
    assert usage["ingress_bytes"] == 5 and usage["requests"] == 3
    assert by_entry["usage/edge-1"]["body"]["dropped_events"] == 0


async def test_own_warnings_are_recorded_not_info(hs: Harness) -> None:
    logging.getLogger("appliance.engine.sample").warning("disk is getting %s", "full")
    logging.getLogger("appliance.engine.sample").info("routine")
    await hs.services.events.flush()
    lines = [g for g in await records(hs, ["logs/**"])]
    assert [(g["body"], g["labels"]["level"]) for g in lines] == [("disk is getting full", "WARNING")]
    assert lines[0]["labels"]["logger"] == "appliance.engine.sample"


async def test_lifecycle_runs_are_recorded(hs: Harness) -> None:
    c = hs.client
    await c.post(API + "/b/data", headers=AUTH)
    r = await c.post(API + "/lifecycles/weekly", headers=AUTH, json={
        "type": "delete", "bucket": "data", "older_than": "7d", "interval": "1h"})
    assert r.status_code == 200
    await hs.services.lifecycles.run_now("weekly")
    await hs.services.events.flush()
    (run,) = await records(hs, ["lifecycles/**"])
    assert run["entry"] == "lifecycles/edge-1/weekly"
    assert run["body"]["removed_records"] == 0 and run["labels"]["mode"] == "enabled"


async def test_system_bucket_is_protected_hidden_and_read_only_by_name(hs: Harness) -> None:
    c = hs.client
    await c.post(API + "/b/data", headers=AUTH)
    await hs.services.events.flush()
    r = await c.get(API + SYS, headers=AUTH)
    assert r.status_code == 200
    info = await r.get_json()
    assert info["info"]["is_provisioned"] is True
    assert info["settings"]["quota_type"] == "FIFO" and info["settings"]["quota_size"] == 5_000_000
    assert (await c.delete(API + SYS, headers=AUTH)).status_code == 409
    r = await c.put(API + SYS + "/rename", json={"new_name": "mine"}, headers=AUTH)
    assert r.status_code == 409
    assert r.headers["x-reduct-error"] == "Can't rename provisioned bucket '$system'"
    r = await c.put(API + SYS, json={"quota_size": 1}, headers=AUTH)
    assert r.status_code == 409
    assert (await c.post(API + SYS, headers=AUTH)).status_code == 422
    r = await c.put(API + "/b/data/rename", json={"new_name": "$system"}, headers=AUTH)
    assert r.status_code == 422
    names = [b["name"] for b in (await (await c.get(API + "/list", headers=AUTH)).get_json())["buckets"]]
    assert names == ["data"]
    for name, read in (("star", ["*"]), ("sys", ["$system"])):
        r = await c.post(API + f"/tokens/{name}", headers=AUTH,
                         json={"permissions": {"full_access": False, "read": read}})
        value = (await r.get_json())["value"]
        r = await c.get(API + SYS, headers={"Authorization": f"Bearer {value}"})
        assert r.status_code == (403 if name == "star" else 200)


async def test_recording_never_slows_or_fails_requests(hs: Harness, monkeypatch: Any) -> None:
    c = hs.client
    events = hs.services.events
    original = events._write  # noqa: SLF001

    def slow_then_fail(items: list[Any]) -> int:
        time.sleep(1.0)
        raise OSError("disk on fire")

    monkeypatch.setattr(events, "_write", slow_then_fail)
    await c.post(API + "/b/data", headers=AUTH)
    flushing = asyncio.ensure_future(events.flush())  # the disk is stuck for a second
    await asyncio.sleep(0.05)
    began = time.perf_counter()
    for i in range(20):
        r = await c.post(API + f"/b/data/e?ts={i + 1}", data=b"x", headers={**AUTH, "Content-Length": "1"})
        assert r.status_code == 200
    assert time.perf_counter() - began < 0.9  # not one request waited for the stuck flush
    assert await flushing == 0  # the failure stayed inside the recorder
    monkeypatch.setattr(recorder, "MAX_QUEUED", 3)
    for _ in range(10):
        events.enqueue("logs/x/messages", b"m", {}, "text/plain")
    assert events.dropped >= 7
    monkeypatch.setattr(events, "_write", original)
    r = await c.get(API + "/info", headers=AUTH)
    assert r.status_code == 200
    await events.flush()
    (usage,) = [g for g in await records(hs, ["usage/edge-1"])]
    assert usage["body"]["dropped_events"] >= 7


async def test_disabled_events_create_nothing(harness_factory: Any) -> None:
    h = await harness_factory(api_token=TOKEN, system_events_enabled=False)
    await h.client.post(API + "/b/data", headers=AUTH)
    assert await h.services.events.flush() == 0
    assert (await h.client.get(API + SYS, headers=AUTH)).status_code == 404


async def test_bucket_survives_restart_and_quota_is_reapplied(harness_factory: Any,
                                                              tmp_path: Any) -> None:
    data = tmp_path / "sys-restart"
    h = await harness_factory(api_token=TOKEN, data_path=data, system_events_quota_size="5MB",
                              system_events_flush_interval=3600)
    await h.client.get(API + "/info", headers=AUTH)
    assert await h.services.events.flush() > 0
    await h.services.stop()
    h2 = await harness_factory(api_token=TOKEN, data_path=data, system_events_quota_size="7MB",
                               system_events_flush_interval=3600)
    r = await h2.client.get(API + SYS, headers=AUTH)
    assert r.status_code == 200
    assert (await r.get_json())["settings"]["quota_size"] == 7_000_000


async def test_replication_sync_events(harness_factory: Any, monkeypatch: Any) -> None:
    """A replication task's passes are aggregated into ``replication_sync`` records in
    ``$system`` (spec replication §1.12): one per status run, flushed when idle."""
    from appliance.replication import diagnostics
    from tests.api.live import free_port

    monkeypatch.setattr(diagnostics, "IDLE_FLUSH_SECONDS", 0.0)  # flush at the next iteration
    hs = await harness_factory(api_token=TOKEN, system_events_flush_interval=3600,
                               instance_name="edge-1", replication_timeout=0.2)
    c = hs.client
    await c.post(API + "/b/src", headers=AUTH)
    r = await c.post(API + "/replications/to-dead", headers=AUTH, json={
        "src_bucket": "src", "dst_bucket": "dst",
        "dst_host": f"http://127.0.0.1:{free_port()}", "dst_token": "t"})
    assert r.status_code == 200
    for ts in (1, 2, 3):
        r = await c.post(API + f"/b/src/e?ts={ts}", data=b"abc",
                         headers={**AUTH, "Content-Length": "3"})
        assert r.status_code == 200
    deadline = time.monotonic() + 15
    got: list[dict[str, Any]] = []
    while not got:
        assert time.monotonic() < deadline, "no replication diagnostics in $system"
        await asyncio.sleep(0.2)
        await hs.services.events.flush()
        got = await records(hs, ["replications/**"])
    event = got[0]
    assert event["entry"] == "replications/edge-1/to-dead"
    assert event["labels"] == {"status": "-3"}  # connection refused (ReductStore's code)
    body = event["body"]
    assert body["type"] == "replication_sync" and body["status"] == -3
    # the sender may have tried while only the first record was there
    assert 1 <= body["pending_records"] <= 3 and body["written_records"] == 0
    assert 1 <= body["failed_records"] <= 3 and body["replicated_data_size"] == 0
    assert body["duration"] >= 0
