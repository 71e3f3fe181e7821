"""Process-wide tuning ``serve`` applies before it starts the app."""

from __future__ import annotations

import gc

from appliance.server import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_raises_only_the_young_generation_threshold() -> None:
    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        tune_gc()
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, 10, 10)
        assert GC_YOUNG_THRESHOLD > 700
        assert gc.isenabled()
    finally:
        gc.set_threshold(*before)
