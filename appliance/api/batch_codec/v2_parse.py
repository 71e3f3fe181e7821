"""Batch protocol v2 (§8, many entries): parse write, update and remove requests; omitted
parts of a record header are inherited from the previous record of the same entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from appliance.api.batch_codec.common import (
    DEFAULT_CONTENT_TYPE,
    ENTRIES_HEADER,
    INVALID_HEADER,
    LABELS_HEADER,
    START_TS_HEADER,
    V2_PREFIX,
    LabelUpdate,
    decode_name,
    parse_labels,
    parse_uint,
)
from appliance.errors import UnprocessableEntity


@dataclass(frozen=True, slots=True)
class V2Record:
    """One record of a v2 request, with its inherited metadata resolved."""

    entry_index: int
    delta: int
    entry: str
    timestamp: int
    content_length: int = 0
    content_type: str = DEFAULT_CONTENT_TYPE
    labels: Mapping[str, str] = field(default_factory=dict)
    update: LabelUpdate = field(default_factory=LabelUpdate)  # filled by parse_v2_update only


@dataclass(frozen=True, slots=True)
class V2Request:
    """A parsed v2 request: records in (entry_index, delta) order, which is the body order."""

    entries: list[str]
    start_ts: int
    label_names: list[str] | None
    records: list[V2Record]

    @property
    def content_length(self) -> int:
        """The body size the record headers announce."""
        return sum(record.content_length for record in self.records)


def _parse_entries(headers: Mapping[str, str]) -> list[str]:
    raw = headers.get(ENTRIES_HEADER)
    if raw is None:
        return []  # spec §8.1: a missing header is an empty list
    if not raw.strip():
        raise UnprocessableEntity("x-reduct-entries header is required")
    return [decode_name(item.strip()) for item in raw.split(",")]


def _parse_start_ts(headers: Mapping[str, str]) -> int:
    raw = headers.get(START_TS_HEADER)
    if raw is None:
        raise UnprocessableEntity("x-reduct-start-ts header is required")
    start_ts = parse_uint(raw)
    if start_ts is None:
        raise UnprocessableEntity("Invalid x-reduct-start-ts header")
    return start_ts


def _parse_label_names(headers: Mapping[str, str]) -> list[str] | None:
    raw = headers.get(LABELS_HEADER)
    if raw is None:
        return None
    if not raw.strip():
        raise UnprocessableEntity("x-reduct-labels header is empty")
    names = []
    for item in raw.split(","):
        try:
            names.append(decode_name(item.strip()))
        except UnprocessableEntity:
            raise UnprocessableEntity(
                f"Invalid label encoding in header value: '{item.strip()}'"
            ) from None
    return names


def _record_headers(headers: Mapping[str, str]) -> list[tuple[int, int, str]]:
    """``(entry_index, delta, value)`` of every ``x-reduct-<a>-<b>`` header, sorted."""
    found = []
    for name, value in headers.items():
        # Any x-reduct-* name whose last '-' part is all digits is a record header.
        if not name.startswith(V2_PREFIX) or not all(
            c in "0123456789" for c in name.rpartition("-")[2]
        ):
            continue
        suffix = name[len(V2_PREFIX) :]
        if "-" not in suffix:
            raise UnprocessableEntity(f"Invalid batched header '{name}'")
        index_text, delta_text = suffix.rsplit("-", 1)
        index = parse_uint(index_text)
        if index is None:
            raise UnprocessableEntity(f"Invalid header '{name}': entry index must be a number")
        delta = parse_uint(delta_text)
        if delta is None:
            raise UnprocessableEntity(
                f"Invalid header '{name}': must be an unix timestamp in microseconds"
            )
        found.append((index, delta, value))
    found.sort(key=lambda item: (item[0], item[1]))
    return found


def _parse_frame(
    headers: Mapping[str, str],
) -> tuple[list[str], int, list[str] | None, list[tuple[int, int, str, str]]]:
    headers = {name.lower(): value for name, value in headers.items()}
    entries = _parse_entries(headers)
    start_ts = _parse_start_ts(headers)
    label_names = _parse_label_names(headers)
    rows = []
    for index, delta, value in _record_headers(headers):
        if index >= len(entries):
            raise UnprocessableEntity(
                f"Invalid header '{V2_PREFIX}{index}-{delta}': entry index out of range"
            )
        rows.append((index, delta, entries[index], value))
    return entries, start_ts, label_names, rows


def _split_value(raw: str) -> tuple[str, str | None, str | None]:
    """``len[,content-type[,labels]]`` -> its three parts (None when absent)."""
    if "," not in raw:
        return raw, None, None
    length, rest = raw.split(",", 1)
    if "," not in rest:
        return length, rest, None
    content_type, labels = rest.split(",", 1)
    return length, content_type, labels


def resolve_v2_meta(
    prev: tuple[str, Mapping[str, str]] | None,
    content_type: str | None,
    labels_raw: str | None,
    label_names: list[str] | None,
) -> tuple[str, dict[str, str]]:
    """Content type and labels of a v2 record from its header parts and the previous record
    of its entry (``prev``: its content type and labels): omitted parts are inherited."""
    if content_type is None:
        if prev is None:
            raise UnprocessableEntity(
                "Content-type and labels must be provided for the first record of an entry"
            )
        return prev[0], dict(prev[1])
    content_type = content_type.strip() or (prev[0] if prev else DEFAULT_CONTENT_TYPE)
    labels = dict(prev[1]) if prev else {}
    for key, label in parse_labels(labels_raw or "", label_names):
        if label:
            labels[key] = label
        else:
            labels.pop(key, None)
    return content_type, labels


def parse_v2_request(headers: Mapping[str, str]) -> V2Request:
    """Parse a v2 write (``POST /io/{bucket}/write``) with per-entry inheritance (§8.1)."""
    entries, start_ts, label_names, rows = _parse_frame(headers)
    previous: dict[int, V2Record] = {}
    records = []
    for index, delta, entry, value in rows:
        length_text, content_type, labels_raw = _split_value(value)
        length = parse_uint(length_text.strip())
        if length is None:
            raise UnprocessableEntity(INVALID_HEADER)
        prev = previous.get(index)
        content_type, labels = resolve_v2_meta(
            None if prev is None else (prev.content_type, prev.labels),
            content_type, labels_raw, label_names,
        )
        record = V2Record(index, delta, entry, start_ts + delta, length, content_type, labels)
        previous[index] = record
        records.append(record)
    return V2Request(entries, start_ts, label_names, records)


def parse_v2_update(headers: Mapping[str, str]) -> V2Request:
    """Parse a v2 label update (``PATCH /io/{bucket}/update``, §8.5).

    Lengths and content types are ignored. Label operations accumulate per entry in
    (index, delta) order and each record gets the folded state in ``update``: the last
    operation per label, a value sets it, an empty value removes it.
    """
    entries, start_ts, label_names, rows = _parse_frame(headers)
    state: dict[int, dict[str, str]] = {}
    records = []
    for index, delta, entry, value in rows:
        folded = state.setdefault(index, {})
        folded.update(parse_labels(_split_value(value)[2] or "", label_names))
        update = LabelUpdate.from_values(folded)
        records.append(V2Record(index, delta, entry, start_ts + delta, update=update))
    return V2Request(entries, start_ts, label_names, records)


def parse_v2_remove(headers: Mapping[str, str]) -> V2Request:
    """Parse a v2 removal (``DELETE /io/{bucket}/remove``): header values are ignored."""
    entries, start_ts, label_names, rows = _parse_frame(headers)
    records = [V2Record(i, delta, entry, start_ts + delta) for i, delta, entry, _ in rows]
    return V2Request(entries, start_ts, label_names, records)
