"""The content of ``.lock`` and what an observer makes of it; the lease's typed errors.

``LeaseRecord`` is the JSON written by ``appliance.roles.lease``: owner ("host:pid:uuid"),
nonce (new on every write, so a retried write can be recognised), generation, renew_seq,
ttl_s, acquired_at/renewed_at (wall clock, informational only), released, and boot_id/pid_ns
so that a PRIMARY on the same host can tell a dead holder from a live one. Decoding is strict:
anything that is not a complete record is ``LockState.CORRUPT``, which expires like a held lock.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import uuid
from dataclasses import dataclass
from enum import Enum
from typing import Any


class LeaseError(Exception):
    """Base of the lease's typed errors."""


class LeaseHeld(LeaseError):
    """Someone else holds the lease and it has not expired (or we lost the race to take it)."""

    def __init__(
        self, *, owner: str, generation: int | None, unchanged_for_s: float, ttl_s: float
    ) -> None:
        gen = "?" if generation is None else str(generation)
        super().__init__(
            f"the lease is held by {owner} (generation {gen}), "
            f"unchanged for {unchanged_for_s:.1f}s of a {ttl_s:g}s TTL"
        )
        self.owner = owner
        self.generation = generation
        self.unchanged_for_s = unchanged_for_s
        self.ttl_s = ttl_s


class LeaseLost(LeaseError):
    """We held the lease and do not any more: it was taken over, tampered with or removed."""

    def __init__(
        self, reason: str, *, found_owner: str | None = None, found_generation: int | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.found_owner = found_owner
        self.found_generation = found_generation


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="ascii") as handle:
            return handle.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True, slots=True)
class OwnerId:
    """Who we are: ``host:pid:uuid``, plus what tells whether a same-host pid is really ours."""

    host: str
    pid: int
    uuid: str
    boot_id: str = ""
    pid_ns: str = ""

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}:{self.uuid}"

    @classmethod
    def current(cls) -> OwnerId:
        """The identity of this process, with a fresh uuid (one per lease manager)."""
        try:
            pid_ns = os.readlink("/proc/self/ns/pid")
        except OSError:
            pid_ns = ""
        return cls(
            host=socket.gethostname() or "unknown",
            pid=os.getpid(),
            uuid=uuid.uuid4().hex,
            boot_id=_read_text("/proc/sys/kernel/random/boot_id"),
            pid_ns=pid_ns,
        )

    def shares_pid_space(self, record: LeaseRecord) -> bool:
        """True if ``record``'s pid means the same process here (same host, boot, pid ns)."""
        # Without boot id and pid namespace we cannot tell: two containers may share a hostname
        # and a volume while their pids live in different namespaces.
        if not (self.boot_id and self.pid_ns):
            return False
        return (
            record.host == self.host
            and record.boot_id == self.boot_id
            and record.pid_ns == self.pid_ns
        )


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """The content of ``.lock``."""

    owner: str
    nonce: str
    generation: int
    renew_seq: int
    ttl_s: float
    acquired_at: float
    renewed_at: float
    released: bool = False
    boot_id: str = ""
    pid_ns: str = ""

    def encode(self) -> bytes:
        """JSON, one line."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> LeaseRecord:
        """Parse ``.lock`` content; ValueError if it is not a lease record."""
        try:
            raw: Any = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        try:
            record = cls(
                owner=str(raw["owner"]),
                nonce=str(raw["nonce"]),
                generation=int(raw["generation"]),
                renew_seq=int(raw["renew_seq"]),
                ttl_s=float(raw["ttl_s"]),
                acquired_at=float(raw.get("acquired_at", 0.0)),
                renewed_at=float(raw.get("renewed_at", 0.0)),
                released=bool(raw.get("released", False)),
                boot_id=str(raw.get("boot_id", "")),
                pid_ns=str(raw.get("pid_ns", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"missing or invalid field: {exc}") from None
        if record.generation < 0 or record.renew_seq < 0:
            raise ValueError("negative generation or renew_seq")
        return record

    @property
    def host(self) -> str:
        """The host part of ``owner``."""
        return self.owner.split(":", 1)[0]

    @property
    def pid(self) -> int | None:
        """The pid part of ``owner``, if it has one."""
        parts = self.owner.rsplit(":", 2)
        return int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else None

    def same_write(self, other: LeaseRecord | None) -> bool:
        """True if ``other`` is exactly this write (same owner and nonce)."""
        return other is not None and other.owner == self.owner and other.nonce == self.nonce


class LockState(str, Enum):
    """What an observer found at ``.lock``."""

    ABSENT = "absent"
    HELD = "held"
    RELEASED = "released"
    CORRUPT = "corrupt"  # empty or unparseable: expires like a held lock


@dataclass(frozen=True, slots=True)
class Observation:
    """One fresh look at ``.lock`` and how long (monotonic) this version has been unchanged."""

    state: LockState
    record: LeaseRecord | None
    etag: str | None
    unchanged_for_s: float

    @property
    def free(self) -> bool:
        """Absent or released: anyone may take it now."""
        return self.state in (LockState.ABSENT, LockState.RELEASED)

    @property
    def owner(self) -> str:
        """Who holds it, for messages."""
        return self.record.owner if self.record is not None else f"<{self.state.value} lock>"

    def held_error(self, ttl_s: float) -> LeaseHeld:
        """A LeaseHeld describing this observation."""
        generation = self.record.generation if self.record is not None else None
        return LeaseHeld(
            owner=self.owner,
            generation=generation,
            unchanged_for_s=self.unchanged_for_s,
            ttl_s=ttl_s,
        )
