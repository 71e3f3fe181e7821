"""Lifecycle policies in-process (spec §10): CRUD and mode, validation, runs, modes,
processing_interval, diagnostics, provisioning (env groups and YAML, 409), replica 403."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from reduct.msg.lifecycle import LifecycleDetailInfo, LifecycleList, LifecycleSettings

from tests.api.conftest import Harness

API = "/api/v1"
HOUR_US = 3600 * 1_000_000
NOW_US = int(time.time() * 1_000_000)


def settings_json(**fields: Any) -> str:
    """The body reduct-py 1.21 sends (every field, nulls included)."""
    base: dict[str, Any] = {"bucket": "bkt", "older_than": "1h", "interval": "10m"}
    base.update(fields)
    return LifecycleSettings(**base).model_dump_json()


async def post(h: Harness, name: str, body: str, method: str = "POST") -> Any:
    return await h.client.open(API + f"/lifecycles/{name}", method=method, data=body,
                               headers={"Content-Type": "text/plain; charset=utf-8"})


async def write_aged(h: Harness, entry: str, ages_h: list[float], **labels: str) -> None:
    """Records ``age`` hours old (now − age)."""
    for age in ages_h:
        ts = NOW_US - int(age * HOUR_US)
        headers = {"Content-Length": "1", **{f"x-reduct-label-{k}": v for k, v in labels.items()}}
        r = await h.client.post(API + f"/b/bkt/{entry}?ts={ts}", data=b"x", headers=headers)
        assert r.status_code == 200, r.headers.get("x-reduct-error")


async def count(h: Harness, entry: str) -> int:
    r = await h.client.get(API + "/b/bkt")
    for item in (await r.get_json())["entries"]:
        if item["name"] == entry:
            return int(item["record_count"])
    return 0


async def test_crud_and_mode_as_reduct_py_parses_it(h: Harness) -> None:
    await h.client.post(API + "/b/bkt")
    r = await post(h, "keep-week", settings_json(older_than="7d", entries=["cam/*"],
                                                  when={"&kind": {"$eq": "debug"}}))
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    r = await h.client.get(API + "/lifecycles")
    (info,) = LifecycleList.model_validate_json(await r.get_data()).lifecycles
    assert (info.name, info.is_provisioned, info.mode.value, info.type.value) == (
        "keep-week", False, "enabled", "delete")
    r = await h.client.get(API + "/lifecycles/keep-week")
    detail = LifecycleDetailInfo.model_validate_json(await r.get_data())
    assert detail.settings.older_than == "7d" and detail.settings.entries == ["cam/*"]
    assert detail.settings.when == {"&kind": {"$eq": "debug"}}
    assert (await r.get_json())["diagnostics"] == {"last_run": None}

    r = await post(h, "keep-week", settings_json(older_than="2d"))
    assert r.status_code == 409 and r.headers["x-reduct-error"] == "Lifecycle 'keep-week' already exists"
    r = await post(h, "keep-week", settings_json(older_than="2d"), method="PUT")
    assert r.status_code == 200
    r = await h.client.patch(API + "/lifecycles/keep-week/mode", json={"mode": "dry_run"})
    assert r.status_code == 200
    detail = LifecycleDetailInfo.model_validate_json(
        await (await h.client.get(API + "/lifecycles/keep-week")).get_data())
    assert detail.settings.older_than == "2d" and detail.info.mode.value == "dry_run"
    assert (await h.client.delete(API + "/lifecycles/keep-week")).status_code == 200
    for method, path in (("GET", ""), ("DELETE", ""), ("PUT", ""), ("PATCH", "/mode")):
        body = settings_json() if method == "PUT" else '{"mode": "enabled"}'
        r = await h.client.open(API + f"/lifecycles/keep-week{path}", method=method, data=body)
        assert r.status_code == 404, method
        assert r.headers["x-reduct-error"] == "Lifecycle 'keep-week' does not exist"


async def test_validation_errors(h: Harness) -> None:
    await h.client.post(API + "/b/bkt")
    cases = [
        (settings_json(bucket="nope"), 404, "Bucket 'nope' is not found"),
        (settings_json(older_than="30m"), 422, "'older_than' must be at least 1h"),
        (settings_json(interval="1m"), 422, "'interval' must be at least 10m"),
        (settings_json(interval=None), 422, "Invalid JSON: 'interval' must be a duration string, not null"),
        (settings_json(older_than="soon"), 422, "Invalid duration 'soon' in 'older_than'"),
        (settings_json(when={"$bad": [1]}), 422, "Operator '$bad' not supported"),
        (settings_json(when={"#ext": {}}), 422, "Extensions ('#ext') are not allowed in a lifecycle condition"),
        ('{"bucket": "bkt", "older_than": "1h"}', 422, "Invalid JSON: missing field `type`"),
        (settings_json(type="compress"), 422, "Lifecycle type 'compress' is not supported by this server; use 'delete'"),
        ("{", 422, None),
    ]
    for body, status, message in cases:
        r = await post(h, "x", body)
        assert r.status_code == status, (body, r.headers.get("x-reduct-error"))
        if message is not None:
            assert r.headers["x-reduct-error"].startswith(message), r.headers["x-reduct-error"]
    r = await h.client.patch(API + "/lifecycles/x/mode", json={"mode": "sometimes"})
    assert r.status_code == 422


async def test_run_removes_old_records_by_glob_and_when(h: Harness) -> None:
    await h.client.post(API + "/b/bkt")
    await write_aged(h, "cam/a", [5, 4, 3, 0.5])
    await write_aged(h, "cam/b/c", [5, 0.1], kind="debug")
    await write_aged(h, "cam/b/d", [5], kind="keep")
    await write_aged(h, "mic", [5, 4])
    r = await post(h, "cams", settings_json(older_than="2h", entries=["cam/**", "!cam/b/d"]))
    assert r.status_code == 200
    report = await h.services.lifecycles.run_now("cams")
    assert report.removed == 4 and not report.errors
    assert (await count(h, "cam/a"), await count(h, "cam/b/c"), await count(h, "cam/b/d"),
            await count(h, "mic")) == (1, 1, 1, 2)
    detail = await (await h.client.get(API + "/lifecycles/cams")).get_json()
    assert detail["info"]["last_run"] is not None
    assert detail["diagnostics"]["last_run"]["removed_records"] == 4

    r = await post(h, "debug-only", settings_json(older_than="1h", when={"&kind": {"$eq": "debug"}}))
    assert r.status_code == 200
    await write_aged(h, "mic", [3], kind="debug")
    report = await h.services.lifecycles.run_now("debug-only")
    assert report.removed == 1 and await count(h, "mic") == 2


async def test_dry_run_counts_and_disabled_never_runs(h: Harness) -> None:
    await h.client.post(API + "/b/bkt")
    await write_aged(h, "e", [10, 9, 8])
    await post(h, "dry", settings_json(mode="dry_run"))
    report = await h.services.lifecycles.run_now("dry")
    assert (report.matched, report.removed) == (3, 0) and await count(h, "e") == 3
    detail = await (await h.client.get(API + "/lifecycles/dry")).get_json()
    assert detail["diagnostics"]["last_run"]["matched_records"] == 3


async def test_scheduled_first_run_and_disabled_mode(harness_factory: Any) -> None:
    h = await harness_factory()
    h.services.lifecycles._first_delay = 0.05  # noqa: SLF001 - no waiting for the first run
    await h.client.post(API + "/b/bkt")
    await write_aged(h, "e", [10, 9])
    await write_aged(h, "off", [10])
    await post(h, "off", settings_json(mode="disabled", entries=["off"]))
    await post(h, "on", settings_json(entries=["e"]))
    for _ in range(400):  # up to 20 s: the scheduled run is a background task on a busy CI box
        if await count(h, "e") == 0:
            break
        await _sleep(0.05)
    assert await count(h, "e") == 0
    assert await count(h, "off") == 1
    # The records disappear before the run records itself as done: wait for that too.
    for _ in range(400):
        infos = {
            i["name"]: i
            for i in (await (await h.client.get(API + "/lifecycles")).get_json())["lifecycles"]
        }
        if infos["on"]["last_run"] is not None:
            break
        await _sleep(0.05)
    assert infos["on"]["last_run"] is not None and infos["off"]["last_run"] is None


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


async def test_processing_interval_bounds_one_run(h: Harness) -> None:
    await h.client.post(API + "/b/bkt")
    await write_aged(h, "e", [30, 29, 28, 27, 26, 25, 3])
    await post(h, "slices", settings_json(older_than="2h", processing_interval="2h 30m"))
    removed = [(await h.services.lifecycles.run_now("slices")).removed for _ in range(4)]
    # Each run looks at 2.5 h of record time from where the last stopped (or the oldest
    # record): 30..27.5 h ago, then 27..24.5 h ago, then 3..2 h ago (older_than caps it).
    assert removed == [3, 3, 1, 0] and await count(h, "e") == 0


async def test_policies_survive_a_restart(harness_factory: Any, tmp_path: Path) -> None:
    h = await harness_factory(data_path=tmp_path / "persist")
    await h.client.post(API + "/b/bkt")
    await post(h, "p", settings_json(older_than="3d", mode="dry_run"))
    await h.services.stop()
    h2 = await harness_factory(data_path=tmp_path / "persist")
    detail = await (await h2.client.get(API + "/lifecycles/p")).get_json()
    assert detail["settings"]["older_than"] == "3d" and detail["info"]["mode"] == "dry_run"


async def test_provisioned_by_env_and_yaml_answer_409(harness_factory: Any, tmp_path: Path) -> None:
    from appliance.app import create_app
    from appliance.services import Services
    from appliance.settings import Settings

    yaml_file = tmp_path / "prov.yaml"
    yaml_file.write_text(
        "buckets:\n  bkt: {}\nlifecycles:\n  from-yaml:\n    type: delete\n    bucket: bkt\n"
        "    older_than: 2d\n    entries: [a, b]\n    mode: dry_run\n"
    )
    environ = {
        "RS_LIFECYCLE_X_NAME": "from-env", "RS_LIFECYCLE_X_TYPE": "DELETE",
        "RS_LIFECYCLE_X_BUCKET": "bkt", "RS_LIFECYCLE_X_OLDER_THAN": "7d",
        "RS_LIFECYCLE_X_ENTRIES": "cam/*, mic", "RS_LIFECYCLE_X_WHEN": '{"&a": {"$eq": 1}}',
        "RS_LIFECYCLE_X_INTERVAL": "1h",
        "RS_LIFECYCLE_BAD_NAME": "incomplete",
    }
    settings = Settings(data_path=tmp_path / "prov-data", provisioning_path=yaml_file,
                        engine_compaction_interval=0)
    services = Services(settings, environ=environ, watch_provisioning=False)
    app = create_app(settings, services)
    async with app.test_app() as test_app:
        await services.wait_open()
        client = test_app.test_client()
        r = await client.get(API + "/lifecycles")
        infos = {i["name"]: i for i in (await r.get_json())["lifecycles"]}
        assert set(infos) == {"from-env", "from-yaml"}
        assert all(i["is_provisioned"] for i in infos.values())
        env_detail = await (await client.get(API + "/lifecycles/from-env")).get_json()
        assert env_detail["settings"]["entries"] == ["cam/*", "mic"]
        assert env_detail["settings"]["when"] == {"&a": {"$eq": 1}}
        assert env_detail["settings"]["interval"] == "1h"
        r = await client.put(API + "/lifecycles/from-yaml", data=settings_json())
        assert r.status_code == 409
        assert r.headers["x-reduct-error"] == "Can't update provisioned lifecycle 'from-yaml'"
        r = await client.delete(API + "/lifecycles/from-env")
        assert r.status_code == 409
        assert r.headers["x-reduct-error"] == "Can't remove provisioned lifecycle 'from-env'"
        r = await client.patch(API + "/lifecycles/from-env/mode", json={"mode": "disabled"})
        assert r.status_code == 200  # the mode may change, as for replications
        # The YAML drops the policy: it stays, as an ordinary one (no data loss).
        yaml_file.write_text("buckets:\n  bkt: {}\n")
        services.provisioner.reload_once()
        # A reload keeps a mode the provisioning does not set (RS_LIFECYCLE_X_MODE is unset).
        env_info = (await (await client.get(API + "/lifecycles/from-env")).get_json())["info"]
        assert env_info["mode"] == "disabled" and env_info["is_provisioned"] is True
        info = await (await client.get(API + "/lifecycles/from-yaml")).get_json()
        assert info["info"]["is_provisioned"] is False
        assert (await client.delete(API + "/lifecycles/from-yaml")).status_code == 200


def test_env_group_problems_are_reported() -> None:
    from provisioning import load_env_groups

    groups = load_env_groups({
        "RS_LIFECYCLE_A_NAME": "a", "RS_LIFECYCLE_A_TYPE": "delete",
        "RS_LIFECYCLE_B_NAME": "b", "RS_LIFECYCLE_B_TYPE": "delete",
        "RS_LIFECYCLE_B_BUCKET": "x", "RS_LIFECYCLE_B_OLDER_THAN": "1h",
        "RS_LIFECYCLE_B_WHEN": "{not json",
        "RS_LIFECYCLE_C_NAME": "c", "RS_LIFECYCLE_C_TYPE": "delete",
        "RS_LIFECYCLE_C_BUCKET": "x", "RS_LIFECYCLE_C_OLDER_THAN": "10m",
    })
    assert groups.lifecycles == {}
    text = "\n".join(groups.problems)
    assert "RS_LIFECYCLE_A_BUCKET, RS_LIFECYCLE_A_OLDER_THAN not set" in text
    assert "RS_LIFECYCLE_B_WHEN: invalid JSON" in text
    assert "'older_than' must be at least 1h" in text


def test_yaml_error_names_file_and_line(tmp_path: Path) -> None:
    import pytest

    from appliance.errors import ConfigError
    from provisioning import load_yaml

    path = tmp_path / "p.yaml"
    path.write_text("lifecycles:\n  l:\n    type: delete\n    bucket: b\n    older_than: 5m\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path, {})
    assert "p.yaml:" in str(info.value) and "older_than' must be at least 1h" in str(info.value)


async def test_replica_lists_nothing_and_refuses_the_rest(h: Harness, monkeypatch: Any) -> None:
    monkeypatch.setattr(type(h.services.role), "read_only", property(lambda self: True))
    r = await h.client.get(API + "/lifecycles")
    assert (await r.get_json()) == {"lifecycles": []}
    r = await post(h, "x", settings_json())
    assert r.status_code == 403
    assert r.headers["x-reduct-error"] == "Cannot create lifecycle in read-only mode"
