"""Two real processes share one folder: kill -9, SIGTERM, and SIGSTOP/SIGCONT split brain.

TTL 1 s, polling 0.2 s. Each test measures the takeover time from the signal to the moment
the standby reports HOLDING, asserts the bound from the issue (#5), and prints it (run with
``-s`` to see the numbers).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.key_lock import lock_path_for

TTL_S = 1.0
POLL_S = 0.2
# Scheduling slack on a busy CI host (thread hand-offs, process wake-ups); the protocol's
# own bound is TTL + 2 polls, and the measured times are printed so drift is visible.
SLACK_S = 0.1
WAIT_S = 20.0
REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration

Event = dict[str, Any]


class Worker:
    """A ``lease_worker`` subprocess and the events it printed."""

    def __init__(self, root: Path, name: str, role: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.roles.lease_worker", str(root), name, role,
             str(TTL_S), str(POLL_S)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: list[Event] = []
        self._new: queue.Queue[Event] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            event = json.loads(line)
            self.events.append(event)
            self._new.put(event)

    def wait_for(self, match: Callable[[Event], bool], timeout: float = WAIT_S) -> Event:
        """The first event (old or new) that matches; fails after ``timeout`` seconds."""
        for event in list(self.events):
            if match(event):
                return event
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self._new.get(timeout=left)
            except queue.Empty:
                break
            if match(event):
                return event
        exited = self.proc.poll() is not None and self.proc.stderr is not None
        stderr = self.proc.stderr.read() if exited and self.proc.stderr else ""
        raise AssertionError(f"{self.name}: no matching event in {timeout}s; stderr: {stderr}")

    def holding(self, timeout: float = WAIT_S) -> Event:
        return self.wait_for(lambda e: e.get("state") == "HOLDING", timeout)

    def of(self, kind: str) -> list[Event]:
        return [e for e in list(self.events) if e["event"] == kind]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[str, str], Worker]]:
    root = tmp_path / "shared"
    root.mkdir()
    started: list[Worker] = []

    def start(name: str, role: str) -> Worker:
        worker = Worker(root, name, role)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def _pair(start: Callable[[str, str], Worker]) -> tuple[Worker, Worker]:
    """A holds the lease, B (SECONDARY) has polled it a few times."""
    a = start("A", "PRIMARY")
    a.holding()
    b = start("B", "SECONDARY")
    b.wait_for(lambda e: e["event"] == "refused")
    time.sleep(3 * POLL_S)
    assert b.of("state") == []  # still WAITING
    return a, b


def test_processes_kill_9_standby_takes_over_within_ttl_plus_two_polls(
    workers: Callable[[str, str], Worker],
) -> None:
    a, b = _pair(workers)
    killed = time.monotonic()
    a.proc.kill()
    taken = b.holding()
    takeover = taken["t"] - killed
    print(f"\nkill -9 takeover: {takeover:.3f}s (bound {TTL_S + 2 * POLL_S:.1f}s)")
    assert TTL_S - POLL_S <= takeover <= TTL_S + 2 * POLL_S + SLACK_S
    assert taken["generation"] == 2
    assert all(ack["t_start"] < taken["step_started"] for ack in a.of("ack"))
    b.wait_for(lambda e: e["event"] == "ack")


def test_processes_sigterm_releases_and_standby_takes_over_within_two_polls(
    workers: Callable[[str, str], Worker],
) -> None:
    a, b = _pair(workers)
    stopped = time.monotonic()
    a.proc.terminate()
    taken = b.holding()
    takeover = taken["t"] - stopped
    print(f"\nSIGTERM takeover: {takeover:.3f}s (bound {2 * POLL_S:.1f}s)")
    assert takeover <= 2 * POLL_S + SLACK_S
    assert a.proc.wait(10) == 0
    assert a.wait_for(lambda e: e["event"] == "released")["released"] is True


def _stop_outside_critical_section(worker: Worker, root: Path) -> float:
    """SIGSTOP ``worker``, but not while it holds the backend's CAS flock on ``.lock``.

    A process stopped inside ``replace_if_unchanged``'s sub-millisecond critical section would
    block every other CAS on ``.lock`` until it resumes (a limitation of the filesystem
    backend's flock, reported separately); that is not the scenario under test.
    """
    for _ in range(100):
        worker.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        time.sleep(0.005)
        if not os.path.exists(lock_path_for(root / ".lock")):
            return stopped
        worker.proc.send_signal(signal.SIGCONT)
        time.sleep(0.01)
    raise AssertionError("the worker always held the CAS lock")


def test_processes_sigstop_split_brain_old_holder_is_fenced(
    workers: Callable[[str, str], Worker], tmp_path: Path
) -> None:
    a, b = _pair(workers)
    stopped = _stop_outside_critical_section(a, tmp_path / "shared")
    taken = b.holding()
    takeover = taken["t"] - stopped
    print(f"\nSIGSTOP takeover: {takeover:.3f}s (bound {TTL_S + 2 * POLL_S:.1f}s)")
    assert takeover <= TTL_S + 2 * POLL_S + SLACK_S
    b.wait_for(lambda e: e["event"] == "ack" and e["t_start"] > taken["t"])
    resumed = time.monotonic()
    a.proc.send_signal(signal.SIGCONT)
    a.wait_for(lambda e: e["event"] == "refused" and e["t_start"] > resumed)
    stepped = a.wait_for(lambda e: e.get("state") == "STEPPED_DOWN")
    time.sleep(5 * POLL_S)  # A keeps trying to write; B keeps holding

    a_acks = a.of("ack")
    # Mutual exclusion: every write A acknowledged passed its fence before B's winning poll
    # began, and A acknowledged nothing after it was stopped.
    assert a_acks and all(ack["t_start"] < taken["step_started"] for ack in a_acks)
    assert all(ack["t_start"] < stopped for ack in a_acks)
    assert all(r["t_start"] > resumed for r in a.of("refused") if r["t_start"] > stopped)
    assert [e["state"] for e in a.of("state") if e["t"] > resumed] == ["STEPPED_DOWN"]
    print(f"old holder fenced {stepped['t'] - resumed:.3f}s after SIGCONT")
    assert b.of("state")[-1]["state"] == "HOLDING"
    assert b.of("ack")[-1]["t_start"] > resumed + 4 * POLL_S
    lock = json.loads((tmp_path / "shared" / ".lock").read_text())
    assert lock["owner"] == b.wait_for(lambda e: e["event"] == "started")["owner"]
    assert lock["generation"] == 2
