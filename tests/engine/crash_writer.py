"""Writer process for the crash test (``test_crash.py``): write under load until killed.

Usage: ``python tests/engine/crash_writer.py <data> <seed> [--max-seconds N]``

Opens the engine on ``<data>`` (startup recovery runs here), then two writer threads (one per
entry) write records as fast as they can while a third thread calls ``Storage.compact()`` in a
loop. Record kinds: 0 B, 1 KiB and 100 KiB single writes (``write_record``), 2 MiB streamed in
64 KiB chunks (``begin_write``/``write``/``finish``), batches of small records (``write_batch``)
and belated 1 KiB writes into older blocks. Blocks are tiny (16 records) so they roll and get
compacted all the time.

stdout protocol, one line each, flushed at once:

    READY <pid>                                    engine open, recovery done
    ACK <entry> <ts> <size> <sha256-hex>           write_record/finish/write_batch returned OK
    DONE                                           --max-seconds elapsed, engine closed

An ``ACK`` line is printed only after the engine acknowledged the record, so every record
with a complete ``ACK`` line must survive a SIGKILL. Payloads depend only on
``(seed, entry, ts, size)`` (``payload()``), so the test can regenerate them. Timestamps of a
new process start above everything already stored and above the wall clock, so restarts never
reuse a timestamp; a ``Conflict`` on a fresh timestamp (an unacknowledged leftover of a killed
predecessor) is reported on stderr and skipped. Any other error ends the process with status 70
and a traceback on stderr.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import threading
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from appliance.engine import Storage  # noqa: E402
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord  # noqa: E402
from appliance.errors import Conflict, NotFound  # noqa: E402

KIB = 1024
MIB = 1024 * KIB
BUCKET = "crash"
ENTRIES = ("front", "rear/left")
SETTINGS = BucketSettings(max_block_records=16, max_block_size=4 * MIB)
STREAM_SIZE = 2 * MIB
STREAM_CHUNK = 64 * KIB
TS_STEP = 10  # µs between two planned timestamps; belated writes use the slot at +5
CRASH_EXIT = 70

_out_lock = threading.Lock()


def payload(seed: int, entry: str, ts: int, size: int) -> bytes:
    """The payload of record ``(entry, ts)``: pseudo-random bytes fixed by the seed."""
    return random.Random(f"{seed}/{entry}/{ts}").randbytes(size)


def emit(line: str) -> None:
    with _out_lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def ack(entry: str, ts: int, data: bytes) -> None:
    emit(f"ACK {entry} {ts} {len(data)} {hashlib.sha256(data).hexdigest()}")


def die(what: str) -> None:
    with _out_lock:
        sys.stderr.write(f"crash_writer: {what}\n{traceback.format_exc()}\n")
        sys.stderr.flush()
    os._exit(CRASH_EXIT)


def first_timestamp(storage: Storage) -> int:
    """Above every stored record and above the wall clock (so above unacknowledged leftovers)."""
    latest = 0
    bucket = storage.get_bucket(BUCKET)
    for info in bucket.entries():
        latest = max(latest, info.latest_record)
    return max(latest, time.time_ns() // 1000) + 1_000_000


def writer_loop(
    storage: Storage, entry: str, seed: int, base: int, stop: threading.Event, rng: random.Random
) -> None:
    bucket = storage.get_bucket(BUCKET)
    slot = 0
    written_slots: list[int] = []

    def next_ts() -> int:
        nonlocal slot
        slot += 1
        written_slots.append(slot)
        return base + slot * TS_STEP

    def single(ts: int, size: int) -> None:
        data = payload(seed, entry, ts, size)
        try:
            bucket.write_record(entry, ts, data, "application/octet-stream", {"kind": str(size)})
        except Conflict:
            emit_conflict(entry, ts)
            return
        ack(entry, ts, data)

    try:
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.10:
                single(next_ts(), 0)
            elif roll < 0.45:
                single(next_ts(), KIB)
            elif roll < 0.60:
                single(next_ts(), 100 * KIB)
            elif roll < 0.64:
                ts = next_ts()
                data = payload(seed, entry, ts, STREAM_SIZE)
                try:
                    writer = bucket.begin_write(
                        entry, ts, STREAM_SIZE, "video/mp4", {"kind": "stream"}
                    )
                except Conflict:
                    emit_conflict(entry, ts)
                    continue
                for i in range(0, STREAM_SIZE, STREAM_CHUNK):
                    writer.write(data[i : i + STREAM_CHUNK])
                writer.finish()
                ack(entry, ts, data)
            elif roll < 0.88:
                records = []
                for _ in range(rng.randint(5, 20)):
                    ts = next_ts()
                    size = rng.choice((0, 1, 100, KIB))
                    records.append(
                        NewRecord(
                            ts, payload(seed, entry, ts, size), "text/plain", {"kind": "batch"}
                        )
                    )
                errors = bucket.write_batch(entry, records)
                for record in records:
                    error = errors.get(record.timestamp)
                    if error is None:
                        ack(entry, record.timestamp, record.data)
                    elif isinstance(error, Conflict):
                        emit_conflict(entry, record.timestamp)
                    else:
                        raise error
            elif written_slots:
                # Belated: the free slot just after an earlier record, in an older block.
                old = written_slots[rng.randrange(len(written_slots))]
                written_slots.remove(old)
                single(base + old * TS_STEP + TS_STEP // 2, KIB)
    except BaseException:  # noqa: BLE001 - report and end the process like a crash
        die(f"writer {entry} failed")


def emit_conflict(entry: str, ts: int) -> None:
    with _out_lock:
        sys.stderr.write(f"crash_writer: conflict on fresh ts {entry}@{ts}, skipped\n")
        sys.stderr.flush()


def compaction_loop(storage: Storage, stop: threading.Event, rng: random.Random) -> None:
    try:
        while not stop.is_set():
            storage.compact()
            stop.wait(rng.uniform(0.005, 0.05))
    except BaseException:  # noqa: BLE001
        die("compaction failed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("seed", type=int)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    args = parser.parse_args(argv)

    storage = Storage.open(EngineOptions(data_path=args.data))
    try:
        storage.get_bucket(BUCKET)
    except NotFound:
        storage.create_bucket(BUCKET, SETTINGS)
    base = first_timestamp(storage)
    emit(f"READY {os.getpid()}")

    stop = threading.Event()
    threads = [
        threading.Thread(
            target=writer_loop,
            args=(
                storage,
                entry,
                args.seed,
                base,
                stop,
                random.Random(f"{args.seed}/{base}/{entry}"),
            ),
            name=f"writer-{entry}",
        )
        for entry in ENTRIES
    ]
    threads.append(
        threading.Thread(
            target=compaction_loop, name="compaction", args=(storage, stop, random.Random(base))
        )
    )
    for thread in threads:
        thread.start()
    stop.wait(args.max_seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    storage.close()
    emit("DONE")
    return 0


if __name__ == "__main__":
    sys.exit(main())
