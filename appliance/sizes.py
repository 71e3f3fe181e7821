"""The request-path size thresholds, in one place with their reasons.

Each trades event-loop time and memory against worker-thread hops (``workers.py``): below a
threshold a payload travels whole in one hop, above it it streams. Changing one changes
memory use per request and latency, never what is stored or answered.

The engine imports this module too (bulk reads), so it imports nothing but ``units``.
"""

from __future__ import annotations

from appliance.units import KIB, MIB

# --- single records (api/records.py) ------------------------------------------------------
# Bodies up to this size are received whole and written in a single thread hop.
SMALL_RECORD_BYTES = 256 * KIB
# Payloads up to this size are read in the same hop as the metadata; bigger ones stream.
INLINE_READ_BYTES = 2 * MIB

# --- batch writes (api/ingest.py) ---------------------------------------------------------
# Batch bodies up to this size are received whole and written with one write_batch per entry
# in one hop; bigger ones record by record through RecordWriters (a huge record never sits
# in memory).
IN_MEMORY_BYTES = 16 * MIB

# Batch bodies up to IN_MEMORY_BYTES whose records average at least this size are written
# through a Pipeline (record N written while record N+1 arrives) instead of after the whole
# body arrived; smaller records stay in one hop (one write_batch, one commit per entry).
PIPELINE_RECORD_BYTES = 64 * KIB

# --- bodies and payload streams (api/streaming.py) ----------------------------------------
# A Pipeline lets the event loop queue at most this much ahead of the writing thread.
PIPELINE_BYTES = 4 * MIB
# ... and starts a writing hop once this much is queued (each hop costs two thread wake-ups).
PIPELINE_HOP_BYTES = 256 * KIB
# Pulled from a record's payload iterator per thread hop when streaming a response.
READ_CHUNK_BYTES = 1 * MIB
# JSON bodies (settings, queries, tokens, renames) are small; bigger ones are refused with 413.
MAX_SMALL_BODY_BYTES = 1 * MIB
# JSON bodies up to this size are decoded on the event loop; bigger ones in a worker thread.
INLINE_PARSE_BYTES = 64 * KIB

# --- query batches (query/registry.py) ----------------------------------------------------
# Payloads up to PRELOAD_RECORD_BYTES are read inside the collecting thread hop, up to
# PRELOAD_BATCH_BYTES per batch; bigger ones stream after the headers are sent.
PRELOAD_RECORD_BYTES = 1 * MIB
PRELOAD_BATCH_BYTES = 16 * MIB
# Batches collected ahead of their request (the next batch of a query, read while the client
# parses the one just sent) hold at most this much over all queries; past it, no prefetch.
PREFETCH_BYTES = 64 * MIB

# --- bulk reads of one entry (engine/entry.py ``read_payloads``) --------------------------
# Adjacent records of up to JOIN_RECORD_BYTES each are joined into one pread of at most
# RUN_BYTES: for small records a syscall costs more than slicing the run; for bigger ones the
# copy out of the run costs more than the pread it saves.
JOIN_RECORD_BYTES = 32 * KIB
RUN_BYTES = 256 * KIB
