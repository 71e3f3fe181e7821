"""``engine/readable.py``: the one 425/500 answer for a record's state."""

from __future__ import annotations

import pytest

from appliance.engine.models import RecordState
from appliance.engine.readable import check_readable
from appliance.errors import InternalError, TooEarly


def test_finished_record_is_readable() -> None:
    check_readable(5, RecordState.FINISHED, "b/e")


def test_record_being_written_is_425_naming_its_entry_when_given() -> None:
    with pytest.raises(TooEarly) as early:
        check_readable(5, RecordState.STARTED, "b/e")
    assert early.value.status == 425
    assert str(early.value) == "Record 5 in entry b/e is still being written"
    with pytest.raises(TooEarly, match=r"^Record 5 is still being written$"):
        check_readable(5, RecordState.STARTED)


def test_broken_record_is_500() -> None:
    with pytest.raises(InternalError) as broken:
        check_readable(7, RecordState.ERRORED, "b/e")
    assert broken.value.status == 500 and str(broken.value) == "Record 7 in entry b/e is broken"
