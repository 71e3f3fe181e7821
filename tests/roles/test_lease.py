"""The lease protocol over MemoryBackend and FilesystemBackend, with a fake clock (no sleeping)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

import pytest

from appliance.roles.clock import ManualClock
from appliance.roles.lease import (
    GENERATION_KEY,
    LOCK_KEY,
    Lease,
    LeaseHeld,
    LeaseLost,
    LeaseRecord,
    LockState,
    OwnerId,
)
from backends.base import Backend
from backends.errors import BackendUnavailable, PreconditionFailed
from backends.memory import MemoryBackend
from tests.roles.conftest import owner

TTL = 30.0


def lease(backend: Backend, clock: ManualClock, name: str, **kwargs: Any) -> Lease:
    return Lease(backend, owner(name), ttl_s=TTL, clock=clock, **kwargs)


def stored(backend: Backend) -> LeaseRecord:
    return LeaseRecord.decode(backend.read(LOCK_KEY))


def test_lease_new_acquire_writes_full_record(backend: Backend, clock: ManualClock) -> None:
    a = lease(backend, clock, "a")
    record = a.acquire()
    assert record.generation == 1 and record.renew_seq == 0 and not record.released
    on_disk = json.loads(backend.read(LOCK_KEY))
    assert set(on_disk) >= {
        "owner", "nonce", "generation", "renew_seq", "ttl_s", "acquired_at", "renewed_at"
    }
    assert on_disk["owner"] == "a:100:uuid-a-100" and on_disk["ttl_s"] == TTL
    assert json.loads(backend.read(GENERATION_KEY))["generation"] == 1
    assert a.held == record and a.renewed_mono == clock.monotonic()


def test_lease_active_raises_lease_held_saying_who_and_how_long(
    backend: Backend, clock: ManualClock
) -> None:
    lease(backend, clock, "a").acquire()
    b = lease(backend, clock, "b")
    with pytest.raises(LeaseHeld) as first:
        b.acquire()
    clock.advance(TTL - 1)
    with pytest.raises(LeaseHeld) as later:
        b.acquire()
    assert first.value.owner == "a:100:uuid-a-100" and first.value.generation == 1
    assert first.value.unchanged_for_s == 0
    assert later.value.unchanged_for_s == TTL - 1
    assert "a:100:uuid-a-100" in str(later.value) and "generation 1" in str(later.value)


def test_lease_expired_is_taken_over_with_next_generation(
    backend: Backend, clock: ManualClock
) -> None:
    lease(backend, clock, "a").acquire()
    b = lease(backend, clock, "b")
    assert not b.expired(b.observe())  # first sighting starts b's monotonic timer
    clock.advance(TTL)
    seen = b.observe()
    assert seen.state is LockState.HELD and b.expired(seen)
    record = b.acquire()
    assert record.generation == 2 and stored(backend).owner == str(b.owner)


def test_lease_staleness_counts_from_first_sighting_not_from_wall_clock(
    backend: Backend, clock: ManualClock
) -> None:
    a = lease(backend, clock, "a")
    a.acquire()
    clock.advance(10 * TTL)  # a long time passes before b even starts
    b = lease(backend, clock, "b")
    with pytest.raises(LeaseHeld):
        b.acquire()  # b has only just seen it: not stale by b's clock
    clock.advance(TTL)
    assert b.acquire().generation == 2


def test_lease_renew_keeps_it_and_resets_observers(backend: Backend, clock: ManualClock) -> None:
    a = lease(backend, clock, "a")
    a.acquire()
    b = lease(backend, clock, "b")
    for seq in range(1, 6):
        b.observe()
        clock.advance(TTL - 1)
        record = a.renew()
        assert record.renew_seq == seq and stored(backend).renew_seq == seq
        assert a.renewed_mono == clock.monotonic()
        assert not b.expired(b.observe())
    with pytest.raises(LeaseHeld):
        b.acquire()
    assert stored(backend).generation == 1


def test_lease_foreign_overwrite_is_detected_by_renew(backend: Backend, clock: ManualClock) -> None:
    a = lease(backend, clock, "a")
    a.acquire()
    forged = LeaseRecord("mallory:1:x", "n", 9, 0, TTL, 0.0, 0.0)
    backend.write(LOCK_KEY, forged.encode())
    with pytest.raises(LeaseLost) as lost:
        a.renew()
    assert lost.value.found_owner == "mallory:1:x" and lost.value.found_generation == 9
    assert a.held is None and a.generation == 0
    with pytest.raises(LeaseLost):
        a.renew()  # stays lost


def test_lease_newer_reserved_generation_makes_the_holder_step_down(
    backend: Backend, clock: ManualClock
) -> None:
    # A holder whose unguarded rename clobbered its successor's lock still "renews"; the
    # generation the successor reserved first tells it that it was deposed.
    a = lease(backend, clock, "a")
    a.acquire()
    a.renew()
    backend.write(GENERATION_KEY, json.dumps({"generation": 5, "owner": "b"}).encode())
    with pytest.raises(LeaseLost, match="generation 5 was reserved"):
        a.renew()
    assert a.held is None


def test_lease_deleted_lock_means_lost(backend: Backend, clock: ManualClock) -> None:
    a = lease(backend, clock, "a")
    a.acquire()
    backend.delete(LOCK_KEY)
    with pytest.raises(LeaseLost, match="removed"):
        a.renew()


def test_lease_release_lets_others_acquire_immediately(
    backend: Backend, clock: ManualClock
) -> None:
    a = lease(backend, clock, "a")
    a.acquire()
    b = lease(backend, clock, "b")
    with pytest.raises(LeaseHeld):
        b.acquire()
    assert a.release() is True and a.held is None
    seen = b.observe()
    assert seen.state is LockState.RELEASED and seen.free
    assert b.acquire().generation == 2  # no clock advance needed
    assert a.release() is False  # nothing to release any more


def test_lease_generation_increments_and_survives_lock_deletion(
    backend: Backend, clock: ManualClock
) -> None:
    generations = []
    for name in ("a", "b", "c"):
        node = lease(backend, clock, name)
        generations.append(node.acquire().generation)
        node.release()
    backend.delete(LOCK_KEY)  # an operator "cleans up"
    d = lease(backend, clock, "d")
    generations.append(d.acquire().generation)
    assert generations == [1, 2, 3, 4]
    assert json.loads(backend.read(GENERATION_KEY))["generation"] == 4


def test_lease_generation_is_above_a_lock_newer_than_the_counter(
    backend: Backend, clock: ManualClock
) -> None:
    # A crash between reserving and... or a restored .lock: whichever is higher wins.
    backend.write(GENERATION_KEY, b"garbage")
    backend.write(LOCK_KEY, LeaseRecord("x:1:y", "n", 41, 3, TTL, 0.0, 0.0, released=True).encode())
    assert lease(backend, clock, "a").acquire().generation == 42


@pytest.mark.parametrize("content", [b"", b"{not json", b'{"owner": "x"}', b"[1, 2]"])
def test_lease_empty_or_unparseable_lock_goes_stale_like_any_other(
    backend: Backend, clock: ManualClock, content: bytes
) -> None:
    backend.write(LOCK_KEY, content)
    a = lease(backend, clock, "a")
    seen = a.observe()
    assert seen.state is LockState.CORRUPT and not seen.free and not a.expired(seen)
    with pytest.raises(LeaseHeld, match="corrupt lock"):
        a.acquire()
    clock.advance(TTL)
    assert a.acquire().generation == 1


def test_lease_changed_corrupt_content_restarts_the_timer(
    backend: Backend, clock: ManualClock
) -> None:
    backend.write(LOCK_KEY, b"")
    a = lease(backend, clock, "a")
    a.observe()
    clock.advance(TTL - 1)
    backend.write(LOCK_KEY, b"x")  # something is alive and writing there
    clock.advance(1)
    assert not a.expired(a.observe())


def test_lease_ttl_zero_never_expires(backend: Backend, clock: ManualClock) -> None:
    Lease(backend, owner("a"), ttl_s=0, clock=clock).acquire()
    b = Lease(backend, owner("b"), ttl_s=0, clock=clock)
    b.observe()
    clock.advance(1e6)
    assert not b.expired(b.observe())


def test_lease_skew_margin_delays_expiry(backend: Backend, clock: ManualClock) -> None:
    lease(backend, clock, "a").acquire()
    b = lease(backend, clock, "b", skew_margin_s=5)
    b.observe()
    clock.advance(TTL)
    assert not b.expired(b.observe())
    clock.advance(5)
    assert b.expired(b.observe())


@pytest.mark.parametrize("start", ["free", "expired", "released"])
def test_lease_concurrent_acquisition_has_exactly_one_winner(
    backend: Backend, clock: ManualClock, start: str
) -> None:
    contenders = [lease(backend, clock, f"n{i}") for i in range(8)]
    if start != "free":
        old = lease(backend, clock, "old")
        old.acquire()
        if start == "released":
            old.release()
        for node in contenders:
            node.observe()
        clock.advance(TTL)
    barrier = threading.Barrier(len(contenders))
    results: list[object] = [None] * len(contenders)

    def contend(i: int) -> None:
        barrier.wait(10)
        try:
            results[i] = contenders[i].acquire()
        except LeaseHeld as exc:
            results[i] = exc

    threads = [threading.Thread(target=contend, args=(i,)) for i in range(len(contenders))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    winners = [r for r in results if isinstance(r, LeaseRecord)]
    assert len(winners) == 1, results
    assert all(isinstance(r, LeaseHeld) for r in results if r is not winners[0])
    assert stored(backend).same_write(winners[0])
    # Losers may have reserved a generation too, so there can be gaps; never a repeat.
    assert winners[0].generation >= (1 if start == "free" else 2)
    assert json.loads(backend.read(GENERATION_KEY))["generation"] >= winners[0].generation


class LandThenFail:
    """A backend whose conditional writes land but report PreconditionFailed (a retried PUT)."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.armed = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _wrap(self, call: Callable[[], Any], key: str) -> Any:
        info = call()
        if self.armed and key == LOCK_KEY:
            raise PreconditionFailed("retried", backend="fake", key=key, ambiguous=True)
        return info

    def create_if_absent(self, key: str, data: bytes) -> Any:
        return self._wrap(lambda: self.inner.create_if_absent(key, data), key)

    def replace_if_unchanged(self, key: str, data: bytes, etag: str) -> Any:
        return self._wrap(lambda: self.inner.replace_if_unchanged(key, data, etag), key)


def test_lease_retried_write_that_landed_is_recognised_by_nonce(clock: ManualClock) -> None:
    flaky = LandThenFail(MemoryBackend())
    a = Lease(flaky, owner("a"), ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    flaky.armed = True
    assert a.acquire().generation == 1
    second = a.renew()
    assert second.renew_seq == 1 and a.held == second
    third = a.renew()  # the etag adopted after the ambiguous failure is the right one
    assert third.renew_seq == 2
    assert a.release() is True


def test_lease_same_content_under_new_etag_is_still_ours(
    backend: Backend, clock: ManualClock
) -> None:
    a = lease(backend, clock, "a")
    a.acquire()
    backend.write(LOCK_KEY, backend.read(LOCK_KEY))  # e.g. a backup tool copying it back
    assert a.renew().renew_seq == 1


def test_lease_record_decode_rejects_garbage() -> None:
    good = LeaseRecord("h:1:u", "n", 1, 0, 30.0, 1.0, 2.0)
    assert LeaseRecord.decode(good.encode()) == good
    for bad in (b"", b"null", b'{"owner": "h"}', b'{"owner":"h","nonce":"n","generation":-1,'
                b'"renew_seq":0,"ttl_s":1}', b"\xff\xfe"):
        with pytest.raises(ValueError):
            LeaseRecord.decode(bad)
    assert good.host == "h" and good.pid == 1


def test_owner_id_shares_pid_space_only_with_full_identity() -> None:
    me = OwnerId("h", 1, "u", boot_id="boot", pid_ns="pid:[1]")
    same = LeaseRecord("h:2:v", "n", 1, 0, 30.0, 0, 0, boot_id="boot", pid_ns="pid:[1]")
    other_ns = LeaseRecord("h:2:v", "n", 1, 0, 30.0, 0, 0, boot_id="boot", pid_ns="pid:[2]")
    assert me.shares_pid_space(same)
    assert not me.shares_pid_space(other_ns)
    assert not OwnerId("h", 1, "u").shares_pid_space(same)
    current = OwnerId.current()
    assert str(current).count(":") == 2 and current.uuid != OwnerId.current().uuid


class LandThenError(LandThenFail):
    """Conditional writes land, then report a transient error (the response was lost)."""

    def _wrap(self, call: Callable[[], Any], key: str) -> Any:
        info = call()
        if self.armed and key == LOCK_KEY:
            self.armed = False
            raise BackendUnavailable("timeout after the write", backend="fake", key=key)
        return info


def test_lease_renew_that_landed_with_an_error_is_adopted_not_lost(clock: ManualClock) -> None:
    flaky = LandThenError(MemoryBackend())
    a = Lease(flaky, owner("a"), ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    a.acquire()
    confirmed = a.renewed_mono
    clock.advance(5)
    flaky.armed = True
    with pytest.raises(BackendUnavailable):
        a.renew()
    assert a.renewed_mono == confirmed  # the fence keeps counting from the confirmed one
    clock.advance(5)
    record = a.renew()  # CAS on the old etag fails, the record is ours: adopt and renew
    assert record.renew_seq == 2 and a.renewed_mono == clock.monotonic()
    assert stored(flaky.inner) == record


def test_lease_acquire_that_landed_with_an_error_is_adopted(clock: ManualClock) -> None:
    flaky = LandThenError(MemoryBackend())
    a = Lease(flaky, owner("a"), ttl_s=TTL, clock=clock)  # type: ignore[arg-type]
    flaky.armed = True
    with pytest.raises(BackendUnavailable):
        a.acquire()
    assert a.held is None
    record = a.acquire()  # no TTL wait for our own record, same generation, renewed
    assert record.generation == 1 and record.renew_seq == 1 and a.held == record
