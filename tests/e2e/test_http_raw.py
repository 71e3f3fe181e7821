"""Raw HTTP against the real process: the headers reduct-py does not check, and hostile input."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.integration


def test_every_response_carries_api_version_and_server(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        responses = [
            http.get("/api/v1/alive"),
            http.get("/api/v1/info"),
            http.get("/api/v1/b/missing"),  # 404
            http.post("/api/v1/b/bad$name"),  # 422
            http.get("/no/such/path"),  # fallback 404
            http.post("/api/v1/b/x/e?ts=abc", content=b"1"),
        ]
        for r in responses:
            assert r.headers["x-reduct-api"] == "1.21", (r.request.url, r.status_code)
            assert r.headers["server"].startswith("ReductStore 1.21"), r.request.url
        assert responses[2].status_code == 404
        assert responses[2].headers["x-reduct-error"] == "Bucket 'missing' is not found"
        assert responses[2].json() == {"detail": "Bucket 'missing' is not found"}
        assert responses[3].status_code == 422
        assert responses[5].status_code in (404, 422)


def test_head_and_get_send_content_length_and_record_headers(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/api/v1/b/raw").raise_for_status()
        r = http.post(
            "/api/v1/b/raw/e?ts=5",
            content=b"0123456789",
            headers={"content-type": "text/plain", "x-reduct-label-Site": "A"},
        )
        assert r.status_code == 200
        for method in ("GET", "HEAD"):
            r = http.request(method, "/api/v1/b/raw/e?ts=5")
            assert r.status_code == 200
            assert r.headers["content-length"] == "10"
            assert r.headers["x-reduct-time"] == "5"
            assert r.headers["content-type"] == "text/plain"
            assert r.headers["x-reduct-label-site"] == "A"
        assert r.content == b""


def test_body_shorter_or_longer_than_content_length(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/api/v1/b/len").raise_for_status()
    # A longer body than declared: raw socket, because HTTP clients refuse to send it.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/b/len/e?ts=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabcdef")
        reply = sock.recv(65536).decode(errors="replace")
    assert " 200 " not in reply.splitlines()[0] or "bigger" in reply
    with httpx.Client(base_url=server.url, timeout=10) as http:
        r = http.get("/api/v1/b/len/e?ts=1")
        # Hypercorn cuts the body at Content-Length: the record holds exactly the 3 declared bytes.
        assert r.status_code == 200 and r.content == b"abc"


def test_client_disconnect_mid_body_leaves_no_finished_record(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/api/v1/b/cut").raise_for_status()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/b/cut/e?ts=7 HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 5000)
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=server.url, timeout=10) as http:
        while time.monotonic() < deadline:
            r = http.get("/api/v1/b/cut/e?ts=7")
            if r.status_code != 425:
                break
            time.sleep(0.1)
        assert r.status_code in (404, 500), (r.status_code, r.headers.get("x-reduct-error"))
        query = http.post("/api/v1/b/cut/e/q", json={"query_type": "QUERY"})
        if query.status_code == 200:
            read = http.get(f"/api/v1/b/cut/e/batch?q={query.json()['id']}")
            assert "x-reduct-time-7" not in read.headers
        # The entry stays writable, including the very same timestamp once it errored.
        assert http.post("/api/v1/b/cut/e?ts=8", content=b"ok").status_code == 200
        assert http.get("/api/v1/b/cut/e?ts=8").content == b"ok"


@pytest.mark.parametrize("path", ["/api/v1/b/x/%2e%2e/etc", "/api/v1/b/x/a/../b", "/api/v1/b/%24sys/e", "/api/v1/b/x/a%00b"])
def test_hostile_names_are_refused(server: ServerProcess, path: str) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/api/v1/b/x").raise_for_status()
        r = http.post(path + "?ts=1", content=b"z")
        assert r.status_code in (404, 422), (path, r.status_code)
        assert r.headers["x-reduct-api"] == "1.21"
    assert not any(p.name in ("etc", "b") for p in server.data_path.rglob("*") if p.is_dir() and p.parent == server.data_path)


def test_oversized_headers_are_refused_not_crashing(server: ServerProcess) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/api/v1/b/hdr").raise_for_status()
        huge = {"x-reduct-label-big": "v" * 1_000_000}
        try:
            r = http.post("/api/v1/b/hdr/e?ts=1", content=b"1", headers=huge)
            assert r.status_code >= 400
        except httpx.HTTPError:
            pass  # the server may simply close the connection on an oversized head
        assert http.get("/api/v1/alive").status_code == 200
        assert http.get("/api/v1/b/hdr/e?ts=1").status_code == 404
