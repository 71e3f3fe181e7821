"""Property-based fuzzing of a real server over raw sockets (issue 8, Proof).

Hypothesis generates names, numbers, headers, ``when`` trees and JSON bodies and sends them as
raw HTTP/1.1 requests (no client library tidying them up). For every request: a status line
comes back and it is not 5xx. After each test: the server is alive and the seeded records are
byte-for-byte unchanged. Examples are bounded so the module runs in well under a minute.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.e2e.server import ServerProcess

pytestmark = pytest.mark.integration

API = "/api/v1"
TOKEN = "fuzz-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SEED_COUNT = 20
FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                           HealthCheck.data_too_large],
)


# --- the server and what it stores ---------------------------------------------------------------


def _seed(http: httpx.Client) -> None:
    assert http.post(API + "/b/seed", headers=AUTH).status_code == 200
    assert http.post(API + "/b/scratch", headers=AUTH).status_code == 200
    for ts in range(1, SEED_COUNT + 1):
        r = http.post(
            API + f"/b/seed/cam/{ts % 3}?ts={ts}",
            content=bytes([ts]) * ts * 10,
            headers={**AUTH, "x-reduct-label-n": str(ts), "content-type": "image/raw"},
        )
        assert r.status_code == 200


def _snapshot(http: httpx.Client) -> list[tuple[str, int, bytes, str, str]]:
    """Every seeded record: entry, ts, payload, content type, label."""
    out = []
    for ts in range(1, SEED_COUNT + 1):
        entry = f"cam/{ts % 3}"
        r = http.get(API + f"/b/seed/{entry}?ts={ts}", headers=AUTH)
        out.append((entry, ts, r.content, r.headers.get("content-type", ""),
                    r.headers.get("x-reduct-label-n", "")))
    return out


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One authenticated server for the module, seeded with records that must never change."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("fuzz") / "data", env={"RS_API_TOKEN": TOKEN}
    ).start()
    with httpx.Client(base_url=proc.url, timeout=30) as http:
        _seed(http)
        proc.seed_snapshot = _snapshot(http)  # type: ignore[attr-defined]
    yield proc
    proc.kill()


@pytest.fixture
def server(fuzz_server: ServerProcess) -> Iterator[ServerProcess]:
    """The module's server, checked after each test: alive, seeded records unchanged."""
    yield fuzz_server
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as http:
        assert http.get(API + "/alive").status_code == 200
        assert _snapshot(http) == fuzz_server.seed_snapshot  # type: ignore[attr-defined]


# --- a raw HTTP/1.1 client ------------------------------------------------------------------------


def send(server: ServerProcess, method: str, target: str, headers: dict[str, str],
         body: bytes = b"") -> int:
    """Send one request on a fresh connection; the response status (raises if none comes)."""
    lines = [f"{method} {target} HTTP/1.1", "Host: fuzz", f"Authorization: Bearer {TOKEN}",
             f"Content-Length: {len(body)}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(head + body)
        data = b""
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    assert data.startswith(b"HTTP/1.1 "), (method, target[:200], data[:200])
    status = int(data[9:12])
    assert status < 500, (method, target[:300], status, data[:400])
    return status


def path(*segments: str) -> str:
    """Percent-encode each segment the way a client would (``/`` inside a name stays)."""
    return API + "/" + "/".join(quote(s, safe="/$") for s in segments)


# --- strategies -----------------------------------------------------------------------------------

header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60
).map(str.strip)

names = st.one_of(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x2FF), min_size=1, max_size=40),
    st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True),
    st.integers(250, 1200).map(lambda n: "n" * n),
    st.integers(1, 6000).map(lambda n: "/".join(["s"] * n)),
    st.sampled_from(["..", ".", "$meta", "a/$meta", "%2e%2e", "a//b", "/a", "a/", "\u00e9", "a\x00b"]),
).filter(lambda s: "\x00" not in s)  # NUL cannot be sent in a request line at all

numbers = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.integers(1, 50_000).map(lambda n: "9" * n),
    st.integers(1, 50_000).map(lambda n: "0" * n + "1"),
    st.sampled_from(["", "-1", "+5", "1e3", "0x10", "18446744073709551616", " 1", "١٢"]),
)

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False),
    st.text(max_size=20), numbers,
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)

OPERATORS = ["$and", "$or", "$not", "$xor", "$in", "$nin", "$eq", "$ne", "$gt", "$gte", "$lt",
             "$lte", "$each_n", "$each_t", "$limit", "$exists", "$has", "$contains", "$starts_with",
             "$ends_with", "$add", "$sub", "$mult", "$div", "$rem", "$abs", "$cast", "$ref",
             "$timestamp", "$before", "$after", "$nope", "#batch_size", "#ctx_before"]
when_leaves = st.one_of(
    st.sampled_from(["&n", "&missing", "@size", "$timestamp", "1s", "-5m", "$$x", "$each_n"]),
    st.integers(-(2**65), 2**65), st.floats(allow_nan=False), st.booleans(), st.text(max_size=8),
    numbers,
)
when_trees = st.recursive(
    when_leaves,
    lambda inner: st.one_of(
        st.dictionaries(st.sampled_from(OPERATORS), st.lists(inner, max_size=3), min_size=1, max_size=2),
        st.dictionaries(st.sampled_from(["&n", "&x", "@size"]),
                        st.dictionaries(st.sampled_from(OPERATORS), inner, min_size=1, max_size=1),
                        min_size=1, max_size=2),
    ),
    max_leaves=12,
)


def deep_json(depth: int, kind: str) -> str:
    """JSON nested ``depth`` levels: arrays, objects, or a ``when`` tree of ``$and``."""
    if kind == "array":
        return "[" * depth + "]" * depth
    if kind == "object":
        return '{"a":' * depth + "1" + "}" * depth
    return '{"$and":[' * depth + '{"&n":{"$gt":1}}' + "]}" * depth


deep_bodies = st.tuples(st.integers(100, 100_000), st.sampled_from(["array", "object", "when"]))


# --- properties -----------------------------------------------------------------------------------


@FUZZ
@given(bucket=names, entry=names, ts=numbers, labels=st.dictionaries(header_text, header_text, max_size=3))
def test_fuzz_single_record_writes_and_reads(server: ServerProcess, bucket: str, entry: str,
                                             ts: str, labels: dict[str, str]) -> None:
    headers = {f"x-reduct-label-{k}": v for k, v in labels.items() if k and ":" not in k}
    target_bucket = "scratch" if bucket == "seed" else bucket
    send(server, "POST", path("b", target_bucket, entry) + f"?ts={quote(ts)}", headers, b"payload")
    send(server, "GET", path("b", "seed", entry) + f"?ts={quote(ts)}", {})
    send(server, "HEAD", path("b", bucket, entry), {})
    send(server, "PATCH", path("b", "scratch", entry) + f"?ts={quote(ts)}", headers)
    send(server, "DELETE", path("b", "scratch", entry) + f"?ts={quote(ts)}", {})


@FUZZ
@given(raw=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=4),
       method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]),
       query=st.binary(max_size=60))
def test_fuzz_raw_path_bytes(server: ServerProcess, raw: list[bytes], method: str,
                             query: bytes) -> None:
    """Arbitrary bytes (non-UTF-8, NUL, ``..``, ``%``) percent-encoded into the path and query."""
    segments = "/".join(quote(part, safe="") for part in raw)
    target = f"{API}/b/scratch/{segments}?{quote(query, safe='=&')}"
    send(server, method, target, {}, b"abc" if method in ("POST", "PUT", "PATCH") else b"")
    send(server, method, f"{API}/b/{segments}", {})
    send(server, "GET", f"{API}/b/seed/{segments}?ts={quote(query, safe='')}", {})


@FUZZ
@given(entry=names, stamps=st.lists(numbers, max_size=6),
       values=st.lists(header_text, min_size=6, max_size=6), v2=st.booleans(),
       extra=st.dictionaries(st.sampled_from(["x-reduct-entries", "x-reduct-start-ts",
                                              "x-reduct-labels", "x-reduct-0-1", "x-reduct-9-0",
                                              "content-type"]), header_text, max_size=3))
def test_fuzz_batch_headers(server: ServerProcess, entry: str, stamps: list[str],
                            values: list[str], v2: bool, extra: dict[str, str]) -> None:
    if v2:
        headers = {f"x-reduct-0-{ts}": v for ts, v in zip(stamps, values)}
        headers.update({"x-reduct-entries": quote(entry, safe=""), "x-reduct-start-ts": "1"})
    else:
        headers = {f"x-reduct-time-{ts}": v for ts, v in zip(stamps, values)}
    headers.update(extra)
    headers = {k: v for k, v in headers.items() if k.isascii() and k.strip() and " " not in k}
    body = b"x" * 16
    if v2:
        send(server, "POST", API + "/io/scratch/write", headers, body)
        send(server, "PATCH", API + "/io/scratch/update", headers)
        send(server, "DELETE", API + "/io/scratch/remove", headers)
    else:
        send(server, "POST", path("b", "scratch", entry, "batch"), headers, body)
        send(server, "PATCH", path("b", "scratch", entry, "batch"), headers)
        send(server, "DELETE", path("b", "scratch", entry, "batch"), headers)


@FUZZ
@given(when=when_trees, deep=st.one_of(st.none(), deep_bodies), only_metadata=st.booleans(),
       entries=st.one_of(st.none(), st.lists(names, max_size=3)))
def test_fuzz_queries(server: ServerProcess, when: Any, deep: tuple[int, str] | None,
                      only_metadata: bool, entries: list[str] | None) -> None:
    condition = deep_json(*deep) if deep is not None else json.dumps(when)
    spec = f'"only_metadata":{json.dumps(only_metadata)},"when":{condition}'
    if entries is not None:
        spec += f',"entries":{json.dumps(entries)}'
    for target in ("/b/seed/cam/1/q", "/io/seed/q"):
        body = ('{"query_type":"QUERY",' + spec + "}").encode()
        status = send(server, "POST", API + target, {"content-type": "application/json"}, body)
        if status == 200:
            send(server, "GET", API + "/io/seed/read", {"x-reduct-query-id": "1"})
    # Removal only where nothing seeded lives.
    body = ('{"query_type":"REMOVE",' + spec + "}").encode()
    send(server, "POST", API + "/io/scratch/q", {}, body)


@FUZZ
@given(name=names, body=st.one_of(json_values.map(json.dumps), deep_bodies.map(lambda d: deep_json(*d)),
                                  st.binary(max_size=40).map(lambda b: b.decode("latin-1"))),
       settings_=st.dictionaries(st.sampled_from(["quota_type", "quota_size", "max_block_size",
                                                  "max_block_records"]), json_scalars, max_size=4))
def test_fuzz_json_bodies_for_buckets_tokens_and_renames(
    server: ServerProcess, name: str, body: str, settings_: dict[str, Any]
) -> None:
    raw = body.encode("utf-8", "surrogatepass")
    target = "scratch" if name == "seed" else name
    send(server, "POST", path("b", target), {}, raw)
    send(server, "POST", path("b", "fz-" + target if target != "scratch" else "fz"), {},
         json.dumps(settings_).encode())
    send(server, "PUT", path("b", "scratch"), {}, json.dumps(settings_).encode())
    send(server, "POST", path("tokens", name), {}, raw)
    send(server, "PUT", path("b", "scratch", "e", "rename"), {}, json.dumps({"new_name": name}).encode())
    send(server, "PUT", path("b", "fz", "rename"), {}, json.dumps({"new_name": name}).encode())
    send(server, "GET", path("b", name), {})
    send(server, "PUT", path("b", "scratch", "e", "rename"), {}, raw)
