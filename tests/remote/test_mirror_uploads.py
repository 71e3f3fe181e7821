"""What the mirror uploads, and how often (memory backend): a finished block goes up once,
concurrent writers with sync interval 0 share upload passes, a replica never writes, and no
engine module but the mirror talks to a backend."""

from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

from appliance.engine.mirror import KEY_PREFIX, Mirror
from backends.memory import MemoryBackend
from tests.remote.test_mirror import (
    SMALL_BLOCKS,
    evicted_storage,
    open_storage,
    payloads,
    read_all,
    upload_all,
    write_all,
)

ENGINE = Path(__file__).resolve().parents[2] / "appliance" / "engine"


class RecordingBackend(MemoryBackend):
    """Remembers every key written or uploaded, in order; ``slow`` seconds per write."""

    slow = 0.0

    def __init__(self) -> None:
        super().__init__()
        self.puts: list[str] = []
        self._puts_lock = threading.Lock()

    def write(self, key, data):  # noqa: ANN001, ANN201
        """Record, wait ``slow``, then store."""
        with self._puts_lock:
            self.puts.append(key)
        time.sleep(self.slow)
        return super().write(key, data)

    def upload(self, key, local_path):  # noqa: ANN001, ANN201
        """Record, then store."""
        with self._puts_lock:
            self.puts.append(key)
        return super().upload(key, local_path)


def test_a_finished_block_is_uploaded_once_and_an_idle_sync_uploads_nothing(
    tmp_path: Path,
) -> None:
    backend = RecordingBackend()
    mirror = Mirror(backend, tmp_path / "c", cache_size=10**9, sync_interval=60)
    storage = open_storage(tmp_path / "c", mirror)
    write_all(storage, payloads(40, 10_000))  # several finished blocks and a growing one
    mirror.sync()
    first = list(backend.puts)
    blocks = sorted({k for k in first if k.endswith(".blk")})
    assert len(blocks) >= 4
    backend.puts.clear()
    mirror.sync()
    assert backend.puts == []  # nothing changed: no request
    bucket = storage.get_bucket("b")
    bucket.write_record("e", 99_999, b"late", "text/plain", {})
    mirror.sync()
    again = [k for k in backend.puts if k.endswith(".blk")]
    # Only the block that took the record goes up again; the finished ones never do.
    assert len(again) == 1 and again[0] not in blocks[:-1]
    assert any(not k.endswith(".blk") for k in backend.puts)  # the metadata that changed
    storage.close()
    mirror.close()


def test_sync_interval_zero_concurrent_writers_share_upload_passes(tmp_path: Path) -> None:
    backend = RecordingBackend()
    mirror = Mirror(backend, tmp_path / "z", cache_size=10**9, sync_interval=0)
    storage = open_storage(tmp_path / "z", mirror)
    bucket = storage.create_bucket("b", SMALL_BLOCKS)
    backend.slow = 0.05  # an S3 round trip, so writers arrive while a pass runs
    passes: list[float] = []
    run_pass = mirror._sync_pass

    def counted_pass() -> None:
        passes.append(time.monotonic())
        run_pass()

    mirror._sync_pass = counted_pass  # type: ignore[method-assign]
    writers = 16
    errors: list[BaseException] = []

    def one(n: int) -> None:
        try:
            bucket.write_record("e", 1_000 + n, b"x" * 500, "text/plain", {})
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    # Without group commit every writer would run its own pass.
    assert 1 <= len(passes) < writers / 2, len(passes)
    storage.close()
    mirror.close()
    fresh = Mirror(backend, tmp_path / "z2", cache_size=10**9, sync_interval=0)
    storage = open_storage(tmp_path / "z2", fresh)
    for n in range(writers):  # every acknowledged record is on the store
        entry = storage.get_bucket("b").get_entry("e")
        assert entry.read_payload(entry.get_record(1_000 + n)) == b"x" * 500
    storage.close()
    fresh.close()


def test_a_replica_mirror_never_writes_to_the_bucket(tmp_path: Path) -> None:
    backend = RecordingBackend()
    data = payloads(20, 5_000)
    upload_all(backend, tmp_path / "w", data)
    before = {i.key: i.etag for i in backend.list(KEY_PREFIX)}
    backend.puts.clear()
    replica = Mirror(backend, tmp_path / "r", cache_size=10**9, sync_interval=60, read_only=True)
    storage = open_storage(tmp_path / "r", replica)
    read_all(storage, data)
    (tmp_path / "r" / "b" / "e" / "stray.meta").write_bytes(b"local only")
    replica.sync()
    replica.refresh()
    storage.close()
    replica.close()
    assert backend.puts == []
    assert {i.key: i.etag for i in backend.list(KEY_PREFIX)} == before
    assert not {"write", "upload", "delete"} & set(replica.backend.counts)


def test_only_the_mirror_in_the_engine_talks_to_a_backend() -> None:
    talkers = []
    for path in sorted(ENGINE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = {node.module}
            elif isinstance(node, ast.Import):
                names = {alias.name for alias in node.names}
            else:
                continue
            for name in names:
                # backends.durability is local-file durability (fsync, rename), not a store.
                if name.startswith(("boto", "backends")) and name != "backends.durability":
                    talkers.append((path.name, name))
    assert {name for name, _ in talkers} == {"mirror.py"}, talkers


class HangingBackend(MemoryBackend):
    """``download`` waits for ``release`` while ``hang`` is set: S3 not answering."""

    def __init__(self) -> None:
        super().__init__()
        self.hang = threading.Event()
        self.release = threading.Event()
        self.waiting = threading.Event()

    def download(self, key, local_path):  # noqa: ANN001, ANN201
        """Block (as a request past its timeout would) until released."""
        if self.hang.is_set():
            self.waiting.set()
            self.release.wait(30)
        return super().download(key, local_path)


def test_a_hanging_fetch_holds_up_no_other_file(tmp_path: Path) -> None:
    backend = HangingBackend()
    data = payloads(40, 10_000)
    mirror, storage = evicted_storage(backend, tmp_path / "h", data, 120_000)
    entry = storage.get_bucket("b").get_entry("e")
    # A placeholder: the length without the blocks; a block's name is its first timestamp.
    evicted = next(
        int(p.stem) for p in (tmp_path / "h" / "b" / "e").glob("*.blk")
        if p.stat().st_size > 0 and p.stat().st_blocks == 0
    )
    backend.hang.set()
    stuck = threading.Thread(target=lambda: entry.read_payload(entry.get_record(evicted)))
    stuck.start()
    try:
        assert backend.waiting.wait(10)  # the fetch of that block is in flight, hanging
        began = time.monotonic()
        other = storage.create_bucket("other", SMALL_BLOCKS)  # opens new files
        other.write_record("x", 1, b"fresh", "text/plain", {})
        again = other.get_entry("x")
        assert again.read_payload(again.get_record(1)) == b"fresh"
        assert time.monotonic() - began < 5  # not held up by the hanging fetch
        assert stuck.is_alive()
    finally:
        backend.release.set()
        stuck.join(30)
    read_all(storage, data)
    storage.close()
    mirror.close()
