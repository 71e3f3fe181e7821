"""The contract every ``Backend`` must honour; each backend's test file subclasses it.

``backends/memory.py`` is the reference: if a backend fails here, the backend is wrong, unless
the subclass states a reason to skip (``race_skip_reason``), or the backend declares
``etag_changes_on_every_write = False`` (S3: its ETag is the content MD5).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from backends.base import Backend
from backends.errors import (
    BackendError,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
)

MIB = 1024 * 1024
LARGE_FILE_BYTES = 20 * MIB
RACERS = 8
# The storage clock (S3 server, NFS server) may differ from ours; a bound catches unit mix-ups.
MTIME_SLACK_SECONDS = 300

INVALID_KEYS = [
    "",
    "/abs/key",
    "a//b",
    "a/../b",
    "..",
    "a/./b",
    "a\x00b",
    "trailing/",
    "x" * 1025,
    "a/b.cas-lock",
    "a/b.backend-tmp",
]


def _make_file(path: Path, size: int) -> str:
    """Write ``size`` pseudo-random bytes in 1 MiB chunks; return their sha256."""
    digest = hashlib.sha256()
    block = os.urandom(MIB)
    with open(path, "wb") as handle:
        for offset in range(0, size, MIB):
            # Stamp each chunk with its offset so swapped or repeated parts are caught.
            chunk = (offset.to_bytes(8, "big") + block[8:])[: size - offset]
            handle.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(MIB):
            digest.update(chunk)
    return digest.hexdigest()


def _race(count: int, attempt: object) -> list[int]:
    """Start ``count`` threads together; return the indexes whose attempt did not raise."""
    barrier = threading.Barrier(count)
    winners: list[int] = []
    failures: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            attempt(index)  # type: ignore[operator]
        except PreconditionFailed:
            return
        except BaseException as exc:  # surfaced below, so a crash is not counted as a loss
            failures.append(exc)
            return
        winners.append(index)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures
    return winners


class BackendContract:
    """Behaviour shared by memory, filesystem and S3; subclasses provide ``backend``."""

    race_skip_reason: ClassVar[str | None] = None

    @pytest.fixture
    def backend(self) -> Iterator[Backend]:
        raise NotImplementedError

    # -- identity and lifecycle --------------------------------------------------------------

    def test_backend_satisfies_protocol_and_has_name(self, backend: Backend) -> None:
        assert isinstance(backend, Backend)
        assert isinstance(backend.name, str) and backend.name

    def test_init_and_close_are_idempotent(self, backend: Backend) -> None:
        backend.init()
        backend.init()
        backend.close()
        backend.close()

    # -- missing keys ------------------------------------------------------------------------

    def test_missing_key_raises_object_not_found(self, backend: Backend, tmp_path: Path) -> None:
        with pytest.raises(ObjectNotFound):
            backend.read("no/such/key")
        with pytest.raises(ObjectNotFound):
            backend.stat("no/such/key")
        with pytest.raises(ObjectNotFound):
            backend.download("no/such/key", tmp_path / "out")

    def test_errors_name_the_backend_and_the_key(self, backend: Backend) -> None:
        with pytest.raises(ObjectNotFound) as caught:
            backend.read("bucket/entry/missing.blk")
        assert backend.name in str(caught.value)
        assert "bucket/entry/missing.blk" in str(caught.value)
        assert caught.value.key == "bucket/entry/missing.blk"

    # -- write and read ----------------------------------------------------------------------

    @pytest.mark.parametrize(
        "data", [b"", b"x", bytes(range(256)) * 400], ids=["empty", "one-byte", "100-KiB"]
    )
    def test_write_read_round_trip(self, backend: Backend, data: bytes) -> None:
        backend.write("b/e/1.blk", data)
        assert backend.read("b/e/1.blk") == data
        assert backend.stat("b/e/1.blk").size == len(data)

    def test_write_returns_info_matching_stat(self, backend: Backend) -> None:
        written = backend.write("b/e/info", b"hello")
        stat = backend.stat("b/e/info")
        assert (written.key, written.size, written.etag) == ("b/e/info", 5, stat.etag)
        assert (stat.key, stat.size) == ("b/e/info", 5)
        assert abs(stat.mtime - time.time()) < MTIME_SLACK_SECONDS
        assert abs(written.mtime - stat.mtime) < 2

    def test_overwrite_replaces_content(self, backend: Backend) -> None:
        backend.write("k", b"first version, longer")
        backend.write("k", b"second")
        assert backend.read("k") == b"second"
        assert backend.stat("k").size == 6

    def test_unusual_but_valid_keys_round_trip(self, backend: Backend) -> None:
        keys = [".lock", "x/.hidden", "a b/\u00fc\u20ac.blk", "a/b..c", "dots.../...x"]
        for key in keys:
            backend.write(key, key.encode())
        for key in keys:
            assert backend.read(key) == key.encode()
        assert [info.key for info in backend.list()] == sorted(keys)

    def test_write_is_atomic_for_a_concurrent_reader(self, backend: Backend) -> None:
        old, new = b"a" * (512 * 1024), b"b" * (256 * 1024)
        backend.write("atomic", old)
        stop = threading.Event()

        def writer() -> None:
            for i in range(30):
                backend.write("atomic", new if i % 2 == 0 else old)
            stop.set()

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            while not stop.is_set():
                data = backend.read("atomic")
                assert data in (old, new), f"torn read of {len(data)} bytes"
        finally:
            thread.join()
        assert backend.read("atomic") == old

    # -- list --------------------------------------------------------------------------------

    def test_list_is_recursive_sorted_and_prefix_filtered(self, backend: Backend) -> None:
        keys = ["b/entry/2", "b/entry/10", "a.b", "a/x", "b/entry2/1", "b/other", "c"]
        for key in keys:
            backend.write(key, b"v")
        assert [i.key for i in backend.list()] == sorted(keys)
        assert [i.key for i in backend.list("b/entry/")] == ["b/entry/10", "b/entry/2"]
        # A prefix is a string prefix, not a folder: "b/entry" also matches "b/entry2/...".
        assert [i.key for i in backend.list("b/entry")] == ["b/entry/10", "b/entry/2", "b/entry2/1"]
        assert [i.key for i in backend.list("a")] == ["a.b", "a/x"]
        assert list(backend.list("nothing/here/")) == []

    def test_list_matches_stat(self, backend: Backend) -> None:
        backend.write("m/1", b"12345")
        backend.write("m/2", b"")
        listed = list(backend.list("m/"))
        assert [(i.key, i.size) for i in listed] == [("m/1", 5), ("m/2", 0)]
        for info in listed:
            stat = backend.stat(info.key)
            assert info.etag == stat.etag
            assert abs(info.mtime - stat.mtime) < 2  # S3 lists milliseconds, HEAD says seconds

    def test_list_never_shows_temp_or_lock_files(self, backend: Backend, tmp_path: Path) -> None:
        source = tmp_path / "src"
        source.write_bytes(b"uploaded")
        backend.write("t/a", b"1")
        backend.write("t/a", b"2")
        created = backend.create_if_absent("t/b", b"3")
        backend.replace_if_unchanged("t/b", b"4", created.etag)
        with pytest.raises(PreconditionFailed):
            backend.create_if_absent("t/b", b"5")
        with pytest.raises(PreconditionFailed):
            backend.replace_if_unchanged("t/b", b"6", created.etag)
        backend.upload("t/c", source)
        backend.download("t/c", tmp_path / "dst")
        backend.write("t/d", b"7")
        backend.delete("t/d")
        assert [i.key for i in backend.list()] == ["t/a", "t/b", "t/c"]

    def test_invalid_prefix_is_rejected(self, backend: Backend) -> None:
        for prefix in ["/a", "a//", "../x", "a/../"]:
            with pytest.raises(InvalidKey):
                list(backend.list(prefix))

    # -- delete ------------------------------------------------------------------------------

    def test_delete_is_idempotent(self, backend: Backend) -> None:
        backend.write("d/k", b"x")
        backend.delete("d/k")
        backend.delete("d/k")
        backend.delete("never/existed")
        with pytest.raises(ObjectNotFound):
            backend.read("d/k")
        assert list(backend.list()) == []

    def test_delete_prefix_removes_only_matching_keys(self, backend: Backend) -> None:
        for key in ["a/1", "a/2", "a/b/3", "ab/4", "b/5"]:
            backend.write(key, b"x")
        assert backend.delete_prefix("a/") == 3
        assert [i.key for i in backend.list()] == ["ab/4", "b/5"]
        assert backend.delete_prefix("zzz/") == 0
        with pytest.raises(InvalidKey):
            backend.delete_prefix("")

    # -- upload and download -----------------------------------------------------------------

    def test_upload_download_large_file_round_trip(self, backend: Backend, tmp_path: Path) -> None:
        source, target = tmp_path / "big.src", tmp_path / "deeper" / "big.dst"
        digest = _make_file(source, LARGE_FILE_BYTES)
        uploaded = backend.upload("big/file.blk", source)
        assert uploaded.size == LARGE_FILE_BYTES
        assert backend.stat("big/file.blk").etag == uploaded.etag
        downloaded = backend.download("big/file.blk", target)
        assert downloaded.etag == uploaded.etag and downloaded.size == LARGE_FILE_BYTES
        assert _sha256_of(target) == digest
        assert sorted(p.name for p in target.parent.iterdir()) == ["big.dst"]

    def test_download_replaces_an_existing_local_file(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        backend.write("dl", b"new content")
        target = tmp_path / "local"
        target.write_bytes(b"old local content that is longer")
        backend.download("dl", target)
        assert target.read_bytes() == b"new content"

    def test_failed_download_leaves_local_file_untouched(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        target = tmp_path / "keep"
        target.write_bytes(b"precious")
        with pytest.raises(ObjectNotFound):
            backend.download("missing", target)
        assert target.read_bytes() == b"precious"
        assert [p.name for p in tmp_path.iterdir()] == ["keep"]

    def test_upload_of_missing_local_file_is_a_backend_error(
        self, backend: Backend, tmp_path: Path
    ) -> None:
        with pytest.raises(BackendError) as caught:
            backend.upload("up", tmp_path / "absent")
        assert not isinstance(caught.value, ObjectNotFound)  # the key is not what is missing
        with pytest.raises(ObjectNotFound):
            backend.stat("up")

    # -- key validation ----------------------------------------------------------------------

    @pytest.mark.parametrize("key", INVALID_KEYS, ids=lambda k: repr(k)[:20])
    def test_invalid_key_is_rejected_by_every_operation(
        self, backend: Backend, key: str, tmp_path: Path
    ) -> None:
        source = tmp_path / "src"
        source.write_bytes(b"x")
        calls = [
            lambda: backend.read(key),
            lambda: backend.stat(key),
            lambda: backend.write(key, b"x"),
            lambda: backend.delete(key),
            lambda: backend.create_if_absent(key, b"x"),
            lambda: backend.replace_if_unchanged(key, b"x", "etag"),
            lambda: backend.upload(key, source),
            lambda: backend.download(key, tmp_path / "dst"),
        ]
        for call in calls:
            with pytest.raises(InvalidKey):
                call()
        assert list(backend.list()) == []

    # -- conditional writes ------------------------------------------------------------------

    def test_create_if_absent_twice_fails_and_keeps_the_first(self, backend: Backend) -> None:
        first = backend.create_if_absent(".lock", b"owner-1")
        assert backend.stat(".lock").etag == first.etag
        with pytest.raises(PreconditionFailed):
            backend.create_if_absent(".lock", b"owner-2")
        assert backend.read(".lock") == b"owner-1"

    def test_create_if_absent_after_delete_succeeds(self, backend: Backend) -> None:
        backend.create_if_absent("lease", b"1")
        backend.delete("lease")
        backend.create_if_absent("lease", b"2")
        assert backend.read("lease") == b"2"

    def test_replace_if_unchanged_chains_and_rejects_stale_etags(self, backend: Backend) -> None:
        first = backend.create_if_absent("lease", b"gen-1")
        second = backend.replace_if_unchanged("lease", b"gen-2", first.etag)
        assert second.etag != first.etag
        assert backend.stat("lease").etag == second.etag
        with pytest.raises(PreconditionFailed):
            backend.replace_if_unchanged("lease", b"gen-3-stale", first.etag)
        third = backend.replace_if_unchanged("lease", b"gen-3", second.etag)
        assert backend.read("lease") == b"gen-3"
        assert third.etag == backend.stat("lease").etag

    def test_replace_if_unchanged_on_missing_key_fails(self, backend: Backend) -> None:
        info = backend.write("gone", b"x")
        backend.delete("gone")
        with pytest.raises(PreconditionFailed):
            backend.replace_if_unchanged("gone", b"y", info.etag)
        with pytest.raises(ObjectNotFound):
            backend.read("gone")

    def test_etag_is_stable_without_writes(self, backend: Backend) -> None:
        written = backend.write("s", b"same")
        assert backend.stat("s").etag == backend.stat("s").etag == written.etag
        assert [i.etag for i in backend.list("s")] == [written.etag]

    def test_etag_changes_when_content_changes(self, backend: Backend) -> None:
        etags = {backend.write("e", f"v{i}".encode()).etag for i in range(10)}
        assert len(etags) == 10

    def test_etag_changes_on_identical_rewrite(self, backend: Backend) -> None:
        if not backend.etag_changes_on_every_write:
            pytest.skip(f"{backend.name}: etag is a content hash (see backends/base.py)")
        etags = [backend.write("same", b"identical").etag for _ in range(20)]
        assert len(set(etags)) == 20
        assert backend.stat("same").etag == etags[-1]

    def test_replace_if_unchanged_detects_identical_rewrite(self, backend: Backend) -> None:
        if not backend.etag_changes_on_every_write:
            pytest.skip(f"{backend.name}: etag is a content hash (see backends/base.py)")
        seen = backend.write("lease", b"holder-a")
        backend.write("lease", b"holder-a")  # someone rewrote the same bytes: still a change
        with pytest.raises(PreconditionFailed):
            backend.replace_if_unchanged("lease", b"holder-b", seen.etag)

    def test_concurrent_create_if_absent_has_exactly_one_winner(self, backend: Backend) -> None:
        if self.race_skip_reason:
            pytest.skip(self.race_skip_reason)
        winners = _race(RACERS, lambda i: backend.create_if_absent("race/lock", f"{i}".encode()))
        assert len(winners) == 1
        assert backend.read("race/lock") == f"{winners[0]}".encode()

    def test_concurrent_replace_if_unchanged_has_exactly_one_winner(self, backend: Backend) -> None:
        if self.race_skip_reason:
            pytest.skip(self.race_skip_reason)
        for _ in range(3):
            etag = backend.write("race/cas", b"base").etag
            winners = _race(
                RACERS,
                lambda i, etag=etag: backend.replace_if_unchanged(  # type: ignore[misc]
                    "race/cas", f"{i}".encode(), etag
                ),
            )
            assert len(winners) == 1
            assert backend.read("race/cas") == f"{winners[0]}".encode()
