"""In-process tier: ``/api/v1/replications`` as reduct-py 1.21 and ReductStore's tests expect it,
and batch writes with ``Content-Encoding`` (what a sender with compression posts)."""

from __future__ import annotations

import asyncio
import gzip
import json
from typing import Any

import pytest
import zstandard

from appliance.replication import UPDATE, WRITE
from tests.api.conftest import Harness

API = "/api/v1"
SETTINGS = {
    "src_bucket": "src",
    "dst_bucket": "dst",
    "dst_host": "http://localhost:9000",  # nobody there: enough for the API
    "dst_token": "secret-token",
}


@pytest.fixture
async def hs(h: Harness) -> Harness:
    assert (await h.client.post(API + "/b/src")).status_code == 200
    return h


async def create(h: Harness, name: str, **patch: Any) -> Any:
    return await h.client.post(API + f"/replications/{name}", json={**SETTINGS, **patch})


async def test_create_list_detail_exact_json(hs: Harness) -> None:
    assert (await create(hs, "r1", entries=["a", "b/**"])).status_code == 200
    r = await hs.client.get(API + "/replications")
    assert await r.get_json() == {"replications": [{
        "name": "r1", "mode": "enabled", "is_active": True, "is_provisioned": False,
        "pending_records": 0,
    }]}
    detail = await (await hs.client.get(API + "/replications/r1")).get_json()
    assert detail == {
        "info": {"name": "r1", "mode": "enabled", "is_active": True, "is_provisioned": False,
                 "pending_records": 0},
        "settings": {"src_bucket": "src", "dst_bucket": "dst", "dst_host": "http://localhost:9000/",
                     "dst_token": None, "entries": ["a", "b/**"], "dst_prefix": "", "when": None,
                     "mode": "enabled", "compression": "none"},
        "diagnostics": {"hourly": {"ok": 0, "errored": 0, "errors": {}}},
    }


@pytest.mark.parametrize(
    ("name", "patch", "status", "message"),
    [
        ("x", {"src_bucket": "nope"}, 404, "Source bucket 'nope' for replication 'x' does not exist"),
        ("x", {"dst_host": "bad host"}, 422, "Invalid destination host 'bad host'"),
        ("x", {"when": {"$bad": []}}, 422, "Invalid replication condition: "),
        ("x", {"mode": "later"}, 422, "Invalid JSON: mode must be one of"),
        ("x", {"dst_bucket": None}, 422, "Invalid JSON: missing field `dst_bucket`"),
        ("x", {"dst_bucket": "a b"}, 422, "Invalid destination bucket: "),
        ("..", {}, 422, "Invalid replication name '..'"),
    ],
)
async def test_create_refuses_bad_input(
    hs: Harness, name: str, patch: dict, status: int, message: str
) -> None:
    r = await create(hs, name, **patch)
    assert r.status_code == status
    assert r.headers["x-reduct-error"].startswith(message)
    assert (await hs.client.get(API + "/replications/x")).status_code == 404


async def test_name_clash_self_replication_and_missing_task(hs: Harness) -> None:
    assert (await create(hs, "r")).status_code == 200
    r = await create(hs, "r")
    assert (r.status_code, r.headers["x-reduct-error"]) == (409, "Replication 'r' already exists")
    port = hs.services.settings.port
    r = await create(hs, "self", dst_bucket="src", dst_host=f"http://127.0.0.1:{port}")
    assert (r.status_code, r.headers["x-reduct-error"]) == (
        422, "Source and destination buckets must be different")
    # same bucket on another instance is fine (ReductStore's API test does this)
    assert (await create(hs, "same", dst_bucket="src")).status_code == 200
    for method in ("get", "put", "delete"):
        r = await getattr(hs.client, method)(API + "/replications/none", json=SETTINGS)
        assert (r.status_code, r.headers["x-reduct-error"]) == (
            404, "Replication 'none' does not exist")
    r = await hs.client.patch(API + "/replications/none/mode", json={"mode": "paused"})
    assert r.status_code == 404


async def test_update_keeps_the_token_mode_and_persists(hs: Harness) -> None:
    assert (await create(hs, "r")).status_code == 200
    r = await hs.client.put(API + "/replications/r", json={**SETTINGS, "dst_token": None,
                                                           "dst_prefix": "p", "each_n": 3})
    assert r.status_code == 200
    manager = hs.services.replications
    assert manager is not None
    task = manager.get("r")
    assert task.settings.dst_token == "secret-token"  # PUT without a token keeps it
    assert task.settings.when == {"$each_n": 3}  # legacy each_n translated
    r = await hs.client.patch(API + "/replications/r/mode", json={"mode": "disabled"})
    assert r.status_code == 200
    info = (await (await hs.client.get(API + "/replications/r")).get_json())["info"]
    assert info["mode"] == "disabled" and info["is_active"] is False
    stored = json.loads((hs.services.settings.data_path / ".replications").read_text())
    assert stored["replications"][0]["settings"]["mode"] == "disabled"
    r = await hs.client.patch(API + "/replications/r/mode", json={"mode": "often"})
    assert r.status_code == 422
    assert (await hs.client.delete(API + "/replications/r")).status_code == 200
    assert (await hs.client.get(API + "/replications")).status_code == 200
    assert json.loads((hs.services.settings.data_path / ".replications").read_text()) == {
        "version": 1, "replications": []}


async def test_token_never_returned_nor_logged(hs: Harness, caplog: Any) -> None:
    caplog.set_level("DEBUG")
    assert (await create(hs, "r")).status_code == 200
    body = await (await hs.client.get(API + "/replications/r")).get_data()
    assert b"secret-token" not in body
    assert "secret-token" not in caplog.text


def label(k: str) -> dict[str, str]:
    """Headers of a one-byte record labelled ``k``."""
    return {"x-reduct-label-k": k, "Content-Length": "1"}


async def test_writes_are_logged_for_pending_records_and_filtered(hs: Harness) -> None:
    assert (await create(hs, "r", entries=["cam-*"], when={"&k": {"$eq": 1}}, mode="paused")
            ).status_code == 200
    c = hs.client
    await c.post(API + "/b/src/cam-1?ts=1", data=b"x", headers=label("1"))
    await c.post(API + "/b/src/cam-1?ts=2", data=b"x", headers=label("2"))
    await c.post(API + "/b/src/other?ts=3", data=b"x", headers=label("1"))
    headers = {"x-reduct-time-10": "1,,k=1", "x-reduct-time-11": "1,,k=1"}
    await c.post(API + "/b/src/cam-2/batch", data=b"ab", headers=headers)
    await c.patch(API + "/b/src/cam-1?ts=2", headers={"x-reduct-label-k": "1"})  # now matches
    info = (await (await c.get(API + "/replications/r")).get_json())["info"]
    assert info["pending_records"] == 4
    manager = hs.services.replications
    assert manager is not None
    task = manager.get("r")
    assert task._logs["cam-1"].front(5) == [(WRITE, 1), (UPDATE, 2)]  # noqa: SLF001
    # disabled: new writes are not even logged; the backlog stays
    await c.patch(API + "/replications/r/mode", json={"mode": "disabled"})
    await c.post(API + "/b/src/cam-1?ts=20", data=b"x", headers=label("1"))
    assert task.pending_records == 4


async def test_replica_lists_nothing_and_refuses_changes(
    harness_factory: Any, tmp_path: Any
) -> None:
    writer = await harness_factory(data_path=tmp_path / "shared")
    await writer.client.post(API + "/b/src")
    assert (await create(writer, "r")).status_code == 200
    replica = await harness_factory(
        data_path=tmp_path / "shared", instance_role="REPLICA",
        engine_replica_update_interval="50ms",
    )
    for _ in range(100):
        if replica.services.ready:
            break
        await asyncio.sleep(0.05)
    c = replica.client
    assert await (await c.get(API + "/replications")).get_json() == {"replications": []}
    assert replica.services.replications is None  # no task runs on a replica
    r = await c.post(API + "/replications/x", json=SETTINGS)
    assert r.status_code == 403
    assert r.headers["x-reduct-error"] == "Cannot create replication in read-only mode"
    assert (await c.delete(API + "/replications/r")).status_code == 403


# --- Content-Encoding on batch writes ----------------------------------------------------------


def _batch(n: int) -> tuple[dict[str, str], bytes]:
    headers = {f"x-reduct-time-{ts}": "100,text/plain" for ts in range(1, n + 1)}
    body = b"".join(bytes([ts % 250]) * 100 for ts in range(1, n + 1))
    return headers, body


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_batch_v1_and_v2_accept_compressed_bodies(hs: Harness, encoding: str) -> None:
    headers, body = _batch(30)
    packed = gzip.compress(body) if encoding == "gzip" else zstandard.compress(body)
    r = await hs.client.post(API + "/b/src/e/batch", data=packed,
                             headers={**headers, "Content-Encoding": encoding})
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    got = await hs.client.get(API + "/b/src/e?ts=7")
    assert await got.get_data() == bytes([7]) * 100
    v2 = {"x-reduct-entries": "v2", "x-reduct-start-ts": "1",
          **{f"x-reduct-0-{i}": "100,text/plain" for i in range(30)},
          "Content-Encoding": encoding, "Content-Length": str(len(packed))}
    r = await hs.client.post(API + "/io/src/write", data=packed, headers=v2)
    assert r.status_code == 200 and not any(k.lower().startswith("x-reduct-error-") for k in r.headers.keys())
    assert await (await hs.client.get(API + "/b/src/v2?ts=30")).get_data() == bytes([30]) * 100


@pytest.mark.parametrize(
    ("encoding", "data", "message"),
    [
        ("gzip", b"this is not gzip", "Invalid gzip body"),
        ("zstd", b"this is not zstd", "Invalid zstd body"),
        ("gzip", None, "Invalid gzip body"),  # truncated
        ("gzip", gzip.compress(b"\0" * 5_000_000), "decodes to more than the 3000 bytes"),
        ("br", b"x", "Unsupported content encoding 'br'"),
    ],
)
async def test_bad_compressed_bodies_are_422_and_write_nothing(
    hs: Harness, encoding: str, data: bytes | None, message: str
) -> None:
    headers, body = _batch(30)
    if data is None:
        data = gzip.compress(body)[:-20]
    r = await hs.client.post(API + "/b/src/e/batch", data=data,
                             headers={**headers, "Content-Encoding": encoding})
    assert r.status_code == 422
    assert message in r.headers["x-reduct-error"]
    assert (await hs.client.get(API + "/b/src/e?ts=1")).status_code == 404


LEASE = {"lock_file_ttl": "2s", "lock_file_polling_interval": "100ms", "lock_file_timeout": 0}


async def test_standby_runs_no_task_until_it_holds_the_lease(
    harness_factory: Any, tmp_path: Any
) -> None:
    primary = await harness_factory(data_path=tmp_path / "shared", instance_role="PRIMARY", **LEASE)
    await primary.client.post(API + "/b/src")
    assert (await create(primary, "r", mode="paused")).status_code == 200
    await primary.client.post(API + "/b/src/e?ts=1", data=b"x", headers=label("1"))
    manager = primary.services.replications
    assert manager is not None and manager.started
    standby = await harness_factory(
        data_path=tmp_path / "shared", instance_role="SECONDARY", wait=False, **LEASE
    )
    await asyncio.sleep(0.5)
    assert standby.services.replications is None  # waiting for the lease: no sender
    await primary.test_app.__aexit__(None, None, None)  # the primary shuts down, releasing it
    for _ in range(400):  # the lease changes hands within a polling interval; slack for load
        if standby.services.replications is not None:
            break
        await asyncio.sleep(0.05)
    taken = standby.services.replications
    assert taken is not None and taken.started
    # the new holder took over the task and its backlog from the shared folder
    assert taken.get("r").settings.mode.value == "paused"
    assert taken.get("r").pending_records == 1


async def test_a_full_log_drops_the_oldest_and_counts_them_as_errors(
    harness_factory: Any,
) -> None:
    h = await harness_factory(replication_log_size=5)  # holds 4 per entry
    await h.client.post(API + "/b/src")
    assert (await create(h, "r", mode="paused")).status_code == 200
    headers = {f"x-reduct-time-{ts}": "1,," for ts in range(1, 11)}
    await h.client.post(API + "/b/src/e/batch", data=b"x" * 10, headers=headers)
    detail = await (await h.client.get(API + "/replications/r")).get_json()
    assert detail["info"]["pending_records"] == 4
    errors = detail["diagnostics"]["hourly"]["errors"]
    assert errors["507"]["count"] == 6
    assert "Transaction log is full" in errors["507"]["last_message"]
    manager = h.services.replications
    assert manager is not None
    assert manager.get("r")._logs["e"].front(10) == [(WRITE, t) for t in range(7, 11)]  # noqa: SLF001
