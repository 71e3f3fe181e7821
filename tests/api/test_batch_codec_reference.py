"""The fast v2 read-batch encoder emits exactly what the straightforward one did.

``reference_encode`` is the encoder as it was before it was tuned for batched reads (kept here
verbatim); the production one must produce the same headers, in the same order, for any batch:
one entry or many, in or out of time order, labels added, changed, removed, quoted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.api.batch_codec import (
    DEFAULT_CONTENT_TYPE,
    encode_name,
    encode_v2_read_batch,
    v2_read_batch_headers,
)
from appliance.engine.models import RecordMeta, RecordState

OCTET = "application/octet-stream"


def _entry_indexes(records: Sequence[RecordMeta]) -> dict[str, int]:
    first: dict[str, int] = {}
    for record in records:
        first[record.entry] = min(record.timestamp, first.get(record.entry, record.timestamp))
    ordered = sorted(first, key=lambda name: (first[name], name))
    return {name: index for index, name in enumerate(ordered)}


def _format(value: str) -> str:
    return f'"{value}"' if "," in value else value


def _label_delta(
    labels: Mapping[str, str], previous: Mapping[str, str] | None, names: dict[str, int]
) -> str:
    ops: list[tuple[int, str]] = []
    keys = sorted(labels) if previous is None else sorted(set(previous) | set(labels))
    for key in keys:
        current = labels.get(key)
        if previous is not None and previous.get(key) == current:
            continue
        index = names.setdefault(key, len(names))
        ops.append((index, "" if current is None else _format(current)))
    ops.sort()
    return ",".join(f"{index}={value}" for index, value in ops)


def reference_encode(records: Sequence[RecordMeta]) -> list[tuple[str, str]]:
    if not records:
        return [("x-reduct-entries", ""), ("x-reduct-start-ts", "0")]
    indexes = _entry_indexes(records)
    start_ts = min(record.timestamp for record in records)
    names: dict[str, int] = {}
    previous: dict[int, tuple[str | None, Mapping[str, str] | None]] = {}
    headers = {
        "x-reduct-entries": ",".join(encode_name(name) for name in indexes),
        "x-reduct-start-ts": str(start_ts),
    }
    body = sorted(records, key=lambda r: (r.timestamp, indexes[r.entry]))
    for record in body:
        index = indexes[record.entry]
        prev_type, prev_labels = previous.get(index, (None, None))
        content_type = record.content_type or DEFAULT_CONTENT_TYPE
        type_part = "" if prev_type == content_type else content_type
        delta = _label_delta(record.labels, prev_labels, names)
        parts = [str(record.size)]
        if type_part or delta:
            parts.append(type_part)
        if delta:
            parts.append(delta)
        headers[f"x-reduct-{index}-{record.timestamp - start_ts}"] = ",".join(parts)
        previous[index] = (content_type, record.labels)
    if names:
        headers["x-reduct-labels"] = ",".join(encode_name(name) for name in names)
    return list(headers.items())


def meta(entry: str, ts: int, size: int, ct: str, labels: Mapping[str, str]) -> RecordMeta:
    return RecordMeta(ts, size, ct, dict(labels), RecordState.FINISHED, entry)


label_maps = st.dictionaries(
    st.sampled_from(["a", "b", "c", "é", "@x", "k-1"]),
    st.sampled_from(["", "1", "2", "a,b", "é", " x "]),
    max_size=4,
)
record_metas = st.lists(
    st.builds(
        meta,
        entry=st.sampled_from(["e", "e/1", "a b", "$meta"]),
        ts=st.integers(0, 40),
        size=st.integers(0, 3000),
        ct=st.sampled_from(["", OCTET, "text/plain"]),
        labels=label_maps,
    ),
    max_size=30,
    unique_by=lambda m: (m.entry, m.timestamp),
)


@settings(max_examples=400, deadline=None)
@given(record_metas, st.booleans())
def test_fast_encoder_matches_reference(records: list[RecordMeta], in_time_order: bool) -> None:
    if in_time_order:
        records.sort(key=lambda r: r.timestamp)
    assert v2_read_batch_headers(records) == reference_encode(records)
    assert encode_v2_read_batch(records) == dict(reference_encode(records))


def test_fast_encoder_one_entry_with_repeated_and_changing_labels() -> None:
    labels = [{"n": "1"}, {"n": "1"}, {"n": "2", "m": "a,b"}, {"m": "a,b"}, {}]
    records = [meta("e", 100 + i, 10, OCTET, lab) for i, lab in enumerate(labels)]
    assert v2_read_batch_headers(records) == reference_encode(records)
    assert v2_read_batch_headers(records)[2:] == [
        ("x-reduct-0-0", f"10,{OCTET},0=1"),
        ("x-reduct-0-1", "10"),
        ("x-reduct-0-2", '10,,0=2,1="a,b"'),
        ("x-reduct-0-3", "10,,0="),
        ("x-reduct-0-4", "10,,1="),
        ("x-reduct-labels", "n,m"),
    ]
