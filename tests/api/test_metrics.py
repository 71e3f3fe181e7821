"""``GET /metrics``: Prometheus text, protected like /info, fed by the HTTP layer and the engine."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from appliance import metrics
from appliance.settings import Settings
from tests.api.conftest import AUTH, TOKEN, Harness
from tests.api.live import live_server

Factory = Callable[..., Awaitable[Harness]]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition as {(name, sorted labels): value} (parsed strictly)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """One sample's value (0 if absent)."""
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_needs_a_token_like_info(harness_factory: Factory) -> None:
    h = await harness_factory(api_token=TOKEN)
    r = await h.client.get("/metrics")
    assert r.status_code == 401
    assert r.headers["x-reduct-error"] == "No bearer token in request header"
    r = await h.client.get("/metrics", headers=AUTH)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = (await r.get_data()).decode()
    assert value(text, "reduct_ready") == 1
    assert value(text, "reduct_role_state", role="STANDALONE", state="STANDALONE") == 1


async def test_metrics_public_setting_opens_it(harness_factory: Factory) -> None:
    h = await harness_factory(api_token=TOKEN, metrics_public=True)
    assert (await h.client.get("/metrics")).status_code == 200


async def test_metrics_under_the_base_path(harness_factory: Factory) -> None:
    h = await harness_factory(api_base_path="/edge/")
    assert (await h.client.get("/edge/metrics")).status_code == 200
    assert (await h.client.get("/metrics")).status_code == 404


async def test_engine_counters_buckets_and_cache(harness_factory: Factory) -> None:
    h = await harness_factory()
    before = (await (await h.client.get("/metrics")).get_data()).decode()
    await h.client.post("/api/v1/b/m1")
    for ts in (1, 2, 3):
        r = await h.client.post(
            f"/api/v1/b/m1/e?ts={ts}", data=b"x" * 100, headers={"Content-Length": "100"}
        )
        assert r.status_code == 200
    assert (await h.client.get("/api/v1/b/m1/e?ts=2")).status_code == 200
    after = (await (await h.client.get("/metrics")).get_data()).decode()
    assert (
        value(after, "reduct_records_written_total") - value(before, "reduct_records_written_total")
        == 3
    )
    assert (
        value(after, "reduct_bytes_written_total") - value(before, "reduct_bytes_written_total")
        == 300
    )
    assert (
        value(after, "reduct_records_read_total") - value(before, "reduct_records_read_total") == 1
    )
    assert value(after, "reduct_bytes_read_total") - value(before, "reduct_bytes_read_total") == 100
    assert value(after, "reduct_buckets") == 1
    assert value(after, "reduct_bucket_usage_bytes", bucket="m1") >= 300
    assert ("reduct_block_cache_hits_total", ()) in samples(after)
    appends = value(after, "reduct_wal_append_duration_seconds_count") - value(
        before, "reduct_wal_append_duration_seconds_count"
    )
    assert appends >= 3  # one framed WAL write per record (and per finish)
    assert value(after, "reduct_wal_append_duration_seconds_sum") > 0


async def test_http_requests_by_route_template_and_status() -> None:
    settings = Settings(data_path=_tmp(), api_token=TOKEN, engine_compaction_interval=0)
    async with live_server(settings) as (url, _svc):
        async with httpx.AsyncClient(base_url=url, headers=AUTH) as client:
            before = (await client.get("/metrics")).text
            await client.post("/api/v1/b/routes")
            for ts in range(1, 6):
                await client.post(f"/api/v1/b/routes/a/b?ts={ts}", content=b"abc")
            await client.get("/api/v1/b/routes/a/b?ts=999")  # 404
            await client.get("/api/v1/nothing/here")  # no route
            batch = {f"x-reduct-time-{ts}": "1,text/plain" for ts in range(10, 17)}
            r = await client.post("/api/v1/b/routes/c/batch", content=b"x" * 7, headers=batch)
            assert r.status_code == 200
            after = (await client.get("/metrics")).text
    found = [k for k in samples(after) if k[0] == "reduct_http_requests_total"]
    routes = {dict(labels)["route"] for _, labels in found}
    assert not any("routes" in r for r in routes), routes  # templates, never concrete names
    written = [
        k for k in found if dict(k[1])["method"] == "POST" and "path:" in dict(k[1])["route"]
    ]
    assert written, routes
    delta = sum(
        value(after, n, **dict(lb)) - value(before, n, **dict(lb))
        for n, lb in written
        if dict(lb)["status"] == "200"
    )
    assert delta >= 5
    assert any(dict(lb)["status"] == "404" for _, lb in found)
    assert (
        value(after, "reduct_http_requests_total", method="GET", route="(unmatched)", status="404")
        >= 1
    )
    assert (
        value(after, "reduct_batch_records_count", direction="write")
        - value(before, "reduct_batch_records_count", direction="write")
        == 1
    )
    assert (
        value(after, "reduct_batch_records_sum", direction="write")
        - value(before, "reduct_batch_records_sum", direction="write")
        == 7
    )
    counted = [k for k in samples(after) if k[0] == "reduct_http_request_duration_seconds_count"]
    assert counted


def test_subsystem_api_replication_backup_s3() -> None:
    metrics.set_replication("to-cloud", pending_records=12, lag_seconds=3.5)
    metrics.replication_error("to-cloud")
    metrics.backup_finished(True, when=1_000.0)
    metrics.backup_finished(False)
    metrics.s3_request("PutObject")
    metrics.s3_request("PutObject", ok=False)
    metrics.set_s3_unsynced_bytes(4096)
    registry = metrics.instance_registry(
        lambda: {
            "ready": True,
            "uptime": 5,
            "role": "PRIMARY",
            "state": "HOLDING",
            "generation": 7,
            "renewal_age": 0.25,
        }
    )
    text = metrics.render(registry).decode()
    assert value(text, "reduct_replication_pending_records", task="to-cloud") == 12
    assert value(text, "reduct_replication_lag_seconds", task="to-cloud") == 3.5
    assert value(text, "reduct_replication_errors_total", task="to-cloud") >= 1
    assert value(text, "reduct_backup_last_success_age_seconds") > 1_000_000  # since epoch 1000
    assert value(text, "reduct_backup_runs_total", result="failed") >= 1
    assert value(text, "reduct_s3_errors_total", operation="PutObject") >= 1
    assert value(text, "reduct_s3_unsynced_bytes") == 4096
    assert value(text, "reduct_lease_generation") == 7
    assert value(text, "reduct_lease_renewal_age_seconds") == 0.25
    assert value(text, "reduct_role_state", role="PRIMARY", state="HOLDING") == 1
    metrics.remove_replication("to-cloud")
    text = metrics.render().decode()
    assert not re.search(r'reduct_replication_pending_records\{task="to-cloud"\}', text)


def test_free_form_labels_are_capped() -> None:
    cap = metrics.LabelCap(3)
    assert [cap(n) for n in ("a", "b", "c", "d", "a", "e")] == [
        "a",
        "b",
        "c",
        "_other",
        "a",
        "_other",
    ]
    registry = metrics.instance_registry(
        lambda: {
            "ready": True,
            "uptime": 1,
            "role": "STANDALONE",
            "state": "READY",
            "generation": 0,
            "buckets": [(f"b{i:03d}", 10, 1) for i in range(metrics.MAX_NAMED + 20)],
        }
    )
    text = metrics.render(registry).decode()
    buckets = [dict(k[1])["bucket"] for k in samples(text) if k[0] == "reduct_bucket_usage_bytes"]
    assert len(buckets) == metrics.MAX_NAMED + 1
    assert value(text, "reduct_bucket_usage_bytes", bucket="_other") == 200


def _tmp() -> Any:
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix="metrics-"))


async def _metrics_text(h: Harness) -> str:
    r = await h.client.get("/metrics")
    assert r.status_code == 200
    return (await r.get_data()).decode()


async def test_replication_backlog_to_a_dead_destination(harness_factory: Factory) -> None:
    """The replication manager feeds pending records and lag at every scrape; errors count."""
    import asyncio
    import time

    from tests.api.live import free_port

    h = await harness_factory(replication_timeout=0.2)
    assert (await h.client.post("/api/v1/b/src")).status_code == 200
    r = await h.client.post("/api/v1/replications/to-dead", json={
        "src_bucket": "src", "dst_bucket": "dst", "dst_host": f"http://127.0.0.1:{free_port()}"})
    assert r.status_code == 200
    text = await _metrics_text(h)
    assert samples(text)[("reduct_replication_pending_records", (("task", "to-dead"),))] == 0
    assert value(text, "reduct_replication_lag_seconds", task="to-dead") == 0
    oldest = time.time_ns() // 1000 - 3_000_000  # records written "3 s ago"
    for i in range(4):
        r = await h.client.post(f"/api/v1/b/src/e?ts={oldest + i}", data=b"abc",
                                headers={"Content-Length": "3"})
        assert r.status_code == 200
    text = await _metrics_text(h)
    assert value(text, "reduct_replication_pending_records", task="to-dead") == 4
    assert 3 <= value(text, "reduct_replication_lag_seconds", task="to-dead") < 60
    deadline = time.monotonic() + 10
    while value(text, "reduct_replication_errors_total", task="to-dead") < 1:
        assert time.monotonic() < deadline, "no failed attempt counted"
        await asyncio.sleep(0.1)
        text = await _metrics_text(h)
    assert value(text, "reduct_replication_pending_records", task="to-dead") == 4  # nothing lost
    assert (await h.client.delete("/api/v1/replications/to-dead")).status_code == 200
    text = await _metrics_text(h)
    assert ("reduct_replication_pending_records", (("task", "to-dead"),)) not in samples(text)


async def test_backup_age_absent_until_a_backup_then_small(
    harness_factory: Factory, tmp_path: Any, monkeypatch: Any
) -> None:
    """Before any backup the age gauge is absent (documented); a backup makes it small."""
    monkeypatch.setitem(metrics._backup, "last_success", None)  # process-wide: other tests
    h = await harness_factory(backup_target=str(tmp_path / "bk"))
    text = await _metrics_text(h)
    assert "reduct_backup_last_success_age_seconds" not in text
    ok_before = value(text, "reduct_backup_runs_total", result="ok")
    assert (await h.client.post("/api/v1/b/one")).status_code == 200
    r = await h.client.post("/api/v1/backups", json={})
    assert r.status_code == 200, await r.get_data()
    text = await _metrics_text(h)
    age = samples(text)[("reduct_backup_last_success_age_seconds", ())]
    assert 0 <= age < 30
    assert value(text, "reduct_backup_runs_total", result="ok") == ok_before + 1
    r = await h.client.post("/api/v1/backups", json={"target": "s3://"})  # a bad target fails
    assert r.status_code >= 400
    text = await _metrics_text(h)
    assert 0 <= samples(text)[("reduct_backup_last_success_age_seconds", ())] < 30
