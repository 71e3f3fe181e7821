"""Size accounting: ReductStore's protobuf record-metadata length (spec api §3.2)."""

from __future__ import annotations

from appliance.engine.sizing import record_metadata_size, varint_len


def test_sizing_spec_example_8_byte_record_is_32_bytes() -> None:
    # ts = 1 s, first record of its block (begin omitted), no labels, octet-stream.
    assert record_metadata_size(1_000_000, 0, 8, {}, "application/octet-stream") == 32


def test_sizing_varint_lengths() -> None:
    assert [varint_len(v) for v in (0, 1, 127, 128, 16383, 16384, 2**64 - 1)] == [
        1,
        1,
        1,
        2,
        2,
        3,
        10,
    ]


def test_sizing_fields_add_up() -> None:
    base = record_metadata_size(1_000_000, 0, 8, {}, "application/octet-stream")
    # A non-zero begin adds tag + varint; sub-second timestamps add the nanos field.
    assert record_metadata_size(1_000_000, 8, 16, {}, "application/octet-stream") == base + 2
    assert record_metadata_size(1_000_001, 0, 8, {}, "application/octet-stream") == base + 3
    # One label {name="a", value="b"}: tag + len + (1+1+1) + (1+1+1) = 8.
    assert record_metadata_size(1_000_000, 0, 8, {"a": "b"}, "application/octet-stream") == base + 8
    # Empty strings are omitted: an empty label value costs only the name.
    assert record_metadata_size(1_000_000, 0, 8, {"a": ""}, "application/octet-stream") == base + 5
    assert record_metadata_size(1_000_000, 0, 8, {}, "") == base - 26
    assert record_metadata_size(0, 0, 0, {}, "") == 2  # the empty Timestamp is still present


def test_sizing_non_ascii_counts_utf8_bytes() -> None:
    ascii_size = record_metadata_size(1, 0, 1, {"k": "ab"}, "t")
    assert record_metadata_size(1, 0, 1, {"k": "éb"}, "t") == ascii_size + 1
