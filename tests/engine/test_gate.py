"""The write gate: re-entrant shared holds, a pause waits for holders and blocks new ones,
a pause that cannot drain in time is refused and lifts itself."""

from __future__ import annotations

import threading
import time

import pytest

from appliance.engine.gate import WriteGate
from appliance.errors import ServiceUnavailable


def test_shared_is_reentrant_and_pause_waits_for_holders() -> None:
    gate = WriteGate()
    inside = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with gate.shared(), gate.shared():  # nested: a write that removes a $meta record
            inside.set()
            release.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(5)
    threading.Timer(0.2, release.set).start()
    started = time.perf_counter()
    with gate.exclusive(5):
        assert time.perf_counter() - started >= 0.15  # waited for the holder
        assert gate.paused
    t.join(5)
    assert not gate.paused


def test_pending_pause_blocks_new_holders_until_it_is_over() -> None:
    gate = WriteGate()
    order: list[str] = []
    with gate.exclusive(1):
        t = threading.Thread(target=lambda: (gate.shared().__enter__(), order.append("write")))
        t.start()
        time.sleep(0.1)
        order.append("pause over")
    t.join(5)
    assert order == ["pause over", "write"]


def test_a_pause_that_cannot_drain_is_refused_and_lifted() -> None:
    gate = WriteGate()
    hold = threading.Event()
    done = threading.Event()

    def holder() -> None:
        with gate.shared():
            hold.set()
            done.wait(5)

    t = threading.Thread(target=holder)
    t.start()
    hold.wait(5)
    with pytest.raises(ServiceUnavailable, match="did not finish"):
        with gate.exclusive(0.1):
            pass
    with gate.shared():  # not blocked: the refused pause lifted itself
        pass
    done.set()
    t.join(5)


def test_a_mutation_cannot_pause_the_gate() -> None:
    gate = WriteGate()
    with gate.shared(), pytest.raises(RuntimeError):
        with gate.exclusive(0.1):
            pass
