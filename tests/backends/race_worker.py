"""Child-process side of the filesystem race test (a module of its own so spawn can import it)."""

from __future__ import annotations

from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from backends.errors import PreconditionFailed
from backends.filesystem import FilesystemBackend

BARRIER_TIMEOUT_SECONDS = 60.0


def race(root: str, worker: int, rounds: int, barrier: Barrier, results: Queue) -> None:
    """Per round: race create_if_absent on a fresh key, then replace_if_unchanged on one key.

    Puts ``(kind, round, worker, won)`` on ``results`` for every attempt, then ``("done", ...)``.
    """
    backend = FilesystemBackend(root)
    for round_number in range(rounds):
        barrier.wait(BARRIER_TIMEOUT_SECONDS)
        try:
            backend.create_if_absent(f"race/create-{round_number}", f"{worker}".encode())
            won = True
        except PreconditionFailed:
            won = False
        results.put(("create", round_number, worker, won))

        # Everyone reads the same etag, then everyone tries to replace it.
        barrier.wait(BARRIER_TIMEOUT_SECONDS)
        etag = backend.stat("race/cas").etag
        barrier.wait(BARRIER_TIMEOUT_SECONDS)
        try:
            backend.replace_if_unchanged("race/cas", f"{round_number}:{worker}".encode(), etag)
            won = True
        except PreconditionFailed:
            won = False
        results.put(("cas", round_number, worker, won))
    results.put(("done", rounds, worker, True))
