"""Provisioning through the app: Services boots the desired state before "open", the API
answers 409 for provisioned buckets and tokens, ``is_provisioned`` and ``/info`` show it,
provisioned tokens persist with their flag, and a refused provisioning stops startup."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from appliance.app import create_app
from appliance.auth import TokenStore
from appliance.services import EXIT_CONFIG, EXIT_RUNTIME, Services
from appliance.settings import Settings
from tests.api.conftest import AUTH, TOKEN, Harness

API = "/api/v1"
ENV_GROUPS = {
    "RS_BUCKET_1_NAME": "env-bucket",
    "RS_BUCKET_1_QUOTA_TYPE": "FIFO",
    "RS_BUCKET_1_QUOTA_SIZE": "10MB",
    "RS_BUCKET_1_MAX_BLOCK_RECORDS": "64",
    "RS_TOKEN_1_NAME": "reader",
    "RS_TOKEN_1_VALUE": "reader-secret-value",
    "RS_TOKEN_1_READ": "env-bucket",
}

Factory = Callable[..., Awaitable[Harness]]


async def shut(h: Harness) -> None:
    """Stop a harness's app before another one opens the same data folder."""
    await h.test_app.__aexit__(None, None, None)
    h.test_app = None


@pytest.fixture
async def prov_factory(tmp_path: Path) -> AsyncIterator[Factory]:
    """Apps whose Services get an environment (env groups, ${VAR}); watcher off by default."""
    started: list[Harness] = []

    async def factory(
        environ: dict[str, str] | None = None,
        *,
        data: str = "data",
        watch: bool = False,
        wait: bool = True,
        **overrides: Any,
    ) -> Harness:
        settings = Settings(data_path=tmp_path / data, engine_compaction_interval=0, **overrides)
        services = Services(settings, environ=environ, watch_provisioning=watch)
        app = create_app(settings, services)
        test_app = app.test_app()
        await test_app.__aenter__()
        harness = Harness(app, test_app, services)
        started.append(harness)
        if wait:
            await services.wait_open()
        return harness

    yield factory
    for harness in started:
        if harness.test_app is not None:
            await shut(harness)


def bearer(value: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {value}"}


async def test_provisioning_env_groups_make_protected_buckets_and_tokens(
    prov_factory: Factory,
) -> None:
    h = await prov_factory(ENV_GROUPS, api_token=TOKEN)
    c = h.client
    r = await c.get(API + "/b/env-bucket", headers=AUTH)
    body = await r.get_json()
    assert body["info"]["is_provisioned"] is True
    assert body["settings"] == {
        "quota_type": "FIFO",
        "quota_size": 10_000_000,
        "max_block_size": 64_000_000,
        "max_block_records": 64,
    }
    assert (await c.post(API + "/b/free", headers=AUTH)).status_code == 200
    buckets = (await (await c.get(API + "/list", headers=AUTH)).get_json())["buckets"]
    listed = {b["name"]: b["is_provisioned"] for b in buckets}
    assert listed == {"env-bucket": True, "free": False}

    for method, path, payload, message in (
        ("PUT", "/b/env-bucket", {"quota_size": 1}, "Can't change settings of provisioned bucket"),
        ("DELETE", "/b/env-bucket", None, "Can't remove provisioned bucket"),
        ("PUT", "/b/env-bucket/rename", {"new_name": "x"}, "Can't rename provisioned bucket"),
    ):
        r = await c.open(API + path, method=method, json=payload, headers=AUTH)
        assert r.status_code == 409, path
        assert r.headers["x-reduct-error"] == f"{message} 'env-bucket'"
    assert (await c.put(API + "/b/free", json={"quota_size": 5}, headers=AUTH)).status_code == 200
    # Records of a provisioned bucket are ordinary data: the API writes them.
    r = await c.post(
        API + "/b/env-bucket/e?ts=1", data=b"x", headers={**AUTH, "Content-Length": "1"}
    )
    assert r.status_code == 200

    token = await (await c.get(API + "/tokens/reader", headers=AUTH)).get_json()
    assert token["is_provisioned"] is True
    assert token["permissions"] == {"full_access": False, "read": ["env-bucket"], "write": []}
    r = await c.get(API + "/b/env-bucket", headers=bearer("reader-secret-value"))
    assert r.status_code == 200
    r = await c.delete(API + "/tokens/reader", headers=AUTH)
    assert r.status_code == 409
    assert r.headers["x-reduct-error"] == "Can't remove provisioned token 'reader'"
    r = await c.post(API + "/tokens/reader/rotate", headers=AUTH)
    assert r.status_code == 409
    assert r.headers["x-reduct-error"] == "Can't rotate provisioned token 'reader'"


async def test_provisioning_token_persists_with_flag_and_is_kept_when_unprovisioned(
    prov_factory: Factory, tmp_path: Path
) -> None:
    await shut(await prov_factory(ENV_GROUPS, api_token=TOKEN))
    auth_file = tmp_path / "data" / ".auth"
    text = auth_file.read_text()
    assert "reader-secret-value" not in text and TOKEN not in text
    [record] = json.loads(text)["tokens"]
    assert record["name"] == "reader" and record["is_provisioned"] is True

    store = TokenStore(tmp_path / "data", TOKEN)
    store.load()
    assert store.authenticate("Bearer reader-secret-value").is_provisioned is True

    # Restart without the env group: the token stays, unprotected, with the same secret.
    h = await prov_factory({}, api_token=TOKEN)
    token = await (await h.client.get(API + "/tokens/reader", headers=AUTH)).get_json()
    assert token["is_provisioned"] is False
    r = await h.client.get(API + "/b/env-bucket", headers=bearer("reader-secret-value"))
    assert r.status_code == 200
    info = await (await h.client.get(API + "/b/env-bucket", headers=AUTH)).get_json()
    assert info["info"]["is_provisioned"] is False  # the bucket and its data are kept too
    assert (await h.client.delete(API + "/tokens/reader", headers=AUTH)).status_code == 200


async def test_provisioning_tokens_are_skipped_with_a_warning_when_auth_is_off(
    prov_factory: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        h = await prov_factory(ENV_GROUPS)
    assert "authentication is disabled; token 'reader' is not created" in caplog.text
    status = (await (await h.client.get(API + "/info")).get_json())["provisioning"]
    assert status["ok"] is True and status["tokens"] == [] and status["buckets"] == ["env-bucket"]
    assert await (await h.client.get(API + "/tokens")).get_json() == {"tokens": []}


async def test_provisioning_status_in_info_has_no_secret(
    prov_factory: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text('tokens:\n  yaml-token: {value: "${YT}", write: ["*"]}\n')
    environ = {**ENV_GROUPS, "YT": "yaml-secret-value"}
    h = await prov_factory(environ, api_token=TOKEN, provisioning_path=path)
    info = await (await h.client.get(API + "/info", headers=AUTH)).get_json()
    status = info["provisioning"]
    assert status["source"] == f"env (2 groups) + {path}"
    assert status["ok"] is True and status["last_error"] is None
    assert status["last_reload"].endswith("Z")
    assert status["buckets"] == ["env-bucket"]
    assert status["tokens"] == ["reader", "yaml-token"]
    text = json.dumps(info)
    for secret in ("yaml-secret-value", "reader-secret-value", TOKEN):
        assert secret not in text


async def test_provisioning_reload_keeps_last_good_state_and_reports_it(
    prov_factory: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  a: {quota_type: FIFO, quota_size: 1MB}\n")
    h = await prov_factory(provisioning_path=path)
    provisioner = h.services.provisioner
    assert provisioner is not None
    path.write_text("buckets:\n  a: {quota_type: FIFO, quota_size: 1MB}\n  b:\n    quota: 1\n")
    assert await asyncio.to_thread(provisioner.reload_once) is None
    status = (await (await h.client.get(API + "/info")).get_json())["provisioning"]
    assert status["ok"] is False
    assert status["last_error"].startswith(f"{path}:4: buckets.b.quota: unknown key")
    assert (await h.client.get(API + "/b/b")).status_code == 404
    assert (await h.client.delete(API + "/b/a")).status_code == 409

    path.write_text("buckets:\n  b: {}\n")  # a leaves the file: unprotected, not deleted
    result = await asyncio.to_thread(provisioner.reload_once)
    assert result is not None and result.created_buckets == ["b"]
    assert (await h.client.delete(API + "/b/a")).status_code == 200
    assert (await h.client.delete(API + "/b/b")).status_code == 409


async def test_provisioning_quota_below_stored_data_stops_startup(
    prov_factory: Factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    h = await prov_factory()
    assert (await h.client.post(API + "/b/full")).status_code == 200
    r = await h.client.post(
        API + "/b/full/e?ts=1", data=b"x" * 5000, headers={"Content-Length": "5000"}
    )
    assert r.status_code == 200
    await shut(h)
    path = tmp_path / "prov.yaml"
    path.write_text("buckets:\n  full: {quota_type: HARD, quota_size: 100}\n")
    with caplog.at_level(logging.CRITICAL):
        refused = await prov_factory(data="data", provisioning_path=path)
        await asyncio.wait_for(refused.services.wait_failed(), 5)
    services = refused.services
    assert services.exit_code == EXIT_CONFIG
    assert services.storage is None and not services.ready
    assert (await refused.client.get(API + "/ready")).status_code == 503
    [line] = [r.getMessage() for r in caplog.records if r.levelno == logging.CRITICAL]
    assert line.startswith("provisioning refused, not starting: bucket 'full' (")
    assert f"{path}:2" in line and "below the" in line and "\n" not in line


async def test_provisioning_unusable_storage_stops_startup(
    prov_factory: Factory, tmp_path: Path
) -> None:
    (tmp_path / "file").write_text("not a folder")
    h = await prov_factory(data="file/data")
    await asyncio.wait_for(h.services.wait_failed(), 5)
    assert h.services.exit_code == EXIT_RUNTIME
