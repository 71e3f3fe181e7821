"""``SpanPayloads``: the payloads of a batch read as one span, as views made when asked for."""

from __future__ import annotations

import pytest

from appliance.query.handle import SpanPayloads


def test_views_index_slice_and_iterate_like_a_list() -> None:
    parts = [b"a", b"bcd", b"", b"efgh", b"i"]
    payloads = SpanPayloads(b"".join(parts), [len(p) for p in parts])
    assert len(payloads) == 5
    assert [bytes(view) for view in payloads] == parts
    assert payloads[1] == b"bcd" and payloads[-1] == b"i" and payloads[2] == b""
    assert [bytes(v) for v in payloads[1:4]] == parts[1:4]
    assert [bytes(v) for v in payloads[::-2]] == parts[::-2]
    assert list(zip(range(5), payloads, strict=True))[3][1] == b"efgh"
    with pytest.raises(IndexError):
        payloads[5]
    with pytest.raises(IndexError):
        payloads[-6]
    assert isinstance(payloads[0], memoryview)  # a view of the span, not a copy
