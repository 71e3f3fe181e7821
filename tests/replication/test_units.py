"""Unit tier of appliance.replication: transaction log, settings and legacy translation,
entry selection and filters, diagnostics."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.errors import UnprocessableEntity
from appliance.replication.diagnostics import Diagnostics
from appliance.replication.filter import EntryFilter, entry_selected
from appliance.replication.models import Compression, Mode, ReplicationSettings, legacy_when
from appliance.replication.txlog import HEADER, SLOT, UPDATE, WRITE, BrokenLog, TransactionLog

BASE = {"src_bucket": "a", "dst_bucket": "b", "dst_host": "http://127.0.0.1:8383"}


# --- transaction log --------------------------------------------------------------------------


def test_log_push_front_pop_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    log = TransactionLog(path, 10)
    assert log.push([(WRITE, 1), (UPDATE, 2), (WRITE, 3)]) == 0
    assert len(log) == 3
    assert log.front(2) == [(WRITE, 1), (UPDATE, 2)]
    log.pop(1)
    log.close()
    # ReductStore's layout: 16-byte header, 9-byte slots, pre-sized ring
    assert path.stat().st_size == HEADER + SLOT * 10
    again = TransactionLog(path, 10)
    assert again.front(5) == [(UPDATE, 2), (WRITE, 3)]
    again.close()


def test_log_wraps_and_counts_what_overflow_drops(tmp_path: Path) -> None:
    log = TransactionLog(tmp_path / "t.log", 5)  # holds 4
    assert log.push([(WRITE, t) for t in range(3)]) == 0
    log.pop(2)
    assert log.push([(WRITE, t) for t in range(3, 6)]) == 0  # wraps around the end
    assert log.front(10) == [(WRITE, t) for t in range(2, 6)]
    assert log.push([(WRITE, 6), (WRITE, 7)]) == 2  # full: the two oldest are dropped, counted
    assert log.front(10) == [(WRITE, t) for t in range(4, 8)]
    assert log.push([(WRITE, t) for t in range(100, 110)]) == 10  # more than fits at once
    assert log.front(10) == [(WRITE, t) for t in range(106, 110)]
    log.close()


def test_log_with_a_damaged_header_is_recreated_empty(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    TransactionLog(path, 4).close()
    with path.open("r+b") as f:
        f.write(b"\xff" * 16)
    log = TransactionLog(path, 4)
    assert len(log) == 0
    log.close()


def test_log_bad_slot_type_is_a_broken_log(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    log = TransactionLog(path, 4)
    log.push([(WRITE, 1)])
    fd = os.open(path, os.O_RDWR)
    os.pwrite(fd, b"\x07", HEADER)
    os.close(fd)
    with pytest.raises(BrokenLog):
        log.front(1)
    log.close()


def test_log_resized_only_when_empty(tmp_path: Path) -> None:
    path = tmp_path / "t.log"
    log = TransactionLog(path, 4)
    log.push([(WRITE, 1)])
    log.close()
    assert TransactionLog(path, 8).capacity == 4  # backlog kept: size kept
    log = TransactionLog(path, 4)
    log.pop(1)
    log.close()
    assert TransactionLog(path, 8).capacity == 8


# --- settings ----------------------------------------------------------------------------------


def test_settings_json_round_trip_hides_the_token() -> None:
    s = ReplicationSettings.from_json({**BASE, "dst_token": "t", "entries": ["x"], "mode": "PAUSED",
                                       "compression": "zstd", "dst_prefix": "p"})
    assert s.mode is Mode.PAUSED and s.compression is Compression.ZSTD
    assert s.dst_host == "http://127.0.0.1:8383/"
    assert s.to_json() == {
        "src_bucket": "a", "dst_bucket": "b", "dst_host": "http://127.0.0.1:8383/",
        "dst_token": None, "entries": ["x"], "dst_prefix": "p", "when": None,
        "mode": "paused", "compression": "zstd",
    }
    assert s.to_json(with_token=True)["dst_token"] == "t"


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"dst_host": "not a url"}, "Invalid destination host 'not a url'"),
        ({"dst_host": "ftp://x"}, "Invalid destination host 'ftp://x'"),
        ({"dst_host": "http://h:99999"}, "Invalid destination host 'http://h:99999'"),
        ({"when": {"$nope": 1}}, "Invalid replication condition:"),
        ({"mode": "sometimes"}, "mode must be one of enabled, paused, disabled"),
        ({"compression": "lz4"}, "compression must be one of none, gzip, zstd"),
        ({"src_bucket": None}, "Invalid JSON: missing field `src_bucket`"),
        ({"entries": "x"}, "'entries' must be a list of strings"),
        ({"each_n": -1}, "'each_n' must be a non-negative integer"),
        ({"include": ["x"]}, "'include' must be an object"),
    ],
)
def test_settings_refuse_bad_input(patch: dict, message: str) -> None:
    with pytest.raises(UnprocessableEntity) as exc:
        ReplicationSettings.from_json({**BASE, **patch})
    assert message in exc.value.message


def test_dst_prefix_and_entry_names() -> None:
    s = ReplicationSettings.from_json({**BASE, "dst_prefix": "/edge/"})
    assert s.dst_entry("/cam") == "edge/cam"
    assert ReplicationSettings.from_json(BASE).dst_entry("cam") == "cam"


def test_legacy_filters_fold_into_when_as_reductstore_migrates_them() -> None:
    assert legacy_when(None, each_s=1.5, each_n=3) == {"$each_t": 1.5, "$each_n": 3}
    assert legacy_when(None, include={"a": "x"}) == {"$and": [{"$has": "a"}, {"$eq": ["&a", "x"]}]}
    excl = legacy_when(None, exclude={"a": "1", "b": "y"})
    assert excl == {"$or": [
        {"$or": [{"$not": [{"$has": "a"}]}, {"$ne": ["&a", 1]}]},
        {"$or": [{"$not": [{"$has": "b"}]}, {"$ne": ["&b", "y"]}]},
    ]}
    both = legacy_when({"&t": {"$gt": 1}}, include={"a": "x"}, exclude={"b": "y"})
    assert both is not None and both["$and"][1] == {"&t": {"$gt": 1}}
    assert both["$and"][0]["$and"][0] == {"$and": [{"$has": "a"}, {"$eq": ["&a", "x"]}]}


def test_legacy_filters_select_the_records_old_scripts_meant() -> None:
    when = legacy_when(None, include={"kind": "cam", "n": "4"}, exclude={"bad": "true"})
    f = EntryFilter("e", when)
    assert f.passes(1, {"kind": "cam", "n": "4"})
    assert not f.passes(2, {"kind": "cam", "n": "5"})
    assert not f.passes(3, {"kind": "cam", "n": "4", "bad": "true"})
    assert f.passes(4, {"kind": "cam", "n": "4", "bad": "false"})
    assert not f.passes(5, {"n": "4"})  # missing label: skipped, not an error


# --- entry selection and filters -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("patterns", "name", "selected"),
    [
        ([], "anything/$meta", True),
        (["cam-*"], "cam-1/nested", True),
        (["a/*"], "a/x", True),
        (["a/*"], "a/x/y", False),
        (["a/**"], "a/x/y", True),
        (["**/raw"], "s/1/raw", True),
        (["*", "!tmp*"], "tmp-1", False),
        (["!tmp"], "other", True),
        (["entry"], "entry/$meta", True),
        (["/a/*"], "a/x/$meta", True),
        (["other"], "entry/$meta", False),
    ],
)
def test_entry_selection(patterns: list[str], name: str, selected: bool) -> None:
    assert entry_selected(patterns, name) is selected


def test_each_n_and_each_t_keep_state_per_entry() -> None:
    f = EntryFilter("e", {"$each_n": 3})
    assert [f.passes(t, {}) for t in range(6)] == [False, False, True, False, False, True]
    g = EntryFilter("e", {"$each_t": 1})  # first record sets the reference and is not sent
    assert [g.passes(t, {}) for t in (0, 500_000, 1_000_000, 1_500_000, 2_000_000)] == [
        False, False, True, False, True]


def test_meta_entries_skip_the_condition() -> None:
    assert EntryFilter("a/$meta", {"&x": {"$eq": 1}}).passes(1, {})


# --- diagnostics ------------------------------------------------------------------------------


def test_diagnostics_extrapolate_during_the_first_hour() -> None:
    now = [0.0]
    d = Diagnostics(clock=lambda: now[0])
    assert d.to_json() == {"ok": 0, "errored": 0, "errors": {}}
    d.ok(1)
    assert d.to_json()["ok"] == 60  # one frame of 60: ×60
    now[0] = 61
    d.ok(1)
    now[0] = 122
    d.ok(2)
    d.error(401, "bad token", 3)
    d.error(401, "still bad")
    out = d.to_json()
    assert out["ok"] == 80  # 4 / (3/60), as ReductStore's example
    assert out["errored"] == 80
    assert out["errors"] == {"401": {"count": 4, "last_message": "still bad"}}
    now[0] = 122 + 3 * 3600
    d.ok(6)
    assert d.to_json() == {"ok": 6, "errored": 0, "errors": {}}  # an hour later: only new


def test_pop_with_a_stale_start_consumes_nothing(tmp_path: Path) -> None:
    log = TransactionLog(tmp_path / "t.log", 10)
    log.push([(WRITE, t) for t in range(6)])
    start_a, first = log.peek(2)
    start_b, second = log.peek(2, skip=2)
    assert first == [(WRITE, 0), (WRITE, 1)] and second == [(WRITE, 2), (WRITE, 3)]
    assert log.pop(2, start_a) and log.pop(2, start_b)  # in order: both apply
    assert not log.pop(2, start_a)  # a late pop of a replaced sender: ignored
    assert log.front(10) == [(WRITE, 4), (WRITE, 5)]
    log.close()


def test_sync_events_flush_on_status_change_idle_and_max_age() -> None:
    """``replication_sync`` aggregates: one per status run, flushed on a change, when idle
    for 5 s, or 60 s after it began (spec replication §1.12)."""
    from appliance.replication.diagnostics import SyncEvents

    now = [100.0]
    out: list[tuple[dict, dict]] = []
    sync = SyncEvents(lambda payload, labels: out.append((payload, labels)), clock=lambda: now[0])
    sync.record(200, 10, 0, 1000, 0.5, 5)
    now[0] += 1
    sync.record(200, 5, 1, 500, 0.25, 0)
    sync.flush_due(lambda: 0)
    assert out == []  # active and young: nothing yet
    now[0] += 1
    sync.record(-3, 0, 4, 0, 0.1, 4)  # the destination went away: the 200 run is closed
    assert out == [({"type": "replication_sync", "status": 200, "pending_records": 4,
                     "written_records": 15, "failed_records": 1, "replicated_data_size": 1500,
                     "duration": 0.75}, {"status": "200"})]
    now[0] += 4.9
    sync.flush_due(lambda: 4)
    assert len(out) == 1
    now[0] += 0.1
    sync.flush_due(lambda: 4)  # 5 s idle
    assert out[1][1] == {"status": "-3"} and out[1][0]["failed_records"] == 4
    for _ in range(61):  # busy for over a minute with the same status
        sync.record(200, 1, 0, 10, 0.01, 0)
        now[0] += 1
        sync.flush_due(lambda: 0)
    assert len(out) == 3 and out[2][0]["written_records"] == 60
    quiet = SyncEvents(None)
    quiet.record(200, 1, 0, 1, 0.1, 0)  # system events off: nothing kept, nothing raised
    quiet.flush(0)


def test_log_batches_of_many_sizes_round_trip_across_the_wrap(tmp_path: Path) -> None:
    # push and peek pack and unpack whole runs of slots in one call: every run length, wrapped
    log = TransactionLog(tmp_path / "e.log", 50)
    expected: list[tuple[int, int]] = []
    ts = 1
    for count in (1, 7, 30, 2, 40, 1, 13):
        items = [(UPDATE if t % 5 == 0 else WRITE, t * 1_000_003) for t in range(ts, ts + count)]
        ts += count
        assert log.push(items) == max(0, len(expected) + count - 49)
        expected = (expected + items)[-49:]
        assert log.front(100) == expected
        assert log.front(5, skip=3) == expected[3:8]
        start, front = log.peek(10)
        assert front == expected[:10]
        assert log.pop(3, start)
        expected = expected[3:]
    log.close()
    reopened = TransactionLog(tmp_path / "e.log", 50)
    assert reopened.front(100) == expected
    reopened.close()
