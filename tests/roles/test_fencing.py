"""Generation markers and the pure rule recovery applies to WAL frames and commits."""

from __future__ import annotations

import pytest

from appliance.roles.clock import ManualClock
from appliance.roles.fencing import (
    GENERATIONS_KEY,
    Fence,
    GenerationLog,
    GenerationMarker,
    SegmentBoundary,
    Verdict,
    accept,
    index_is_stale,
    is_wal_segment,
    may_replace,
    parse_markers,
    snapshot_wal,
)
from appliance.roles.lease import LeaseLost
from backends.base import Backend

SEG = "bucket/entry/.wal/1700000000000000.wal"
HEADER = b"H" * 10
FRAME = 10  # every fake frame is 10 bytes


def segment(*generations: int) -> bytes:
    """A fake WAL segment: a header, then one 10-byte frame per generation."""
    return HEADER + b"".join(bytes([g]) * FRAME for g in generations)


def end(index: int) -> int:
    """End offset of frame ``index`` (0-based)."""
    return len(HEADER) + FRAME * (index + 1)


def marker(generation: int, wal: dict[str, bytes] | None = None) -> GenerationMarker:
    boundaries = {k: SegmentBoundary.of(v) for k, v in (wal or {}).items()}
    return GenerationMarker(generation, f"node{generation}", 0.0, boundaries)


def verdicts(fence: Fence, data: bytes, header_gen: int, frame_gens: list[int]) -> list[Verdict]:
    seg = fence.segment(SEG, header_gen, data)
    return [seg.verdict(g, end(i)) for i, g in enumerate(frame_gens)]


def test_fence_without_markers_accepts_current_and_older() -> None:
    fence = Fence([], current=3)
    assert verdicts(fence, segment(1, 2, 3), 1, [1, 2, 3]) == [Verdict.ACCEPT] * 3


def test_fence_rejects_frames_from_the_future() -> None:
    fence = Fence([marker(2)], current=2)
    assert verdicts(fence, segment(2, 3), 2, [2, 3]) == [Verdict.ACCEPT, Verdict.FUTURE]


def test_fence_rejects_older_frames_in_a_segment_a_newer_generation_created() -> None:
    fence = Fence([marker(1), marker(2)], current=2)
    assert verdicts(fence, segment(2, 1), 2, [2, 1]) == [Verdict.ACCEPT, Verdict.NEWER_SEGMENT]


def test_fence_accepts_old_frames_before_the_boundary_and_rejects_after() -> None:
    before = segment(1, 1)
    after = segment(1, 1, 1, 1)  # the paused gen-1 writer appended two frames after gen 2 began
    fence = Fence([marker(1), marker(2, {SEG: before})], current=2)
    assert verdicts(fence, after, 1, [1, 1, 1, 1]) == [
        Verdict.ACCEPT, Verdict.ACCEPT, Verdict.AFTER_BOUNDARY, Verdict.AFTER_BOUNDARY
    ]


def test_fence_rejects_a_segment_created_after_the_boundary() -> None:
    fence = Fence([marker(1), marker(2, {})], current=2)
    assert verdicts(fence, segment(1), 1, [1]) == [Verdict.AFTER_BOUNDARY]


def test_fence_rejects_a_recreated_segment_even_inside_the_old_length() -> None:
    # gen 2's recovery deleted the segment; stale gen 1 re-created it with other frames.
    original = segment(1, 1, 1)
    recreated = HEADER + b"\x01" * FRAME + b"\x07" * FRAME * 2
    fence = Fence([marker(1), marker(2, {SEG: original})], current=2)
    assert verdicts(fence, recreated, 1, [1]) == [Verdict.AFTER_BOUNDARY]
    # ... and a segment shorter than the boundary cannot be the file that was there
    assert verdicts(fence, segment(1), 1, [1]) == [Verdict.AFTER_BOUNDARY]


def test_fence_uses_the_earliest_newer_marker() -> None:
    at_gen2 = segment(1, 1)
    at_gen3 = segment(1, 1, 1, 2, 2)
    now = segment(1, 1, 1, 2, 2, 2)
    fence = Fence([marker(1), marker(2, {SEG: at_gen2}), marker(3, {SEG: at_gen3})], current=3)
    # frame 2 (gen 1) is inside gen 3's prefix but was written after gen 2 began: rejected.
    assert verdicts(fence, now, 1, [1, 1, 1, 2, 2, 2]) == [
        Verdict.ACCEPT, Verdict.ACCEPT, Verdict.AFTER_BOUNDARY,
        Verdict.ACCEPT, Verdict.ACCEPT, Verdict.AFTER_BOUNDARY,
    ]


def test_fence_survives_a_crash_in_the_new_holders_recovery() -> None:
    # gen 2 recorded its marker, crashed before deleting the WAL; gen 3 must keep gen 1's data.
    data = segment(1, 1)
    fence = Fence([marker(1), marker(2, {SEG: data}), marker(3, {SEG: data})], current=3)
    assert verdicts(fence, data, 1, [1, 1]) == [Verdict.ACCEPT, Verdict.ACCEPT]


def test_fence_check_current_refuses_a_stale_recoverer() -> None:
    Fence([marker(1), marker(2)], current=2).check_current()
    with pytest.raises(LeaseLost, match="generation 3 began"):
        Fence([marker(2), marker(3)], current=2).check_current()
    assert Fence([], current=0).newest == 0


def test_fence_accept_function_matches_the_segment_rule() -> None:
    markers = [marker(1), marker(2, {SEG: segment(1)})]
    data = segment(1, 1)
    kwargs = dict(current=2, markers=markers, segment=SEG, segment_generation=1, segment_data=data)
    assert accept(1, end_offset=end(0), **kwargs) is True  # type: ignore[arg-type]
    assert accept(1, end_offset=end(1), **kwargs) is False  # type: ignore[arg-type]


def test_fence_commit_rules() -> None:
    assert may_replace(3, 3) and may_replace(2, 3) and not may_replace(4, 3)
    assert index_is_stale(2, [1, 2, 3]) and not index_is_stale(3, [1, 3]) and not index_is_stale(
        1, []
    )


def test_fence_wal_segment_names() -> None:
    assert is_wal_segment(SEG)
    assert not is_wal_segment("bucket/entry/1.blk") and not is_wal_segment("bucket/.wal")


def test_marker_round_trip_and_tolerant_parsing() -> None:
    m = marker(4, {SEG: segment(1)})
    assert GenerationMarker.decode(m.encode()) == m
    data = marker(2).encode() + b"{torn\n\n" + m.encode() + b'{"generation": "x"}\n'
    assert [x.generation for x in parse_markers(data)] == [2, 4]


def test_generation_log_appends_markers_in_order(backend: Backend, clock: ManualClock) -> None:
    log = GenerationLog(backend, clock=clock)
    assert log.markers() == []
    log.record_began(1, "a")
    clock.advance(5)
    log.record_began(2, "b", {SEG: SegmentBoundary(20, 7)})
    markers = log.markers()
    assert [(m.generation, m.owner) for m in markers] == [(1, "a"), (2, "b")]
    assert markers[1].wal == {SEG: SegmentBoundary(20, 7)}
    assert markers[1].began_at_wall - markers[0].began_at_wall == 5
    assert backend.read(GENERATIONS_KEY).count(b"\n") == 2


def test_generation_log_refuses_a_stale_generation(backend: Backend) -> None:
    log = GenerationLog(backend)
    log.record_began(5, "b")
    with pytest.raises(LeaseLost, match="generation 5 already began"):
        log.record_began(5, "a")
    with pytest.raises(LeaseLost):
        log.record_began(3, "a")
    assert log.record_began(5, "b").owner == "b"  # our own retried write: idempotent
    assert len(log.markers()) == 1


def test_generation_log_repairs_a_missing_final_newline(backend: Backend) -> None:
    backend.write(GENERATIONS_KEY, marker(1).encode().rstrip(b"\n"))
    GenerationLog(backend).record_began(2, "b")
    assert [m.generation for m in GenerationLog(backend).markers()] == [1, 2]


def test_snapshot_wal_lists_every_segment_with_its_crc(backend: Backend) -> None:
    backend.write(SEG, segment(1, 1))
    backend.write("b2/e/.wal/5.wal", segment(2))
    backend.write("bucket/entry/1700000000000000.blk", b"payload")
    backend.write(".lock", b"{}")
    snap = snapshot_wal(backend)
    assert snap == {
        SEG: SegmentBoundary.of(segment(1, 1)), "b2/e/.wal/5.wal": SegmentBoundary.of(segment(2))
    }


def test_fencing_end_to_end_stale_writer_appends_after_takeover(backend: Backend) -> None:
    log = GenerationLog(backend)
    log.record_began(1, "old")
    backend.write(SEG, segment(1, 1))  # acknowledged by gen 1 before the takeover
    log.record_began(2, "new", snapshot_wal(backend))
    backend.write(SEG, backend.read(SEG) + b"\x01" * FRAME)  # the paused writer resumes
    fence = Fence(log.markers(), current=2)
    fence.check_current()
    data = backend.read(SEG)
    assert verdicts(fence, data, 1, [1, 1, 1]) == [
        Verdict.ACCEPT, Verdict.ACCEPT, Verdict.AFTER_BOUNDARY
    ]
