"""One answer for a record that cannot be read (yet): 425 while written, 500 once broken.

The API (single-record reads, query links) and the engine's bulk reads ask the same question
about a record's state; this is where the answer and its messages live.
"""

from __future__ import annotations

from appliance.engine.models import RecordState
from appliance.errors import InternalError, TooEarly


def check_readable(timestamp: int, state: RecordState, where: str = "") -> None:
    """Raise 425 for a record still being written, 500 for a broken one (``where``: its entry)."""
    if state == RecordState.FINISHED:
        return
    place = f" in entry {where}" if where else ""
    if state == RecordState.STARTED:
        raise TooEarly(f"Record {timestamp}{place} is still being written")
    raise InternalError(f"Record {timestamp}{place} is broken")
