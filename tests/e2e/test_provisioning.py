"""Provisioning as an operator meets it: a real ``python -m appliance`` driven by reduct-py.

Boot from env groups and from YAML with ``${VAR}`` secrets; live edits of the YAML observed
through the client within 2 s (each change measured from the write to the first poll that sees
it); broken files and a quota below the stored data rejected as a whole with the old state kept
and the error shown in ``/info`` and in one log line; and startup refused (exit code 2, one line)
for an invalid file or for a bucket defined by both an env group and YAML. Loopback only; every
wait is bounded.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from reduct import BucketSettings, Client, QuotaType, ReductError

from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.integration

INIT = "init-secret"
RELOAD_PROMISE_S = 2.0  # the promise: an edit is visible within 2 s
POLL_LIMIT_S = 6.0  # how long a poll may run before failing (so a slow reload shows its time)
EXIT_TIMEOUT_S = 30.0
LATENCIES: dict[str, float] = {}  # change -> seconds, printed at the end (pytest -s)


async def visible_within(label: str, check: Callable[[], Awaitable[bool]]) -> float:
    """Poll ``check`` until true; assert it took less than ``RELOAD_PROMISE_S``."""
    started = time.monotonic()
    while True:
        try:
            if await check():
                break
        except ReductError:
            pass  # not there yet (404, 401 for a token not created yet)
        elapsed = time.monotonic() - started
        if elapsed > POLL_LIMIT_S:
            raise AssertionError(f"{label}: not visible after {POLL_LIMIT_S} s")
        await asyncio.sleep(0.02)
    elapsed = time.monotonic() - started
    LATENCIES[label] = elapsed
    assert elapsed < RELOAD_PROMISE_S, f"{label}: visible after {elapsed:.2f} s"
    return elapsed


async def info_json(server: ServerProcess) -> dict[str, Any]:
    """``GET /api/v1/info`` as raw JSON (reduct-py drops the fields it does not know)."""
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.get(server.url + "/api/v1/info", headers={"Authorization": f"Bearer {INIT}"})
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def exit_of(server: ServerProcess) -> tuple[int, list[str]]:
    """Wait for a process that must refuse to start; its exit code and non-empty log lines."""
    assert server.proc is not None
    try:
        code = server.proc.wait(timeout=EXIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        raise AssertionError(f"still running after {EXIT_TIMEOUT_S} s:\n{server.logs()}") from None
    return code, [line for line in server.logs().splitlines() if line.strip()]


def save(path: Path, text: str) -> None:
    """Save as editors do: write a temporary file and rename it over the original."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


@pytest.fixture
def procs() -> Iterator[list[ServerProcess]]:
    """Servers started by a test, killed at teardown whatever happened."""
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.kill()


def start(
    procs: list[ServerProcess], data: Path, env: dict[str, str], **kwargs: Any
) -> ServerProcess:
    """Start a server (registered for teardown); ``kwargs`` go to ``ServerProcess.start``."""
    server = ServerProcess(data, env=env)
    procs.append(server)
    return server.start(**kwargs)


@pytest.fixture
def admin_of() -> Callable[..., Client]:
    """reduct-py clients (init token by default); outside ``async with`` each request has its
    own session, so there is nothing to close."""

    def make(server: ServerProcess, token: str = INIT) -> Client:
        return Client(server.url, api_token=token, timeout=5)

    return make


async def test_provisioning_env_groups_boot_protected_objects(
    tmp_path: Path, procs: list[ServerProcess], admin_of: Callable[..., Client]
) -> None:
    env = {
        "RS_API_TOKEN": INIT,
        "RS_BUCKET_1_NAME": "sensors",
        "RS_BUCKET_1_QUOTA_TYPE": "FIFO",
        "RS_BUCKET_1_QUOTA_SIZE": "20MB",
        "RS_BUCKET_1_MAX_BLOCK_RECORDS": "128",
        "RS_TOKEN_1_NAME": "reader",
        "RS_TOKEN_1_VALUE": "reader-secret",
        "RS_TOKEN_1_READ": "sensors",
        "RS_TOKEN_2_NAME": "no-value",  # incomplete group: reported and skipped
    }
    server = start(procs, tmp_path / "data", env)
    admin = admin_of(server)

    bucket = await admin.get_bucket("sensors")
    assert (await bucket.info()).is_provisioned is True
    settings = await bucket.get_settings()
    assert (settings.quota_type, settings.quota_size, settings.max_block_records) == (
        QuotaType.FIFO,
        20_000_000,
        128,
    )
    assert [(b.name, b.is_provisioned) for b in await admin.list()] == [("sensors", True)]
    for action, message in (
        (bucket.remove(), "Can't remove provisioned bucket 'sensors'"),
        (bucket.rename("other"), "Can't rename provisioned bucket 'sensors'"),
        (
            bucket.set_settings(BucketSettings(quota_size=1)),
            "Can't change settings of provisioned bucket 'sensors'",
        ),
        (admin.remove_token("reader"), "Can't remove provisioned token 'reader'"),
        (admin.rotate_token("reader"), "Can't rotate provisioned token 'reader'"),
    ):
        with pytest.raises(ReductError) as error:
            await action
        assert (error.value.status_code, error.value.message) == (409, message)

    token = await admin.get_token("reader")
    assert token.is_provisioned is True and token.permissions.read == ["sensors"]
    await bucket.write("e", b"payload", timestamp=1)
    reader = admin_of(server, "reader-secret")
    async with (await reader.get_bucket("sensors")).read("e", timestamp=1) as record:
        assert await record.read_all() == b"payload"

    # reduct-py parses /info with the extra "provisioning" object (unknown fields ignored).
    server_info = await admin.info()
    assert server_info.bucket_count == 1
    status = (await info_json(server))["provisioning"]
    assert status["source"] == "env (2 groups)" and status["ok"] is True
    assert status["buckets"] == ["sensors"] and status["tokens"] == ["reader"]
    assert "reader-secret" not in str(status)
    assert "Token 'no-value' has no value. Drop it." in server.logs()


async def test_provisioning_yaml_boot_and_live_edits_within_two_seconds(
    tmp_path: Path, procs: list[ServerProcess], admin_of: Callable[..., Client]
) -> None:
    path = tmp_path / "provisioning.yaml"
    path.write_text(
        "buckets:\n"
        "  sensors: {quota_type: FIFO, quota_size: 10MB}\n"
        "  images: {max_block_records: 16}\n"
        "tokens:\n"
        '  ingest: {value: "${INGEST_TOKEN}", write: [sensors]}\n'
    )
    env = {"RS_API_TOKEN": INIT, "RS_PROVISIONING_PATH": str(path), "INGEST_TOKEN": "ingest-1"}
    server = start(procs, tmp_path / "data", env)
    admin = admin_of(server)
    assert {b.name: b.is_provisioned for b in await admin.list()} == {
        "images": True,
        "sensors": True,
    }
    # The write-only token from ${INGEST_TOKEN} writes (reduct-py's get_bucket needs read).
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(
            server.url + "/api/v1/b/sensors/e?ts=1",
            content=b"x",
            headers={"Authorization": "Bearer ingest-1"},
        )
    assert r.status_code == 200, r.headers.get("x-reduct-error")
    assert "ingest-1" not in (tmp_path / "data" / ".auth").read_text()

    # 1. add a bucket
    added = "  logs: {quota_type: HARD, quota_size: 1MB}\ntokens:\n"
    save(path, path.read_text().replace("tokens:\n", added))

    async def logs_exists() -> bool:
        return (await (await admin.get_bucket("logs")).info()).is_provisioned

    await visible_within("add a bucket", logs_exists)
    assert (await (await admin.get_bucket("logs")).get_settings()).quota_type == QuotaType.HARD

    # 2. change a quota (plain in-place write this time)
    path.write_text(path.read_text().replace("quota_size: 10MB", "quota_size: 30MB"))

    async def quota_changed() -> bool:
        return (await (await admin.get_bucket("sensors")).get_settings()).quota_size == 30_000_000

    await visible_within("change a quota", quota_changed)

    # 3. add a token (its secret from the environment of the process)
    save(path, path.read_text() + '  viewer: {value: "${INGEST_TOKEN}-viewer", read: ["*"]}\n')
    viewer = admin_of(server, "ingest-1-viewer")

    async def viewer_works() -> bool:
        return len(await viewer.list()) == 3

    await visible_within("add a token", viewer_works)
    assert (await admin.get_token("viewer")).is_provisioned is True

    # 4. remove a bucket from the file: unprotected, not deleted (its data stays)
    save(path, path.read_text().replace("  sensors: {quota_type: FIFO, quota_size: 30MB}\n", ""))

    async def sensors_unprovisioned() -> bool:
        return not (await (await admin.get_bucket("sensors")).info()).is_provisioned

    await visible_within("remove a bucket from the file", sensors_unprovisioned)
    async with (await admin.get_bucket("sensors")).read("e", timestamp=1) as record:
        assert await record.read_all() == b"x"
    await (await admin.get_bucket("sensors")).set_settings(BucketSettings(quota_size=1_000_000))
    print(
        "\nlive reload latency: "
        + ", ".join(f"{label} {seconds * 1000:.0f} ms" for label, seconds in LATENCIES.items())
    )


async def test_provisioning_bad_files_are_rejected_and_the_old_state_kept(
    tmp_path: Path, procs: list[ServerProcess], admin_of: Callable[..., Client]
) -> None:
    path = tmp_path / "provisioning.yaml"
    good = "buckets:\n  sensors: {quota_type: FIFO, quota_size: 10MB}\n"
    path.write_text(good)
    env = {"RS_API_TOKEN": INIT, "RS_PROVISIONING_PATH": str(path)}
    server = start(procs, tmp_path / "data", env)
    admin = admin_of(server)
    sensors = await admin.get_bucket("sensors")
    await sensors.write("e", b"x" * 20_000, timestamp=1)

    cases = [
        ("invalid YAML", good + "  broken: {quota_type: HARD\n", f"{path}:4: invalid YAML"),
        (
            "unknown key",
            good + "  typo:\n    quota_sise: 1MB\n",
            f"{path}:4: buckets.typo.quota_sise: unknown key",
        ),
        (
            "quota below the stored data",
            "buckets:\n  sensors: {quota_type: FIFO, quota_size: 1KB}\n  extra: {}\n",
            f"bucket 'sensors' ({path}:2): FIFO quota_size 1000 is below the",
        ),
    ]
    for label, text, expected in cases:
        before = (await info_json(server))["provisioning"]["last_error_at"]
        save(path, text)

        async def rejected(before: str | None = before) -> bool:
            status = (await info_json(server))["provisioning"]
            return status["last_error_at"] != before and status["last_error"] is not None

        await visible_within(f"reject: {label}", rejected)
        status = (await info_json(server))["provisioning"]
        assert status["ok"] is False
        assert expected in status["last_error"], (label, status["last_error"])
        # Nothing of the bad file applied; the last good state is in force.
        assert status["buckets"] == ["sensors"]
        names = [b.name for b in await admin.list()]
        assert names == ["sensors"], label
        settings = await sensors.get_settings()
        assert (settings.quota_type, settings.quota_size) == (QuotaType.FIFO, 10_000_000)
        with pytest.raises(ReductError) as error:
            await sensors.remove()
        assert error.value.status_code == 409
        lines = [
            line
            for line in server.logs().splitlines()
            if "provisioning rejected, previous state stays in force" in line and expected in line
        ]
        assert len(lines) == 1, (label, server.logs())

    save(path, good.replace("10MB", "40MB"))

    async def recovered() -> bool:
        return (await info_json(server))["provisioning"]["ok"] is True

    await visible_within("good file after bad ones", recovered)
    assert (await sensors.get_settings()).quota_size == 40_000_000


def test_provisioning_invalid_file_at_boot_exits_with_one_line(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    path = tmp_path / "provisioning.yaml"
    path.write_text("buckets:\n  sensors:\n    quota_type: FIFO\n    quota_sise: 1GB\n")
    server = start(
        procs, tmp_path / "data", {"RS_PROVISIONING_PATH": str(path)}, wait_ready=False
    )
    code, lines = exit_of(server)
    assert code == 2
    assert lines == [
        f"appliance: {path}:4: buckets.sensors.quota_sise: unknown key "
        "(allowed: quota_type, quota_size, max_block_size, max_block_records)"
    ]


def test_provisioning_bucket_in_env_group_and_yaml_fails_naming_both(
    tmp_path: Path, procs: list[ServerProcess]
) -> None:
    path = tmp_path / "provisioning.yaml"
    path.write_text("buckets:\n  sensors: {quota_type: FIFO, quota_size: 1GB}\n")
    env = {"RS_PROVISIONING_PATH": str(path), "RS_BUCKET_1_NAME": "sensors"}
    server = start(procs, tmp_path / "data", env, wait_ready=False)
    code, lines = exit_of(server)
    assert code == 2
    assert lines == [
        f"appliance: bucket 'sensors' is defined by RS_BUCKET_1_NAME and by {path}:2"
    ]


async def test_provisioning_quota_below_stored_data_at_boot_exits(
    tmp_path: Path, procs: list[ServerProcess], admin_of: Callable[..., Client]
) -> None:
    data = tmp_path / "data"
    server = start(procs, data, {"RS_API_TOKEN": INIT})
    bucket = await admin_of(server).create_bucket("sensors")
    await bucket.write("e", b"x" * 50_000, timestamp=1)
    assert server.stop() == 0

    path = tmp_path / "provisioning.yaml"
    path.write_text("buckets:\n  sensors: {quota_type: HARD, quota_size: 10KB}\n")
    refused = start(procs, data, {"RS_PROVISIONING_PATH": str(path)}, wait_ready=False)
    code, lines = exit_of(refused)
    assert code == 2
    [line] = [line for line in lines if "CRITICAL" in line]
    assert f"provisioning refused, not starting: bucket 'sensors' ({path}:2)" in line
    assert "HARD quota_size 10000 is below the" in line
