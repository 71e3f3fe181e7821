"""Roles with real processes on one shared folder (issue #5): hot standby and read-only replica.

Short timings: lease TTL 2 s, polling 0.5 s, compaction 0.5 s, replica update 0.5 s. Every
test asserts the issue's bound plus ``SLACK_S`` (stated below) and prints what it measured;
run with ``-s`` to see the numbers. Loopback only, every wait bounded.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.integration

TTL_S = 2.0
POLL_S = 0.5
COMPACTION_S = 0.5
REPLICA_S = 0.5
# Scheduling slack on a busy host: process wake-ups, the standby's engine open and recovery,
# and this test's own 10 ms readiness polling. The protocol's bounds are the issue's.
SLACK_S = 0.75
WAIT_S = 20.0
TOKEN = "init-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def lease_env(role: str, **extra: str) -> dict[str, str]:
    """Settings of a PRIMARY/SECONDARY with the short timings (waiting forever for the lease)."""
    return {
        "RS_INSTANCE_ROLE": role,
        "RS_LOCK_FILE_TTL": str(TTL_S),
        "RS_LOCK_FILE_POLLING_INTERVAL": str(POLL_S),
        "RS_LOCK_FILE_TIMEOUT": "0",
        "RS_ENGINE_COMPACTION_INTERVAL": str(COMPACTION_S),
        **extra,
    }


def payload(ts: int) -> bytes:
    return hashlib.sha256(str(ts).encode()).digest() * (1 + ts % 7)


def status(url: str, path: str, method: str = "GET", **kwargs: object) -> int | None:
    """The status of one request, None if the server did not answer."""
    try:
        return httpx.request(method, url + path, timeout=2.0, **kwargs).status_code  # type: ignore[arg-type]
    except httpx.HTTPError:
        return None


def wait_until(check: Callable[[], bool], what: str, timeout: float = WAIT_S) -> float:
    """Poll ``check`` every 10 ms; the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def ready(server: ServerProcess) -> Callable[[], bool]:
    return lambda: status(server.url, "/api/v1/ready") == 200


def not_ready(server: ServerProcess) -> Callable[[], bool]:
    return lambda: status(server.url, "/api/v1/ready") != 200


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Processes a test started; SIGKILLed (and SIGCONTed first) at the end."""
    procs: list[ServerProcess] = []
    yield procs
    for proc in procs:
        if proc.proc is not None and proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGCONT)
        proc.kill()


def start_pair(
    data: Path, started: list[ServerProcess], **primary_env: str
) -> tuple[ServerProcess, ServerProcess]:
    """A serving PRIMARY and a SECONDARY standing by on the same folder."""
    primary = ServerProcess(data, env=lease_env("PRIMARY", **primary_env))
    started.append(primary)
    primary.start()
    secondary = ServerProcess(data, env=lease_env("SECONDARY"))
    started.append(secondary)
    secondary.start(wait_ready=False)
    secondary.wait_ready(path="/api/v1/alive")
    return primary, secondary


def write(url: str, ts: int, bucket: str = "bk", entry: str = "e") -> int | None:
    return status(url, f"/api/v1/b/{bucket}/{entry}?ts={ts}", "POST", content=payload(ts))


def assert_readable(url: str, stamps: list[int], bucket: str = "bk", entry: str = "e") -> None:
    with httpx.Client(base_url=url, timeout=5) as http:
        for ts in stamps:
            r = http.get(f"/api/v1/b/{bucket}/{entry}?ts={ts}")
            assert r.status_code == 200 and r.content == payload(ts), (ts, r.status_code)


def writer(url: str, first: int, acked: list[int], stop: threading.Event, batch: bool) -> None:
    """Write until stopped or the server dies; remember every acknowledged timestamp."""
    ts = first
    with httpx.Client(base_url=url, timeout=5) as http:
        while not stop.is_set():
            stamps = [ts, ts + 1, ts + 2] if batch else [ts]
            ts += len(stamps)
            try:
                if batch:
                    headers = {f"x-reduct-time-{t}": f"{len(payload(t))}," for t in stamps}
                    body = b"".join(payload(t) for t in stamps)
                    r = http.post("/api/v1/b/bk/e/batch", content=body, headers=headers)
                    if any(k.startswith("x-reduct-error-") for k in r.headers):
                        continue
                else:
                    r = http.post(f"/api/v1/b/bk/e?ts={stamps[0]}", content=payload(stamps[0]))
            except httpx.HTTPError:
                return  # died mid-request: never acknowledged
            if r.status_code == 200:
                acked.extend(stamps)


def test_standby_answers_only_alive_until_it_holds_the_lease(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    primary, secondary = start_pair(tmp_path / "data", started)
    assert status(secondary.url, "/api/v1/alive") == 200
    for method, path in [
        ("GET", "/api/v1/ready"),
        ("GET", "/api/v1/info"),
        ("GET", "/api/v1/list"),
        ("GET", "/api/v1/b/bk"),
        ("POST", "/api/v1/b/bk"),
        ("GET", "/api/v1/tokens"),
        ("POST", "/api/v1/b/bk/e?ts=1"),
    ]:
        assert status(secondary.url, path, method) == 503, path
    info = httpx.get(primary.url + "/api/v1/info").json()
    assert info["instance_role"] == "PRIMARY" and info["role"]["state"] == "HOLDING"
    assert json.loads((tmp_path / "data" / ".lock").read_text())["generation"] == 1


def test_kill_9_under_write_load_fails_over_without_losing_acknowledged_records(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    primary, secondary = start_pair(tmp_path / "data", started)
    assert status(primary.url, "/api/v1/b/bk", "POST") == 200
    stop = threading.Event()
    acked: list[list[int]] = [[], [], []]
    threads = [
        threading.Thread(target=writer, args=(primary.url, 1 + n * 10**6, acked[n], stop, n == 2))
        for n in range(3)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.5)  # under load, across a few compactions
    assert primary.proc is not None
    primary.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    taken = wait_until(ready(secondary), "the secondary to take over")
    stop.set()
    for thread in threads:
        thread.join(10)
    failover = taken - killed
    bound = TTL_S + 2 * POLL_S
    total = sum(len(a) for a in acked)
    print(
        f"\nkill -9 failover: {failover:.2f} s (bound TTL + 2 polls = {bound:.1f} s, "
        f"+{SLACK_S} s slack); {total} acknowledged records checked"
    )
    assert failover <= bound + SLACK_S
    assert total > 50
    for stamps in acked:
        assert_readable(secondary.url, stamps)
    info = httpx.get(secondary.url + "/api/v1/info").json()
    assert info["instance_role"] == "SECONDARY" and info["role"]["generation"] == 2


def test_sigterm_hands_over_within_two_polls(tmp_path: Path, started: list[ServerProcess]) -> None:
    primary, secondary = start_pair(tmp_path / "data", started)
    assert status(primary.url, "/api/v1/b/bk", "POST") == 200
    stamps = list(range(1, 30))
    assert all(write(primary.url, ts) == 200 for ts in stamps)
    assert primary.proc is not None
    primary.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    taken = wait_until(ready(secondary), "the secondary to take over")
    handover = taken - sent
    print(
        f"\nSIGTERM handover: {handover:.2f} s (bound 2 polls = {2 * POLL_S:.1f} s, "
        f"+{SLACK_S} s slack)"
    )
    assert handover <= 2 * POLL_S + SLACK_S
    assert primary.proc.wait(10) == 0
    assert "released" in (tmp_path / "data" / ".lock").read_text()
    assert_readable(secondary.url, stamps)


def test_split_brain_paused_primary_acknowledges_nothing_and_damages_nothing(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    data = tmp_path / "data"
    # proceed: the deposed primary stays up (answering 503) instead of exiting.
    old, new = start_pair(data, started, RS_LOCK_FILE_FAILURE_ACTION="proceed")
    assert status(old.url, "/api/v1/b/bk", "POST") == 200
    before = list(range(1, 21))
    assert all(write(old.url, ts) == 200 for ts in before)
    assert old.proc is not None
    old.proc.send_signal(signal.SIGSTOP)
    stopped = time.monotonic()
    taken = wait_until(ready(new), "the secondary to take over")
    print(f"\nSIGSTOP takeover: {taken - stopped:.2f} s (bound {TTL_S + 2 * POLL_S:.1f} s)")
    assert taken - stopped <= TTL_S + 2 * POLL_S + SLACK_S
    during = list(range(100, 120))
    assert all(write(new.url, ts) == 200 for ts in during)
    old.proc.send_signal(signal.SIGCONT)
    results: dict[str, list[int | None]] = {"old": [], "new": []}
    after = list(range(200, 240))

    def send(name: str, url: str, offset: int) -> None:
        for ts in after:
            results[name].append(write(url, ts + offset))

    threads = [
        threading.Thread(target=send, args=("old", old.url, 1000)),
        threading.Thread(target=send, args=("new", new.url, 0)),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    print(
        f"after SIGCONT: old primary answered {sorted(set(results['old']), key=str)}, "
        f"new primary {sorted(set(results['new']), key=str)}"
    )
    assert results["old"] and all(code == 503 for code in results["old"])
    assert all(code == 200 for code in results["new"])
    assert status(old.url, "/api/v1/ready") == 503
    time.sleep(2 * COMPACTION_S)  # let a resumed compaction loop try its worst
    assert_readable(new.url, before + during + after)
    old.stop()
    assert new.stop() == 0
    check = subprocess.run(
        [sys.executable, "-m", "appliance", "check", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    standalone = ServerProcess(data)
    started.append(standalone)
    standalone.start()
    assert_readable(standalone.url, before + during + after)
    assert status(standalone.url, f"/api/v1/b/bk/e?ts={after[0] + 1000}") == 404


def test_tampered_lock_makes_the_holder_step_down_within_one_poll(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    data = tmp_path / "data"
    holder = ServerProcess(data, env=lease_env("PRIMARY", RS_LOCK_FILE_FAILURE_ACTION="proceed"))
    started.append(holder)
    holder.start()
    lock = data / ".lock"
    record = json.loads(lock.read_text())
    record.update(owner="elsewhere:1:intruder", nonce="n", generation=record["generation"] + 5)
    lock.write_text(json.dumps(record))
    tampered = time.monotonic()
    down = wait_until(not_ready(holder), "the holder to step down")
    print(f"\ntamper detected: {down - tampered:.2f} s (bound one poll = {POLL_S} s)")
    assert down - tampered <= POLL_S + SLACK_S
    assert write(holder.url, 1) == 503
    # The foreign record never renews: after TTL the holder takes the lease back.
    back = wait_until(ready(holder), "the lease to be taken back")
    assert back - tampered <= TTL_S + 2 * POLL_S + SLACK_S + 1.0
    assert json.loads(lock.read_text())["generation"] == record["generation"] + 1


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: SHA-256 and mtime."""
    state = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            state[str(path.relative_to(root))] = (digest, path.stat().st_mtime_ns)
    return state


def test_replica_follows_the_primary_refuses_writes_and_never_touches_the_folder(
    tmp_path: Path, started: list[ServerProcess]
) -> None:
    data = tmp_path / "data"
    primary = ServerProcess(data, env=lease_env("PRIMARY", RS_API_TOKEN=TOKEN))
    started.append(primary)
    primary.start()
    p = httpx.Client(base_url=primary.url + "/api/v1", headers=AUTH, timeout=5)
    assert p.post("/b/bk").status_code == 200
    assert p.post("/b/bk/e?ts=1", content=payload(1)).status_code == 200
    replica = ServerProcess(
        data,
        env={
            "RS_INSTANCE_ROLE": "REPLICA",
            "RS_API_TOKEN": TOKEN,
            "RS_ENGINE_REPLICA_UPDATE_INTERVAL": str(REPLICA_S),
        },
    )
    started.append(replica)
    replica.start()
    r = httpx.Client(base_url=replica.url + "/api/v1", headers=AUTH, timeout=5)
    assert r.get("/info").json()["instance_role"] == "REPLICA"
    bound = COMPACTION_S + REPLICA_S + SLACK_S

    def lag(change: Callable[[], object], seen: Callable[[], bool], what: str) -> float:
        changed = time.monotonic()
        change()
        return wait_until(seen, what, timeout=bound + 5) - changed

    lags = [
        lag(
            lambda ts=ts: p.post(f"/b/bk/e?ts={ts}", content=payload(ts)),  # type: ignore[misc]
            lambda ts=ts: r.get(f"/b/bk/e?ts={ts}").status_code == 200,
            f"record {ts}",
        )
        for ts in range(2, 7)
    ]
    lags.append(
        lag(
            lambda: p.patch("/b/bk/e?ts=2", headers={"x-reduct-label-k": "v"}),
            lambda: r.head("/b/bk/e?ts=2").headers.get("x-reduct-label-k") == "v",
            "label",
        )
    )
    lags.append(
        lag(
            lambda: p.delete("/b/bk/e?ts=3"),
            lambda: r.get("/b/bk/e?ts=3").status_code == 404,
            "removal",
        )
    )
    lags.append(
        lag(lambda: p.post("/b/other"), lambda: r.head("/b/other").status_code == 200, "new bucket")
    )
    lags.append(
        lag(
            lambda: p.delete("/b/other"),
            lambda: r.head("/b/other").status_code == 404,
            "removed bucket",
        )
    )
    token = p.post("/tokens/reader", json={"full_access": False, "read": ["bk"]}).json()["value"]
    lags.append(
        lag(
            lambda: None,
            lambda: r.get("/b/bk", headers={"Authorization": f"Bearer {token}"}).status_code == 200,
            "new token",
        )
    )
    print(
        f"\nreplica staleness: max {max(lags):.2f} s, mean {sum(lags) / len(lags):.2f} s over "
        f"{len(lags)} changes (bound compaction + update = {COMPACTION_S + REPLICA_S:.1f} s)"
    )
    assert max(lags) <= bound
    assert r.get("/b/bk/e?ts=2").content == payload(2)

    assert primary.stop() == 0  # from here on only the replica touches the folder
    before = tree_state(data)
    refused = [
        r.post("/b/bk/e?ts=50", content=b"x"),
        r.patch("/b/bk/e?ts=1", headers={"x-reduct-label-a": "b"}),
        r.delete("/b/bk/e?ts=1"),
        r.delete("/b/bk/e"),
        r.put("/b/bk/e/rename", json={"new_name": "f"}),
        r.post("/b/new"),
        r.put("/b/bk", json={"quota_type": "FIFO"}),
        r.delete("/b/bk"),
        r.put("/b/bk/rename", json={"new_name": "x"}),
        r.post("/b/bk/e/batch", content=b"x", headers={"x-reduct-time-51": "1,"}),
        r.post(
            "/io/bk/write",
            content=b"x",
            headers={"x-reduct-entries": "e", "x-reduct-start-ts": "52", "x-reduct-0-0": "1,"},
        ),
        r.post("/tokens/t2", json={"full_access": True}),
        r.delete("/tokens/reader"),
    ]
    for response in refused:
        assert response.status_code == 403, (response.request.method, response.request.url)
        assert "replica" in response.headers["x-reduct-error"]
    for ts in (1, 2, 4, 5, 6):
        assert r.get(f"/b/bk/e?ts={ts}").content == payload(ts)
    assert r.post("/b/bk/e/q", json={"query_type": "QUERY"}).status_code == 200
    time.sleep(4 * REPLICA_S)  # a few refreshes
    assert tree_state(data) == before
