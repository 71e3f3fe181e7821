"""The lease policy: ReductStore's settings, the intervals derived from them, the states.

``RS_LOCK_FILE_TTL`` (30 s), ``RS_LOCK_FILE_POLLING_INTERVAL`` (10 s), ``RS_LOCK_FILE_TIMEOUT``
(60 s, 0 = forever) and ``RS_LOCK_FILE_FAILURE_ACTION`` (abort | proceed) keep ReductStore's
names and defaults. Two intervals follow from them and carry the safety argument:

- the holder renews every ``min(poll, ttl/3)``;
- the fence passes writes without I/O for ``ttl/2`` after the last renewal was *sent*.

A contender breaks a lease only after seeing one version unchanged for ``ttl`` on its own
monotonic clock, so it breaks at least ``ttl/2`` after the holder's fence closed; the margin
absorbs clock-rate drift and scheduling delays, and needs no synchronised clocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum

from appliance.roles.lease_record import LeaseError
from appliance.settings import InstanceRole, LockFailureAction, Settings


class LeaseState(str, Enum):
    """Where a PRIMARY/SECONDARY stands with the lease."""

    WAITING = "WAITING"
    HOLDING = "HOLDING"
    STEPPED_DOWN = "STEPPED_DOWN"
    FAILED = "FAILED"


class LeaseTimeout(LeaseError):
    """The lease could not be taken within ``RS_LOCK_FILE_TIMEOUT`` and the action is abort."""


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """The lease settings (ReductStore's names and defaults)."""

    role: InstanceRole
    ttl_s: float = 30.0
    poll_s: float = 10.0
    timeout_s: float = 60.0  # 0 = wait forever
    failure_action: LockFailureAction = LockFailureAction.ABORT
    skew_margin_s: float = 0.0

    def __post_init__(self) -> None:
        if self.role not in (InstanceRole.PRIMARY, InstanceRole.SECONDARY):
            raise ValueError(f"a lease is for PRIMARY or SECONDARY, not {self.role.value}")
        if self.poll_s <= 0:
            raise ValueError("the polling interval must be positive")

    @classmethod
    def from_settings(cls, settings: Settings) -> LeaseConfig:
        """``RS_INSTANCE_ROLE`` and ``RS_LOCK_FILE_*``."""
        return cls(
            role=settings.instance_role,
            ttl_s=settings.lock_file_ttl,
            poll_s=settings.lock_file_polling_interval,
            timeout_s=settings.lock_file_timeout,
            failure_action=settings.lock_file_failure_action,
        )

    @property
    def renew_interval_s(self) -> float:
        """How often the holder renews: ``min(poll, ttl/3)`` keeps the fence's fast path valid."""
        return min(self.poll_s, self.ttl_s / 3) if self.ttl_s > 0 else self.poll_s

    @property
    def fence_window_s(self) -> float:
        """How long after a renewal writes pass without I/O (ttl/2; poll if ttl = 0)."""
        return self.ttl_s / 2 if self.ttl_s > 0 else self.poll_s


def process_exists(pid: int) -> bool:
    """True unless ``pid`` certainly does not exist on this host (ESRCH)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, it is just not ours
    return True
