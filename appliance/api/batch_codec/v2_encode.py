"""Batch protocol v2 (§8): encode read-batch headers (entry indexes, label deltas), echoes and
errors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from appliance.api.batch_codec.common import (
    DEFAULT_CONTENT_TYPE,
    ENTRIES_HEADER,
    LABELS_HEADER,
    START_TS_HEADER,
    V1_ERROR_PREFIX,
    V2_PREFIX,
    RecordLike,
    encode_name,
    error_value,
    format_rows,
    header_pairs,
)
from appliance.api.batch_codec.v2_parse import V2Request
from appliance.errors import ApplianceError
from appliance.http1.headers import values_are_clean

if TYPE_CHECKING:
    from appliance.api.batch_codec.fast import WriteHeaders


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
        value = _record_value(record, content_type, previous.get(index), names)
        append((f"{V2_PREFIX}{index}-{record.timestamp - start_ts}", value))
        previous[index] = (content_type, record.labels)
    if names:
        append((LABELS_HEADER, ",".join([encode_name(name) for name in names])))
    return headers


def _record_value(
    record: RecordLike, content_type: str, prev: tuple[str, Mapping[str, str]] | None,
    names: dict[str, int],
) -> str:
    """A record's v2 header value: size, then content type and labels where they differ from
    ``prev`` (the content type and labels of the entry's previous record in the batch)."""
    labels = record.labels
    if prev is None:
        delta = _first_label_delta(labels, names)
        value = f"{record.size},{content_type}"
        return f"{value},{delta}" if delta else value
    prev_type, prev_labels = prev
    type_part = "" if prev_type == content_type else content_type
    delta = "" if labels == prev_labels else _label_delta(labels, prev_labels, names)
    if delta:
        return f"{record.size},{type_part},{delta}"
    if type_part:
        return f"{record.size},{type_part}"
    return str(record.size)


def v2_read_batch_raw(records: Sequence[RecordLike]) -> list[tuple[bytes, bytes]]:
    """``v2_read_batch_headers`` encoded: (lower-case name, value) ``bytes`` pairs.

    A batch of one entry in time order (what a query of one entry collects) is
    ``v2_one_entry_lines`` split into pairs; anything else is ``v2_read_batch_headers``'
    pairs, encoded.
    """
    built = v2_one_entry_lines(records)
    if built is None:
        return _encoded(v2_read_batch_headers(records))
    return header_pairs(built[0])


def v2_one_entry_lines(records: Sequence[RecordLike]) -> tuple[bytes, list[bytes]] | None:
    """The v2 header lines (``name: value`` CRLF each, lower-case names, in
    ``v2_read_batch_headers``' order) of a batch of one entry in time order, what a query of
    one entry collects; None for any other batch.

    Also gives the values a sender must check (header byte classes): those that are not plain
    digits, each distinct one once, a record's with its size as ``0``. Every name here is a
    token, so a batch whose values pass needs no check per record (``encode_batch``).

    What follows a record's size is made once per pair of (content type, labels) objects of
    it and its predecessor (records decoded together share equal ones).
    """
    if not records:
        return None
    entry = records[0].entry
    last_ts = -1
    for record in records:
        if record.entry != entry or record.timestamp < last_ts:
            return None
        last_ts = record.timestamp
    start_ts = records[0].timestamp
    names: dict[str, int] = {}
    entry_value = encode_name(entry).encode()
    lines = [b"%s: %s\r\n%s: %d\r\n" % (_ENTRIES, entry_value, _START_TS, start_ts)]
    checked = [entry_value]
    append = lines.append
    plain = b"x-reduct-0-%d: %d\r\n"
    with_tail = b"x-reduct-0-%d: %d%s\r\n"
    default = DEFAULT_CONTENT_TYPE
    # What follows the size, by the ids of (previous type, labels, this type, labels): the
    # same objects give the same text (label indexes, once given, never change), and
    # ``records`` keeps every one alive, so no id is reused meanwhile.
    tails: dict[tuple[int, int, int, int], bytes] = {}
    prev_type: Any = None
    prev_labels: Any = None
    prev_type_id = prev_labels_id = 0
    for record in records:
        labels = record.labels
        content_type = record.content_type or default
        if labels is prev_labels and content_type is prev_type:
            append(plain % (record.timestamp - start_ts, record.size))
            continue  # nothing changed: the size alone
        type_id = id(content_type)
        labels_id = id(labels)
        key = (prev_type_id, prev_labels_id, type_id, labels_id)
        tail = tails.get(key)
        if tail is None:
            prev = None if prev_type is None else (prev_type, prev_labels)
            text = _record_value(record, content_type, prev, names)
            tail = tails[key] = text[len(str(record.size)) :].encode()
            checked.append(b"0" + tail)
        append(with_tail % (record.timestamp - start_ts, record.size, tail))
        prev_type, prev_labels = content_type, labels
        prev_type_id, prev_labels_id = type_id, labels_id
    if names:
        value = ",".join([encode_name(n) for n in names]).encode()
        append(b"%s: %s\r\n" % (_LABELS, value))
        checked.append(value)
    return b"".join(lines), checked


def run_values(columns: Any) -> Any:
    """``_run_values`` of a block's ``Columns``, worked out once (kept in their memo)."""
    values = columns.memo.get("v2")
    if values is None:
        values = columns.memo["v2"] = _run_values(columns.records)
    return values


def v2_run_lines(spans: Sequence[tuple[Any, int, int]]) -> tuple[bytes, list[bytes]] | None:
    """``v2_one_entry_lines`` of a batch made of runs of blocks' records, one block after
    the other: ``spans`` are (``Columns``, lo, hi), the batch being each one's
    ``records[lo:hi]`` in turn (checked when they were read).

    Every record after a span's first is written with what follows its size as derived once
    for its block (``_run_values``): that depends only on the record's predecessor, which
    inside a run is the block's, and on the label indexes, which are the sorted label names
    wherever a run starts when all the block's records carry the same label names. A span's
    first record after the batch's first follows the previous block's last record: its
    value is worked out here. A span then costs one formatting for all its lines. None (use
    ``v2_one_entry_lines``) when a block's label names differ between its records or from
    the other blocks', or a value would need h11's word.
    """
    derived = []
    for columns, lo, hi in spans:
        values = run_values(columns)
        if values is False or hi <= lo:
            return None
        derived.append(values)
    if not derived:
        return None
    labels_value = derived[0][1]
    if any(values[1] != labels_value for values in derived):
        return None  # label names differ between blocks: indexes as they come, record by record
    columns, at, _ = spans[0]
    first = columns.records[at]
    start = first.timestamp
    names: dict[str, int] = {}
    text = _record_value(first, first.content_type or DEFAULT_CONTENT_TYPE, None, names).encode()
    entry_value = encode_name(first.entry).encode()
    parts = [b"%s: %s\r\n%s: %d\r\nx-reduct-0-0: %s\r\n" % (
        _ENTRIES, entry_value, _START_TS, start, text
    )]
    checked = [entry_value, text]
    previous: Any = None
    for (columns, lo, hi), (tails, _) in zip(spans, derived, strict=True):
        if previous is not None:  # the block's first record here follows the last block's
            record = columns.records[lo]
            content_type = record.content_type or DEFAULT_CONTENT_TYPE
            before = (previous.content_type or DEFAULT_CONTENT_TYPE, previous.labels)
            value = _record_value(record, content_type, before, names).encode()
            parts.append(b"x-reduct-0-%d: %s\r\n" % (record.timestamp - start, value))
            checked.append(value)
        if hi - lo > 1:
            parts.append(format_rows(
                _RUN_LINE, [ts - start for ts in columns.ts[lo + 1 : hi]],
                columns.sizes[lo + 1 : hi], tails[lo + 1 : hi],
            ))
        previous = columns.records[hi - 1]
    if labels_value:
        parts.append(b"%s: %s\r\n" % (_LABELS, labels_value))
    return b"".join(parts), checked


_RUN_LINE = b"x-reduct-0-%d: %d%s"


def _run_values(records: Sequence[RecordLike]) -> tuple[list[bytes], bytes] | bool:
    """For ``v2_run_lines``: what follows each record's size in its value when its block
    predecessor comes before it (what changed; CRLF-terminated; the first record's is
    unused) and the ``x-reduct-labels`` value; False if the records' label names differ or
    a value is not one h11 sends as it is (``values_are_clean``).

    One text per pair of (content type, labels) objects of a record and its predecessor
    (records decoded together share equal ones; ``records`` keeps them alive, so no id is
    reused meanwhile); the label names are compared once per such pair too."""
    if not records:
        return False
    first = records[0]
    keys = first.labels.keys()
    names: dict[str, int] = {key: index for index, key in enumerate(sorted(keys))}
    tails = [b""]
    append = tails.append
    known: dict[tuple[int, int, int, int], bytes] = {}
    default = DEFAULT_CONTENT_TYPE
    prev_labels: Any = first.labels
    prev_type: Any = first.content_type or default
    for record in records[1:]:
        labels = record.labels
        content_type = record.content_type or default
        if labels is prev_labels and content_type is prev_type:
            append(_CRLF)  # nothing changed: the size alone
            continue
        key = (id(prev_type), id(prev_labels), id(content_type), id(labels))
        tail = known.get(key)
        if tail is None:
            if labels.keys() != keys:
                return False
            text = _record_value(record, content_type, (prev_type, prev_labels), dict(names))
            tail = known[key] = text[len(str(record.size)) :].encode() + _CRLF
        append(tail)
        prev_labels, prev_type = labels, content_type
    labels_value = ",".join([encode_name(n) for n in names]).encode()
    checked = [b"0" + tail[:-2] for tail in known.values()]
    if labels_value:
        checked.append(labels_value)
    if checked and not values_are_clean(checked):
        return False
    return tails, labels_value


_CRLF = b"\r\n"


_ENTRIES = ENTRIES_HEADER.encode()
_START_TS = START_TS_HEADER.encode()
_LABELS = LABELS_HEADER.encode()


def _encoded(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]]:
    """Header pairs as the server sends them: lower-case names, ``bytes``."""
    return [(name.lower().encode(), value.encode()) for name, value in headers]


def encode_v2_read_batch(records: Sequence[RecordLike]) -> dict[str, str]:
    """Headers of a ``GET /io/{bucket}/read`` batch: entries, start ts, labels, one per record."""
    return dict(v2_read_batch_headers(records))


def encode_v2_echo(request: V2Request | WriteHeaders) -> dict[str, str]:
    """The ``x-reduct-entries`` / ``x-reduct-start-ts`` echo every v2 write response needs."""
    return {
        ENTRIES_HEADER: ",".join(encode_name(entry) for entry in request.entries),
        START_TS_HEADER: str(request.start_ts),
    }


def encode_v2_error(entry_index: int, delta: int, err: ApplianceError) -> tuple[str, str]:
    """``x-reduct-error-<entry_index>-<delta>: <status>,<message>`` for a failed record."""
    return f"{V1_ERROR_PREFIX}{entry_index}-{delta}", error_value(err)
