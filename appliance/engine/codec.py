"""Sans-I/O codec of every engine file: pure functions between bytes and frozen dataclasses.

All integers are little-endian. Every metadata file starts with a 4-byte magic and a u16 format
version and ends with a CRC32C (u32) of everything before it; decoding checks length, magic,
version and CRC before anything else and raises ``CorruptionError`` carrying the byte offset of
the damage (``path`` is whatever label the caller passed as ``source``).

Record (inside descriptors and WAL frames), 41 bytes + variable part::

    ts u64 | offset u64 | size u64 | payload_crc u32 | meta_size u32 | state u8
    | content_type_len u32 | label_count u32 | content_type | (name_len u32, value_len u32,
    name, value) * label_count

Block descriptor ``<id>.meta``: ``"RSBD" v1 flags u16 | block_id u64 | generation u64 |
record_count u32 | size u64 | meta_size u64 | data_end u64 | first_ts u64 | latest_ts u64 |
records | crc32c``. The header alone is enough to rebuild an index item.

Block index ``blocks.idx``: ``"RSIX" v1 flags u16 | generation u64 | count u32 | items | crc32c``,
item = ``block_id, first_ts, latest_ts u64 | record_count u32 | size, meta_size, data_end u64 |
descriptor_crc u32 | generation u64``.

Bucket settings ``bucket.settings``: ``"RSBS" v1 flags u16 | quota_type u8 | quota_size u64 |
max_block_size u64 | max_block_records u64 | crc32c``.

WAL segment ``.wal/<block_id>.wal``: header ``"RSWL" v1 flags u16 | block_id u64 | generation u64
| crc32c``, then frames ``kind u8 | length u32 | payload | crc32c(kind|length|payload)``; payload =
``generation u64`` + a record (WRITE, UPDATE) or a ``ts u64`` (REMOVE) or ``count u32`` + that
many records (WRITE_MANY: the records of one batch appended to one block in time order, written
with one frame and one CRC; replayed exactly as that many WRITE frames). A frame is only valid
whole, so a torn tail is detected and cut at the last good frame. A segment that ends inside its
header or a frame is *torn* (``CorruptionError.recoverable``: an append cut short by a crash);
a wrong magic, version or checksum is damage.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

import google_crc32c

from appliance.engine.models import BucketSettings, QuotaType, RecordMeta, RecordState
from appliance.engine.sizing import shape_metadata_size
from appliance.errors import CorruptionError

FORMAT_VERSION = 1
DESCRIPTOR_MAGIC = b"RSBD"
INDEX_MAGIC = b"RSIX"
SETTINGS_MAGIC = b"RSBS"
WAL_MAGIC = b"RSWL"

_CRC = struct.Struct("<I")
_REC = struct.Struct("<QQQIIBII")
_LABEL = struct.Struct("<II")
_DESC = struct.Struct("<4sHHQQIQQQQQ")
_INDEX = struct.Struct("<4sHHQI")
_ITEM = struct.Struct("<QQQIQQQIQ")
_SETTINGS = struct.Struct("<4sHHBQQQ")
_WAL = struct.Struct("<4sHHQQ")
_FRAME = struct.Struct("<BI")
_U64 = struct.Struct("<Q")
_MANY = struct.Struct("<BIQI")  # a WRITE_MANY frame's kind, length, generation, record count
_STATES = (RecordState.STARTED, RecordState.FINISHED, RecordState.ERRORED)
_QUOTA_CODES = {QuotaType.NONE: 0, QuotaType.FIFO: 1, QuotaType.HARD: 2}
_QUOTA_TYPES = {code: quota for quota, code in _QUOTA_CODES.items()}

WAL_HEADER_SIZE = _WAL.size + _CRC.size
_pack_record = pack_record = _REC.pack  # public: the bulk write path packs records inline
_pack_label = _LABEL.pack
crc32c = google_crc32c.value


@dataclass(slots=True)
class StoredRecord(RecordMeta):
    """A record as the engine keeps it: the public metadata plus where its bytes are (not
    frozen for speed, like ``RecordMeta``: never mutate one, build a new one)."""

    offset: int = 0
    crc: int = 0
    meta_size: int = 0


@dataclass(frozen=True, slots=True)
class Descriptor:
    """A decoded block descriptor (records sorted by timestamp)."""

    block_id: int
    generation: int
    records: tuple[StoredRecord, ...]
    size: int
    meta_size: int
    data_end: int
    first_ts: int
    latest_ts: int


@dataclass(frozen=True, slots=True)
class IndexItem:
    """One block as the block index summarises it."""

    block_id: int
    first_ts: int
    latest_ts: int
    record_count: int
    size: int
    meta_size: int
    data_end: int
    descriptor_crc: int
    generation: int


@dataclass(frozen=True, slots=True)
class BlockIndex:
    """The decoded ``blocks.idx`` of one entry."""

    generation: int
    items: tuple[IndexItem, ...]


class WalKind(IntEnum):
    """What a WAL frame does to its block."""

    WRITE = 1
    UPDATE = 2
    REMOVE = 3
    WRITE_MANY = 4  # decoded into one WRITE frame per record (all with the frame's offsets)


@dataclass(frozen=True, slots=True)
class WalFrame:
    """One decoded WAL frame: a whole record (WRITE/UPDATE) or a removed timestamp; ``offset``
    and ``end``: the bytes of the frame on disk (shared by the records of a WRITE_MANY frame)."""

    kind: WalKind
    generation: int
    record: StoredRecord | None
    timestamp: int
    offset: int = 0
    end: int = 0


@dataclass(frozen=True, slots=True)
class WalSegment:
    """A decoded WAL file: frames up to ``good_end``; ``error`` says why decoding stopped early."""

    block_id: int
    generation: int
    frames: tuple[WalFrame, ...]
    good_end: int
    error: CorruptionError | None


def _corrupt(
    what: str, source: str | None, offset: int, detail: str, torn: bool = False
) -> CorruptionError:
    """``torn``: the bytes end inside a header or frame, as an append cut short leaves them."""
    where = source or "<bytes>"
    return CorruptionError(
        f"{what} {where} is corrupted at offset {offset}: {detail}",
        path=source,
        offset=offset,
        recoverable=torn,
        public_detail=f"{what} is corrupted at offset {offset}: {detail}",
    )


def _seal(body: bytes) -> bytes:
    return body + _CRC.pack(crc32c(body))


def _check_file(
    data: bytes, magic: bytes, header: struct.Struct, what: str, source: str | None
) -> int:
    """Verify size, magic, version and trailing CRC; return the stored CRC."""
    if len(data) < header.size + _CRC.size:
        raise _corrupt(what, source, len(data), "file is too short")
    if data[:4] != magic:
        raise _corrupt(what, source, 0, "bad magic")
    (version,) = struct.unpack_from("<H", data, 4)
    if version != FORMAT_VERSION:
        raise _corrupt(what, source, 4, f"unknown format version {version}")
    (stored,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    if crc32c(data[: -_CRC.size]) != stored:
        raise _corrupt(what, source, len(data) - _CRC.size, "checksum mismatch")
    return int(stored)


# --- records --------------------------------------------------------------------------------------


def _encode_tail(content_type: str, labels: Mapping[str, str]) -> bytes:
    """The variable part of a record's binary form: content type, then the labels."""
    parts = [content_type.encode()]
    for name, value in labels.items():
        name_bytes = name.encode()
        value_bytes = value.encode()
        parts += (_pack_label(len(name_bytes), len(value_bytes)), name_bytes, value_bytes)
    return b"".join(parts)


def encode_record(record: StoredRecord, shape: RecordShape | None = None) -> bytes:
    """The binary form of one record (shared by descriptors and WAL frames); ``shape``: its
    labels and content type already encoded (a batch encodes each distinct pair once)."""
    if shape is None:
        labels = record.labels
        content_type = record.content_type.encode()
        if labels:
            return _pack_record(
                record.timestamp, record.offset, record.size, record.crc, record.meta_size,
                record.state, len(content_type), len(labels),
            ) + _encode_tail(record.content_type, labels)
        return _pack_record(
            record.timestamp, record.offset, record.size, record.crc, record.meta_size,
            record.state, len(content_type), 0,
        ) + content_type
    return _pack_record(
        record.timestamp, record.offset, record.size, record.crc, record.meta_size,
        record.state, shape.content_type_len, shape.label_count,
    ) + shape.tail


class RecordShape:
    """What records sharing a content type and labels share: the labels (one copy), their
    encoded bytes and their share of the metadata size. Built once per distinct pair in a
    batch write instead of once per record (issue 15: per-record work in the batch path)."""

    __slots__ = ("content_type", "labels", "tail", "content_type_len", "label_count", "meta_size")

    def __init__(self, content_type: str, labels: Mapping[str, str]) -> None:
        self.content_type = content_type
        self.labels = dict(labels)  # one copy for all its records: never mutated
        self.tail = _encode_tail(content_type, self.labels)
        self.content_type_len = len(content_type.encode())
        self.label_count = len(self.labels)
        self.meta_size = shape_metadata_size(self.labels, content_type)


# What ``_decode_records`` remembers of the variable parts it decoded (``_decode_records``
# says what), kept between calls that decode one descriptor a part at a time.
Seen = dict[tuple[int, int], dict[bytes, tuple[str, dict[str, str]]]]
Successors = dict[bytes, tuple[tuple[int, int], bytes, tuple[str, dict[str, str]]]]


def _decode_records(
    data: bytes, pos: int, count: int, end: int, entry: str,
    memo: tuple[Seen, Successors] | None = None,
) -> tuple[list[StoredRecord], int]:
    """Decode ``count`` records from ``data[pos:end]``; raises struct/Unicode/Index errors.

    Records of one series share a few content types and label sets: records whose variable
    part (content type and labels) has the same shape and the same bytes get the very same
    (immutable) content type and labels objects, decoded once per call (per ``memo``, when
    given: a descriptor decoded in parts). A run of equal records costs one comparison each;
    labels that cycle (``n=0..9``) one guess and one comparison.
    """
    unpack = _REC.unpack_from
    unpack_label = _LABEL.unpack_from
    states = _STATES
    records: list[StoredRecord] = []
    append = records.append
    # Decoded variable parts by shape (content type length, label count), then by bytes:
    # the layout is self-delimiting from those two numbers, so equal bytes decode equally.
    # And the variable part that followed each one last time (shape, bytes, decoded): labels
    # that cycle (``n=0..9``) repeat their order, so the guess is one ``startswith``.
    seen, successor = memo if memo is not None else ({}, {})
    prev_shape: tuple[int, int] | None = None
    prev_tail = b""
    content_type = ""
    labels: dict[str, str] = {}
    for _ in range(count):
        ts, offset, size, crc, meta_size, state, ct_len, label_count = unpack(data, pos)
        pos += 41
        shape = (ct_len, label_count)
        if shape == prev_shape and data.startswith(prev_tail, pos):
            pos += len(prev_tail)  # the predecessor's: content type and labels as they were
        else:
            # Same shape and the same bytes as a whole variable part: that part (the layout
            # is self-delimiting from the shape, so it ends where that one ends).
            guess = successor.get(prev_tail)
            if guess is not None and guess[0] == shape and data.startswith(guess[1], pos):
                tail = guess[1]
                pos += len(tail)
                decoded = guess[2]
            else:
                start = pos
                pos += ct_len
                for _ in range(label_count):  # only the lengths, to find the end
                    name_len, value_len = unpack_label(data, pos)
                    pos += 8 + name_len + value_len
                if pos > end:
                    raise IndexError("record runs past the end")
                tail = data[start:pos]
                by_bytes = seen.setdefault(shape, {})
                decoded = by_bytes.get(tail)
                if decoded is None:
                    decoded = by_bytes[tail] = _decode_tail(tail, ct_len, label_count)
                successor[prev_tail] = (shape, tail, decoded)
            prev_tail = tail
            prev_shape = shape
            content_type, labels = decoded
        append(
            StoredRecord(
                ts, size, content_type, labels, states[state], entry, offset, crc, meta_size
            )
        )
    if pos > end:
        raise IndexError("record runs past the end")
    return records, pos


def _decode_tail(tail: bytes, ct_len: int, label_count: int) -> tuple[str, dict[str, str]]:
    """A record's content type and labels from its variable part (``_encode_tail``)."""
    content_type = tail[:ct_len].decode()
    pos = ct_len
    labels: dict[str, str] = {}
    for _ in range(label_count):
        name_len, value_len = _LABEL.unpack_from(tail, pos)
        pos += 8
        name = tail[pos : pos + name_len].decode()
        pos += name_len
        labels[name] = tail[pos : pos + value_len].decode()
        pos += value_len
    if pos != len(tail):
        raise IndexError("labels run past the record")
    return content_type, labels


# --- block descriptors ----------------------------------------------------------------------------


def encode_descriptor(
    descriptor: Descriptor, encoded: Mapping[int, tuple[StoredRecord, bytes]] | None = None
) -> bytes:
    """The bytes of ``<id>.meta``; ``encoded`` may hold records already encoded (WAL frames).

    A cached encoding is used only if it was made from the very same (immutable) record object.
    """
    header = _DESC.pack(
        DESCRIPTOR_MAGIC,
        FORMAT_VERSION,
        0,
        descriptor.block_id,
        descriptor.generation,
        len(descriptor.records),
        descriptor.size,
        descriptor.meta_size,
        descriptor.data_end,
        descriptor.first_ts,
        descriptor.latest_ts,
    )
    if not encoded:
        return _seal(header + b"".join(encode_record(r) for r in descriptor.records))
    parts = [header]
    for record in descriptor.records:
        cached = encoded.get(record.timestamp)
        parts.append(
            cached[1] if cached is not None and cached[0] is record else encode_record(record)
        )
    return _seal(b"".join(parts))


def decode_descriptor(data: bytes, entry: str = "", source: str | None = None) -> Descriptor:
    """Decode a whole descriptor; ``entry`` is stamped into every record's ``entry`` field."""
    decoder = DescriptorDecoder(data, entry, source)
    decoder.step(decoder.header.record_count)
    return decoder.descriptor()


class DescriptorDecoder:
    """``decode_descriptor`` a number of records at a time: the checksum and header at once
    (CorruptionError), then ``step`` until ``done``, then ``descriptor``. Decoding ahead of
    a read can so be spread over several short steps."""

    def __init__(self, data: bytes, entry: str = "", source: str | None = None) -> None:
        self.header = decode_descriptor_header(data, source)
        self.crc = descriptor_crc(data)
        self._data = data
        self._entry = entry
        self._source = source
        self._pos = _DESC.size
        self._end = len(data) - _CRC.size
        self._left = self.header.record_count
        self._records: list[StoredRecord] = []
        self._memo: tuple[Seen, Successors] = ({}, {})

    @property
    def done(self) -> bool:
        """Whether every record is decoded."""
        return not self._left

    def step(self, count: int) -> bool:
        """Decode up to ``count`` more records (CorruptionError on damage); whether done."""
        count = min(count, self._left)
        try:
            records, self._pos = _decode_records(
                self._data, self._pos, count, self._end, self._entry, self._memo
            )
        except (struct.error, UnicodeDecodeError, IndexError) as exc:
            raise _corrupt(
                "block descriptor", self._source, _DESC.size, f"bad record: {exc}"
            ) from exc
        self._records += records
        self._left -= count
        return not self._left

    def descriptor(self) -> Descriptor:
        """The decoded descriptor (call once ``done``; CorruptionError on trailing bytes)."""
        if self._left:
            raise ValueError("descriptor not decoded yet")
        if self._pos != self._end:
            raise _corrupt(
                "block descriptor", self._source, self._pos, "trailing bytes after the records"
            )
        header = self.header
        return Descriptor(
            header.block_id,
            header.generation,
            tuple(self._records),
            header.size,
            header.meta_size,
            header.data_end,
            header.first_ts,
            header.latest_ts,
        )


def decode_descriptor_header(data: bytes, source: str | None = None) -> IndexItem:
    """Verify a descriptor's checksum and read only its header, as an index item (cheap)."""
    crc = _check_file(data, DESCRIPTOR_MAGIC, _DESC, "block descriptor", source)
    (_, _, _, block_id, generation, count, size, meta_size, data_end, first_ts, latest_ts) = (
        _DESC.unpack_from(data, 0)
    )
    return IndexItem(
        block_id, first_ts, latest_ts, count, size, meta_size, data_end, crc, generation
    )


def descriptor_crc(data: bytes) -> int:
    """The CRC stored at the end of encoded descriptor bytes (what the index records)."""
    (crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    return int(crc)


# --- block index ----------------------------------------------------------------------------------


def encode_index(index: BlockIndex) -> bytes:
    """The bytes of ``blocks.idx``."""
    parts = [_INDEX.pack(INDEX_MAGIC, FORMAT_VERSION, 0, index.generation, len(index.items))]
    pack = _ITEM.pack
    for item in index.items:
        parts.append(
            pack(
                item.block_id,
                item.first_ts,
                item.latest_ts,
                item.record_count,
                item.size,
                item.meta_size,
                item.data_end,
                item.descriptor_crc,
                item.generation,
            )
        )
    return _seal(b"".join(parts))


def decode_index(data: bytes, source: str | None = None) -> BlockIndex:
    """Decode ``blocks.idx``."""
    _check_file(data, INDEX_MAGIC, _INDEX, "block index", source)
    _, _, _, generation, count = _INDEX.unpack_from(data, 0)
    expected = _INDEX.size + count * _ITEM.size + _CRC.size
    if len(data) != expected:
        raise _corrupt("block index", source, _INDEX.size, f"{count} items need {expected} bytes")
    items = tuple(
        IndexItem(*_ITEM.unpack_from(data, _INDEX.size + i * _ITEM.size)) for i in range(count)
    )
    return BlockIndex(generation, items)


# --- bucket settings ------------------------------------------------------------------------------


def encode_settings(settings: BucketSettings) -> bytes:
    """The bytes of ``bucket.settings``."""
    return _seal(
        _SETTINGS.pack(
            SETTINGS_MAGIC,
            FORMAT_VERSION,
            0,
            _QUOTA_CODES[QuotaType(settings.quota_type)],
            settings.quota_size,
            settings.max_block_size,
            settings.max_block_records,
        )
    )


def decode_settings(data: bytes, source: str | None = None) -> BucketSettings:
    """Decode ``bucket.settings``."""
    _check_file(data, SETTINGS_MAGIC, _SETTINGS, "bucket settings", source)
    if len(data) != _SETTINGS.size + _CRC.size:
        raise _corrupt("bucket settings", source, _SETTINGS.size, "unexpected length")
    _, _, _, quota, quota_size, max_block_size, max_block_records = _SETTINGS.unpack_from(data, 0)
    if quota not in _QUOTA_TYPES:
        raise _corrupt("bucket settings", source, 8, f"unknown quota type {quota}")
    return BucketSettings(_QUOTA_TYPES[quota], quota_size, max_block_size, max_block_records)


# --- write-ahead log ------------------------------------------------------------------------------


def peek_generation(data: bytes) -> int | None:
    """The generation in the header of a descriptor, index or WAL (None if not one of them).

    Only the header is looked at (no CRC): used right before replacing a file, to refuse
    overwriting what a newer lease generation wrote.
    """
    magic = data[:4]
    offset = 8 if magic == INDEX_MAGIC else 16 if magic in (DESCRIPTOR_MAGIC, WAL_MAGIC) else 0
    if not offset or len(data) < offset + 8:
        return None
    return int(_U64.unpack_from(data, offset)[0])


def encode_wal_header(block_id: int, generation: int) -> bytes:
    """The first bytes of a WAL segment."""
    return _seal(_WAL.pack(WAL_MAGIC, FORMAT_VERSION, 0, block_id, generation))


def encode_wal_frame(
    kind: WalKind, generation: int, record: StoredRecord, encoded: bytes | None = None
) -> bytes:
    """A WRITE or UPDATE frame carrying the whole record (``encoded``: its record bytes)."""
    payload = _U64.pack(generation) + (encoded if encoded is not None else encode_record(record))
    head = _FRAME.pack(kind, len(payload)) + payload
    return head + _CRC.pack(crc32c(head))


def encode_wal_many(generation: int, encoded: list[bytes]) -> bytes:
    """A WRITE_MANY frame carrying records already encoded (``encode_record``), in time order."""
    body = b"".join(encoded)
    head = _MANY.pack(WalKind.WRITE_MANY, 12 + len(body), generation, len(encoded)) + body
    return head + _CRC.pack(crc32c(head))


def encode_wal_remove(generation: int, timestamp: int) -> bytes:
    """A REMOVE frame for one timestamp."""
    head = _FRAME.pack(WalKind.REMOVE, 16) + _U64.pack(generation) + _U64.pack(timestamp)
    return head + _CRC.pack(crc32c(head))


def decode_wal(data: bytes, entry: str = "", source: str | None = None) -> WalSegment:
    """Decode a WAL segment, stopping (not failing) at the first torn or corrupt frame."""
    if len(data) < WAL_HEADER_SIZE:
        return WalSegment(0, 0, (), 0, _corrupt("WAL", source, 0, "header is torn", torn=True))
    try:
        _check_file(data[:WAL_HEADER_SIZE], WAL_MAGIC, _WAL, "WAL", source)
    except CorruptionError as exc:
        return WalSegment(0, 0, (), 0, exc)
    _, _, _, block_id, generation = _WAL.unpack_from(data, 0)
    frames: list[WalFrame] = []
    pos = WAL_HEADER_SIZE
    size = len(data)
    error: CorruptionError | None = None
    while pos < size:
        try:
            pos = _decode_frame(data, pos, entry, source, frames)
        except CorruptionError as exc:
            error = exc
            break
    return WalSegment(block_id, generation, tuple(frames), pos, error)


def _decode_frame(
    data: bytes, pos: int, entry: str, source: str | None, frames: list[WalFrame]
) -> int:
    """Append the frame at ``pos`` to ``frames`` (one per record of a WRITE_MANY); its end."""
    if pos + _FRAME.size > len(data):
        raise _corrupt("WAL", source, pos, "frame header is torn", torn=True)
    kind, length = _FRAME.unpack_from(data, pos)
    end = pos + _FRAME.size + length
    if end + _CRC.size > len(data):
        raise _corrupt("WAL", source, pos, "frame is torn", torn=True)
    (stored,) = _CRC.unpack_from(data, end)
    if crc32c(data[pos:end]) != stored:
        raise _corrupt("WAL", source, pos, "frame checksum mismatch")
    body = pos + _FRAME.size
    frame_end = end + _CRC.size
    try:
        kind = WalKind(kind)
        (generation,) = _U64.unpack_from(data, body)
        if kind is WalKind.REMOVE:
            (timestamp,) = _U64.unpack_from(data, body + 8)
            frames.append(WalFrame(kind, generation, None, timestamp, pos, frame_end))
            return frame_end
        count = 1
        first = body + 8
        if kind is WalKind.WRITE_MANY:
            (count,) = _CRC.unpack_from(data, first)
            first += 4
            kind = WalKind.WRITE
        records, rec_end = _decode_records(data, first, count, end, entry)
    except (ValueError, struct.error, IndexError) as exc:
        raise _corrupt("WAL", source, pos, f"bad frame: {exc}") from exc
    if rec_end != end:
        raise _corrupt("WAL", source, pos, "frame length does not match its records")
    frames.extend(WalFrame(kind, generation, r, r.timestamp, pos, frame_end) for r in records)
    return frame_end
