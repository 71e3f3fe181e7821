"""Fast paths for parsing batch *write* headers (v1 and v2), straight from ASGI raw headers.

A batch of 1,000 small records carries 1,000 record headers, and parsing them through the
general parsers (``v1.parse_v1_headers``, ``v2_parse.parse_v2_request``: a decoded header map,
a regular expression per number, one frozen dataclass per record, the label grammar per
record) cost ~8 µs a record, a quarter of the server's time per record (issue 15 profile).
These functions handle the well-formed common case on bytes: digits via ``bytes.isdigit``, and
the part of a value after the length (content type and labels, which repeat across records)
parsed once per distinct text and shared. Anything unusual (a number that is not plain
digits or too long, a duplicate, a parse error) makes them return None and the caller runs the
general parser, which raises the exact error; so results and errors are those of the general
parsers, byte for byte (``tests/api/test_batch_fast_parse.py`` compares them).

Rows are ``Incoming`` named tuples in body order (from the column pass: a ``Rows`` of columns
that builds them on demand); the ``labels`` dicts are shared between rows: never mutate them.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from itertools import compress, repeat
from operator import add, itemgetter
from typing import NamedTuple

from appliance.api.batch_codec.common import V1_TIME_PREFIX
from appliance.api.batch_codec.v1 import parse_v1_tail
from appliance.api.batch_codec.v2_parse import (
    _parse_entries,
    _parse_label_names,
    _parse_start_ts,
    resolve_v2_meta,
)
from appliance.errors import UnprocessableEntity

_V1 = V1_TIME_PREFIX.encode()
_V1_LEN = len(_V1)
_V2 = b"x-reduct-"
_MAX_DIGITS = 19  # any 19-digit number is below 2**64; longer ones take the general parser

class Incoming(NamedTuple):
    """One record announced by batch headers; ``key`` identifies it in the error map.

    A named tuple, not a frozen dataclass: a batch makes one per record, and building a frozen
    dataclass costs ~2 µs (``object.__setattr__`` per field) against ~0.3 µs."""

    key: Hashable
    entry: str
    timestamp: int
    length: int
    content_type: str
    labels: Mapping[str, str]


_new = tuple.__new__  # Incoming from a plain tuple without NamedTuple.__new__'s Python frame


class Rows:
    """The records of a parsed batch as columns (body order), what the in-memory write path
    reads directly; iterating or indexing builds the ``Incoming`` rows once, on demand.

    A 1,000-record batch written in memory never needs its rows: building them cost ~0.25 µs
    a record on the event loop (issue 15)."""

    __slots__ = ("keys", "entries", "stamps", "lengths", "content_types", "labels", "_rows")

    def __init__(
        self, keys: list[Hashable], entries: list[str], stamps: list[int], lengths: list[int],
        content_types: list[str], labels: list[dict[str, str]],
    ) -> None:
        self.keys = keys
        self.entries = entries
        self.stamps = stamps
        self.lengths = lengths
        self.content_types = content_types
        self.labels = labels
        self._rows: list[Incoming] | None = None

    def rows(self) -> list[Incoming]:
        """The ``Incoming`` rows (built on the first call)."""
        rows = self._rows
        if rows is None:
            rows = self._rows = list(map(_new, repeat(Incoming), zip(
                self.keys, self.entries, self.stamps, self.lengths, self.content_types,
                self.labels,
            )))
        return rows

    def __len__(self) -> int:
        return len(self.stamps)

    def __iter__(self) -> Iterator[Incoming]:
        return iter(self.rows())

    def __getitem__(self, index: int) -> Incoming:
        return self.rows()[index]

    def __eq__(self, other: object) -> bool:
        return self.rows() == (other.rows() if isinstance(other, Rows) else other)

    __hash__ = None  # type: ignore[assignment]


class WriteHeaders(NamedTuple):
    """A parsed batch write: rows in body order, the entries (v2) and the other headers."""

    rows: Rows | list[Incoming]
    entries: list[str]
    start_ts: int
    others: dict[str, str]
    content_length: int


def _text(raw: bytes) -> str:
    """A header value as text, as ``params.decode_value`` does (UTF-8, else Latin-1)."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin1")


def _number(raw: bytes) -> int | None:
    raw = raw.strip()
    if 0 < len(raw) <= _MAX_DIGITS and raw.isdigit():
        return int(raw)
    return None


def _plain_numbers(raws: list[bytes]) -> bool:
    """True if every item is 1 to ``_MAX_DIGITS`` ASCII digits (checked in C, no loop)."""
    lengths = list(map(len, raws))
    return min(lengths) > 0 and max(lengths) <= _MAX_DIGITS and b"".join(raws).isdigit()


def _digit_fields(fields: list[bytes]) -> bool:
    """For fields split from a text already known to hold only digits and separators: True if
    none is empty or longer than ``_MAX_DIGITS``."""
    return b"" not in fields and max(map(len, fields)) <= _MAX_DIGITS


def columns(raw_headers: list[tuple[bytes, bytes]]) -> tuple[list[bytes], list[bytes]]:
    """Raw header pairs as a names column and a values column."""
    # Two comprehensions: 0.017 µs a pair each, against 0.066 for ``chain`` and slicing.
    return [name for name, _ in raw_headers], [value for _, value in raw_headers]


_CT = itemgetter(0)
_LABELS = itemgetter(1)


def parse_v1_write(raw_headers: Iterable[tuple[bytes, bytes]], entry: str) -> WriteHeaders | None:
    """The records of a v1 batch write (keys: timestamps), or None: take the general parser.

    A batch of plain record headers (lower-case names, digits only, every value with a comma)
    is parsed column by column into ``Rows`` (``bench_batch_parse.py``: ~1.1 against ~1.6 µs a
    record); anything else goes through the per-header loop below, which decides exactly as
    before."""
    raw = raw_headers if type(raw_headers) is list else list(raw_headers)
    names, values = columns(raw)
    flags = [name[:_V1_LEN] == _V1 for name in names]
    count = flags.count(True)
    if count == 0:
        return _parse_v1_loop(raw, entry)
    others: dict[str, str] = {}
    if count < len(raw):
        for name, value, is_record in zip(names, values, flags):
            if is_record:
                continue
            if name[:_V1_LEN].lower() == _V1:
                return None  # not lower-case: the general parser lower-cases
            others[name.decode("latin1").lower()] = _text(value)
        names = list(compress(names, flags))
        values = list(compress(values, flags))
    # The timestamps in one go: joined, the names without their prefix (once each) must be
    # digits and separators only.
    joined = b"\n".join(names)
    stamps_text = joined.replace(_V1, b"")
    if joined.count(_V1) != count or stamps_text.translate(None, _DIGITS) != b"\n" * (count - 1):
        return _parse_v1_loop(raw, entry)
    ts_raw = stamps_text.split(b"\n")
    length_raw, commas, tails = _split3(values, b",")
    # Records of a batch mostly share a few lengths: each distinct one checked and parsed once.
    distinct = set(length_raw)
    if not (
        b"".join(commas) == b"," * count and _digit_fields(ts_raw)
        and _plain_numbers(list(distinct))
    ):
        return _parse_v1_loop(raw, entry)
    stamps = list(map(int, ts_raw))
    if len(set(stamps)) != count:
        return None  # the same timestamp twice
    length_of = {raw_len: int(raw_len) for raw_len in distinct}
    lengths = list(map(length_of.__getitem__, length_raw))
    ordered = sorted(stamps)
    if ordered != stamps:  # body order is time order (reduct-py sends it sorted already)
        stamps, lengths, tails = map(list, zip(*sorted(zip(stamps, lengths, tails))))  # type: ignore[assignment]
    metas: dict[bytes, tuple[str, dict[str, str]]] = {}
    try:
        for tail in set(tails):
            metas[tail] = parse_v1_tail(_text(tail))
    except UnprocessableEntity:
        return None
    meta = list(map(metas.__getitem__, tails))
    rows = Rows(
        stamps, [entry] * count, stamps, lengths, list(map(_CT, meta)), list(map(_LABELS, meta))
    )
    return WriteHeaders(rows, [entry], 0, others, sum(lengths))


def _parse_v1_loop(raw_headers: list[tuple[bytes, bytes]], entry: str) -> WriteHeaders | None:
    """``parse_v1_write`` one header at a time: any batch the column pass does not take."""
    found: dict[int, tuple[int, bytes]] = {}
    others: dict[str, str] = {}
    tails: dict[bytes, tuple[str, dict[str, str]]] = {}
    total = count = 0
    try:
        for name, value in raw_headers:
            if not name.startswith(_V1):
                if name[:_V1_LEN].lower() == _V1:
                    return None  # not lower-case: the general parser lower-cases
                others[name.decode("latin1").lower()] = _text(value)
                continue
            ts_raw = name[_V1_LEN:]
            length_raw, comma, tail = value.partition(b",")
            # Plain digits only (no sign, no spaces); anything else: the general parser.
            if not (
                comma and ts_raw.isdigit() and len(ts_raw) <= _MAX_DIGITS
                and length_raw.isdigit() and len(length_raw) <= _MAX_DIGITS
            ):
                length = _number(length_raw)  # " 10 " is fine: it is stripped, as there
                if not comma or length is None or not ts_raw.isdigit() or len(ts_raw) > _MAX_DIGITS:
                    return None
            else:
                length = int(length_raw)
            ts = int(ts_raw)
            found[ts] = (length, tail)
            count += 1
            total += length
        if len(found) != count:
            return None  # the same timestamp twice
        rows: list[Incoming] = []
        append = rows.append
        for ts in sorted(found):
            length, tail = found[ts]
            meta = tails.get(tail)
            if meta is None:
                meta = tails[tail] = parse_v1_tail(_text(tail))
            append(_new(Incoming, (ts, entry, ts, length, meta[0], meta[1])))
    except UnprocessableEntity:
        return None
    return WriteHeaders(rows, [entry], 0, others, total)


_DIGITS = b"0123456789"


def _separators(count: int) -> bytes:
    """What ``count`` joined record names ``<digits>-<digits>`` leave without their digits."""
    return b"-\n" * (count - 1) + b"-"


def parse_v2_write(raw_headers: Iterable[tuple[bytes, bytes]]) -> WriteHeaders | None:
    """The records of a v2 batch write (keys: ``(index, delta)``), or None: general parser.

    Plain record headers (``x-reduct-<digits>-<digits>: <digits>[,...]``) are split and
    checked column by column (C-level ``map``s); only the inheritance of content type and
    labels, which depends on the previous record of the entry, stays a loop (one dict lookup
    a record). Anything else goes through the per-header loop below, which decides exactly
    as before."""
    raw = raw_headers if type(raw_headers) is list else list(raw_headers)
    names, values = columns(raw)
    flags = [name[:9] == _V2 for name in names]
    prefixed = list(compress(names, flags))
    if not prefixed:
        return _parse_v2_loop(raw)
    # The common case, every prefixed name but a few (entries, start-ts, labels) a record's,
    # split in one go: joined, the prefix and the dash become separators.
    is_record = [name[9:10].isdigit() for name in prefixed]
    count = is_record.count(True)
    if count == 0:
        return _parse_v2_loop(raw)
    record_names = prefixed if count == len(prefixed) else list(compress(prefixed, is_record))
    joined = b"\n".join(record_names)
    rests = joined.replace(_V2, b"")
    # Digits deleted, exactly "-" per name and the separators must remain: every name is
    # the prefix (once), digits, one dash, digits. Else the loop decides.
    if joined.count(_V2) != count or rests.translate(None, _DIGITS) != _separators(count):
        return _parse_v2_loop(raw)
    parts = rests.replace(b"-", b"\n").split(b"\n")
    index_raw, delta_raw = parts[0::2], parts[1::2]
    others: dict[str, str] = {}
    if count < len(raw):
        record_flags = iter(is_record)
        for name, value, is_prefixed in zip(names, values, flags):
            if is_prefixed and next(record_flags):
                continue
            if not _keep_other(name, value, is_prefixed, others):
                return None
    length_raw, commas, tails = _split3(compress(compress(values, flags), is_record), b",")
    distinct_indexes, distinct_lengths = set(index_raw), set(length_raw)
    if not (
        _digit_fields(parts) and _plain_numbers(list(distinct_indexes))
        and _plain_numbers(list(distinct_lengths))
    ):
        return _parse_v2_loop(raw)
    index_of = {text: int(text) for text in distinct_indexes}
    indexes = list(map(index_of.__getitem__, index_raw))
    deltas = list(map(int, delta_raw))
    length_of = {text: int(text) for text in distinct_lengths}
    lengths = list(map(length_of.__getitem__, length_raw))
    if b"".join(commas) != b"," * count:
        # No comma: content type and labels are inherited (None).
        tails = [tail if comma else None for comma, tail in zip(commas, tails)]
    keys: Iterable[tuple[int, int]]
    if len(index_of) == 1 and len(set(deltas)) == count and sorted(deltas) == deltas:
        keys = zip(indexes, deltas)  # one entry, in order (the usual batch): no tuples to sort
    else:
        keys = list(zip(indexes, deltas))
        if len(set(keys)) != count:
            return None
        if sorted(keys) != keys:  # body order is (index, delta) order
            keys, lengths, tails = map(list, zip(*sorted(zip(keys, lengths, tails))))
            indexes = [key[0] for key in keys]
            deltas = [key[1] for key in keys]
    try:
        entries = _parse_entries(others)
        start_ts = _parse_start_ts(others)
        label_names = _parse_label_names(others)
        if max(indexes) >= len(entries):
            return None
        metas = _inherit(indexes, tails, label_names)
    except UnprocessableEntity:
        return None
    rows = Rows(
        list(keys), list(map(entries.__getitem__, indexes)),
        list(map(add, repeat(start_ts), deltas)), lengths, list(map(_CT, metas)),
        list(map(_LABELS, metas)),
    )
    return WriteHeaders(rows, entries, start_ts, others, sum(lengths))


def _split3(items: Iterable[bytes], sep: bytes) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """``bytes.partition`` of every item, as three columns (three empty lists for none)."""
    parts = [item.partition(sep) for item in items]
    if not parts:
        return [], [], []
    first, middle, last = zip(*parts)
    return list(first), list(middle), list(last)


def _inherit(
    indexes: list[int], tails: list[bytes | None], label_names: list[str] | None
) -> list[tuple[str, dict[str, str]]]:
    """Content type and labels of each record (in body order) from its value's tail and the
    previous record of its entry (``resolve_v2_meta``); the objects are shared between rows."""
    interned: dict[tuple[object, ...], tuple[str, dict[str, str]]] = {}
    metas: list[tuple[str, dict[str, str]]] = []
    append = metas.append
    if len(set(indexes)) == 1:
        # One entry: for each previous metadata a table tail -> metadata, switched when the
        # metadata changes (one dict lookup a record when labels cycle).
        tables: dict[int, dict[bytes | None, tuple[str, dict[str, str]]]] = {}
        prev: tuple[str, dict[str, str]] | None = None
        table = tables[id(None)] = {}
        for tail in tails:
            meta = table.get(tail)
            if meta is None:
                meta = table[tail] = _resolve(prev, tail, label_names, interned)
            if meta is not prev:
                prev = meta
                table = tables.get(id(meta))  # type: ignore[assignment]
                if table is None:
                    table = tables[id(meta)] = {}
            append(meta)
        return metas
    # (id of the previous record's metadata, value tail) -> metadata: the result of
    # inheriting depends on nothing else, and the previous metadata objects stay alive here.
    states: dict[tuple[int, bytes | None], tuple[str, dict[str, str]]] = {}
    previous: dict[int, tuple[str, dict[str, str]]] = {}
    for index, tail in zip(indexes, tails):
        before = previous.get(index)
        meta = states.get((id(before), tail))
        if meta is None:
            meta = states[(id(before), tail)] = _resolve(before, tail, label_names, interned)
        previous[index] = meta
        append(meta)
    return metas


def _resolve(
    prev: tuple[str, dict[str, str]] | None, tail: bytes | None, label_names: list[str] | None,
    interned: dict[tuple[object, ...], tuple[str, dict[str, str]]],
) -> tuple[str, dict[str, str]]:
    """``resolve_v2_meta`` for a value's tail, interned: one object per distinct result, so
    the chain of ``prev`` objects repeats (labels cycling through ten values give ten states,
    not one per record)."""
    if tail is None:
        content_type = labels_raw = None
    else:
        ct_text, comma, labels_text = _text(tail).partition(",")
        content_type, labels_raw = ct_text, (labels_text if comma else None)
    meta = resolve_v2_meta(prev, content_type, labels_raw, label_names)
    return interned.setdefault((meta[0], *meta[1].items()), meta)


def _keep_other(name: bytes, value: bytes, prefixed: bool, others: dict[str, str]) -> bool:
    """Keep a v2 header that is not a record's in ``others``; False for one only the general
    parser can answer: a malformed record header (it says why) or an ``x-reduct-`` name not
    in lower case (it lower-cases). ``prefixed``: the name starts with ``x-reduct-``."""
    if prefixed:
        if name.rpartition(b"-")[2].isdigit() or name.endswith(b"-"):
            return False
    elif name[:9].lower() == _V2:
        return False
    others[name.decode("latin1").lower()] = _text(value)
    return True


def _parse_v2_loop(raw_headers: list[tuple[bytes, bytes]]) -> WriteHeaders | None:
    """``parse_v2_write`` one header at a time: any batch the column pass does not take."""
    found: dict[tuple[int, int], tuple[int, bytes | None]] = {}
    others: dict[str, str] = {}
    total = count = 0
    try:
        for name, value in raw_headers:
            if name.startswith(_V2):
                index_raw, dash, delta_raw = name[9:].partition(b"-")
                if dash and index_raw.isdigit() and delta_raw.isdigit():
                    if len(index_raw) > _MAX_DIGITS or len(delta_raw) > _MAX_DIGITS:
                        return None
                    length_raw, comma, tail = value.partition(b",")
                    if length_raw.isdigit() and len(length_raw) <= _MAX_DIGITS:
                        length = int(length_raw)
                    else:
                        length = _number(length_raw)  # stripped, as there
                        if length is None:
                            return None
                    index, delta = int(index_raw), int(delta_raw)
                    # No comma: content type and labels are inherited (None).
                    found[(index, delta)] = (length, tail if comma else None)
                    count += 1
                    total += length
                    continue
            if not _keep_other(name, value, name.startswith(_V2), others):
                return None
        if len(found) != count:
            return None
        entries = _parse_entries(others)
        start_ts = _parse_start_ts(others)
        label_names = _parse_label_names(others)
        keys = sorted(found)
        if keys and keys[-1][0] >= len(entries):  # sorted: the last has the highest index
            return None
        metas = _inherit([index for index, _ in keys], [found[key][1] for key in keys],
                         label_names)
        rows = [
            _new(Incoming, (key, entries[key[0]], start_ts + key[1], found[key][0], *meta))
            for key, meta in zip(keys, metas, strict=True)
        ]
    except UnprocessableEntity:
        return None
    return WriteHeaders(rows, entries, start_ts, others, total)
