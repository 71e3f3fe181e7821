"""build_role_manager and the three role managers, driven like the services will drive them."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from appliance.errors import Forbidden, ServiceUnavailable
from appliance.roles.fencing import GENERATIONS_KEY, GenerationLog, SegmentBoundary
from appliance.roles.lease import LOCK_KEY, LeaseLost, LeaseRecord
from appliance.roles.role import (
    LeaseRole,
    ReplicaRole,
    RoleStatus,
    StandaloneRole,
    build_role_manager,
)
from appliance.roles.lease_manager import LeaseState, LeaseTimeout
from appliance.roles.write_fence import WriteFence
from appliance.settings import InstanceRole, Settings
from backends.base import Backend
from backends.filesystem import FilesystemBackend

WAL = "b/e/.wal/1.wal"


def settings(tmp_path: Path, role: str, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "data_path": tmp_path,
        "instance_role": role,
        "lock_file_ttl": "300ms",
        "lock_file_polling_interval": "20ms",
        "lock_file_timeout": 0,
        "engine_replica_update_interval": "20ms",
    }
    values.update(extra)
    return Settings(**values)


async def test_role_standalone_is_always_ready_and_writable(
    tmp_path: Path, backend: Backend
) -> None:
    role = build_role_manager(settings(tmp_path, "STANDALONE"), backend)
    assert isinstance(role, StandaloneRole)
    await role.start()
    assert await role.wait_serving() == 0
    assert role.is_ready and not role.read_only and role.generation == 0
    assert role.must_exit is None and role.status().ready
    WriteFence(role).check()
    await WriteFence(role).check_async()
    role.attach_refresh(lambda: None)
    role.add_listener(lambda status: None)
    await role.close()
    assert list(backend.list()) == []  # no lease files for a standalone node


async def test_role_replica_refuses_writes_and_is_ready_after_first_refresh(
    tmp_path: Path, backend: Backend
) -> None:
    role = build_role_manager(settings(tmp_path, "REPLICA"), backend)
    assert isinstance(role, ReplicaRole) and role.read_only
    statuses: list[RoleStatus] = []
    role.add_listener(statuses.append)
    await role.start()
    assert await role.wait_serving() == 0
    assert not role.is_ready and role.status().detail == "never refreshed"
    with pytest.raises(Forbidden, match="read-only replica"):
        WriteFence(role).check()
    with pytest.raises(Forbidden):
        await WriteFence(role).check_async()
    calls: list[int] = []
    role.attach_refresh(lambda: calls.append(1))
    for _ in range(200):
        if role.is_ready:
            break
        await asyncio.sleep(0.01)
    assert role.is_ready and statuses and statuses[0].ready
    await asyncio.sleep(0.1)
    assert len(calls) >= 3  # refreshed every interval
    await role.close()
    assert list(backend.list()) == []  # a replica writes nothing


async def test_role_primary_records_its_generation_before_serving(
    tmp_path: Path, backend: Backend
) -> None:
    backend.write(WAL, b"wal bytes")
    role = build_role_manager(settings(tmp_path, "PRIMARY"), backend)
    assert isinstance(role, LeaseRole) and not role.read_only
    with pytest.raises(ServiceUnavailable):
        WriteFence(role).check()  # not serving yet
    statuses: list[RoleStatus] = []
    role.add_listener(statuses.append)
    await role.start()
    assert await asyncio.wait_for(role.wait_serving(), 5) == 1
    assert role.is_ready and role.generation == 1 and role.must_exit is None
    [marker] = GenerationLog(backend).markers()
    assert marker.generation == 1 and marker.owner == role.manager.owner
    assert marker.wal == {WAL: SegmentBoundary.of(b"wal bytes")}
    WriteFence(role).check()
    await WriteFence(role).check_async()
    assert statuses[-1].ready and statuses[-1].generation == 1
    await role.close()
    assert LeaseRecord.decode(backend.read(LOCK_KEY)).released
    assert role.must_exit is None  # a clean release is not a failure


async def test_role_secondary_serves_after_the_primary_releases(
    tmp_path: Path, backend: Backend
) -> None:
    primary = build_role_manager(settings(tmp_path, "PRIMARY"), backend)
    secondary = build_role_manager(settings(tmp_path, "SECONDARY"), backend)
    await primary.start()
    assert await asyncio.wait_for(primary.wait_serving(), 5) == 1
    await secondary.start()
    waiting = asyncio.create_task(secondary.wait_serving())
    await asyncio.sleep(0.1)
    assert not waiting.done() and not secondary.is_ready
    await primary.close()
    assert await asyncio.wait_for(waiting, 5) == 2
    assert [m.generation for m in GenerationLog(backend).markers()] == [1, 2]
    await secondary.close()


async def test_role_refuses_to_serve_when_a_newer_generation_began(
    tmp_path: Path, backend: Backend
) -> None:
    GenerationLog(backend).record_began(7, "someone-else")  # but .generation was lost
    role = build_role_manager(settings(tmp_path, "PRIMARY"), backend)
    assert isinstance(role, LeaseRole)
    await role.start()
    with pytest.raises(LeaseLost, match="generation 7 already began"):
        await asyncio.wait_for(role.wait_serving(), 5)
    assert role.manager.state is LeaseState.STEPPED_DOWN and role.must_exit == 1
    await role.close()


async def test_role_lost_lease_with_abort_asks_to_exit(tmp_path: Path, backend: Backend) -> None:
    role = build_role_manager(settings(tmp_path, "PRIMARY"), backend)
    assert isinstance(role, LeaseRole)
    statuses: list[RoleStatus] = []
    role.add_listener(statuses.append)
    await role.start()
    await asyncio.wait_for(role.wait_serving(), 5)
    backend.write(LOCK_KEY, LeaseRecord("mallory:1:x", "n", 9, 0, 30.0, 0, 0).encode())
    for _ in range(200):
        if role.must_exit:
            break
        await asyncio.sleep(0.01)
    assert role.must_exit == 1 and not role.is_ready
    assert statuses[-1].state == "STEPPED_DOWN" and not statuses[-1].ready
    with pytest.raises(ServiceUnavailable):
        await WriteFence(role).check_async()
    await role.close()


async def test_role_lost_lease_with_proceed_can_rejoin(tmp_path: Path, backend: Backend) -> None:
    role = build_role_manager(
        settings(tmp_path, "PRIMARY", lock_file_failure_action="proceed"), backend
    )
    assert isinstance(role, LeaseRole)
    await role.start()
    await asyncio.wait_for(role.wait_serving(), 5)
    backend.write(LOCK_KEY, b"")  # tampered
    for _ in range(200):
        if role.manager.state is LeaseState.STEPPED_DOWN:
            break
        await asyncio.sleep(0.01)
    assert role.must_exit is None and not role.is_ready  # proceed: stay up, fenced
    await role.rejoin()
    assert await asyncio.wait_for(role.wait_serving(), 5) == 2  # the corrupt lock went stale
    await role.close()


async def test_role_lease_timeout_with_abort_asks_to_exit(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path / "data")
    holder = build_role_manager(settings(tmp_path, "PRIMARY"), backend)
    await holder.start()
    await asyncio.wait_for(holder.wait_serving(), 5)
    late = build_role_manager(settings(tmp_path, "SECONDARY", lock_file_timeout="100ms"), backend)
    await late.start()
    with pytest.raises(LeaseTimeout):
        await asyncio.wait_for(late.wait_serving(), 5)
    assert late.must_exit == 1 and late.status().state == "FAILED"
    await late.close()
    await holder.close()


def test_role_builder_maps_every_role(tmp_path: Path, backend: Backend) -> None:
    kinds = {
        InstanceRole.STANDALONE: StandaloneRole,
        InstanceRole.PRIMARY: LeaseRole,
        InstanceRole.SECONDARY: LeaseRole,
        InstanceRole.REPLICA: ReplicaRole,
    }
    for role, kind in kinds.items():
        built = build_role_manager(settings(tmp_path, role.value), backend)
        assert isinstance(built, kind) and built.role is role
    assert GENERATIONS_KEY not in [info.key for info in backend.list()]


async def test_role_deposed_by_the_engine_steps_down_and_refuses_without_io(
    tmp_path: Path, backend: Backend
) -> None:
    role = build_role_manager(settings(tmp_path, "PRIMARY"), backend)
    assert isinstance(role, LeaseRole)
    with pytest.raises(ServiceUnavailable):
        WriteFence(role).check(io=False)  # not serving yet
    await role.start()
    await asyncio.wait_for(role.wait_serving(), 5)
    WriteFence(role).check(io=False)
    role.deposed("b/e/1.meta was written by generation 2")
    assert role.manager.state is LeaseState.STEPPED_DOWN and role.must_exit == 1
    with pytest.raises(ServiceUnavailable, match="no longer holds"):
        WriteFence(role).check(io=False)
    await role.close()


def test_role_without_a_lease_ignores_deposed_and_replica_refuses_nowait(
    tmp_path: Path, backend: Backend
) -> None:
    standalone = build_role_manager(settings(tmp_path, "STANDALONE"), backend)
    standalone.deposed("ignored")
    WriteFence(standalone).check(io=False)
    replica = build_role_manager(settings(tmp_path, "REPLICA"), backend)
    replica.deposed("ignored")
    with pytest.raises(Forbidden, match="read-only replica"):
        WriteFence(replica).check(io=False)
