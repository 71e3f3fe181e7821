"""Property test: the engine against a ``dict`` model (STYLE 18, ARCHITECTURE §8).

A Hypothesis ``RuleBasedStateMachine`` drives one bucket with tiny blocks (``max_block_records``
= 3, ``max_block_size`` = 1 KiB, so blocks roll every few records and some records are larger
than a whole block) through random single, streamed and batched writes (sizes from 0 B to 2 KiB,
random, out-of-order and duplicate timestamps), single and range removals, label updates,
compaction and close + reopen. Only the public engine surface and ``engine.check`` are used.

Invariants after every step: every record of the model reads back with identical bytes, labels
and content type; ``iter_records`` over the whole entry equals the model in timestamp order;
entry statistics agree. Writing an existing timestamp raises ``Conflict``. After every run (and
at every reopen, while the engine is closed) ``check(data_path).ok`` is True.

Reproduce: the seed is printed at the start of the test (``pytest -s`` shows it; a failure
report shows it too). Run again with it::

    PROPERTY_SEED=123456 python -m pytest tests/engine/test_property.py -s -p no:cacheprovider

Hypothesis also prints the minimal failing program (the list of steps) on failure.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, note, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from appliance.engine import Storage
from appliance.engine.check import check
from appliance.engine.models import BucketSettings, EngineOptions, NewRecord, RecordState
from appliance.errors import Conflict, NotFound

SEED = int(os.environ.get("PROPERTY_SEED", random.SystemRandom().randrange(2**32)))

MAX_BLOCK_RECORDS = 3
MAX_BLOCK_SIZE = 1024
BUCKET = "prop"
ENTRIES = ("alpha", "beta", "nested/child")
CONTENT_TYPES = ("application/octet-stream", "text/plain", "image/jpeg")
U64_MAX = 2**64 - 1

# Timestamps: a small dense range (collisions, out-of-order, belated writes into old blocks)
# plus a far range (a gap of ~10^12 µs between blocks).
timestamps = st.one_of(st.integers(1, 120), st.integers(10**12, 10**12 + 40))
sizes = st.one_of(
    st.just(0),
    st.integers(1, 64),
    st.integers(65, MAX_BLOCK_SIZE),
    st.integers(MAX_BLOCK_SIZE + 1, 2 * MAX_BLOCK_SIZE),  # bigger than a whole block
)
label_keys = st.sampled_from(("k", "color", "n", "x"))
label_values = st.text(alphabet="abcxyz0123", min_size=1, max_size=6)
label_maps = st.dictionaries(label_keys, label_values, max_size=3)
entries = st.sampled_from(ENTRIES)
content_types = st.sampled_from(CONTENT_TYPES)


def payload(data_seed: int, size: int) -> bytes:
    """Deterministic pseudo-random bytes (cheap, and distinct per record)."""
    return random.Random(data_seed).randbytes(size)


Model = dict[str, dict[int, tuple[bytes, str, dict[str, str]]]]


class EngineMachine(RuleBasedStateMachine):
    """One Storage with one bucket, mirrored by ``self.model[entry][ts] = (data, type, labels)``."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="engine-prop-"))
        self.data_path = self.tmp / "data"
        self.options = EngineOptions(data_path=self.data_path)
        self.storage = Storage.open(self.options)
        self.storage.create_bucket(
            BUCKET,
            BucketSettings(max_block_size=MAX_BLOCK_SIZE, max_block_records=MAX_BLOCK_RECORDS),
        )
        self.model: Model = {name: {} for name in ENTRIES}
        self.closed = False

    # -- helpers ------------------------------------------------------------------------------

    @property
    def bucket(self):  # noqa: ANN201 - engine type, public contract
        return self.storage.get_bucket(BUCKET)

    def entry(self, name: str):  # noqa: ANN201
        return self.bucket.get_entry(name)

    # -- writes -------------------------------------------------------------------------------

    @rule(
        name=entries,
        ts=timestamps,
        size=sizes,
        ctype=content_types,
        labels=label_maps,
        data_seed=st.integers(0, 2**32),
    )
    def write_record(
        self, name: str, ts: int, size: int, ctype: str, labels: dict[str, str], data_seed: int
    ) -> None:
        data = payload(data_seed, size)
        if ts in self.model[name]:
            with pytest.raises(Conflict):
                self.bucket.write_record(name, ts, data, ctype, labels)
            return
        self.bucket.write_record(name, ts, data, ctype, labels)
        self.model[name][ts] = (data, ctype, dict(labels))

    @rule(
        name=entries,
        ts=timestamps,
        size=sizes,
        ctype=content_types,
        labels=label_maps,
        data_seed=st.integers(0, 2**32),
        chunk=st.integers(1, 700),
    )
    def write_streamed(
        self,
        name: str,
        ts: int,
        size: int,
        ctype: str,
        labels: dict[str, str],
        data_seed: int,
        chunk: int,
    ) -> None:
        data = payload(data_seed, size)
        if ts in self.model[name]:
            # Refused before any byte of the body is accepted (HTTP 409 before reading the body).
            with pytest.raises(Conflict):
                self.bucket.begin_write(name, ts, size, ctype, labels)
            return
        writer = self.bucket.begin_write(name, ts, size, ctype, labels)
        for i in range(0, size, chunk):
            writer.write(data[i : i + chunk])
        writer.finish()
        self.model[name][ts] = (data, ctype, dict(labels))

    @rule(
        name=entries,
        batch=st.lists(
            st.tuples(timestamps, st.integers(0, 200), label_maps, st.integers(0, 2**32)),
            min_size=1,
            max_size=8,
            unique_by=lambda item: item[0],
        ),
    )
    def write_batch(self, name: str, batch: list[tuple[int, int, dict[str, str], int]]) -> None:
        records = [
            NewRecord(
                timestamp=ts,
                data=payload(data_seed, size),
                content_type="text/plain",
                labels=labels,
            )
            for ts, size, labels, data_seed in batch
        ]
        errors = self.bucket.write_batch(name, records)
        expected_conflicts = {r.timestamp for r in records if r.timestamp in self.model[name]}
        assert set(errors) == expected_conflicts, (errors, expected_conflicts)
        for ts in expected_conflicts:
            assert isinstance(errors[ts], Conflict), errors[ts]
        for r in records:
            if r.timestamp not in expected_conflicts:
                self.model[name][r.timestamp] = (r.data, r.content_type, dict(r.labels))

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), size=sizes)
    def write_duplicate_is_conflict(self, data: st.DataObject, size: int) -> None:
        name = data.draw(st.sampled_from([n for n in ENTRIES if self.model[n]]))
        ts = data.draw(st.sampled_from(sorted(self.model[name])))
        with pytest.raises(Conflict):
            self.bucket.write_record(name, ts, b"\xff" * size, "text/plain", {"dup": "1"})
        with pytest.raises(Conflict):
            self.bucket.begin_write(name, ts, size, "text/plain", {})

    # -- removals and label updates ----------------------------------------------------------

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), also_missing=timestamps)
    def remove_single(self, data: st.DataObject, also_missing: int) -> None:
        name = data.draw(st.sampled_from([n for n in ENTRIES if self.model[n]]))
        ts = data.draw(st.sampled_from(sorted(self.model[name])))
        wanted = [ts] if also_missing in self.model[name] else [ts, also_missing]
        errors = self.entry(name).remove_records(wanted)
        missing = set(wanted) - set(self.model[name])
        assert set(errors) == missing, (errors, missing)
        for t in missing:
            assert isinstance(errors[t], NotFound), errors[t]
        del self.model[name][ts]

    @precondition(lambda self: any(self.model.values()))
    @rule(
        data=st.data(), start=st.integers(0, 130), width=st.integers(0, 60), by_label=st.booleans()
    )
    def remove_range(self, data: st.DataObject, start: int, width: int, by_label: bool) -> None:
        name = data.draw(st.sampled_from([n for n in ENTRIES if self.model[n]]))
        stop = start + width

        def wanted(labels: dict[str, str]) -> bool:
            return labels.get("k", "") < "b" if by_label else True

        predicate = (lambda meta: wanted(dict(meta.labels))) if by_label else None
        doomed = [
            t
            for t, (_, _, labels) in self.model[name].items()
            if start <= t < stop and wanted(labels)
        ]
        removed = self.entry(name).remove_where(start, stop, predicate)
        assert removed == len(doomed), (removed, sorted(doomed))
        for t in doomed:
            del self.model[name][t]

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), update=label_maps, remove=st.sets(label_keys, max_size=2))
    def update_labels(self, data: st.DataObject, update: dict[str, str], remove: set[str]) -> None:
        name = data.draw(st.sampled_from([n for n in ENTRIES if self.model[n]]))
        ts = data.draw(st.sampled_from(sorted(self.model[name])))
        blob, ctype, labels = self.model[name][ts]
        new_labels = {k: v for k, v in labels.items() if k not in remove}
        new_labels.update(update)
        meta = self.entry(name).update_labels(ts, update, remove)
        assert dict(meta.labels) == new_labels
        assert meta.timestamp == ts and meta.size == len(blob)
        self.model[name][ts] = (blob, ctype, new_labels)

    @rule(name=entries, ts=timestamps)
    def update_labels_of_missing_record_is_not_found(self, name: str, ts: int) -> None:
        if ts in self.model[name]:
            return
        try:
            entry = self.entry(name)
        except NotFound:
            return  # the entry itself does not exist yet
        with pytest.raises(NotFound):
            entry.update_labels(ts, {"a": "b"}, set())

    # -- maintenance --------------------------------------------------------------------------

    @rule()
    def compact(self) -> None:
        self.storage.compact()

    @rule()
    def reopen(self) -> None:
        self.storage.close()
        self.closed = True
        report = check(self.data_path)
        assert report.ok, report.render()
        self.storage = Storage.open(self.options)
        self.closed = False

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def engine_matches_model(self) -> None:
        for name in ENTRIES:
            expected = self.model[name]
            try:
                entry = self.entry(name)
            except NotFound:
                assert not expected, f"entry {name} lost with {len(expected)} records"
                continue
            listed = [
                (m.timestamp, m.size, m.content_type, dict(m.labels), m.state)
                for m in entry.iter_records(0, U64_MAX)
            ]
            want = [
                (ts, len(blob), ctype, labels, RecordState.FINISHED)
                for ts, (blob, ctype, labels) in sorted(expected.items())
            ]
            assert listed == want, f"iter_records of {name} differs from the model"
            for ts, (blob, ctype, labels) in expected.items():
                meta = entry.get_record(ts)
                assert (meta.timestamp, meta.size, meta.content_type, dict(meta.labels)) == (
                    ts,
                    len(blob),
                    ctype,
                    labels,
                ), f"{name}@{ts}"
                assert meta.state == RecordState.FINISHED
                assert entry.read_payload(meta) == blob, f"payload of {name}@{ts}"
            info = entry.info()
            assert info.record_count == len(expected), (name, info)
            if expected:
                assert info.oldest_record == min(expected), (name, info)
                assert info.latest_record == max(expected), (name, info)
                assert entry.latest_record().timestamp == max(expected)

    def teardown(self) -> None:
        try:
            if not self.closed:
                self.storage.close()
            report = check(self.data_path)
            note(report.render())
            assert report.ok, report.render()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


SETTINGS = settings(
    max_examples=60,
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def test_engine_matches_dict_model() -> None:
    print(f"\nengine property test seed: PROPERTY_SEED={SEED}")

    def factory() -> EngineMachine:
        return EngineMachine()

    try:
        run_state_machine_as_test(seed(SEED)(factory), settings=SETTINGS)
    except BaseException as exc:
        exc.add_note(f"reproduce with PROPERTY_SEED={SEED}")
        raise
