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

        def chunks(parts: list[bytes]):  # type: ignore[no-untyped-def]
            yield from parts

        # A chunked body (no Content-Length) declares its size in x-reduct-content-length.
        longer = http.post("/api/v1/b/len/e?ts=1", content=chunks([b"abc", b"def"]), headers={"x-reduct-content-length": "3"})
        assert longer.status_code == 400
        assert longer.headers["x-reduct-error"] == "Content is bigger than in content-length"
        shorter = http.post("/api/v1/b/len/e?ts=2", content=chunks([b"ab"]), headers={"x-reduct-content-length": "3"})
        assert shorter.status_code == 400
        assert shorter.headers["x-reduct-error"] == "Content is smaller than in content-length"
        for ts in (1, 2):
            assert http.get(f"/api/v1/b/len/e?ts={ts}").status_code in (404, 500)
        assert http.post("/api/v1/b/len/e?ts=3", content=b"abc").status_code == 200
    # Over HTTP/1.1 bytes past Content-Length are the next request: the record holds exactly the
    # declared bytes and the garbage "request" is refused by the protocol layer.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/b/len/e?ts=4 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc")
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        sock.sendall(b"def\r\n\r\n")
        assert b" 400 " in sock.recv(65536).split(b"\r\n")[0] + b" "
    with httpx.Client(base_url=server.url, timeout=10) as http:
        assert http.get("/api/v1/b/len/e?ts=4").content == b"abc"


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


@pytest.mark.parametrize(
    "path", ["/api/v1/b/x/%2e%2e/etc", "/api/v1/b/x/a/../../b", "/api/v1/b/x/..", "/api/v1/b/%24sys/e", "/api/v1/b/x/a%00b"]
)
def test_hostile_names_are_refused(server: ServerProcess, path: str) -> None:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        http.post("/api/v1/b/x").raise_for_status()
    # A raw socket, because HTTP clients normalise `..` away before sending.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST {path}?ts=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nz".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status_line, _, rest = reply.partition(b"\r\n")
    assert int(status_line.split()[1]) in (404, 422), (path, reply)
    assert b"x-reduct-api: 1.21" in rest.lower()
    dirs = {p.relative_to(server.data_path).as_posix() for p in server.data_path.rglob("*") if p.is_dir()}
    assert not any(d.startswith(("etc", "b", "$")) or "/.." in d for d in dirs), dirs
    assert not (server.data_path.parent / "etc").exists() and not (server.data_path.parent / "b").exists()


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
