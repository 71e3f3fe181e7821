"""The backup API in process: create, list, verify, delete, errors, and a restored instance's
read-only mode lifted by ``POST /api/v1/set-read-write``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from appliance.backup import restore
from tests.api.conftest import AUTH, TOKEN, Harness
from tests.backends.test_s3 import moto_endpoint  # noqa: F401 - the moto server fixture

API = "/api/v1"


async def _write(h: Harness, bucket: str, ts: int, body: bytes = b"payload", headers: dict[str, str] | None = None) -> int:
    hdrs = {"Content-Length": str(len(body)), **(headers or {})}
    r = await h.client.post(f"{API}/b/{bucket}/e?ts={ts}", data=body, headers=hdrs)
    return r.status_code


async def test_create_list_verify_delete(h: Harness, tmp_path: Path) -> None:
    target = tmp_path / "bk"
    assert (await h.client.post(f"{API}/b/one")).status_code == 200
    for ts in range(1, 6):
        assert await _write(h, "one", ts) == 200
    r = await h.client.post(f"{API}/backups", json={"target": str(target)})
    assert r.status_code == 200, await r.get_data()
    made = await r.get_json()
    assert set(made) >= {"id", "cut_us", "pause_ms", "files", "bytes"}
    assert made["files"] > 0 and made["bytes"] > 0 and made["pause_ms"] >= 0
    r = await h.client.get(f"{API}/backups", query_string={"target": str(target)})
    listed = (await r.get_json())["backups"]
    assert [b["id"] for b in listed] == [made["id"]] and listed[0]["complete"]
    r = await h.client.post(f"{API}/backups/{made['id']}/verify", query_string={"target": str(target)})
    report = await r.get_json()
    assert report["ok"] and report["records"] == 5 and report["payload_bytes"] == 35
    r = await h.client.delete(f"{API}/backups/{made['id']}", query_string={"target": str(target)})
    assert r.status_code == 200
    r = await h.client.delete(f"{API}/backups/{made['id']}", query_string={"target": str(target)})
    assert r.status_code == 404 and "not found" in r.headers["x-reduct-error"]


async def test_errors_are_clear(h: Harness, tmp_path: Path) -> None:
    r = await h.client.post(f"{API}/backups", json={})
    assert r.status_code == 422 and "RS_BACKUP_TARGET" in r.headers["x-reduct-error"]
    r = await h.client.post(f"{API}/backups", json={"target": str(tmp_path), "buckets": ["missing"]})
    assert r.status_code == 404 and "missing" in r.headers["x-reduct-error"]
    r = await h.client.post(f"{API}/backups", json={"target": 5})
    assert r.status_code == 422
    r = await h.client.post(f"{API}/backups/../verify", query_string={"target": str(tmp_path)})
    assert r.status_code in (404, 422)
    r = await h.client.post(f"{API}/backups/not-an-id/verify", query_string={"target": str(tmp_path)})
    assert r.status_code == 422 and "not a backup id" in r.headers["x-reduct-error"]


async def test_backup_needs_full_access(
    harness_factory: Callable[..., Awaitable[Harness]], tmp_path: Path
) -> None:
    ha = await harness_factory(api_token=TOKEN, backup_target=str(tmp_path / "bk"))
    assert (await ha.client.post(f"{API}/backups", json={})).status_code == 401
    r = await ha.client.post(f"{API}/backups", json={}, headers=AUTH)
    assert r.status_code == 200


async def test_restored_instance_is_read_only_until_set_read_write(
    harness_factory: Callable[..., Awaitable[Harness]], tmp_path: Path
) -> None:
    target = tmp_path / "bk"
    h = await harness_factory(backup_target=str(target))
    await h.client.post(f"{API}/b/one")
    assert await _write(h, "one", 1) == 200
    made = await (await h.client.post(f"{API}/backups", json={})).get_json()
    restored = tmp_path / "restored"
    restore.restore(target, made["id"], restored)
    r2 = await harness_factory(data_path=restored, backup_target=str(target))
    r = await r2.client.get(f"{API}/b/one/e?ts=1")
    assert r.status_code == 200 and await r.get_data() == b"payload"
    assert await _write(r2, "one", 2) == 403
    r = await r2.client.post(f"{API}/b/one/e?ts=2", data=b"x", headers={"Content-Length": "1"})
    assert r.headers["x-reduct-error"] == (
        f"restored from backup {made['id']}: read-only until `appliance set-read-write`"
    )
    assert (await r2.client.delete(f"{API}/b/one")).status_code == 403
    info = (await (await r2.client.get(f"{API}/info")).get_json())["backup"]
    assert info["read_only"] and info["restored_from"] == made["id"]
    assert (await r2.client.post(f"{API}/set-read-write")).status_code == 200
    assert await _write(r2, "one", 2) == 200
    info = (await (await r2.client.get(f"{API}/info")).get_json())["backup"]
    assert not info["read_only"]
    assert not (restored / ".restored").exists()


async def test_backup_to_s3_through_the_api(h: Harness, moto_endpoint: str) -> None:  # noqa: F811
    import uuid

    from tests.backends.test_s3 import BUCKET, REGION

    url = f"s3://{BUCKET}/api-{uuid.uuid4().hex}?endpoint={moto_endpoint}&region={REGION}"
    await h.client.post(f"{API}/b/one")
    assert await _write(h, "one", 1) == 200
    r = await h.client.post(f"{API}/backups", json={"target": url})
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    made = await r.get_json()
    listed = await (await h.client.get(f"{API}/backups", query_string={"target": url})).get_json()
    assert [b["id"] for b in listed["backups"]] == [made["id"]]
    text = (await (await h.client.get("/metrics")).get_data()).decode()
    puts = [line for line in text.splitlines()
            if line.startswith('reduct_s3_requests_total{operation="PutObject"}')]
    assert puts and float(puts[0].split()[-1]) >= 1  # the target's requests are counted
    r = await h.client.post(f"{API}/backups/{made['id']}/verify", query_string={"target": url})
    assert (await r.get_json())["ok"]
