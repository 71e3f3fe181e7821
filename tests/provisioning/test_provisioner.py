"""Provisioner: boot refuses bad input, reloads keep the last good state, the watcher is live."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from appliance.engine.models import BucketSettings, QuotaType
from appliance.errors import ConfigError
from provisioning.merge import load_desired
from provisioning.provisioner import Provisioner
from tests.provisioning.fakes import FakeStorage, FakeTokens

WATCH_DEADLINE_S = 2.0  # the promise: a change is reconciled within 2 s


def make(path: Path | None, env: dict[str, str] | None = None, **kwargs: object) -> Provisioner:
    return Provisioner(
        environ=env or {},
        path=path,
        storage=FakeStorage(),
        tokens=FakeTokens(),
        **kwargs,  # type: ignore[arg-type]
    )


def storage_of(p: Provisioner) -> FakeStorage:
    return p._storage  # type: ignore[return-value]


def test_boot_applies_env_and_yaml(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  from-yaml: {quota_type: FIFO, quota_size: 1MB}\n")
    p = make(path, {"RS_BUCKET_A_NAME": "from-env"})
    result = p.boot()
    assert sorted(result.created_buckets) == ["from-env", "from-yaml"]
    assert p.state.is_bucket_provisioned("from-yaml")
    assert p.state.to_json()["source"] == f"env (1 groups) + {path}"


def test_boot_with_invalid_file_raises_the_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a:\n    quota_sise: 1\n")
    p = make(path)
    with pytest.raises(ConfigError, match=rf"^{path}:3: buckets.a.quota_sise: unknown key"):
        p.boot()
    assert storage_of(p).buckets == {}


def test_boot_reports_incomplete_env_groups_and_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    p = make(None, {"RS_TOKEN_1_NAME": "t", "RS_BUCKET_1_NAME": "b"})
    with caplog.at_level(logging.WARNING, logger="provisioning"):
        p.boot()
    assert "provisioning: Token 't' has no value. Drop it. (RS_TOKEN_1_VALUE is not set)" in [
        r.getMessage() for r in caplog.records
    ]
    assert p.state.is_bucket_provisioned("b")


def test_boot_uses_the_state_already_loaded_for_settings(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a: {}\n")
    initial = load_desired({}, path)
    path.write_text("buckets:\n  b: {}\n")  # boot applies what Settings were built from
    p = make(path, initial=initial)
    assert p.boot().created_buckets == ["a"]


def test_reload_once_rejects_a_bad_file_and_keeps_the_last_good_state(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a: {quota_type: FIFO, quota_size: 1MB}\n")
    p = make(path, watch_enabled=False)
    p.boot()
    path.write_text(
        "buckets:\n  a: {quota_type: FIFO, quota_size: 2MB}\n  b:\n    max_block_records: many\n"
    )
    with caplog.at_level(logging.ERROR, logger="provisioning"):
        assert p.reload_once() is None
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    line = record.getMessage()
    assert "\n" not in line
    assert line.startswith("provisioning rejected, previous state stays in force: ")
    assert f"{path}:4: buckets.b.max_block_records: Input should be a valid integer" in line
    storage = storage_of(p)
    assert storage.buckets["a"].settings.quota_size == 1_000_000  # not half-applied
    assert "b" not in storage.buckets
    assert p.state.is_bucket_provisioned("a")
    status = p.state.to_json()
    assert status["ok"] is False and f"{path}:4" in status["last_error"]

    path.write_text("buckets:\n  a: {quota_type: FIFO, quota_size: 2MB}\n")
    result = p.reload_once()
    assert result is not None and result.updated_buckets == ["a"]
    assert p.state.to_json()["ok"] is True


def test_reload_once_refuses_a_quota_below_the_stored_data(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a: {quota_type: FIFO, quota_size: 10MB}\n")
    p = make(path)
    p.boot()
    storage_of(p).buckets["a"].size = 5_000_000
    path.write_text("buckets:\n  a: {quota_type: FIFO, quota_size: 1MB}\n  b: {}\n")
    assert p.reload_once() is None
    assert storage_of(p).buckets["a"].settings == BucketSettings(
        QuotaType.FIFO, 10_000_000, 64_000_000, 1024
    )
    assert "b" not in storage_of(p).buckets
    assert "below the 5000000 bytes already stored" in (p.state.last_error or "")


def test_reload_once_reports_instance_changes_as_requiring_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("instance:\n  lock_file: {ttl: 45s}\n  role: PRIMARY\n")
    p = make(path, {"RS_INSTANCE_ROLE": "SECONDARY"})
    p.boot()
    path.write_text("instance:\n  lock_file: {ttl: 60s}\n  role: STANDALONE\n")
    with caplog.at_level(logging.WARNING, logger="provisioning"):
        assert p.reload_once() is not None
    # The role is set by RS_INSTANCE_ROLE, so its YAML change has no effect: not reported.
    assert p.state.restart_required == ("lock_file_ttl",)
    assert p.state.to_json()["restart_required"] == ["lock_file_ttl"]
    assert any(
        "instance.lock_file.ttl (RS_LOCK_FILE_TTL) 45.0 -> 60.0" in r.getMessage()
        and "requires restart" in r.getMessage()
        for r in caplog.records
    )


async def wait_for(condition: object, deadline_s: float) -> float:
    """Poll ``condition()`` until true; return the seconds it took (fail after the deadline)."""
    started = time.monotonic()
    while not condition():  # type: ignore[operator]
        if time.monotonic() - started > deadline_s:
            raise AssertionError(f"not reached within {deadline_s} s")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def test_watcher_applies_an_edit_within_two_seconds(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a: {}\n")
    p = make(path)
    await p.start()
    try:
        assert p.state.is_bucket_provisioned("a")
        await asyncio.sleep(0.1)  # let the watch settle; the 1 s poll covers a miss anyway
        path.write_text("buckets:\n  a: {}\n  b: {}\n")
        await wait_for(lambda: p.state.is_bucket_provisioned("b"), WATCH_DEADLINE_S)
        assert "b" in storage_of(p).buckets

        # An editor's save: write a temp file and rename it over the original.
        tmp = tmp_path / ".prov.yaml.tmp"
        tmp.write_text("buckets:\n  b: {}\n")
        tmp.replace(path)
        await wait_for(lambda: not p.state.is_bucket_provisioned("a"), WATCH_DEADLINE_S)
        assert "a" in storage_of(p).buckets  # unprovisioned, never deleted

        # A broken save is rejected and the last good state stays.
        path.write_text("buckets: [\n")
        await wait_for(lambda: p.state.last_error is not None, WATCH_DEADLINE_S)
        assert p.state.is_bucket_provisioned("b")
    finally:
        await p.stop()
        await p.stop()  # idempotent


async def test_watcher_picks_up_a_new_file_in_a_folder(tmp_path: Path) -> None:
    folder = tmp_path / "prov.d"
    folder.mkdir()
    (folder / "10-base.yaml").write_text("buckets:\n  a: {}\n")
    p = make(folder)
    await p.start()
    try:
        (folder / "20-more.yaml").write_text("tokens:\n  t: {value: v}\n")
        await wait_for(lambda: p.state.is_token_provisioned("t"), WATCH_DEADLINE_S)
    finally:
        await p.stop()


async def test_start_without_watch_still_allows_reload_once(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a: {}\n")
    p = make(path, watch_enabled=False)
    await p.start()
    path.write_text("buckets:\n  b: {}\n")
    result = await asyncio.to_thread(p.reload_once)
    assert result is not None and result.created_buckets == ["b"]
    await p.stop()


async def test_start_with_invalid_provisioning_stops_startup(tmp_path: Path) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("tokens:\n  t: {value: '${MISSING}'}\n")
    p = make(path)
    with pytest.raises(ConfigError, match="environment variable MISSING is not set"):
        await p.start()
    await p.stop()
