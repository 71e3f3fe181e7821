"""Unit tests of ``appliance.hotcopy``: aliases, locations, filters, progress, write groups."""

from __future__ import annotations

import io
import stat
from pathlib import Path

import pytest
from rich.console import Console

from appliance.hotcopy.aliases import AliasError, AliasStore
from appliance.hotcopy.copier import WRITE_MAX_HEADER_BYTES, write_groups
from appliance.hotcopy.filters import CopyFilter, FilterError, parse_labels, parse_time, parse_when
from appliance.hotcopy.locations import resolve
from appliance.hotcopy.model import RecordHeader
from appliance.hotcopy.progress import CopyStats, PlainReporter, RichReporter


def test_aliases_round_trip_with_private_modes(tmp_path: Path) -> None:
    store = AliasStore(tmp_path / "appliance")
    store.add("edge", "https://edge.local:8383/", 'to"ken\\with\nodd chars')
    store.add("lab", "http://127.0.0.1:1", "")
    again = AliasStore(tmp_path / "appliance").load()
    assert again["edge"].url == "https://edge.local:8383"
    assert again["edge"].token == 'to"ken\\with\nodd chars'
    assert again["lab"].masked_token == "-"
    assert again["edge"].masked_token == "to***"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.folder.stat().st_mode) == 0o700
    store.remove("lab")
    assert list(store.load()) == ["edge"]


def test_aliases_tighten_an_existing_folder_and_refuse_bad_input(tmp_path: Path) -> None:
    folder = tmp_path / "appliance"
    folder.mkdir(mode=0o755)
    store = AliasStore(folder)
    store.add("a", "http://h:1", "t")
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    with pytest.raises(AliasError, match="already exists"):
        store.add("a", "http://h:2", "t")
    store.add("a", "http://h:2", "t", replace_existing=True)
    assert store.get("a").url == "http://h:2"
    with pytest.raises(AliasError, match="may contain only"):
        store.add("a b", "http://h:1", "")
    with pytest.raises(AliasError, match="must look like"):
        store.add("b", "ftp://h", "")
    with pytest.raises(AliasError, match="unknown alias 'zz' \\(known: a\\)"):
        store.get("zz")
    store.path.write_text("[aliases.x\n")
    with pytest.raises(AliasError, match="can't be read"):
        store.load()


def test_locations_resolve_urls_aliases_and_folders(tmp_path: Path) -> None:
    store = AliasStore(tmp_path / "cfg")
    store.add("edge", "http://10.0.0.5:8383", "tok")
    assert resolve("http://h:1/reduct/b1", store, allow_folder=False).url == "http://h:1/reduct"
    loc = resolve("edge/b2", store, allow_folder=False)
    assert (loc.url, loc.token, loc.bucket) == ("http://10.0.0.5:8383", "tok", "b2")
    assert resolve("edge/b2", store, allow_folder=False, token="other").token == "other"
    (tmp_path / "data").mkdir()
    assert resolve(f"{tmp_path}/data/b3", store, allow_folder=True).folder == tmp_path / "data"
    with pytest.raises(AliasError, match="not an alias or a URL"):
        resolve(f"{tmp_path}/data/b3", store, allow_folder=False)
    with pytest.raises(AliasError, match="unknown alias 'nope'"):
        resolve("nope/b", store, allow_folder=True)
    with pytest.raises(AliasError, match="must look like"):
        resolve("bucket-only", store, allow_folder=True)


def test_filters_parse_times_labels_and_when() -> None:
    assert parse_time("1700000000000000", "--start") == 1_700_000_000_000_000
    assert parse_time("2023-11-14T22:13:20Z", "--start") == 1_700_000_000_000_000
    assert parse_time("2023-11-14T23:13:20.5+01:00", "--start") == 1_700_000_000_500_000
    assert parse_time("2023-11-14T22:13:20", "--start") == 1_700_000_000_000_000  # naive = UTC
    with pytest.raises(FilterError, match="neither µs"):
        parse_time("yesterday", "--stop")
    assert parse_labels(["a=1", "b=x=y", "c="], "--include") == {"a": "1", "b": "x=y", "c": ""}
    with pytest.raises(FilterError, match="label=value"):
        parse_labels(["novalue"], "--exclude")
    assert parse_when('{"&a": {"$gt": 1}}') == {"&a": {"$gt": 1}}
    with pytest.raises(FilterError, match="JSON object"):
        parse_when("[1]")
    with pytest.raises(FilterError, match="Operator '\\$bogus' not supported"):
        parse_when('{"$bogus": 1}')
    with pytest.raises(FilterError, match="before --stop"):
        CopyFilter(start=5, stop=5)
    with pytest.raises(FilterError, match="at least 1"):
        CopyFilter(limit=0)


def test_filter_include_needs_all_pairs_and_exclude_drops_only_full_matches() -> None:
    flt = CopyFilter(include={"a": "1", "b": "2"}, exclude={"c": "3", "d": "4"})
    assert flt.accepts({"a": "1", "b": "2"})
    assert not flt.accepts({"a": "1"})
    assert not flt.accepts({"a": "1", "b": "20"})
    assert flt.accepts({"a": "1", "b": "2", "c": "3"})  # only one exclude pair present
    assert not flt.accepts({"a": "1", "b": "2", "c": "3", "d": "4"})
    assert CopyFilter().accepts({})


def test_write_groups_respect_the_header_budget() -> None:
    labels = {"k" * 50: "v" * 200}
    records = [RecordHeader("e", ts, 1, "application/octet-stream", labels) for ts in range(1000)]
    groups = write_groups(records)
    assert [r for g in groups for r in g] == records
    assert len(groups) > 1
    for group in groups:
        assert (
            sum(len(k) + len(v) + 60 for r in group for k, v in r.labels.items())
            <= WRITE_MAX_HEADER_BYTES * 1.1
        )


def test_plain_reporter_prints_counts_rates_and_eta() -> None:
    out = io.StringIO()
    reporter = PlainReporter(out, interval=0)
    stats = CopyStats(span=100)
    reporter.start(stats)
    stats.copied, stats.bytes, stats.covered = 10, 2_000_000, 25
    reporter.update()
    line = out.getvalue()
    assert line.startswith("progress: 25%: 10 copied, 0 skipped, 0 failed, 2.00 MB")
    assert "records/s" in line and "MB/s" in line and "ETA" in line


def test_rich_reporter_draws_a_bar_on_a_terminal() -> None:
    out = io.StringIO()
    reporter = RichReporter(Console(file=out, force_terminal=True, width=80))
    stats = CopyStats(span=10)
    reporter.start(stats)
    stats.copied, stats.skipped, stats.covered = 3, 1, 5
    reporter.update()
    reporter.note("entry e: done")
    reporter.stop()
    text = out.getvalue()
    assert "3 rec 0.0 MB 1 skipped" in text and "rec/s" in text and "ETA" in text
    assert "entry e: done" in text
