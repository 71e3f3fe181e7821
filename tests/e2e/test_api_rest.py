"""Issue 13 on a real process: lifecycles, query links, ``$system``, entry patterns, context
directives, continuous queries, token ``last_access`` — driven by reduct-py 1.21, by reduct-js
(npm, run with Node) and by raw HTTP for what the clients do not check.

One server for the module (starting one costs ~1 s on a small box): RS_API_TOKEN, RS_PUBLIC_URL,
a 0.3 s system-events flush, a provisioned bucket and lifecycles from an env group and YAML.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from reduct import Client, ReductError
from reduct.msg.lifecycle import LifecycleMode, LifecycleSettings
from reduct.msg.token import Permissions

from tests.e2e.server import ServerProcess, free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "init-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DAY_US = 86_400 * 1_000_000
JS_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def rest_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The module's server (see the module docstring)."""
    root = tmp_path_factory.mktemp("rest")
    yaml_file = root / "prov.yaml"
    yaml_file.write_text(
        "lifecycles:\n  yaml-life:\n    type: delete\n    bucket: prov-bucket\n"
        "    older_than: 90d\n    mode: dry_run\n"
    )
    port = free_port()
    env = {
        "RS_API_TOKEN": TOKEN,
        "RS_PUBLIC_URL": f"http://127.0.0.1:{port}/",
        "RS_SYSTEM_EVENTS_FLUSH_INTERVAL": "0.3",
        "RS_INSTANCE_NAME": "e2e",
        "RS_PROVISIONING_PATH": str(yaml_file),
        "RS_BUCKET_P_NAME": "prov-bucket",
        "RS_LIFECYCLE_P_NAME": "prov-life",
        "RS_LIFECYCLE_P_TYPE": "delete",
        "RS_LIFECYCLE_P_BUCKET": "prov-bucket",
        "RS_LIFECYCLE_P_OLDER_THAN": "30d",
        "RS_LIFECYCLE_P_ENTRIES": "cam/*,mic",
    }
    proc = ServerProcess(root / "data", env=env, port=port).start()
    yield proc
    proc.kill()


@pytest.fixture
async def client(rest_server: ServerProcess) -> AsyncIterator[Client]:
    """A reduct-py client with the init token."""
    async with Client(rest_server.url, api_token=TOKEN) as c:
        yield c


async def _eventually(check, timeout: float = 6.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.1)


async def test_lifecycles_with_reduct_py(client: Client) -> None:
    bucket = await client.create_bucket("life")
    now = int(time.time() * 1_000_000)
    for entry, age in (("cam/a", 10), ("cam/b", 9), ("mic", 10), ("cam/a", 0)):
        await bucket.write(entry, b"x", timestamp=now - age * DAY_US - 1)
    settings = LifecycleSettings(bucket="life", entries=["cam/*"], older_than="1d", interval="1h")
    await client.create_lifecycle("py-life", settings)

    async def cams_left() -> bool:
        entries = {e.name: e.record_count for e in await bucket.get_entry_list()}
        return entries.get("cam/a") == 1 and entries.get("cam/b") == 0

    assert await _eventually(cams_left), await bucket.get_entry_list()  # first run after ~1 s
    assert {e.name: e.record_count for e in await bucket.get_entry_list()}["mic"] == 1
    detail = await client.get_lifecycle_detail("py-life")
    assert detail.info.last_run is not None and detail.settings.entries == ["cam/*"]
    await client.set_lifecycle_mode("py-life", LifecycleMode.DISABLED)
    assert (await client.get_lifecycle_detail("py-life")).info.mode == LifecycleMode.DISABLED
    await client.update_lifecycle("py-life", LifecycleSettings(
        bucket="life", older_than="2d", interval="30m", processing_interval="1d"))
    got = (await client.get_lifecycle_detail("py-life")).settings
    assert (got.older_than, got.interval, got.processing_interval, got.mode) == (
        "2d", "30m", "1d", LifecycleMode.ENABLED)
    infos = {i.name: i for i in await client.get_lifecycles()}
    assert infos["prov-life"].is_provisioned and infos["yaml-life"].is_provisioned
    assert infos["yaml-life"].mode == LifecycleMode.DRY_RUN
    with pytest.raises(ReductError) as err:
        await client.delete_lifecycle("prov-life")
    assert (err.value.status_code, err.value.message) == (
        409, "Can't remove provisioned lifecycle 'prov-life'")
    with pytest.raises(ReductError) as err:
        await client.update_lifecycle("yaml-life", settings)
    assert err.value.status_code == 409
    with pytest.raises(ReductError) as err:  # reduct-py sends "interval": null when unset
        await client.create_lifecycle("no-interval", LifecycleSettings(bucket="life", older_than="1d"))
    assert err.value.status_code == 422
    await client.delete_lifecycle("py-life")
    with pytest.raises(ReductError) as err:
        await client.get_lifecycle_detail("py-life")
    assert (err.value.status_code, err.value.message) == (404, "Lifecycle 'py-life' does not exist")
    await bucket.remove()


async def test_query_links_with_reduct_py(client: Client, rest_server: ServerProcess) -> None:
    bucket = await client.create_bucket("links")
    await bucket.write("pics", b"PNGDATA123", timestamp=1_000, content_type="image/png",
                       labels={"cam": "front"})
    link = await bucket.create_query_link("pics", record_timestamp=1_000)
    assert link.startswith(rest_server.url + "/api/v1/links/pics_1000.bin?")
    async with httpx.AsyncClient() as http:
        r = await http.get(link)  # no token
        assert r.status_code == 200 and r.content == b"PNGDATA123"
        assert r.headers["x-reduct-label-cam"] == "front" and r.headers["accept-ranges"] == "bytes"
        r = await http.head(link)
        assert (r.status_code, r.headers["content-length"], r.content) == (200, "10", b"")
        r = await http.get(link, headers={"Range": "bytes=3-"})
        assert r.status_code == 206 and r.content == b"DATA123"
        # A token's links die with it.
        token = await client.create_token("sharer", Permissions(full_access=False, read=["links"]))
        async with Client(rest_server.url, api_token=token) as sharer:
            shared = await (await sharer.get_bucket("links")).create_query_link(
                "pics", record_timestamp=1_000, file_name="shared.png")
        assert (await http.get(shared)).status_code == 200
        await client.remove_token("sharer")
        r = await http.get(shared)
        assert (r.status_code, r.headers["x-reduct-error"]) == (404, "Token 'sharer' doesn't exist")
        expired = await bucket.create_query_link(
            "pics", record_timestamp=1_000, expire_at=__import__("datetime").datetime.now()
            - __import__("datetime").timedelta(seconds=10))
        r = await http.get(expired)
        assert (r.status_code, r.headers["x-reduct-error"]) == (422, "Query link has expired")
    await bucket.remove()


async def test_patterns_directives_and_continuous_with_reduct_py(client: Client) -> None:
    bucket = await client.create_bucket("shapes")
    for i, entry in enumerate(("s/a/x", "s/a/y", "s/b/x", "t"), start=1):
        await bucket.write(entry, b"p", timestamp=i, labels={"hit": int(i == 3), "n": i})
    picked = [r.entry async for r in bucket.query(["s/**", "!s/a/y"])]
    assert picked == ["s/a/x", "s/b/x"]
    shaped = [(r.entry, r.timestamp, r.labels) async for r in bucket.query(
        ["s/**", "t"], when={"&hit": {"$eq": 1}, "#ctx_after": 1, "#select_labels": ["n"]})]
    assert shaped == [("s/b/x", 3, {"n": "3"})]  # no later record in s/b/x; t is not matched
    assert await bucket.remove_query(["s/a/*", "!s/a/y"], when={}) == 1
    seen: list[int] = []

    async def subscribe() -> None:
        async for record in bucket.subscribe("live", start=1, poll_interval=1):
            seen.append(record.timestamp)
            if len(seen) == 2:
                return

    await bucket.write("live", b"a", timestamp=10)
    task = asyncio.ensure_future(subscribe())
    await asyncio.sleep(0.4)
    await bucket.write("live", b"b", timestamp=20)
    await asyncio.wait_for(task, 5)
    assert seen == [10, 20]
    await bucket.remove()


async def test_system_bucket_with_reduct_py(client: Client) -> None:
    bucket = await client.create_bucket("audited")
    await bucket.write("e", b"1234", timestamp=1)
    system = await client.get_bucket("$system")

    async def audited() -> list[str]:
        paths: list[str] = []
        async for record in system.query(["audit/e2e/*"]):
            paths += [e["path"] for e in json.loads(await record.read_all())]
        return paths if "/api/v1/b/audited/e" in paths else []

    assert await _eventually(audited)
    usage = [json.loads(await r.read_all()) async for r in system.query(["usage/e2e/audited"])]
    assert sum(u["ingress_bytes"] for u in usage) >= 4
    assert "$system" not in [b.name for b in await client.list()]
    with pytest.raises(ReductError) as err:
        await system.remove()
    assert (err.value.status_code, err.value.message) == (
        409, "Can't remove provisioned bucket '$system'")
    await bucket.remove()


def test_raw_http_messages(rest_server: ServerProcess) -> None:
    """Headers and messages reduct-py does not check."""
    with httpx.Client(base_url=rest_server.url + "/api/v1", headers=AUTH) as http:
        r = http.put("/info")
        assert (r.status_code, r.headers["x-reduct-error"]) == (405, "Method not allowed")
        r = http.delete("/no/such/route")
        assert r.status_code == 405 and r.headers["x-reduct-error"] == "Method not allowed"
        r = http.get("/no/such/route")
        assert (r.status_code, r.headers["x-reduct-error"]) == (404, "Not found")
        http.post("/b/raw")
        for ts in (1, 2):
            http.post(f"/b/raw/e?ts={ts}", content=b"x")
        qid = http.post("/io/raw/q", json={"query_type": "QUERY", "entries": ["e"],
                                           "continuous": True, "ttl": 1}).json()["id"]
        r = http.get("/io/raw/read", headers={"x-reduct-query-id": str(qid)})
        assert r.status_code == 200 and r.headers["x-reduct-last"] == "false"  # v2 continuous
        qid1 = http.post("/b/raw/e/q", json={"query_type": "QUERY", "continuous": True}).json()
        r = http.get(f"/b/raw/e/batch?q={qid1['id']}")
        assert r.status_code == 200 and r.headers["x-reduct-last"] == "true"  # v1: ran dry
        time.sleep(1.1)
        r = http.get("/io/raw/read", headers={"x-reduct-query-id": str(qid)})
        assert r.status_code == 404 and "might have expired" in r.headers["x-reduct-error"]
        r = http.post("/lifecycles/bad", json={"type": "delete", "bucket": "raw",
                                                "older_than": "10m"})
        assert (r.status_code, r.headers["x-reduct-error"]) == (
            422, "'older_than' must be at least 1h")
        r = http.get("/links/x.bin?ct=AA&s=AA&i=init-token&n=AA")
        assert r.status_code == 422 and r.headers["x-reduct-error"].startswith("Failed to decrypt")
        r = http.get("/links/x.bin?ct=AA&s=AA&n=AA")
        assert (r.status_code, r.headers["x-reduct-error"]) == (422, "Missing 'i' parameter")
        http.delete("/b/raw")


def test_reduct_js_flows(rest_server: ServerProcess, tmp_path: Path) -> None:
    """The same flows through reduct-js 1.20 (the newest on npm) under Node."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node/npm not installed: reduct-js flows not run")
    if not (JS_DIR / "node_modules" / "reduct-js").exists():
        done = subprocess.run([npm, "install", "--no-audit", "--no-fund"], cwd=JS_DIR,
                              capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            pytest.skip(f"npm install reduct-js failed (registry unreachable?): {done.stderr[-300:]}")
    run = subprocess.run([node, str(JS_DIR / "flows.cjs"), rest_server.url, TOKEN],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr + rest_server.logs()[-2000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["camRecordsAfterRun"] == 0 and out["micRecords"] == 1
    assert ["js-life", False, "enabled"] in out["lifecycleList"]
    assert out["lifecycleDetail"] == {"olderThan": "1d", "entries": ["cam/*"], "lastRun": True}
    assert out["modeAfterPatch"] == "dry_run"
    assert out["provisionedDelete"] == {"status": 409,
                                        "message": "Can't remove provisioned lifecycle 'prov-life'"}
    assert out["missingLifecycle"] == {"status": 404, "message": "Lifecycle 'nope' does not exist"}
    assert out["linkPrefix"] == rest_server.url + "/api/v1"
    assert (out["linkStatus"], out["linkBody"]) == (200, "PNGDATA123")
    assert out["linkRange"] == [206, "DATA", "bytes 3-6/10"]
    assert out["linkTampered"][0] == 422
    assert out["patternEntries"] == ["s/a/x", "s/b/x"]
    assert [(e, t) for e, t, _ in out["ctxRecords"]] == [("s/b/x", 3)]
    assert out["ctxRecords"][0][2] == {"n": "3"}
    assert out["removedByPattern"] == 2
    assert out["continuous"] == [100, 200]
    assert out["auditHasLifecycleCreate"] is True
    assert out["systemRemove"]["status"] == 409 and out["listHasSystem"] is False
    assert out["methodNotAllowed"] == [405, "Method not allowed"]


async def test_token_last_access_survives_restart(rest_server: ServerProcess) -> None:
    """Last in the module: restarts the server (SIGTERM flushes last_access)."""
    async with Client(rest_server.url, api_token=TOKEN) as c:
        value = await c.create_token("user", Permissions(full_access=False, read=["*"]))
        async with Client(rest_server.url, api_token=value) as user:
            await user.list()
        before = (await c.get_token("user")).last_access
    assert before is not None
    assert rest_server.stop() == 0
    rest_server.start()
    async with Client(rest_server.url, api_token=TOKEN) as c:
        after = (await c.get_token("user")).last_access
    assert after == before
