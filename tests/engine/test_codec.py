"""Codec: exact bytes, round trips, and corrupt input -> CorruptionError with an offset."""

from __future__ import annotations

import struct

import google_crc32c
import pytest

from appliance.engine.codec import (
    WAL_HEADER_SIZE,
    BlockIndex,
    Descriptor,
    IndexItem,
    StoredRecord,
    WalKind,
    decode_descriptor,
    decode_descriptor_header,
    decode_index,
    decode_settings,
    decode_wal,
    encode_descriptor,
    encode_index,
    encode_record,
    encode_settings,
    encode_wal_frame,
    encode_wal_header,
    encode_wal_remove,
)
from appliance.engine.models import BucketSettings, QuotaType, RecordState
from appliance.errors import CorruptionError

REC = StoredRecord(
    timestamp=1_000_000,
    size=8,
    content_type="text/plain",
    labels={"a": "b"},
    state=RecordState.FINISHED,
    entry="e",
    offset=16,
    crc=0xDEADBEEF,
    meta_size=40,
)


def crc(data: bytes) -> bytes:
    return struct.pack("<I", google_crc32c.value(data))


def test_codec_record_exact_bytes() -> None:
    expected = (
        struct.pack("<QQQIIBII", 1_000_000, 16, 8, 0xDEADBEEF, 40, 1, 10, 1)
        + b"text/plain"
        + struct.pack("<II", 1, 1)
        + b"a"
        + b"b"
    )
    assert encode_record(REC) == expected


def test_codec_settings_exact_bytes_and_round_trip() -> None:
    settings = BucketSettings(QuotaType.FIFO, 1000, 2000, 30)
    body = b"RSBS" + struct.pack("<HHBQQQ", 1, 0, 1, 1000, 2000, 30)
    assert encode_settings(settings) == body + crc(body)
    assert decode_settings(body + crc(body)) == settings


def test_codec_descriptor_round_trip_and_header() -> None:
    other = StoredRecord(2_000_000, 0, "", {}, RecordState.ERRORED, "e", 24, 0, 10)
    descriptor = Descriptor(1_000_000, 7, (REC, other), 8, 50, 24, 1_000_000, 2_000_000)
    data = encode_descriptor(descriptor)
    assert data[:4] == b"RSBD"
    assert decode_descriptor(data, entry="e") == descriptor
    header = decode_descriptor_header(data)
    assert (header.block_id, header.record_count, header.size, header.data_end) == (
        1_000_000,
        2,
        8,
        24,
    )
    assert header.descriptor_crc == struct.unpack("<I", data[-4:])[0]
    # Cached record bytes produce identical output.
    cached = {REC.timestamp: (REC, encode_record(REC))}
    assert encode_descriptor(descriptor, cached) == data


def test_codec_index_round_trip_exact_length() -> None:
    items = (IndexItem(1, 1, 5, 3, 100, 90, 100, 0xABC, 2), IndexItem(6, 6, 6, 1, 0, 30, 0, 1, 2))
    data = encode_index(BlockIndex(9, items))
    assert len(data) == 20 + 2 * 64 + 4
    assert decode_index(data) == BlockIndex(9, items)
    empty = encode_index(BlockIndex(0, ()))
    assert decode_index(empty).items == ()


def test_codec_wal_frames_round_trip() -> None:
    data = (
        encode_wal_header(1_000_000, 3)
        + encode_wal_frame(WalKind.WRITE, 3, REC)
        + encode_wal_frame(WalKind.UPDATE, 4, REC)
        + encode_wal_remove(4, 1_000_000)
    )
    segment = decode_wal(data, entry="e")
    assert segment.error is None and segment.good_end == len(data)
    assert (segment.block_id, segment.generation) == (1_000_000, 3)
    assert [f.kind for f in segment.frames] == [WalKind.WRITE, WalKind.UPDATE, WalKind.REMOVE]
    assert segment.frames[0].record == REC and segment.frames[1].generation == 4
    assert segment.frames[2].timestamp == 1_000_000


def test_codec_wal_frame_layout() -> None:
    frame = encode_wal_frame(WalKind.WRITE, 5, REC)
    payload = struct.pack("<Q", 5) + encode_record(REC)
    head = struct.pack("<BI", 1, len(payload)) + payload
    assert frame == head + crc(head)


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_codec_wal_torn_tail_stops_at_last_good_frame(cut: int) -> None:
    good = encode_wal_header(1, 0) + encode_wal_frame(WalKind.WRITE, 0, REC)
    torn = good + encode_wal_frame(WalKind.WRITE, 0, REC)[:cut]
    segment = decode_wal(torn, entry="e")
    assert len(segment.frames) == 1 and segment.good_end == len(good)
    assert segment.error is not None and segment.error.offset == len(good)


def test_codec_wal_flipped_byte_is_reported_at_frame_start() -> None:
    first = encode_wal_header(1, 0) + encode_wal_frame(WalKind.WRITE, 0, REC)
    data = bytearray(first + encode_wal_frame(WalKind.WRITE, 0, REC))
    data[len(first) + 10] ^= 0x01
    segment = decode_wal(bytes(data), entry="e")
    assert len(segment.frames) == 1
    assert segment.error is not None and segment.error.offset == len(first)


def test_codec_wal_bad_header() -> None:
    data = bytearray(encode_wal_header(1, 0))
    data[2] ^= 0xFF
    segment = decode_wal(bytes(data))
    assert segment.good_end == 0 and segment.error is not None
    assert decode_wal(b"RSW").error is not None
    assert WAL_HEADER_SIZE == 28


@pytest.mark.parametrize(
    "encoded, decode",
    [
        (encode_settings(BucketSettings()), decode_settings),
        (encode_index(BlockIndex(0, (IndexItem(1, 1, 1, 1, 1, 1, 1, 1, 1),))), decode_index),
        (encode_descriptor(Descriptor(1, 0, (REC,), 8, 40, 24, 1, 1)), decode_descriptor),
    ],
)
def test_codec_corrupt_metadata_raises_with_offset(encoded: bytes, decode: object) -> None:
    for position in (0, 4, len(encoded) // 2, len(encoded) - 1):
        damaged = bytearray(encoded)
        damaged[position] ^= 0x40
        with pytest.raises(CorruptionError) as excinfo:
            decode(bytes(damaged), source="file.x")  # type: ignore[operator]
        assert excinfo.value.offset is not None
        assert excinfo.value.path == "file.x"
        assert "file.x" in excinfo.value.message
    with pytest.raises(CorruptionError) as excinfo:
        decode(encoded[:3])  # type: ignore[operator]
    assert excinfo.value.offset == 3


def test_codec_descriptor_with_valid_crc_but_bad_body_is_corrupt() -> None:
    data = encode_descriptor(Descriptor(1, 0, (REC,), 8, 40, 24, 1, 1))
    body = bytearray(data[:-4])
    struct.pack_into("<I", body, 24, 5)  # claim 5 records
    with pytest.raises(CorruptionError) as excinfo:
        decode_descriptor(bytes(body) + crc(bytes(body)))
    assert excinfo.value.offset is not None
