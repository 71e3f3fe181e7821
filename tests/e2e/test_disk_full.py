"""Real process on a real, small file system filled to 100 % (issue 8 item 2).

A tmpfs of ``FS_BYTES`` is mounted for the test (root only; skipped with the reason where the
mount is refused). The server writes some data, a filler file then takes every last byte, and
every kind of mutation runs at 100 % full: each must either complete (2xx) or answer 507 and
leave no trace. Removals (by query, by list, single records, entries, buckets) must succeed
and free space. The server is then SIGKILLed and restarted on the still-full disk, and the
state is compared with what was acknowledged; ``appliance check`` must find no damage.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess
from tests.e2e.test_cli import run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FS_BYTES = 32 * 1024 * 1024
TOKEN = "full-disk-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
RECORD_BYTES = 4096


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A freshly mounted tmpfs of FS_BYTES; unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={FS_BYTES}", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"can't mount a tmpfs here: {result.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(path: Path) -> None:
    """Write ``path`` until the file system refuses a single byte more."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 1 << 9, 1):
            block = b"\0" * chunk
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def payload(entry: str, ts: int) -> bytes:
    """A distinct RECORD_BYTES payload."""
    head = f"{entry}:{ts}:".encode()
    return (head * (RECORD_BYTES // len(head) + 1))[:RECORD_BYTES]


def snapshot(http: httpx.Client) -> dict[str, object]:
    """Everything a client can see: buckets with settings, entries, records, tokens."""
    state: dict[str, object] = {}
    for bucket in sorted(b["name"] for b in http.get("/api/v1/list").json()["buckets"]):
        info = http.get(f"/api/v1/b/{bucket}").json()
        state[f"settings:{bucket}"] = info["settings"]
        for entry in sorted(e["name"] for e in info["entries"]):
            records = {}
            for ts in range(1, 200):
                r = http.get(f"/api/v1/b/{bucket}/{entry}?ts={ts}")
                if r.status_code == 200:
                    labels = {k: v for k, v in r.headers.items() if k.startswith("x-reduct-label-")}
                    records[ts] = (r.content == payload(entry, ts), labels)
            state[f"records:{bucket}/{entry}"] = records
    state["tokens"] = sorted(t["name"] for t in http.get("/api/v1/tokens").json()["tokens"])
    return state


def disk(http: httpx.Client) -> dict[str, int]:
    """The ``disk`` block of /api/v1/info."""
    return http.get("/api/v1/info").json()["disk"]


def test_every_mutation_at_full_disk_completes_or_leaves_no_trace(small_fs: Path) -> None:
    data = small_fs / "data"
    env = {"RS_API_TOKEN": TOKEN, "RS_ENGINE_MIN_FREE_SPACE": "64KiB"}
    server = ServerProcess(data, env=env).start()
    try:
        http = httpx.Client(base_url=server.url, headers=AUTH, timeout=30)
        for bucket in ("keep", "other", "gone"):
            r = http.post(f"/api/v1/b/{bucket}", json={"max_block_records": 8})
            assert r.status_code == 200
        for entry in ("e1", "e2", "e3", "e4"):
            for ts in range(1, 41):
                r = http.post(
                    f"/api/v1/b/keep/{entry}?ts={ts}",
                    content=payload(entry, ts),
                    headers={"x-reduct-label-n": str(ts)},
                )
                assert r.status_code == 200, r.headers
        for ts in range(1, 11):
            r = http.post(f"/api/v1/b/gone/x?ts={ts}", content=payload("x", ts))
            assert r.status_code == 200
        assert http.post("/api/v1/tokens/t0", json={"full_access": False}).status_code == 200
        assert disk(http)["removal_reserve"] > 0

        fill(small_fs / "filler")
        assert disk(http)["free_space"] == 0

        answers: dict[str, int] = {}

        def mutate(name: str, method: str, path: str, **kwargs: object) -> int:
            status = http.request(method, path, **kwargs).status_code  # type: ignore[arg-type]
            answers[name] = status
            return status

        # Writes and creations: completed or 507, never anything else.
        mutate("write", "POST", "/api/v1/b/keep/e1?ts=100", content=payload("e1", 100))
        mutate("write_new_entry", "POST", "/api/v1/b/keep/fresh/deep?ts=1", content=b"x" * 8192)
        r = http.post(
            "/api/v1/b/keep/e3/batch",
            content=payload("e3", 101) + payload("e3", 102),
            headers={
                "x-reduct-time-101": f"{RECORD_BYTES},application/octet-stream",
                "x-reduct-time-102": f"{RECORD_BYTES},application/octet-stream",
            },
        )
        assert r.status_code == 200
        for ts in (101, 102):  # refused one by one, with the 507 status in the error header
            assert r.headers[f"x-reduct-error-{ts}"].startswith("507,"), r.headers
        mutate("create_bucket", "POST", "/api/v1/b/newbie", json={"max_block_records": 3})
        mutate("settings", "PUT", "/api/v1/b/other", json={"max_block_records": 5})
        mutate("create_token", "POST", "/api/v1/tokens/t1", json={"full_access": False})
        mutate("labels", "PATCH", "/api/v1/b/keep/e2?ts=7", headers={"x-reduct-label-n": "seven"})
        mutate("rename_entry", "PUT", "/api/v1/b/keep/e4/rename", json={"new_name": "e4r"})
        mutate("rename_bucket", "PUT", "/api/v1/b/other/rename", json={"new_name": "renamed"})
        for name, status in answers.items():
            assert status in (200, 507), (name, status)
        assert answers["write"] == 507
        assert answers["write_new_entry"] == 507

        # Removals: must work on a full disk, and must free space.
        before = disk(http)
        r = http.delete("/api/v1/b/keep/e1/q?start=1&stop=31")  # most of e1, blocks partly
        assert r.status_code == 200 and r.json()["removed_records"] == 30, r.headers
        after = disk(http)
        freed = (after["free_space"] + after["removal_reserve"]) - (
            before["free_space"] + before["removal_reserve"]
        )
        assert freed >= 20 * RECORD_BYTES, (before, after)
        r = http.delete("/api/v1/b/keep/e2?ts=5")
        assert r.status_code == 200, r.headers
        r = http.delete(
            "/api/v1/b/keep/e2/batch", headers={"x-reduct-time-6": "", "x-reduct-time-9": ""}
        )
        assert r.status_code == 200 and not [h for h in r.headers if "x-reduct-error-" in h]
        assert http.delete("/api/v1/b/keep/e3").status_code == 200
        assert http.delete("/api/v1/b/gone").status_code == 200
        mutate("remove_token", "DELETE", "/api/v1/tokens/t0")
        assert answers["remove_token"] in (200, 507)
        # The space removals freed takes new writes again.
        assert http.post("/api/v1/b/keep/e1?ts=150", content=b"y" * 100).status_code == 200

        seen = snapshot(http)
        server.kill()  # no graceful close: what was acknowledged must be on disk already
        server = ServerProcess(data, env=env, port=server.port).start()
        http.close()
        http = httpx.Client(base_url=server.url, headers=AUTH, timeout=30)
        assert snapshot(http) == seen

        # Nothing answered 507 left a trace; everything answered 200 is there.
        buckets = {b["name"] for b in http.get("/api/v1/list").json()["buckets"]}
        assert ("newbie" in buckets) == (answers["create_bucket"] == 200)
        assert ("renamed" in buckets) == (answers["rename_bucket"] == 200)
        assert "gone" not in buckets
        other = "renamed" if answers["rename_bucket"] == 200 else "other"
        expected_records = 5 if answers["settings"] == 200 else 8
        settings = seen[f"settings:{other}"]
        assert settings["max_block_records"] == expected_records  # type: ignore[index]
        tokens = seen["tokens"]
        assert ("t1" in tokens) == (answers["create_token"] == 200)  # type: ignore[operator]
        assert ("t0" in tokens) == (answers["remove_token"] != 200)  # type: ignore[operator]
        assert "records:keep/fresh/deep" not in seen and "records:keep/fresh" not in seen
        assert "records:keep/e3" not in seen
        e1 = seen["records:keep/e1"]
        assert sorted(e1) == [*range(31, 41), 150]  # type: ignore[call-overload]
        e2 = seen["records:keep/e2"]
        assert sorted(e2) == sorted(set(range(1, 41)) - {5, 6, 9})  # type: ignore[call-overload]
        assert all(ok for ok, _ in e2.values())  # type: ignore[attr-defined]
        label = "seven" if answers["labels"] == 200 else "7"
        assert e2[7][1] == {"x-reduct-label-n": label}  # type: ignore[index]
        renamed = "e4r" if answers["rename_entry"] == 200 else "e4"
        assert len(seen[f"records:keep/{renamed}"]) == 40  # type: ignore[arg-type]
        http.close()
    finally:
        server.stop()
    result = run_cli("check", "--data", str(data))
    assert "(damage)" not in result.stdout, result.stdout
    with contextlib.suppress(FileNotFoundError):
        (small_fs / "filler").unlink()
