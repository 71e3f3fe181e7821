"""Roles through the app in-process: the lease fence around writes, step-down, replica 403s."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from appliance.errors import ServiceUnavailable
from tests.api.conftest import Harness

Factory = Callable[..., Awaitable[Harness]]
ONE = {"Content-Length": "1"}
LEASE = {
    "lock_file_ttl": "2s",
    "lock_file_polling_interval": "100ms",
    "lock_file_timeout": 0,
}


async def wait_for(check: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


async def test_primary_serves_with_its_generation_stamped(harness_factory: Factory) -> None:
    h = await harness_factory(instance_role="PRIMARY", **LEASE)
    assert (await h.client.get("/api/v1/ready")).status_code == 200
    assert (await h.client.post("/api/v1/b/bk")).status_code == 200
    assert (await h.client.post("/api/v1/b/bk/e?ts=1", data=b"x", headers=ONE)).status_code == 200
    info = await (await h.client.get("/api/v1/info")).get_json()
    assert info["instance_role"] == "PRIMARY"
    role = info["role"]
    assert role.pop("owner") == h.services.role.manager.owner  # type: ignore[attr-defined]
    assert 0 <= role.pop("renewal_age_s") < 2  # renewed within the 2 s TTL
    assert role == {
        "state": "HOLDING",
        "ready": True,
        "generation": 1,
        "detail": "holding generation 1",
    }
    assert h.services.engine.options.generation == 1


async def test_write_is_not_acknowledged_when_the_fence_fails_after_it(
    harness_factory: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = await harness_factory(instance_role="PRIMARY", **LEASE)
    await h.client.post("/api/v1/b/bk")
    fence: Any = h.services.fence
    calls = 0
    passing = fence.check_async

    async def fence_fails_second_time() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # after the engine wrote the record, before the 200
            raise ServiceUnavailable("lease lost meanwhile")
        await passing()

    monkeypatch.setattr(fence, "check_async", fence_fails_second_time)
    response = await h.client.post("/api/v1/b/bk/e?ts=1", data=b"x", headers=ONE)
    assert response.status_code == 503 and calls == 2
    assert response.headers["x-reduct-error"] == "lease lost meanwhile"


async def test_tampered_lock_steps_down_and_refuses_writes(harness_factory: Factory) -> None:
    h = await harness_factory(instance_role="PRIMARY", lock_file_failure_action="proceed", **LEASE)
    await h.client.post("/api/v1/b/bk")
    lock = h.services.settings.data_path / ".lock"
    record = json.loads(lock.read_text())
    record.update(owner="elsewhere:1:x", nonce="n")
    lock.write_text(json.dumps(record))
    await wait_for(lambda: not h.services.ready)
    assert (await h.client.get("/api/v1/ready")).status_code == 503
    assert (await h.client.post("/api/v1/b/bk/e?ts=1", data=b"x", headers=ONE)).status_code == 503
    assert h.services.exit_code is None  # proceed: stays up, competes again
    # The intruder never renews: after the TTL the lease (a new generation) is ours again.
    await wait_for(lambda: h.services.ready, seconds=10)
    assert h.services.role.generation == 2
    assert (await h.client.post("/api/v1/b/bk/e?ts=1", data=b"x", headers=ONE)).status_code == 200


async def test_lost_lease_with_abort_fails_the_process(harness_factory: Factory) -> None:
    h = await harness_factory(instance_role="PRIMARY", **LEASE)
    (h.services.settings.data_path / ".lock").unlink()
    await asyncio.wait_for(h.services.wait_failed(), 5)
    assert h.services.exit_code == 1 and not h.services.ready


async def test_replica_refuses_every_write_with_403(
    harness_factory: Factory, tmp_path: Any
) -> None:
    writer = await harness_factory(data_path=tmp_path / "shared")
    await writer.client.post("/api/v1/b/bk")
    await writer.client.post("/api/v1/b/bk/e?ts=1", data=b"x", headers=ONE)
    await writer.services.workers.run(writer.services.engine.compact)
    replica = await harness_factory(
        data_path=tmp_path / "shared",
        instance_role="REPLICA",
        engine_replica_update_interval="50ms",
    )
    await wait_for(lambda: replica.services.ready)
    c = replica.client
    assert (await c.get("/api/v1/b/bk/e?ts=1")).status_code == 200
    for response in [
        await c.post("/api/v1/b/bk/e?ts=2", data=b"y", headers=ONE),
        await c.patch("/api/v1/b/bk/e?ts=1", headers={"x-reduct-label-a": "b"}),
        await c.delete("/api/v1/b/bk/e?ts=1"),
        await c.delete("/api/v1/b/bk/e"),
        await c.post("/api/v1/b/other"),
        await c.put("/api/v1/b/bk", json={"quota_type": "FIFO"}),
        await c.delete("/api/v1/b/bk"),
    ]:
        assert response.status_code == 403
        assert "read-only replica" in response.headers["x-reduct-error"]
    await writer.client.post("/api/v1/b/bk/e?ts=3", data=b"z", headers=ONE)
    await writer.services.workers.run(writer.services.engine.compact)
    await wait_for(
        lambda: replica.services.engine.get_bucket("bk").get_entry("e").info().record_count == 2
    )
    assert (await c.get("/api/v1/b/bk/e?ts=3")).status_code == 200
