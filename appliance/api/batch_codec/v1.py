"""Batch protocol v1 (§7, one entry): parse ``x-reduct-time-<ts>`` request headers, encode
record and error headers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from appliance.api.batch_codec.common import (
    DEFAULT_CONTENT_TYPE,
    INVALID_HEADER,
    V1_ERROR_PREFIX,
    V1_TIME_PREFIX,
    LabelUpdate,
    RecordLike,
    error_value,
    format_label_value,
    format_rows,
    parse_labels,
    parse_uint,
)
from appliance.errors import ApplianceError, UnprocessableEntity
from appliance.http1.headers import values_are_clean


@dataclass(frozen=True, slots=True)
class V1Record:
    """One record of a v1 batch request."""

    timestamp: int
    content_length: int
    content_type: str
    labels: Mapping[str, str]

    def label_update(self) -> LabelUpdate:
        """For PATCH: a non-empty value sets the label, an empty one removes it."""
        return LabelUpdate.from_values(self.labels)


def _parse_v1_value(value: str) -> tuple[int, str, dict[str, str]]:
    if "," not in value:
        raise UnprocessableEntity(INVALID_HEADER)
    length_text, rest = value.split(",", 1)
    length = parse_uint(length_text.strip())
    if length is None:
        raise UnprocessableEntity("Invalid content length")
    return (length, *parse_v1_tail(rest))


def parse_v1_tail(tail: str) -> tuple[str, dict[str, str]]:
    """Content type and labels from the part of a v1 record header after ``<len>,``."""
    content_type, rest = tail.split(",", 1) if "," in tail else (tail, DEFAULT_CONTENT_TYPE)
    content_type = content_type.strip() if content_type else DEFAULT_CONTENT_TYPE
    return content_type, dict(parse_labels(rest, v1=True))


def _v1_items(headers: Mapping[str, str]) -> list[tuple[int, str]]:
    items = []
    for name, value in headers.items():
        name = name.lower()
        if not name.startswith(V1_TIME_PREFIX):
            continue
        timestamp = parse_uint(name[len(V1_TIME_PREFIX) :])
        if timestamp is None:
            raise UnprocessableEntity(
                f"Invalid header '{name}': must be an unix timestamp in microseconds"
            )
        items.append((timestamp, value))
    items.sort(key=lambda item: item[0])
    return items


def parse_v1_headers(headers: Mapping[str, str]) -> list[V1Record]:
    """The records of a v1 POST/PATCH batch, ascending by timestamp (the body order)."""
    records = []
    for timestamp, value in _v1_items(headers):
        length, content_type, labels = _parse_v1_value(value)
        records.append(V1Record(timestamp, length, content_type, labels))
    return records


def parse_v1_timestamps(headers: Mapping[str, str]) -> list[int]:
    """The timestamps of a v1 DELETE batch (header values are ignored and may be empty)."""
    return [timestamp for timestamp, _ in _v1_items(headers)]


def encode_v1_record_header(meta: RecordLike) -> tuple[str, str]:
    """``x-reduct-time-<ts>`` for a batched read; labels sorted by their ``k=v`` text."""
    labels = sorted(f"{k}={format_label_value(v)}" for k, v in meta.labels.items())
    value = ",".join([str(meta.size), meta.content_type or DEFAULT_CONTENT_TYPE, *labels])
    return f"{V1_TIME_PREFIX}{meta.timestamp}", value


def v1_lines(records: Sequence[RecordLike]) -> tuple[bytes, list[bytes]]:
    """The lines (``name: value`` CRLF each, lower-case names) of ``encode_v1_record_header``
    for each record, and the values a sender must check (header byte classes): each distinct
    one once, with its size as ``0``; the names are tokens by construction. What follows the
    size is encoded once per (content type, labels) pair of objects."""
    tails, checked = _v1_tails(records)
    lines = format_rows(
        _V1_LINE, [r.timestamp for r in records], [r.size for r in records], tails
    )
    return lines, checked


def run_tails(columns: Any) -> list[bytes] | Literal[False]:
    """What follows each size in the v1 values of a block's records (``Columns``), worked
    out and checked for sending once (kept in their memo); False if one would need h11's
    word."""
    tails = columns.memo.get("v1")
    if tails is None:
        tails, checked = _v1_tails(columns.records)
        if not values_are_clean(checked):
            tails = False
        columns.memo["v1"] = tails
    return tails


def v1_run_lines(spans: Sequence[tuple[Any, int, int]]) -> tuple[bytes, list[bytes]] | None:
    """``v1_lines`` of a batch made of runs of blocks' records (``spans``: (``Columns``, lo,
    hi), the batch being each one's ``records[lo:hi]`` in turn). A record's value depends on
    the record alone, so what follows each size is worked out and checked for sending once
    per block (kept in the columns' memo), and a span costs one formatting for all its
    lines; nothing is left to check. None (use ``v1_lines``) if a block holds a value h11
    would not send as it is."""
    parts = []
    for columns, lo, hi in spans:
        tails = run_tails(columns)
        if tails is False:
            return None
        parts.append(format_rows(_V1_LINE, columns.ts[lo:hi], columns.sizes[lo:hi],
                                 tails[lo:hi]))
    return b"".join(parts), []


_V1_LINE = V1_TIME_PREFIX.lower().encode() + b"%d: %d,%s\r\n"


def _v1_tails(records: Sequence[RecordLike]) -> tuple[list[bytes], list[bytes]]:
    """What follows each record's size in its v1 value, worked out once per (content type,
    labels) pair of objects (``records`` keeps them alive: no id is reused meanwhile), and
    each distinct value with its size as ``0``, for a sender to check."""
    known: dict[tuple[int, int], bytes] = {}
    tails = []
    for record in records:
        key = (id(record.content_type), id(record.labels))
        tail = known.get(key)
        if tail is None:
            tail = known[key] = encode_v1_record_header(record)[1].encode().partition(b",")[2]
        tails.append(tail)
    return tails, [b"0," + tail for tail in known.values()]


def encode_v1_error(timestamp: int, err: ApplianceError) -> tuple[str, str]:
    """``x-reduct-error-<ts>: <status>,<message>`` for a failed record."""
    return f"{V1_ERROR_PREFIX}{timestamp}", error_value(err)
