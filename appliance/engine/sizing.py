"""Size accounting of records, as ReductStore reports it (spec api §3.2).

An entry's size is the sum of its payload bytes plus, per record, the protobuf-encoded length of
ReductStore's ``Record`` message as it stood when the write started. Clients and tests assert
exact numbers, so this module reproduces that length arithmetically (no protobuf dependency):

    Record { timestamp = 1 (google.protobuf.Timestamp {seconds = 1, nanos = 2}),
             begin = 2 (uint64), end = 3 (uint64), state = 4 (enum),
             labels = 5 (repeated Label {name = 1, value = 2}), content_type = 6 (string) }

proto3 omits zero scalars and empty strings; the timestamp submessage is always present. Every
field number here is < 16, so each tag is one byte.
"""

from __future__ import annotations

from collections.abc import Mapping

US_PER_SECOND = 1_000_000
NANOS_PER_US = 1000


def varint_len(value: int) -> int:
    """Bytes a protobuf varint needs for a non-negative ``value``."""
    length = 1
    while value >= 0x80:
        value >>= 7
        length += 1
    return length


def _bytes_field_len(length: int) -> int:
    """Tag + length prefix + body of a non-empty string/bytes/message field."""
    return 1 + varint_len(length) + length


def _string_len(text: str) -> int:
    """Encoded length of a proto3 string field (0 when empty: omitted)."""
    if not text:
        return 0
    return _bytes_field_len(len(text.encode()))


def record_metadata_size(
    timestamp: int,
    begin: int,
    end: int,
    labels: Mapping[str, str],
    content_type: str,
    state: int = 0,
) -> int:
    """Protobuf length of ReductStore's ``Record`` message for these values."""
    seconds, micros = divmod(timestamp, US_PER_SECOND)
    ts_body = 0
    if seconds:
        ts_body += 1 + varint_len(seconds)
    if micros:
        ts_body += 1 + varint_len(micros * NANOS_PER_US)
    size = _bytes_field_len(ts_body)
    if begin:
        size += 1 + varint_len(begin)
    if end:
        size += 1 + varint_len(end)
    if state:
        size += 1 + varint_len(state)
    for name, value in labels.items():
        size += _bytes_field_len(_string_len(name) + _string_len(value))
    return size + _string_len(content_type)
