"""Hardening against a real process (issue 8, items 1, 4, 5 and 8): connections a client closed
are released at once, early answers drain the body or close, hostile batches never stall the
loop, and batched reads survive concurrent removals."""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.integration

API = "/api/v1"


@pytest.fixture
def small_fd_server(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server started under `ulimit -n 1024`, the common default."""
    proc = ServerProcess(tmp_path / "data", max_open_files=1024).start()
    yield proc
    proc.kill()


def read_response(sock: socket.socket) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """One HTTP/1.1 response from ``sock``: status line, lower-case headers, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"server closed the connection; got {data[:200]!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    status, *lines = head.split(b"\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get(b"content-length", b"0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def close_wait(port: int) -> int:
    """Server-side sockets of ``port`` in CLOSE-WAIT (the client closed, the server did not)."""
    out = subprocess.run(["ss", "-tan"], capture_output=True, text=True, check=True).stdout
    return sum(1 for line in out.splitlines() if "CLOSE-WAIT" in line and f"127.0.0.1:{port} " in line)


# --- item 5: closed connections -----------------------------------------------------------------


def test_connections_the_client_closed_are_released_at_once(small_fd_server: ServerProcess) -> None:
    server = small_fd_server
    baseline = server.open_files()
    started = time.monotonic()
    for _ in range(1000):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(b"GET /api/v1/alive HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = read_response(sock)
            assert status.startswith(b"HTTP/1.1 200"), status
    assert time.monotonic() - started < 60
    deadline = time.monotonic() + 5
    while server.open_files() > baseline + 10 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.open_files() <= baseline + 10, (baseline, server.open_files())
    assert close_wait(server.port) <= 5
    # ...so the server still has descriptors for new clients and their data.
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.post(API + "/b/after").status_code == 200
        for ts in range(1, 21):
            assert http.post(API + f"/b/after/e?ts={ts}", content=b"x").status_code == 200


# --- item 8: early answers on keep-alive connections -------------------------------------------------


def test_answer_before_the_body_drains_it_or_says_connection_close(server: ServerProcess) -> None:
    size = 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        for _ in range(3):
            sock.sendall(
                b"POST /api/v1/b/missing/e?ts=1 HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: %d\r\n\r\n" % size
            )
            status, headers, _ = read_response(sock)  # 404 before the body was sent
            assert status.startswith(b"HTTP/1.1 404"), status
            assert headers.get(b"connection") != b"close"
            sock.sendall(b"x" * size)
            # The same connection serves the next request: the body was drained.
            sock.sendall(b"GET /api/v1/alive HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = read_response(sock)
            assert status.startswith(b"HTTP/1.1 200"), status
    big = 64 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/b/missing/e?ts=1 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % big
        )
        status, headers, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 404"), status
        assert headers[b"connection"] == b"close"  # too big to drain: do not reuse


def test_keep_alive_client_never_loses_a_request_after_refused_writes(tmp_path: Path) -> None:
    """The issue's cases on one pooled httpx connection: 507 refusing a 1 MiB body (the disk
    reserve can never be met), 401/403/404 refusing writes, each followed by a request that must
    be answered."""
    env = {"RS_API_TOKEN": "init-secret", "RS_ENGINE_MIN_FREE_SPACE": "1000000GB"}
    server = ServerProcess(tmp_path / "data", env=env).start()
    try:
        admin = {"Authorization": "Bearer init-secret"}
        body = b"z" * (1024 * 1024)
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        with httpx.Client(base_url=server.url, timeout=20, limits=limits) as http:
            assert http.post(API + "/b/full", headers=admin).status_code == 200
            r = http.post(API + "/tokens/reader", headers=admin, json={"permissions": {"read": ["full"]}})
            reader = {"Authorization": f"Bearer {r.json()['value']}"}
            cases = [
                ({**admin}, "/b/full/e?ts=1", 507),
                ({}, "/b/full/e?ts=1", 401),
                (reader, "/b/full/e?ts=1", 403),
                (admin, "/b/missing/e?ts=1", 404),
            ]
            for round_ in range(10):
                for headers, path, status in cases:
                    r = http.post(API + path, content=body, headers=headers)
                    assert r.status_code == status, (round_, path, r.headers.get("x-reduct-error"))
                    assert http.get(API + "/alive").status_code == 200
    finally:
        server.kill()


# --- item 1: hostile batches never stall the loop ----------------------------------------------------


class AliveMonitor:
    """Polls /alive on a fresh connection every 50 ms and keeps the worst latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.worst = 0.0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                ok = httpx.get(self.url + API + "/alive", timeout=5).status_code == 200
            except httpx.HTTPError:
                ok = False
            self.failures += not ok
            self.worst = max(self.worst, time.monotonic() - started)
            self._stop.wait(0.05)

    def __enter__(self) -> AliveMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def raw_request(port: int, request: bytes) -> tuple[bytes, dict[bytes, bytes]]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        status, headers, _ = read_response(sock)
    return status, headers


def test_hostile_batches_are_refused_up_front_and_alive_answers_within_a_second(
    small_fd_server: ServerProcess,
) -> None:
    server = small_fd_server
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post(API + "/b/batch").status_code == 200
        assert http.post(API + "/b/tiny", json={"max_block_records": 1}).status_code == 200
    with AliveMonitor(server.url) as monitor:
        # 10,000 x-reduct-time-* headers: refused before parsing, nothing stored.
        n = 10_000
        headers = b"".join(b"x-reduct-time-%d: 1,text/plain\r\n" % ts for ts in range(1, n + 1))
        for bucket in (b"batch", b"tiny"):
            status, reply = raw_request(
                server.port,
                b"POST /api/v1/b/" + bucket + b"/e/batch HTTP/1.1\r\nHost: x\r\n"
                b"Content-Length: %d\r\n" % n + headers + b"\r\n" + b"x" * n,
            )
            assert status.startswith(b"HTTP/1.1 413"), status
            assert b"RS_IO_BATCH_MAX_WRITE_RECORDS" in reply[b"x-reduct-error"]
        # JSON bodies just under the 1 MiB limit, built to be slow to decode and check.
        for body in (b"[" + b"[0]," * 200_000 + b"0]", b'{"query_type":"QUERY","when":{"$in":["&a",' + b"1," * 400_000 + b"1]}}"):
            for target in (b"/api/v1/b/batch", b"/api/v1/b/batch/e/q"):
                status, _ = raw_request(
                    server.port,
                    b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
                )
                assert status[9:10] == b"4" or status.startswith(b"HTTP/1.1 200"), status
        # A batch at the limit is written while /alive keeps answering.
        limit = 4096
        headers = b"".join(b"x-reduct-time-%d: 1,text/plain\r\n" % ts for ts in range(1, limit + 1))
        status, _ = raw_request(
            server.port,
            b"POST /api/v1/b/batch/e/batch HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: %d\r\n" % limit + headers + b"\r\n" + b"y" * limit,
        )
        assert status.startswith(b"HTTP/1.1 200"), status
    assert monitor.failures == 0
    assert monitor.worst < 1.0, monitor.worst
    with httpx.Client(base_url=server.url, timeout=30) as http:
        entries = {e["name"]: e for e in http.get(API + "/b/batch").json()["entries"]}
        assert entries["e"]["record_count"] == limit
        assert http.get(API + "/b/tiny").json()["entries"] == []


# --- item 4: batched reads while records are removed --------------------------------------------------


def test_batched_reads_never_fail_or_lose_records_while_others_are_removed(
    server: ServerProcess,
) -> None:
    """Readers page through queries while a remover deletes the odd records: no batch fails,
    every even record is delivered exactly once with its payload."""
    total = 3000
    with httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post(API + "/b/race", json={"max_block_records": 64}).status_code == 200
        for start in range(1, total + 1, 500):
            stamps = range(start, min(start + 500, total + 1))
            headers = {f"x-reduct-time-{ts}": "100,application/octet-stream" for ts in stamps}
            body = b"".join(ts.to_bytes(4, "big") * 25 for ts in stamps)
            assert http.post(API + "/b/race/e/batch", content=body, headers=headers).status_code == 200
    errors: list[str] = []
    stop = threading.Event()

    def remover() -> None:
        # The odd records of one block per request, blocks in random order: each removal
        # rewrites one block, so many land while the readers page through the query.
        blocks = list(range(1, total + 1, 64))
        random.Random(8).shuffle(blocks)
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for first in blocks:
                if stop.is_set():
                    return
                odd = [ts for ts in range(first, min(first + 64, total + 1)) if ts % 2]
                headers = {f"x-reduct-time-{ts}": "" for ts in odd}
                r = http.delete(API + "/b/race/e/batch", headers=headers)
                if r.status_code != 200:
                    errors.append(f"remove: {r.status_code}")

    def read_query(http: httpx.Client) -> list[int]:
        qid = http.post(API + "/b/race/e/q", json={"query_type": "QUERY"}).json()["id"]
        seen: list[int] = []
        for _ in range(1000):
            r = http.get(API + f"/b/race/e/batch?q={qid}")
            if r.status_code == 204:
                break
            if r.status_code != 200:
                errors.append(f"read: {r.status_code} {r.headers.get('x-reduct-error')}")
                break
            stamps = sorted(
                int(k[len("x-reduct-time-"):]) for k in r.headers if k.startswith("x-reduct-time-")
            )
            assert len(r.content) == 100 * len(stamps)
            for n, ts in enumerate(stamps):
                assert r.content[n * 100 : n * 100 + 4] == ts.to_bytes(4, "big")
            seen.extend(stamps)
            if r.headers["x-reduct-last"] == "true":
                break
        return seen

    thread = threading.Thread(target=remover)
    thread.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for _ in range(20):  # until the removals are over (at least one full pass)
                seen = read_query(http)
                assert len(seen) == len(set(seen))
                assert [ts for ts in seen if ts % 2 == 0] == list(range(2, total + 1, 2))
                if not thread.is_alive():
                    break
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
