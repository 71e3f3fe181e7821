"""The lease ``<data>/.lock``: which PRIMARY/SECONDARY may write the shared dataset.

Built only on the ``Backend`` protocol's conditional writes (``spec/leases.md`` §3.4/§3.5), so
the same code runs on the filesystem backend (a shared folder, docker volume or NFS), the
memory backend (tests) and, later, S3:

- **acquire (free)**: ``create_if_absent(".lock")``; over a released lock:
  ``replace_if_unchanged(etag seen)``. One contender wins; the others get ``PreconditionFailed``.
- **observe**: a fresh read of ``.lock`` (stat, read, stat until the etag is stable, so the
  content and the etag describe the same version). The observer remembers the version's
  identity (etag + content digest) and the *monotonic* time it first saw it; unchanged for
  ``ttl`` (+ an optional skew margin) means expired. No wall clock, no mtime is compared, so
  clock skew between hosts (or an NFS server's clock) cannot shorten a lease.
- **break (expired)**: ``replace_if_unchanged(etag observed)`` with a new record: atomic, so
  exactly one of several contenders wins; a holder that renewed in between makes it fail.
- **renew**: ``replace_if_unchanged(my etag)`` with ``renew_seq + 1`` and a fresh nonce, then a
  read of ``.generation``: a newer reserved generation means a contender judged us expired.
- **release**: ``replace_if_unchanged(my etag)`` with a ``released`` marker; others take a
  released lock at once, without waiting out the TTL.

Record: ``appliance.roles.lease_record.LeaseRecord`` (owner "host:pid:uuid", nonce, generation,
renew_seq, ttl_s, informational wall-clock times, released).

``.generation`` keeps the highest generation ever reserved, so generations keep increasing even
if someone deletes ``.lock``; a new lease takes ``max(everything seen) + 1``, reserved in
``.generation`` *before* the lock is written.

Fault model: a retried conditional write can report ``PreconditionFailed`` although the first
attempt landed (§3.3), so after every ``PreconditionFailed`` we re-read and compare owner +
nonce before concluding. An empty or unparseable ``.lock`` (a crash mid-write by a foreign
tool) is an observed state like any other: it expires after ``ttl`` unchanged. Transient
backend errors (``BackendUnavailable``) propagate; the caller retries on its next poll.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import uuid

from appliance.roles.clock import SYSTEM_CLOCK, Clock
from appliance.roles.lease_record import (
    LeaseError,
    LeaseHeld,
    LeaseLost,
    LeaseRecord,
    LockState,
    Observation,
    OwnerId,
)
from backends.base import Backend
from backends.errors import BackendUnavailable, ObjectNotFound, PreconditionFailed

__all__ = [
    "GENERATION_KEY",
    "LOCK_KEY",
    "Lease",
    "LeaseError",
    "LeaseHeld",
    "LeaseLost",
    "LeaseRecord",
    "LockState",
    "Observation",
    "OwnerId",
    "read_stable",
]

LOCK_KEY = ".lock"
GENERATION_KEY = ".generation"
# How often to re-read a key whose etag changed between our stat and read, or to retry a
# compare-and-swap of ``.generation``; either keeps failing only under a writer storm.
_ATTEMPTS = 5


def _nonce() -> str:
    return uuid.uuid4().hex


def read_stable(backend: Backend, key: str) -> tuple[bytes, str] | None:
    """``(content, etag)`` of one version of ``key``, or None if absent.

    stat, read, stat until both stats agree, so the etag describes exactly the bytes returned
    (the protocol has no read-with-etag). On NFS the read's fresh open also revalidates the
    attribute cache, so the second stat is not served from a stale cache (spec §3.3).
    """
    for _ in range(_ATTEMPTS):
        try:
            before = backend.stat(key).etag
        except ObjectNotFound:
            return None
        try:
            data = backend.read(key)
            after = backend.stat(key).etag
        except ObjectNotFound:
            continue  # removed while we looked: look again
        if before == after:
            return data, after
    raise BackendUnavailable("the object changed on every read", backend=backend.name, key=key)


class Lease:
    """Acquire, observe, renew and release ``.lock`` over a backend's conditional writes."""

    def __init__(
        self,
        backend: Backend,
        owner: OwnerId,
        *,
        ttl_s: float,
        clock: Clock = SYSTEM_CLOCK,
        skew_margin_s: float = 0.0,
        key: str = LOCK_KEY,
        generation_key: str = GENERATION_KEY,
    ) -> None:
        self.backend = backend
        self.owner = owner
        self.ttl_s = ttl_s
        self.skew_margin_s = skew_margin_s
        self.key = key
        self.generation_key = generation_key
        self._clock = clock
        self._lock = threading.RLock()
        self._held: LeaseRecord | None = None
        self._attempt: LeaseRecord | None = None  # an acquire whose outcome is unknown
        self._etag: str | None = None
        self._renewed_mono: float | None = None
        self._seen: tuple[str, ...] | None = None
        self._first_seen = 0.0
        self._max_generation = 0

    # --- state ------------------------------------------------------------------------------

    @property
    def held(self) -> LeaseRecord | None:
        """Our current record, or None if we do not hold the lease."""
        return self._held

    @property
    def generation(self) -> int:
        """Generation of the lease we hold (0 if none)."""
        held = self._held
        return held.generation if held is not None else 0

    @property
    def renewed_mono(self) -> float | None:
        """Monotonic time at which the last successful acquire/renew was *sent*."""
        return self._renewed_mono

    def forget(self) -> None:
        """Drop our hold without touching storage (after a loss, or a step-down)."""
        with self._lock:
            self._held = None
            self._attempt = None
            self._etag = None
            self._renewed_mono = None

    # --- observe ----------------------------------------------------------------------------

    def observe(self) -> Observation:
        """Read ``.lock`` afresh and update the staleness tracker."""
        with self._lock:
            now = self._clock.monotonic()
            found = self._read_stable(self.key)
            record: LeaseRecord | None = None
            identity: tuple[str, ...]
            if found is None:
                state, etag, identity = LockState.ABSENT, None, ("absent",)
            else:
                data, etag = found
                identity = (etag, hashlib.blake2b(data, digest_size=16).hexdigest())
                try:
                    record = LeaseRecord.decode(data)
                except ValueError:
                    state = LockState.CORRUPT
                else:
                    state = LockState.RELEASED if record.released else LockState.HELD
                    self._max_generation = max(self._max_generation, record.generation)
            if identity != self._seen:
                self._seen, self._first_seen = identity, now
            return Observation(state, record, etag, now - self._first_seen)

    def expired(self, observation: Observation) -> bool:
        """True if a held or corrupt lock has been unchanged for ttl (+ margin); ttl 0 = never."""
        if observation.state not in (LockState.HELD, LockState.CORRUPT) or self.ttl_s <= 0:
            return False
        return observation.unchanged_for_s >= self.ttl_s + self.skew_margin_s

    # --- acquire / renew / release ----------------------------------------------------------

    def acquire(self, *, force: bool = False) -> LeaseRecord:
        """Take the lease if it is free or expired (or anyway with ``force``); else LeaseHeld."""
        with self._lock:
            seen = self.observe()
            mine = self._held or self._attempt
            if mine is not None and self._ours(seen, mine.generation):
                # Already ours: an earlier acquire reported an error but landed. Adopt it and
                # renew at once, which also gives the fence a confirmed send time.
                self._held, self._etag = seen.record, seen.etag
                return self.renew()
            if not seen.free and not force and not self.expired(seen):
                raise seen.held_error(self.ttl_s)
            generation = max(self._max_generation, self._read_generation()) + 1
            self._reserve_generation(generation)
            wall = self._clock.wall()
            record = LeaseRecord(
                owner=str(self.owner), nonce=_nonce(), generation=generation, renew_seq=0,
                ttl_s=self.ttl_s, acquired_at=wall, renewed_at=wall,
                boot_id=self.owner.boot_id, pid_ns=self.owner.pid_ns,
            )
            self._attempt = record  # recognised as ours next time if the write errs but lands
            sent = self._clock.monotonic()
            try:
                if seen.state is LockState.ABSENT:
                    etag = self.backend.create_if_absent(self.key, record.encode()).etag
                else:
                    assert seen.etag is not None
                    etag = self.backend.replace_if_unchanged(
                        self.key, record.encode(), seen.etag
                    ).etag
            except PreconditionFailed:
                after = self.observe()
                if not record.same_write(after.record) or after.etag is None:
                    self._attempt = None
                    raise after.held_error(self.ttl_s) from None
                etag = after.etag  # a retried write of ours landed (spec §3.3)
            self._hold(record, etag, sent)
            self._max_generation = generation
            return record

    def renew(self) -> LeaseRecord:
        """Rewrite our record (renew_seq + 1) if ``.lock`` is unchanged since our last write."""
        with self._lock:
            for _ in range(_ATTEMPTS):
                held, etag = self._held, self._etag
                if held is None or etag is None:
                    raise LeaseLost("the lease is not held")
                record = dataclasses.replace(
                    held, renew_seq=held.renew_seq + 1, nonce=_nonce(),
                    renewed_at=self._clock.wall(),
                )
                sent = self._clock.monotonic()
                try:
                    new_etag = self.backend.replace_if_unchanged(
                        self.key, record.encode(), etag
                    ).etag
                except PreconditionFailed:
                    seen = self.observe()
                    if not self._ours(seen, held.generation):
                        self.forget()
                        raise self._lost(seen) from None
                    assert seen.record is not None and seen.etag is not None
                    if record.same_write(seen.record):
                        new_etag = seen.etag  # our retried write landed (spec §3.3)
                    else:
                        # An earlier write of ours that reported an error but landed, or our
                        # record copied back by a tool: still ours. Adopt it and try again;
                        # the fence keeps counting from the last *confirmed* renewal.
                        self._held, self._etag = seen.record, seen.etag
                        continue
                self._hold(record, new_etag, sent)
                self._check_generation(held.generation)
                return record
            self.forget()
            raise LeaseLost(f"{self.key} keeps changing under its holder")

    def _check_generation(self, generation: int) -> None:
        """LeaseLost if a contender reserved a newer generation (it decided we had expired).

        Contenders reserve ``.generation`` before they write ``.lock``. A holder stopped between
        its compare and its rename (``backends.filesystem``) can clobber a successor's lock
        when it resumes and then renew "successfully"; this check makes it step down anyway.
        A contender that reserved and then lost the race also trips it, but only after seeing
        our lease unchanged for a whole TTL, when our own fence had long closed.
        """
        newest = self._read_generation()
        if newest > generation:
            self.forget()
            raise LeaseLost(
                f"generation {newest} was reserved after ours ({generation})",
                found_generation=newest,
            )

    def _ours(self, seen: Observation, generation: int) -> bool:
        """True if ``seen`` is a live record this Lease wrote (the owner id has our uuid)."""
        record = seen.record
        return (
            seen.state is LockState.HELD
            and record is not None
            and seen.etag is not None
            and record.owner == str(self.owner)
            and record.generation == generation
        )

    def release(self) -> bool:
        """Replace our record with a released marker; True if it landed. Forgets the hold."""
        with self._lock:
            held, etag = self._held, self._etag
            if held is None or etag is None:
                return False
            marker = dataclasses.replace(
                held, released=True, renew_seq=held.renew_seq + 1, nonce=_nonce(),
                renewed_at=self._clock.wall(),
            )
            try:
                self.backend.replace_if_unchanged(self.key, marker.encode(), etag)
                return True
            except PreconditionFailed:
                return marker.same_write(self.observe().record)
            finally:
                self.forget()

    # --- helpers ----------------------------------------------------------------------------

    def _hold(self, record: LeaseRecord, etag: str, sent: float) -> None:
        self._held, self._etag, self._attempt = record, etag, None
        # The *send* time, not the completion time: a pause between the write landing and
        # our return must not make the fence think the lease is younger than it is.
        self._renewed_mono = sent

    def _lost(self, seen: Observation) -> LeaseLost:
        if seen.state is LockState.ABSENT:
            return LeaseLost(f"{self.key} was removed", found_owner=None)
        generation = seen.record.generation if seen.record is not None else None
        return LeaseLost(
            f"{self.key} now names {seen.owner} (generation {generation})",
            found_owner=seen.owner,
            found_generation=generation,
        )

    def _read_stable(self, key: str) -> tuple[bytes, str] | None:
        return read_stable(self.backend, key)

    def _read_generation(self) -> int:
        found = self._read_stable(self.generation_key)
        return _parse_generation(found[0]) if found is not None else 0

    def _reserve_generation(self, generation: int) -> None:
        """Raise ``.generation`` to at least ``generation`` (compare-and-swap, monotonic)."""
        body = json.dumps({"generation": generation, "owner": str(self.owner)}).encode() + b"\n"
        for _ in range(_ATTEMPTS):
            found = self._read_stable(self.generation_key)
            try:
                if found is None:
                    self.backend.create_if_absent(self.generation_key, body)
                elif _parse_generation(found[0]) >= generation:
                    return
                else:
                    self.backend.replace_if_unchanged(self.generation_key, body, found[1])
                return
            except PreconditionFailed:
                continue  # a racing contender moved it: re-read and compare again
        raise BackendUnavailable(
            "could not update the generation counter",
            backend=self.backend.name,
            key=self.generation_key,
        )


def _parse_generation(data: bytes) -> int:
    """The value in ``.generation``; 0 if unreadable (the lock's own generation still counts)."""
    try:
        raw = json.loads(data)
        value = raw["generation"] if isinstance(raw, dict) else raw
        return max(0, int(value))
    except (ValueError, TypeError, KeyError, UnicodeDecodeError):
        return 0
