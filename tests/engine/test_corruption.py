"""Corruption tests: damaged files are found, reported where, contained, and never served wrong.

A template data folder is built once by a separate process that writes, compacts, writes some
more and then ends with ``os._exit`` (a crash: the last records live only in the WAL):

    b1/e1   15 records, 4 per block: blocks A B C compacted (descriptor + index), block D in WAL
    b1/e2   10 records: two compacted blocks, a third in the WAL
    b2/e1    5 records, compacted

Every test copies the template, damages ONE file — the WAL of b1/e1, the descriptor or data file
of b1/e1 block B, the index of b1/e1, or b2's bucket settings — by flipping one byte (at the
start, the middle, the end) or truncating it (to 0, 1, half, length - 1), and then asserts:

- ``check()`` (before any repair) reports a problem naming the damaged file (and, for the WAL and
  data file, an offset at or before the damaged byte: where the good part ends);
- ``Storage.open`` does not raise, and ``Storage.recovery`` names the damaged file (a data-file
  byte flip is the exception: payload checksums are checked on read and by ``check``);
- every undamaged record (other blocks, other entries, other buckets) is served with identical
  bytes, labels and content type, listed by ``iter_records``;
- every damaged record is either served intact or absent (``NotFound``) or refused with
  ``CorruptionError`` — never served with wrong bytes or metadata; a damaged index loses nothing
  (rebuilt from descriptors), a WAL truncated by one byte keeps its good frames, a flipped
  data byte fails exactly the checksum of the record holding it while the rest of the block is
  served, and a data file cut short keeps serving the records wholly before the cut;
- the damaged entry still accepts and serves new writes;
- after close, ``check()`` is clean (for payload and settings damage, after ``check(repair=True)``),
  and a second open serves everything the first one did.

A separate test flips a descriptor byte while the engine is open (descriptor not cached yet):
the read fails with ``CorruptionError`` naming the block, the other blocks keep being served.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from appliance.engine import RecoveryReport, Storage
from appliance.engine.check import check
from appliance.engine.models import BucketSettings, EngineOptions, RecordState
from appliance.errors import CorruptionError, InternalError, NotFound

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
U64_MAX = 2**64 - 1
BLOCK_RECORDS = 4
SETTINGS = BucketSettings(max_block_records=BLOCK_RECORDS, max_block_size=64 * 1024)
T0 = 1_000_000
STEP = 1_000

# (bucket, entry) -> (sizes of the compacted records, sizes of the WAL-only records)
PLAN: dict[tuple[str, str], tuple[list[int], list[int]]] = {
    ("b1", "e1"): ([100, 0, 3000, 1, 5000, 200, 7, 4096, 50, 0, 999, 12], [333, 2048, 10]),
    ("b1", "e2"): ([10, 20, 0, 40, 50, 60, 70, 80], [90, 100]),
    ("b2", "e1"): ([11, 0, 2222, 33, 444], []),
}
CONTENT_TYPES = ("application/octet-stream", "text/plain", "image/png")

Key = tuple[str, str, int]  # bucket, entry, ts


@dataclass(frozen=True)
class Expected:
    data: bytes
    content_type: str
    labels: dict[str, str]


def expected_records() -> dict[Key, Expected]:
    out: dict[Key, Expected] = {}
    for (bucket, entry), (compacted, wal) in PLAN.items():
        for i, size in enumerate(compacted + wal):
            ts = T0 + i * STEP
            out[(bucket, entry, ts)] = Expected(
                random.Random(f"{bucket}/{entry}/{ts}").randbytes(size),
                CONTENT_TYPES[i % len(CONTENT_TYPES)],
                {"i": str(i), "bucket": bucket},
            )
    return out


EXPECTED = expected_records()


def ts_of(bucket: str, entry: str, index: int) -> int:
    return T0 + index * STEP


def build_template(data: Path) -> None:
    """Runs in a child process (``python test_corruption.py build <data>``); never returns."""
    storage = Storage.open(EngineOptions(data_path=data))
    for bucket in ("b1", "b2"):
        storage.create_bucket(bucket, SETTINGS)
    for phase in (0, 1):
        for (bucket, entry), (compacted, wal) in PLAN.items():
            first, sizes = (0, compacted) if phase == 0 else (len(compacted), wal)
            for i in range(first, first + len(sizes)):
                ts = ts_of(bucket, entry, i)
                rec = EXPECTED[(bucket, entry, ts)]
                storage.get_bucket(bucket).write_record(
                    entry, ts, rec.data, rec.content_type, rec.labels
                )
        if phase == 0:
            storage.compact()
    sys.stdout.flush()
    os._exit(0)  # crash on purpose: no close, the phase-1 records exist only in the WAL


# --- where things are on disk (layout fixed by ARCHITECTURE §3) ----------------------------------


def block_ids(entry_dir: Path) -> list[int]:
    return sorted(int(p.stem) for p in entry_dir.glob("*.meta"))


def block_of(entry_dir: Path, ts: int) -> int:
    return max(b for b in block_ids(entry_dir) if b <= ts)


def wal_file(entry_dir: Path) -> Path:
    wals = sorted((entry_dir / ".wal").glob("*.wal"), key=lambda p: p.stat().st_size)
    assert wals and wals[-1].stat().st_size > 0, f"template has no WAL in {entry_dir}"
    return wals[-1]


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("template") / "data"
    result = subprocess.run(
        [sys.executable, __file__, "build", str(data)],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    e1 = data / "b1" / "e1"
    # Layout assumptions of this test, checked once: three compacted blocks A B C, D in the WAL.
    assert block_ids(e1)[:3] == [ts_of("b1", "e1", i) for i in (0, 4, 8)], sorted(os.listdir(e1))
    assert wal_file(e1).name.startswith(str(ts_of("b1", "e1", 12))), wal_file(e1)
    assert (e1 / "blocks.idx").exists() and (data / "b2" / "bucket.settings").exists()
    # Block B's data file is its payloads back to back, in write (= timestamp) order.
    assert (e1 / f"{BLOCK_B}.blk").stat().st_size == sum(
        end - begin for begin, end in SPANS_B.values()
    )
    return data


@pytest.fixture
def data(template: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(template, target)
    return target


# --- damage --------------------------------------------------------------------------------------

BLOCK_B = ts_of("b1", "e1", 4)
SPANS_B: dict[Key, tuple[int, int]] = {}  # record of block B -> [begin, end) in its data file
_pos = 0
for _i in range(4, 8):
    _size = PLAN[("b1", "e1")][0][_i]
    SPANS_B[("b1", "e1", ts_of("b1", "e1", _i))] = (_pos, _pos + _size)
    _pos += _size
KINDS = ("wal", "descriptor", "index", "data", "settings")
DAMAGES = ("flip-start", "flip-middle", "flip-end", "cut-0", "cut-1", "cut-half", "cut-last")


def target_file(kind: str, data: Path) -> Path:
    e1 = data / "b1" / "e1"
    return {
        "wal": lambda: wal_file(e1),
        "descriptor": lambda: e1 / f"{BLOCK_B}.meta",
        "index": lambda: e1 / "blocks.idx",
        "data": lambda: e1 / f"{BLOCK_B}.blk",
        "settings": lambda: data / "b2" / "bucket.settings",
    }[kind]()


def damage_file(path: Path, damage: str) -> int:
    """Apply the damage; returns the offset of the first damaged byte."""
    blob = bytearray(path.read_bytes())
    size = len(blob)
    assert size >= 2, f"{path} too small to damage"
    if damage.startswith("flip-"):
        offset = {"flip-start": 0, "flip-middle": size // 2, "flip-end": size - 1}[damage]
        blob[offset] ^= 0xFF
        path.write_bytes(bytes(blob))
        return offset
    cut = {"cut-0": 0, "cut-1": 1, "cut-half": size // 2, "cut-last": size - 1}[damage]
    with path.open("r+b") as f:
        f.truncate(cut)
    return cut


def at_risk(kind: str) -> set[Key]:
    """Records whose bytes or metadata live in the damaged file."""
    e1_compacted, e1_wal = PLAN[("b1", "e1")]
    if kind == "wal":
        idx = range(len(e1_compacted), len(e1_compacted) + len(e1_wal))
        return {("b1", "e1", ts_of("b1", "e1", i)) for i in idx}
    if kind in ("descriptor", "data"):
        return {("b1", "e1", ts_of("b1", "e1", i)) for i in range(4, 8)}
    if kind == "settings":
        return {k for k in EXPECTED if k[0] == "b2"}
    return set()  # the index is redundant: rebuilt from the descriptors


# --- reading back --------------------------------------------------------------------------------


def _same_file(reported: object, target: Path, data: Path) -> bool:
    if reported is None:
        return False
    path = Path(str(reported))
    if not path.is_absolute():
        path = data / path
    return os.path.normpath(path) == os.path.normpath(target)


def assert_names(
    report: RecoveryReport, target: Path, data: Path, max_offset: int | None, what: str
) -> None:
    """``report`` has a problem naming ``target`` (and an offset <= ``max_offset`` if given)."""
    items = [p for p in report.problems if _same_file(p.path, target, data)]
    where = target.relative_to(data)
    assert items, f"{what} does not name {where}:\n{report.render()}"
    if max_offset is not None:
        offsets = [p.offset for p in items]
        assert any(o is not None and 0 <= o <= max_offset for o in offsets), (
            f"{what} names {where} but no offset <= {max_offset}: {offsets}\n{report.render()}"
        )


def read(storage: Storage, key: Key) -> bytes:
    bucket, entry, ts = key
    handle = storage.get_bucket(bucket).get_entry(entry)
    meta = handle.get_record(ts)
    rec = EXPECTED[key]
    assert (meta.timestamp, meta.size, meta.content_type, dict(meta.labels), meta.state) == (
        ts,
        len(rec.data),
        rec.content_type,
        rec.labels,
        RecordState.FINISHED,
    ), f"metadata of {key} served wrong: {meta}"
    return handle.read_payload(meta)


def outcome(storage: Storage, key: Key) -> str:
    """'ok' (served intact), 'absent' (NotFound) or 'refused' (CorruptionError, or a record
    marked ERRORED whose read fails with a 500); anything else fails the test."""
    bucket, entry, ts = key
    try:
        handle = storage.get_bucket(bucket).get_entry(entry)
        meta = handle.get_record(ts)
    except NotFound:
        return "absent"
    except CorruptionError:
        return "refused"
    if meta.state == RecordState.ERRORED:
        rec = EXPECTED[key]
        assert (meta.size, meta.content_type, dict(meta.labels)) == (
            len(rec.data),
            rec.content_type,
            rec.labels,
        ), f"metadata of errored {key} served wrong: {meta}"
        with pytest.raises(InternalError):
            handle.read_payload(meta)
        return "refused"
    try:
        blob = read(storage, key)
    except NotFound:
        return "absent"
    except CorruptionError:
        return "refused"
    assert blob == EXPECTED[key].data, f"{key} served with wrong bytes"
    return "ok"


def listed(storage: Storage, bucket: str, entry: str) -> set[Key]:
    try:
        handle = storage.get_bucket(bucket).get_entry(entry)
    except NotFound:
        return set()
    out = set()
    for meta in handle.iter_records(0, U64_MAX):
        key = (bucket, entry, meta.timestamp)
        assert key in EXPECTED, f"iter_records lists unknown record {key}"
        rec = EXPECTED[key]
        assert (meta.size, meta.content_type, dict(meta.labels)) == (
            len(rec.data),
            rec.content_type,
            rec.labels,
        ), f"iter_records lists {key} with wrong metadata: {meta}"
        out.add(key)
    return out


def serve_all(storage: Storage, keys: Iterable[Key]) -> dict[Key, str]:
    return {key: outcome(storage, key) for key in keys}


# --- the matrix ----------------------------------------------------------------------------------


def test_corruption_control_undamaged_crashed_template_is_clean(data: Path) -> None:
    """Control for the matrix: without damage nothing is reported and everything is served."""
    before = check(data)
    assert before.ok, before.render()
    storage = Storage.open(EngineOptions(data_path=data))
    try:
        assert storage.recovery.ok, storage.recovery.render()
        assert serve_all(storage, EXPECTED) == {k: "ok" for k in EXPECTED}
        for bucket, entry in PLAN:
            assert listed(storage, bucket, entry) == {
                k for k in EXPECTED if k[:2] == (bucket, entry)
            }
    finally:
        storage.close()
    assert check(data).ok


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("kind", KINDS)
def test_corruption_detected_reported_and_contained(kind: str, damage: str, data: Path) -> None:
    target = target_file(kind, data)
    offset = damage_file(target, damage)
    precise = offset if kind in ("wal", "data") else None
    risky = at_risk(kind)
    undamaged = set(EXPECTED) - risky

    before = check(data)
    assert not before.ok, f"check() missed {kind} {damage}"
    assert_names(before, target, data, precise, "check() before repair")

    storage = Storage.open(EngineOptions(data_path=data))  # must never raise for one bad file
    try:
        if not (kind == "data" and damage.startswith("flip")):
            assert_names(storage.recovery, target, data, None, "Storage.recovery")
        outcomes = serve_all(storage, EXPECTED)
        broken = {k: v for k, v in outcomes.items() if k in undamaged and v != "ok"}
        assert not broken, f"undamaged records not served after {kind} {damage}: {broken}"

        # Payload damage shows only when the payload is read; any other damage found at startup
        # must keep the damaged records out of queries.
        readable = ("ok", "refused") if kind == "data" else ("ok",)
        for bucket, entry in PLAN:
            keys = listed(storage, bucket, entry)
            want = {k for k in undamaged if k[:2] == (bucket, entry)}
            assert want <= keys, f"iter_records of {bucket}/{entry} lost {sorted(want - keys)}"
            bad = sorted(k for k in keys if outcomes[k] not in readable)
            assert not bad, f"iter_records lists records it cannot serve: {bad}"

        risky_outcomes = {k: outcomes[k] for k in sorted(risky)}
        if kind == "data" and damage.startswith("flip"):
            hit = {k for k, (begin, end) in SPANS_B.items() if begin <= offset < end}
            want_outcomes = {k: "refused" if k in hit else "ok" for k in sorted(risky)}
            assert risky_outcomes == want_outcomes, (
                f"a flipped data byte must fail exactly the record holding it: {risky_outcomes}"
            )
        if kind == "data" and damage.startswith("cut"):
            whole = {k for k, (_, end) in SPANS_B.items() if end <= offset}
            assert all(outcomes[k] == "ok" for k in whole), (
                f"records wholly before the cut at {offset} must be served: {risky_outcomes}"
            )
        if kind == "wal" and damage == "cut-last":
            first_two = sorted(risky)[:2]
            assert all(outcomes[k] == "ok" for k in first_two), (
                f"torn WAL tail: the good frames before it must be replayed: {risky_outcomes}"
            )

        # The damaged entry keeps accepting writes (a bucket whose settings were lost may be
        # left out until repaired, as long as nothing else is).
        new_ts = T0 + 10_000 * STEP
        try:
            bucket = storage.get_bucket("b2" if kind == "settings" else "b1")
        except NotFound:
            assert kind == "settings"
        else:
            bucket.write_record("e1", new_ts, b"after-damage", "text/plain", {})
            handle = bucket.get_entry("e1")
            assert handle.read_payload(handle.get_record(new_ts)) == b"after-damage"
    finally:
        storage.close()

    after = check(data)
    if kind == "data" and damage.startswith("flip"):
        # Bytes that no longer match their checksum cannot be restored: the scrub names that
        # file; repair may set the record aside, else the scrub keeps naming exactly that one.
        assert_names(after, target, data, offset, "check() after recovery")
        check(data, repair=True)
        after = check(data)
        if not after.ok:
            assert {p.kind for p in after.problems} == {"payload_corrupt"}, after.render()
            assert_names(after, target, data, offset, "check() after repair")
            assert len(after.problems) == 1, after.render()
    else:
        if kind in ("data", "settings") and not after.ok:
            check(data, repair=True)
            after = check(data)
        assert after.ok, f"check() after recovery of {kind} {damage}:\n{after.render()}"

    if kind == "descriptor":
        # Quarantined (moved aside), not silently deleted.
        quarantined = data / ".quarantine" / "b1" / "e1" / target.name
        assert target.exists() or quarantined.exists(), "damaged descriptor vanished"

    storage = Storage.open(EngineOptions(data_path=data))
    try:
        again = serve_all(storage, EXPECTED)
        lost = sorted(
            k
            for k, v in outcomes.items()
            if v == "ok" and again[k] != "ok" and not (kind == "data" and k in risky)
        )
        assert not lost, f"second open lost records the first open served: {lost}"
    finally:
        storage.close()


def test_corruption_descriptor_damaged_while_open_is_refused_at_runtime(data: Path) -> None:
    """A descriptor loaded after startup fails its CRC: that read fails, nothing else does."""
    storage = Storage.open(EngineOptions(data_path=data))  # replays the WAL
    storage.close()
    storage = Storage.open(EngineOptions(data_path=data))  # fresh: no descriptor cached
    try:
        target = data / "b1" / "e1" / f"{BLOCK_B}.meta"
        damage_file(target, "flip-middle")
        victim = ("b1", "e1", ts_of("b1", "e1", 5))
        with pytest.raises(CorruptionError) as excinfo:
            read(storage, victim)
        err = excinfo.value
        assert str(BLOCK_B) in str(err) or _same_file(err.path, target, data), (
            f"the error does not name block {BLOCK_B}: {err!r} path={err.path}"
        )
        others = {k for k in EXPECTED if k not in at_risk("descriptor")}
        assert serve_all(storage, others) == {k: "ok" for k in others}
        for k in at_risk("descriptor"):
            assert outcome(storage, k) in ("absent", "refused"), k
        # The block is dropped from the in-memory index: queries keep working without it.
        assert listed(storage, "b1", "e1") == {k for k in others if k[:2] == ("b1", "e1")}
    finally:
        storage.close()


if __name__ == "__main__" and sys.argv[1:2] == ["build"]:
    build_template(Path(sys.argv[2]))
