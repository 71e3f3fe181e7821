"""Header blocks checked ahead (``appliance/http1/prepared.py``): whatever is prepared, the
response h11 and Hypercorn send, or the error they raise, is the stock code's, byte for byte;
only a clean block is marked, and a list changed after marking is checked the normal way."""

from __future__ import annotations

import random
from typing import Any

import h11
import pytest
from hypercorn.protocol import http_stream

from appliance import http1
from appliance.http1.headers import IndexedHeaders
from appliance.http1.prepared import PreparedPair, prepare, prepared_block
from tests.unit.test_http1 import differential, respond

pytestmark = pytest.mark.skipif(
    not http1._versions_verified(), reason="h11/Hypercorn version not verified for appliance.http1"
)

TAIL = [(b"x-reduct-last", b"false"), (b"content-length", b"1234"),
        (b"content-type", b"application/octet-stream"), (b"x-reduct-api", b"1.21"),
        (b"server", b"ReductStore 1.21.0")]
VALUES = [b"1024", b"1024,,@0=3", b"10,text/plain,a=\"b,c\"", b"", b"a b", b"\xe9\xff", b"=",
          b"x\ty", b"1,application/octet-stream,k=v,n=2"]


@pytest.fixture(autouse=True)
def _stock_first() -> Any:
    """Every test starts and ends with h11's stock code in place."""
    http1.uninstall()
    yield
    http1.uninstall()


def block(rng: random.Random, size: int) -> list[tuple[bytes, bytes]]:
    """Record headers as a batched read builds them."""
    pairs = [(b"x-reduct-entries", b"e"), (b"x-reduct-start-ts", b"1000")]
    pairs += [(b"x-reduct-0-%d" % i, rng.choice(VALUES)) for i in range(size)]
    return pairs


def sent(headers: list[Any], method: bytes = b"GET") -> list[Any]:
    """Hypercorn's header build, then what an h11 connection sends for it (date appended as
    Hypercorn does)."""
    built = http_stream.build_and_validate_headers(headers)
    return respond([*built, (b"date", b"Mon, 07 Dec 2026 05:00:00 GMT")], method=method)


@pytest.mark.parametrize("seed", range(30))
def test_prepared_blocks_send_what_h11_sends(seed: int) -> None:
    rng = random.Random(seed)
    pairs = block(rng, rng.choice([0, 1, 5, 90]))
    tail = list(TAIL)
    if seed % 5 == 1:
        tail.append((b"connection", b"close"))
    if seed % 7 == 2:
        tail = [(b"x-late", b"v")]  # no framing: h11 rebuilds the headers
    assert prepare(pairs)
    for method in (b"GET", b"HEAD"):
        stock, fast = differential(lambda m=method: sent([*pairs, *tail], m))
        assert fast == stock


@pytest.mark.parametrize(
    "bad",
    [
        (b"x-reduct-0-1", b"1\r\nX-Injected: yes"),
        (b"x-reduct-0-1", b"1\nb"),
        (b"x-reduct-0-1", b" 1"),
        (b"x-reduct-0-1", b"1\t"),
        (b"x-reduct-0-1", b"a\x00b"),
        (b"X-Reduct-0-1", b"1"),  # not lower-case: h11 keeps its own raw name
        (b"x reduct", b"1"),
        (b"", b"1"),
        (b"content-length", b"5"),  # a framing header: left to h11's rules
        ("x-str", b"1"),
        (b"x-a", bytearray(b"1")),
    ],
)
def test_a_block_h11_would_not_send_as_it_is_is_not_marked(bad: tuple[Any, Any]) -> None:
    pairs = [*block(random.Random(1), 20), bad]
    assert not prepare(pairs)
    assert type(pairs[0]) is tuple
    stock, fast = differential(lambda: sent([*pairs, *TAIL]))
    assert fast == stock  # the same bytes, or the same error


@pytest.mark.parametrize(
    "tail",
    [
        [(b"x-bad", b"a\r\nb"), (b"content-length", b"0")],
        [(b"x-bad", b" a"), (b"content-length", b"0")],
        [(b"transfer-encoding", b"chunked")],
        [(b"content-length", b"5"), (b"content-length", b"5")],
        [(b"content-length", b"5, 5")],
        [(b"content-length", b"x")],
        [(b"Host", b"h"), (b"content-length", b"0")],
        [(b":path", b"/"), (b"content-length", b"0")],
        [(b" x-a ", b" 1 "), (b"content-length", b"0")],
        [],
    ],
)
def test_headers_after_a_block_get_the_stock_checks(tail: list[Any]) -> None:
    pairs = block(random.Random(2), 40)
    assert prepare(pairs)
    stock, fast = differential(lambda: sent([*pairs, *tail]))
    assert fast == stock


def test_a_list_changed_after_marking_is_checked_again() -> None:
    pairs = block(random.Random(3), 40)
    assert prepare(pairs)
    changed = [*pairs, *TAIL]
    changed[5] = (b"x-reduct-0-3", b"1\r\nX-Injected: yes")
    assert prepared_block(changed) is None
    stock, fast = differential(lambda: sent(list(changed)))
    assert fast == stock and fast[0] == "raised"
    assert prepared_block(pairs[:10]) is None  # cut short: not the block either


def test_prepared_blocks_take_the_short_path() -> None:
    pairs = block(random.Random(4), 90)
    assert prepare(pairs)
    assert type(pairs[0]) is PreparedPair and prepared_block(pairs) is pairs[0].block
    assert http1.install()
    built = http_stream.build_and_validate_headers([*pairs, *TAIL])
    assert built[0] is pairs[0] and built[: len(pairs)] == pairs
    event = h11.Response(status_code=200, headers=built)
    assert type(event.headers) is IndexedHeaders
    assert event.headers.encoded_lines() == pairs[0].block.lines + b"".join(
        b"%s: %s\r\n" % pair for pair in TAIL
    )
