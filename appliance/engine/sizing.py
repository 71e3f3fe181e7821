"""Size accounting of records, as ReductStore reports it (spec api §3.2).

An entry's size is the sum of its payload bytes plus, per record, the protobuf-encoded length of
ReductStore's ``Record`` message as it stood when the write started. Clients and tests assert
exact numbers, so this module reproduces that length arithmetically (no protobuf dependency):

    Record { timestamp = 1 (google.protobuf.Timestamp {seconds = 1, nanos = 2}),
             begin = 2 (uint64), end = 3 (uint64), state = 4 (enum),
             labels = 5 (repeated Label {name = 1, value = 2}), content_type = 6 (string) }

proto3 omits zero scalars and empty strings; the timestamp submessage is always present. Every
field number here is < 16, so each tag is one byte. This runs once per written record, so it is
written for speed (bit arithmetic, a small cache of content-type lengths).
"""

from __future__ import annotations

from collections.abc import Mapping

US_PER_SECOND = 1_000_000
NANOS_PER_US = 1000
_CACHE_LIMIT = 1024
_content_type_len: dict[str, int] = {}
_label_len: dict[tuple[str, str], int] = {}


def varint_len(value: int) -> int:
    """Bytes a protobuf varint needs for a non-negative ``value``."""
    return 1 if value < 0x80 else (value.bit_length() + 6) // 7


def _string_field_len(text: str) -> int:
    """Encoded length of a proto3 string field (0 when empty: omitted)."""
    if not text:
        return 0
    length = len(text) if text.isascii() else len(text.encode())
    return 1 + varint_len(length) + length


def record_metadata_size(
    timestamp: int,
    begin: int,
    end: int,
    labels: Mapping[str, str],
    content_type: str,
    state: int = 0,
) -> int:
    """Protobuf length of ReductStore's ``Record`` message for these values."""
    return position_metadata_size(timestamp, begin, end, state) + shape_metadata_size(
        labels, content_type
    )


def position_metadata_size(timestamp: int, begin: int, end: int, state: int = 0) -> int:
    """The part of ``record_metadata_size`` that depends on the timestamp, offsets and state."""
    seconds, micros = divmod(timestamp, US_PER_SECOND)
    size = 2  # timestamp tag + one length byte: the Timestamp body is < 128 bytes
    if seconds:
        size += 2 if seconds < 0x80 else 1 + (seconds.bit_length() + 6) // 7
    if micros:
        nanos = micros * NANOS_PER_US
        size += 2 if nanos < 0x80 else 1 + (nanos.bit_length() + 6) // 7
    if begin:
        size += 2 if begin < 0x80 else 1 + (begin.bit_length() + 6) // 7
    if end:
        size += 2 if end < 0x80 else 1 + (end.bit_length() + 6) // 7
    if state:
        size += 2
    return size


def shape_metadata_size(labels: Mapping[str, str], content_type: str) -> int:
    """The part of ``record_metadata_size`` that depends on the labels and content type (the
    same for every record of a batch that shares them: computed once, ``codec.RecordShape``)."""
    size = 0
    if labels:
        cache = _label_len
        for pair in labels.items():
            length = cache.get(pair)
            if length is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                body = _string_field_len(pair[0]) + _string_field_len(pair[1])
                length = cache[pair] = 1 + varint_len(body) + body
            size += length
    ct_len = _content_type_len.get(content_type)
    if ct_len is None:
        if len(_content_type_len) >= _CACHE_LIMIT:
            _content_type_len.clear()
        ct_len = _content_type_len[content_type] = _string_field_len(content_type)
    return size + ct_len
