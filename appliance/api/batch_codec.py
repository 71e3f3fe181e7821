"""Sans-I/O codec for the batch protocol headers: v1 (§7, one entry) and v2 (§8, many entries).

Input is a plain mapping of lower-cased header names to values; output is frozen dataclasses
(requests) or ``{name: value}`` dicts / ``(name, value)`` pairs (responses). Nothing here knows
Quart: the HTTP layer moves bodies and turns ``UnprocessableEntity`` into a 422.

v1 record header: ``x-reduct-time-<ts>: <len>,<content-type>[,<k>=<v>]*`` (values containing a
comma are quoted). v2: ``x-reduct-entries`` (percent-encoded names), ``x-reduct-start-ts``, an
optional ``x-reduct-labels`` name dictionary and ``x-reduct-<entry-index>-<delta>:
<len>[,<content-type>[,<label-delta>]]`` where omitted parts are inherited from the previous
record of the same entry and an empty label value deletes the label. Parsing mirrors
ReductStore's ``reduct_base::batch`` byte for byte, quirks included, because clients are
tested against it; error messages are the spec's.

One module on purpose, though longer than our usual 400 lines: v1 and v2 share the label
grammar, the error texts and the tests that pin them, and the HTTP layer sees one codec.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from appliance.errors import ApplianceError, UnprocessableEntity

__all__ = [
    "DEFAULT_CONTENT_TYPE",
    "LabelUpdate",
    "RecordLike",
    "V1Record",
    "V2Record",
    "V2Request",
    "decode_name",
    "encode_name",
    "encode_v1_error",
    "encode_v1_record_header",
    "encode_v2_echo",
    "encode_v2_error",
    "encode_v2_read_batch",
    "parse_v1_headers",
    "parse_v1_timestamps",
    "parse_v2_remove",
    "parse_v2_request",
    "parse_v2_update",
    "v2_body_order",
    "v2_read_batch_headers",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"
V1_TIME_PREFIX = "x-reduct-time-"
V1_ERROR_PREFIX = "x-reduct-error-"
V2_PREFIX = "x-reduct-"
ENTRIES_HEADER = "x-reduct-entries"
START_TS_HEADER = "x-reduct-start-ts"
LABELS_HEADER = "x-reduct-labels"

U64_LIMIT = 2**64
_U64_DIGITS = len(str(U64_LIMIT - 1))
_UINT = re.compile(r"\+?[0-9]+")  # Rust's unsigned `parse` grammar (a leading '+' is allowed)
_TCHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
)
_COMPUTED_LABEL = "Label names must not start with '@': reserved for computed labels"
_INVALID = "Invalid batched header"


class RecordLike(Protocol):
    """What the read encoders need of a record (``appliance.engine.models.RecordMeta`` fits)."""

    @property
    def timestamp(self) -> int: ...  # noqa: D102
    @property
    def size(self) -> int: ...  # noqa: D102
    @property
    def content_type(self) -> str: ...  # noqa: D102
    @property
    def labels(self) -> Mapping[str, str]: ...  # noqa: D102
    @property
    def entry(self) -> str: ...  # noqa: D102


@dataclass(frozen=True, slots=True)
class LabelUpdate:
    """A label patch: labels to set (or overwrite) and labels to remove."""

    set: Mapping[str, str] = field(default_factory=dict)
    remove: frozenset[str] = frozenset()

    @classmethod
    def from_values(cls, values: Mapping[str, str | None]) -> LabelUpdate:
        """Build from ``{name: value}`` where an empty value or None means "remove"."""
        return cls(
            set={k: v for k, v in values.items() if v},
            remove=frozenset(k for k, v in values.items() if not v),
        )


def _parse_uint(text: str) -> int | None:
    if not _UINT.fullmatch(text):
        return None
    # A u64 has at most 20 significant digits; int() of a 45,000-digit header would raise.
    digits = text.lstrip("+").lstrip("0") or "0"
    if len(digits) > _U64_DIGITS:
        return None
    number = int(digits)
    return number if number < U64_LIMIT else None


def _format_label_value(value: str) -> str:
    return f'"{value}"' if "," in value else value


def _error_value(err: ApplianceError) -> str:
    # The client-safe text: a corruption error's full message names server paths.
    return f"{err.status},{err.public_message}"


def _resolve_label(raw: str, label_names: list[str] | None) -> str:
    index = _parse_uint(raw) if label_names is not None else None
    if index is not None:
        if index >= len(label_names or ()):
            raise UnprocessableEntity(f"Label index '{raw}' is out of range")
        return (label_names or [])[index]
    if raw.startswith("@"):
        raise UnprocessableEntity(_COMPUTED_LABEL)
    return raw


def _parse_labels(
    raw: str, label_names: list[str] | None = None, *, v1: bool = False
) -> list[tuple[str, str]]:
    """``k=v,k2="a,b",k3=`` -> [(k, v), (k2, "a,b"), (k3, "")]; an empty value means delete.

    A quoted value runs to the next quote, commas included. v1 stops quietly at a part
    without ``=``; v2 rejects it. Keys index ``label_names`` when that dictionary is given.
    """
    pairs: list[tuple[str, str]] = []
    rest = raw.strip()
    while rest:
        if "=" not in rest:
            if v1:
                break
            raise UnprocessableEntity(_INVALID)
        raw_key, tail = rest.split("=", 1)
        key = _resolve_label(raw_key.strip(), label_names)
        if tail.startswith('"'):
            if '"' not in tail[1:]:
                raise UnprocessableEntity(_INVALID)
            value, rest = tail[1:].split('"', 1)
            rest = rest.lstrip(",").strip()
        elif "," in tail:
            value, rest = tail.split(",", 1)
            rest = rest.strip()
        else:
            value, rest = tail, ""
        pairs.append((key, value.strip()))
    return pairs


# -- percent encoding of names -----------------------------------------------------------------


def encode_name(name: str) -> str:
    """Percent-encode every byte that is not an HTTP tchar (``/`` -> ``%2F``, ``$`` stays)."""
    return "".join(chr(b) if b in _TCHARS else f"%{b:02X}" for b in name.encode())


def decode_name(encoded: str) -> str:
    """Undo ``encode_name``; only ``%XX`` is translated, so a raw ``/`` is accepted too."""
    try:
        raw = encoded.encode("latin-1")  # header values arrive as latin-1 decoded bytes
    except UnicodeEncodeError:
        raw = encoded.encode()
    decoded = bytearray()
    pos = 0
    while pos < len(raw):
        if raw[pos] == ord("%"):
            pair = raw[pos + 1 : pos + 3]
            if len(pair) != 2 or not all(chr(c) in "0123456789abcdefABCDEF" for c in pair):
                raise UnprocessableEntity(f"Invalid entry encoding in header name: '{encoded}'")
            decoded.append(int(pair, 16))
            pos += 3
        else:
            decoded.append(raw[pos])
            pos += 1
    try:
        return decoded.decode()
    except UnicodeDecodeError:
        raise UnprocessableEntity(f"Entry name is not valid UTF-8 in header '{encoded}'") from None


# -- v1 ----------------------------------------------------------------------------------------


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
        raise UnprocessableEntity(_INVALID)
    length_text, rest = value.split(",", 1)
    length = _parse_uint(length_text.strip())
    if length is None:
        raise UnprocessableEntity("Invalid content length")
    content_type, rest = rest.split(",", 1) if "," in rest else (rest, DEFAULT_CONTENT_TYPE)
    content_type = content_type.strip() if content_type else DEFAULT_CONTENT_TYPE

    labels = dict(_parse_labels(rest, v1=True))
    return length, content_type, labels


def _v1_items(headers: Mapping[str, str]) -> list[tuple[int, str]]:
    items = []
    for name, value in headers.items():
        name = name.lower()
        if not name.startswith(V1_TIME_PREFIX):
            continue
        timestamp = _parse_uint(name[len(V1_TIME_PREFIX) :])
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
    labels = sorted(f"{k}={_format_label_value(v)}" for k, v in meta.labels.items())
    value = ",".join([str(meta.size), meta.content_type or DEFAULT_CONTENT_TYPE, *labels])
    return f"{V1_TIME_PREFIX}{meta.timestamp}", value


def encode_v1_error(timestamp: int, err: ApplianceError) -> tuple[str, str]:
    """``x-reduct-error-<ts>: <status>,<message>`` for a failed record."""
    return f"{V1_ERROR_PREFIX}{timestamp}", _error_value(err)


# -- v2 requests -------------------------------------------------------------------------------


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
    start_ts = _parse_uint(raw)
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
        index = _parse_uint(index_text)
        if index is None:
            raise UnprocessableEntity(f"Invalid header '{name}': entry index must be a number")
        delta = _parse_uint(delta_text)
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


def parse_v2_request(headers: Mapping[str, str]) -> V2Request:
    """Parse a v2 write (``POST /io/{bucket}/write``) with per-entry inheritance (§8.1)."""
    entries, start_ts, label_names, rows = _parse_frame(headers)
    previous: dict[int, V2Record] = {}
    records = []
    for index, delta, entry, value in rows:
        length_text, content_type, labels_raw = _split_value(value)
        length = _parse_uint(length_text.strip())
        if length is None:
            raise UnprocessableEntity(_INVALID)
        prev = previous.get(index)
        if content_type is None:
            if prev is None:
                raise UnprocessableEntity(
                    "Content-type and labels must be provided for the first record of an entry"
                )
            content_type, labels = prev.content_type, dict(prev.labels)
        else:
            content_type = content_type.strip() or (
                prev.content_type if prev else DEFAULT_CONTENT_TYPE
            )
            labels = dict(prev.labels) if prev else {}
            for key, label in _parse_labels(labels_raw or "", label_names):
                if label:
                    labels[key] = label
                else:
                    labels.pop(key, None)
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
        folded.update(_parse_labels(_split_value(value)[2] or "", label_names))
        update = LabelUpdate.from_values(folded)
        records.append(V2Record(index, delta, entry, start_ts + delta, update=update))
    return V2Request(entries, start_ts, label_names, records)


def parse_v2_remove(headers: Mapping[str, str]) -> V2Request:
    """Parse a v2 removal (``DELETE /io/{bucket}/remove``): header values are ignored."""
    entries, start_ts, label_names, rows = _parse_frame(headers)
    records = [V2Record(i, delta, entry, start_ts + delta) for i, delta, entry, _ in rows]
    return V2Request(entries, start_ts, label_names, records)


# -- v2 responses ------------------------------------------------------------------------------


def _entry_indexes(records: Sequence[RecordLike]) -> dict[str, int]:
    """Entries ordered by their first timestamp in the batch, ties by name (§8.3)."""
    first: dict[str, int] = {}
    for record in records:
        first[record.entry] = min(record.timestamp, first.get(record.entry, record.timestamp))
    ordered = sorted(first, key=lambda name: (first[name], name))
    return {name: index for index, name in enumerate(ordered)}


def v2_body_order(records: Sequence[RecordLike]) -> list[RecordLike]:
    """The order in which bodies must follow ``encode_v2_read_batch`` headers.

    reduct-py reads bodies by (delta, entry_index); this equals ReductStore's (entry_index,
    timestamp) order as long as entries do not interleave in time within one batch (§8.3).
    """
    indexes = _entry_indexes(records)
    return sorted(records, key=lambda r: (r.timestamp, indexes[r.entry]))


def _first_label_delta(labels: Mapping[str, str], names: dict[str, int]) -> str:
    """Labels of an entry's first record: every label, names indexed in sorted order."""
    ops: list[tuple[int, str]] = []
    for key in sorted(labels):
        value = labels[key]
        ops.append((names.setdefault(key, len(names)), f'"{value}"' if "," in value else value))
    ops.sort()
    return ",".join([f"{index}={value}" for index, value in ops])


def _label_delta(
    labels: Mapping[str, str], previous: Mapping[str, str], names: dict[str, int]
) -> str:
    """Changes from ``previous``: set or changed labels, removed ones as ``idx=``.

    New names get their indexes in the sorted order of the changed keys; when every changed
    name is already indexed (the usual case after a batch's first record) that order cannot
    matter and the sort is skipped.
    """
    ops: list[tuple[int, str]] = []
    added = 0
    for key, value in labels.items():
        old = previous.get(key)
        if old != value:
            index = names.get(key)
            if index is None:
                return _label_delta_sorted(labels, previous, names)
            if old is None:
                added += 1
            ops.append((index, f'"{value}"' if "," in value else value))
    if len(previous) != len(labels) - added:  # some labels were removed
        for key in previous:
            if key not in labels:
                index = names.get(key)
                if index is None:
                    return _label_delta_sorted(labels, previous, names)
                ops.append((index, ""))
    if not ops:
        return ""
    if len(ops) == 1:
        index, value = ops[0]
        return f"{index}={value}"
    ops.sort()
    return ",".join([f"{index}={value}" for index, value in ops])


def _label_delta_sorted(
    labels: Mapping[str, str], previous: Mapping[str, str], names: dict[str, int]
) -> str:
    """``_label_delta`` when new names must be indexed: in the sorted order of changed keys."""
    changed = [key for key, value in labels.items() if previous.get(key) != value]
    changed.extend(key for key in previous if key not in labels)
    changed.sort()
    ops: list[tuple[int, str]] = []
    for key in changed:
        value = labels.get(key)
        if value is None:
            value = ""
        elif "," in value:
            value = f'"{value}"'
        ops.append((names.setdefault(key, len(names)), value))
    ops.sort()
    return ",".join([f"{index}={value}" for index, value in ops])


def v2_read_batch_headers(records: Sequence[RecordLike]) -> list[tuple[str, str]]:
    """``encode_v2_read_batch`` as a list of (name, value) pairs, in the same order.

    The hot path of batched reads: a batch of one entry in time order (what the query
    collects) needs no sorting, and a record whose labels equal its predecessor's costs one
    dict comparison.
    """
    if not records:
        return [(ENTRIES_HEADER, ""), (START_TS_HEADER, "0")]
    first: dict[str, int] = {}
    in_order = True
    last_ts = -1
    for record in records:
        ts = record.timestamp
        if ts < last_ts:
            in_order = False
        last_ts = ts
        seen = first.get(record.entry)
        if seen is None or ts < seen:
            first[record.entry] = ts
    if len(first) == 1:
        indexes = dict.fromkeys(first, 0)
        body: Sequence[RecordLike] = records if in_order else v2_body_order(records)
    else:
        ordered = sorted(first, key=lambda name: (first[name], name))
        indexes = {name: index for index, name in enumerate(ordered)}
        body = sorted(records, key=lambda r: (r.timestamp, indexes[r.entry]))
    start_ts = min(first.values())
    names: dict[str, int] = {}
    previous: dict[int, tuple[str, Mapping[str, str]]] = {}  # content type, labels
    headers = [
        (ENTRIES_HEADER, ",".join([encode_name(name) for name in indexes])),
        (START_TS_HEADER, str(start_ts)),
    ]
    append = headers.append
    for record in body:
        index = indexes[record.entry]
        content_type = record.content_type or DEFAULT_CONTENT_TYPE
        labels = record.labels
        prev = previous.get(index)
        if prev is None:
            delta = _first_label_delta(labels, names)
            value = f"{record.size},{content_type}"
            if delta:
                value = f"{value},{delta}"
        else:
            prev_type, prev_labels = prev
            type_part = "" if prev_type == content_type else content_type
            delta = "" if labels == prev_labels else _label_delta(labels, prev_labels, names)
            if delta:
                value = f"{record.size},{type_part},{delta}"
            elif type_part:
                value = f"{record.size},{type_part}"
            else:
                value = str(record.size)
        append((f"{V2_PREFIX}{index}-{record.timestamp - start_ts}", value))
        previous[index] = (content_type, labels)
    if names:
        append((LABELS_HEADER, ",".join([encode_name(name) for name in names])))
    return headers


def encode_v2_read_batch(records: Sequence[RecordLike]) -> dict[str, str]:
    """Headers of a ``GET /io/{bucket}/read`` batch: entries, start ts, labels, one per record."""
    return dict(v2_read_batch_headers(records))


def encode_v2_echo(request: V2Request) -> dict[str, str]:
    """The ``x-reduct-entries`` / ``x-reduct-start-ts`` echo every v2 write response needs."""
    return {
        ENTRIES_HEADER: ",".join(encode_name(entry) for entry in request.entries),
        START_TS_HEADER: str(request.start_ts),
    }


def encode_v2_error(entry_index: int, delta: int, err: ApplianceError) -> tuple[str, str]:
    """``x-reduct-error-<entry_index>-<delta>: <status>,<message>`` for a failed record."""
    return f"{V1_ERROR_PREFIX}{entry_index}-{delta}", _error_value(err)
