"""The backend contract on a local folder, plus what only a filesystem has: processes, crashes,
leftover files, locks and the on-disk layout."""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from backends.errors import BackendError, BackendUnavailable, ObjectNotFound
from backends.filesystem import FilesystemBackend
from backends.key_lock import lock_path_for
from tests.backends.contract import MIB, BackendContract, _make_file
from tests.backends.race_worker import race

PROCESS_RACE_ROUNDS = 50
PROCESS_COUNT = 2
JOIN_TIMEOUT_SECONDS = 60


class TestFilesystemBackend(BackendContract):
    """Filesystem: a folder of plain files."""

    @pytest.fixture
    def backend(self, tmp_path: Path) -> Iterator[FilesystemBackend]:
        yield FilesystemBackend(tmp_path / "root")


@pytest.fixture
def fs(tmp_path: Path) -> FilesystemBackend:
    backend = FilesystemBackend(tmp_path / "root")
    backend.init()
    return backend


def test_filesystem_processes_race_with_exactly_one_winner_per_round(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    FilesystemBackend(root).write("race/cas", b"start")
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(PROCESS_COUNT)
    results = context.Queue()
    workers = [
        context.Process(target=race, args=(str(root), n, PROCESS_RACE_ROUNDS, barrier, results))
        for n in range(PROCESS_COUNT)
    ]
    for worker in workers:
        worker.start()
    wins: dict[tuple[str, int], int] = defaultdict(int)
    done = 0
    try:
        while done < PROCESS_COUNT:
            kind, round_number, _, won = results.get(timeout=JOIN_TIMEOUT_SECONDS)
            if kind == "done":
                done += 1
            else:
                wins[(kind, round_number)] += int(won)
    finally:
        for worker in workers:
            worker.join(JOIN_TIMEOUT_SECONDS)
            if worker.is_alive():
                worker.kill()
    assert [worker.exitcode for worker in workers] == [0] * PROCESS_COUNT
    for kind in ("create", "cas"):
        per_round = [wins[(kind, n)] for n in range(PROCESS_RACE_ROUNDS)]
        assert per_round == [1] * PROCESS_RACE_ROUNDS, kind
    keys = [info.key for info in FilesystemBackend(root).list()]
    assert len(keys) == PROCESS_RACE_ROUNDS + 1  # no temp or lock files left behind


def test_filesystem_objects_are_plain_files_under_the_root(fs: FilesystemBackend) -> None:
    fs.write("bucket/entry/1.blk", b"payload")
    assert (fs.root / "bucket" / "entry" / "1.blk").read_bytes() == b"payload"
    assert sorted(os.listdir(fs.root / "bucket" / "entry")) == ["1.blk"]


def test_filesystem_sees_files_written_by_others(fs: FilesystemBackend) -> None:
    (fs.root / "engine").mkdir()
    (fs.root / "engine" / "index").write_bytes(b"written directly")
    assert fs.read("engine/index") == b"written directly"
    assert [i.key for i in fs.list()] == ["engine/index"]


def test_filesystem_etag_survives_a_new_backend_instance(fs: FilesystemBackend) -> None:
    written = fs.write("k", b"v")
    assert FilesystemBackend(fs.root).stat("k").etag == written.etag


def test_filesystem_etag_is_unique_across_many_identical_rewrites(fs: FilesystemBackend) -> None:
    # Inode numbers get reused and kernel mtimes are coarse; the stamped mtime must cover both.
    etags = [fs.write("same", b"x").etag for _ in range(300)]
    assert len(set(etags)) == len(etags)


def test_filesystem_list_hides_leftovers_of_a_crash(fs: FilesystemBackend) -> None:
    fs.write("b/e/1.blk", b"x")
    (fs.root / "b" / "e" / ".1.blk.0123abcd.backend-tmp").write_bytes(b"torn")
    (fs.root / "b" / "e" / ".1.blk.cas-lock").write_bytes(b"")
    assert [i.key for i in fs.list()] == ["b/e/1.blk"]


def test_filesystem_leftover_lock_file_does_not_block_writes(fs: FilesystemBackend) -> None:
    lock = lock_path_for(fs.root / "lease")
    lock.write_bytes(b"")  # left by a crashed process: no flock is held on it
    fs.write("lease", b"x")
    assert fs.read("lease") == b"x"
    assert not lock.exists()


def test_filesystem_held_lock_times_out_as_unavailable(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path, lock_timeout_seconds=0.2)
    info = backend.write("lease", b"x")
    lock = lock_path_for(tmp_path / "lease")
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(BackendUnavailable):
            backend.replace_if_unchanged("lease", b"y", info.etag)
    assert backend.read("lease") == b"x"
    assert [i.key for i in backend.list()] == ["lease"]


def test_filesystem_delete_prunes_empty_folders_but_not_the_root(fs: FilesystemBackend) -> None:
    fs.write("a/b/c/1", b"x")
    fs.write("a/keep", b"x")
    fs.delete("a/b/c/1")
    assert sorted(os.listdir(fs.root / "a")) == ["keep"]
    fs.delete_prefix("a/")
    assert fs.root.is_dir() and os.listdir(fs.root) == []


def test_filesystem_init_on_a_file_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(BackendError):
        FilesystemBackend(tmp_path / "file").init()
    with pytest.raises(BackendError):
        FilesystemBackend(tmp_path / "file" / "below").init()


def test_filesystem_file_folder_clash_is_translated(fs: FilesystemBackend) -> None:
    fs.write("a", b"file")
    with pytest.raises(BackendError) as caught:
        fs.write("a/b", b"cannot live under a file")
    assert not isinstance(caught.value, ObjectNotFound)
    assert isinstance(caught.value.__cause__, OSError)
    with pytest.raises(ObjectNotFound):
        fs.read("a/b")
    fs.write("d/x", b"1")
    with pytest.raises(ObjectNotFound):
        fs.read("d")  # a folder is not an object
    with pytest.raises(BackendError):
        fs.write("d", b"a folder has this name")
    fs.delete("d")  # deleting a folder name is a no-op, not an error
    assert fs.read("d/x") == b"1"


def test_filesystem_upload_and_download_stream_in_bounded_memory(
    fs: FilesystemBackend, tmp_path: Path
) -> None:
    source = tmp_path / "big"
    _make_file(source, 16 * MIB)
    tracemalloc.start()
    try:
        fs.upload("big", source)
        fs.download("big", tmp_path / "copy")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MIB, f"peak {peak} bytes: the file was read whole"


_HOLDER = """
import sys
from pathlib import Path
from backends.key_lock import key_lock
with key_lock(Path(sys.argv[1]), timeout_seconds=5) as still_held:
    print("held", flush=True)
    sys.stdin.readline()
    print("still held" if still_held() else "taken over", flush=True)
"""


def _lock_holder(target: Path) -> subprocess.Popen[str]:
    """A child process holding the key lock of ``target`` until it reads a line."""
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(target)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def _finish(child: subprocess.Popen[str]) -> str:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write("go\n")
    child.stdin.flush()
    answer = child.stdout.readline().strip()
    child.wait(timeout=10)
    return answer


def test_filesystem_lock_of_a_stopped_holder_is_taken_over(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path, lock_timeout_seconds=10)
    info = backend.write("lease", b"x")
    child = _lock_holder(tmp_path / "lease")
    try:
        os.kill(child.pid, signal.SIGSTOP)
        started = time.monotonic()
        backend.replace_if_unchanged("lease", b"y", info.etag)
        assert time.monotonic() - started < 2.0  # not the 10 s lock timeout
    finally:
        os.kill(child.pid, signal.SIGCONT)
    # The resumed holder learns it lost the lock (and would not commit).
    assert _finish(child) == "taken over"
    assert backend.read("lease") == b"y"


def test_filesystem_lock_of_a_running_holder_is_not_taken_over(tmp_path: Path) -> None:
    backend = FilesystemBackend(tmp_path, lock_timeout_seconds=0.3)
    info = backend.write("lease", b"x")
    child = _lock_holder(tmp_path / "lease")
    with pytest.raises(BackendUnavailable):
        backend.replace_if_unchanged("lease", b"y", info.etag)
    assert _finish(child) == "still held"
    assert backend.read("lease") == b"x"
