"""``ScopeHeaders`` (request headers looked up in the raw ASGI pairs, issue 15) answers exactly
as werkzeug's ``Headers`` built the way Quart builds them, and builds that list only when asked
for more than lookups by name."""

from __future__ import annotations

import pytest
from werkzeug.datastructures import Headers

from appliance.api import params
from appliance.api.connection import ScopeHeaders
from appliance.app import _ingress

RAW = [
    (b"host", b"h:1"), (b"content-length", b"12"), (b"x-dup", b"1"), (b"x-dup", b"2"),
    (b"authorization", b"Bearer t"), (b"x-latin", b"\xfc\xff"), (b"remote-addr", b"spoofed"),
] + [(f"x-reduct-time-{i}".encode(), b"1,text/plain") for i in range(100)]


def quarts(raw: list[tuple[bytes, bytes]], addr: str = "10.0.0.1") -> Headers:
    """The headers as Quart's ``_create_request_from_scope`` makes them."""
    headers = Headers()
    headers.add("Remote-Addr", addr)
    for name, value in raw:
        headers.add(name.decode("latin1").title(), value.decode("latin1"))
    return headers


KEYS = ["Content-Length", "content-length", "CONTENT-LENGTH", "X-Dup", "Remote-Addr",
        "remote-addr", "x-latin", "missing", "", "X-Reduct-Time-99", "Kontent-Length",
        "Ünicode", "☃"]


@pytest.mark.parametrize("raw", [RAW, [(n.upper(), v) for n, v in RAW[:5]], []])
def test_lookups_by_name_equal_werkzeugs(raw: list[tuple[bytes, bytes]]) -> None:
    ours, expected = ScopeHeaders.from_scope(raw, "10.0.0.1"), quarts(raw)
    for key in KEYS:
        assert ours.get(key) == expected.get(key), key
        assert (key in ours) == (key in expected), key
        assert ours.get(key, type=int) == expected.get(key, type=int), key
        if key in expected:
            assert ours[key] == expected[key]
        else:
            with pytest.raises(KeyError):
                ours[key]


def test_lookups_do_not_build_the_list_and_everything_else_does() -> None:
    ours = ScopeHeaders.from_scope(RAW, "10.0.0.1")
    assert ours.get("content-length") == "12" and "authorization" in ours
    assert ours._raw is not None  # noqa: SLF001 - still only the raw pairs
    expected = quarts(RAW)
    assert list(ours.items()) == list(expected.items())
    assert ours._raw is None  # noqa: SLF001 - built once, the truth from now on
    assert len(ours) == len(expected) and ours.getlist("x-dup") == ["1", "2"]
    assert ours.to_wsgi_list() == expected.to_wsgi_list()
    assert list(ours[1:3]) == list(expected[1:3]) and ours[0] == ("Remote-Addr", "10.0.0.1")


def test_changes_after_lookups_are_seen_by_later_lookups() -> None:
    ours = ScopeHeaders.from_scope(RAW, "10.0.0.1")
    assert ours.get("host") == "h:1"
    ours["Host"] = "other"
    ours.setdefault("X-New", "n")
    del ours["x-dup"]
    assert ours.get("host") == "other" and ours.get("x-new") == "n" and "x-dup" not in ours
    copied = ours.copy()
    assert list(copied.items()) == list(ours.items())
    plain = ScopeHeaders([("A", "1")])  # constructed like any Headers
    assert plain.get("a") == "1" and list(plain) == [("A", "1")]


def test_params_header_by_column_equals_the_loop() -> None:
    big = RAW + [(b"X-Upper", b"u")]  # one name not lower-case: the loop decides
    for raw in (RAW, big, RAW[:5]):
        for name in (b"content-length", b"x-dup", b"x-upper", b"missing", b"x-reduct-time-50"):
            expected = next((v for k, v in raw if k == name or k.lower() == name), None)
            assert params.header(raw, name) == expected, (name, len(raw))


@pytest.mark.parametrize(
    "extra",
    [[], [(b"transfer-encoding", b"chunked")], [(b"content-length", b"0")],
     [(b"content-length", b"x")], [(b"transfer-encoding", b"gzip")]],
)
def test_ingress_by_column_equals_the_loop(extra: list[tuple[bytes, bytes]]) -> None:
    def loop(raw: list[tuple[bytes, bytes]]) -> int:
        length = 0
        for name, value in raw:
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                return 0
            if name == b"content-length" and not length:
                try:
                    length = max(int(value), 0)
                except ValueError:
                    length = 0
        return length

    for base in (RAW, [pair for pair in RAW if pair[0] != b"content-length"],
                 [(b"content-length", b"bad")] + RAW[2:]):
        raw = base + extra
        assert _ingress({"headers": raw}) == loop(raw), extra


def test_self_check_agrees_on_this_werkzeug() -> None:
    from appliance.api import connection

    assert connection.SCOPE_HEADERS is True
    assert connection._scope_headers_agree() is True


@pytest.mark.parametrize(
    "broken",
    [
        ("_get_key", lambda self, key: "stale"),  # looks up by name otherwise
        ("_list", property(lambda self: [], lambda self, v: None)),  # stores the list elsewhere
        ("getlist", lambda self, key, type=None: []),
    ],
    ids=["lookup", "storage", "getlist"],
)
def test_self_check_refuses_a_werkzeug_it_does_not_agree_with(
    monkeypatch: pytest.MonkeyPatch, broken: tuple[str, object]
) -> None:
    from appliance.api import connection

    monkeypatch.setattr(ScopeHeaders, broken[0], broken[1])
    assert connection._scope_headers_agree() is False
