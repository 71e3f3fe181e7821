"""The records of a batch's bulk run, built in one pass (``Entry._write_bulk``, issue 15).

A run is a stretch of a batch that appends to the last block in time order. For each record,
one loop computes what ``BlockSet.reserve`` + ``finalize`` compute in two passes and several
calls: its offset, its CRC32C, its share of the ReductStore metadata size
(``sizing.position_metadata_size`` plus the shape's part), the FINISHED ``StoredRecord`` and its
encoded bytes for the WAL frame and the next descriptor.
"""

from __future__ import annotations

from collections.abc import Sequence

import google_crc32c

from appliance.engine.codec import RecordShape, StoredRecord, pack_record
from appliance.engine.models import NewRecord, RecordState
from appliance.engine.sizing import position_metadata_size

_FINISHED = RecordState.FINISHED


def build_run(
    records: Sequence[NewRecord],
    start: int,
    end: int,
    offset: int,
    shapes: dict[tuple[int, str], RecordShape],
    entry: str,
) -> tuple[list[StoredRecord], list[bytes], list[bytes], int]:
    """FINISHED records for ``records[start:end]`` (in-memory ``bytes`` payloads) placed from
    ``offset`` on: (records, their encoded bytes, payloads, the offset after the last)."""
    stored: list[StoredRecord] = []
    encoded: list[bytes] = []
    payloads: list[bytes] = []
    add_stored = stored.append
    add_encoded = encoded.append
    add_payload = payloads.append
    crc32c = google_crc32c.value
    last_labels: object = None
    last_type = ""
    shape: RecordShape | None = None
    for k in range(start, end):
        new = records[k]
        labels = new.labels
        content_type = new.content_type
        if shape is None or labels is not last_labels or content_type != last_type:
            # Shapes are keyed by the caller's labels object, which ``records`` keeps alive.
            key = (id(labels), content_type)
            shape = shapes.get(key)
            if shape is None:
                shape = shapes[key] = RecordShape(content_type, labels)
            last_labels = labels
            last_type = content_type
        data = new.data
        ts = new.timestamp
        size = len(data)
        crc = crc32c(data)  # type: ignore[arg-type]
        after = offset + size
        meta_size = position_metadata_size(ts, offset, after) + shape.meta_size
        add_stored(
            StoredRecord(
                ts, size, shape.content_type, shape.labels, _FINISHED, entry, offset, crc,
                meta_size,
            )
        )
        add_encoded(
            pack_record(
                ts, offset, size, crc, meta_size, _FINISHED, shape.content_type_len,
                shape.label_count,
            ) + shape.tail
        )
        add_payload(data)  # type: ignore[arg-type]
        offset = after
    return stored, encoded, payloads, offset
