"""Filesystem backend: each object is a plain file under a root folder (the folder IS the data).

Key ``bucket/entry/1.blk`` is the file ``<root>/bucket/entry/1.blk``. Folders are created on
write and pruned when their last object goes. Temp files (``*.backend-tmp``) and lock files
(``*.cas-lock``) live beside the objects and never appear in ``list``.

Etag: ``<inode>-<mtime_ns>-<size>`` in hex, derived from ``stat``, so there is no sidecar that
could drift out of step, and files the engine wrote directly have etags too. Every write through
this backend stamps an mtime strictly greater than the previous version's while holding the
key's lock (``TempFile.stamp_mtime``), so the etag changes on every write, even an identical
rewrite that happens to reuse the inode number.

Fault model (durability details in ``backends.durability``):

- Crash at any instant: the key names the old file or the new one, never a torn one; at worst a
  hidden temp or lock file is left behind.
- ``write``/``upload``/``delete``/``replace_if_unchanged`` copy and fsync the data first, then
  take the key's ``flock`` for the short compare-and-rename step. The lock serialises them across
  threads and processes on one host (and on NFS where flock works: NFSv4 or lockd), so a
  compare-and-replace cannot interleave with another backend write to the same key.
- A *stopped* holder (SIGSTOP, ``docker pause``) would block every writer of its key until it
  resumes; a waiter on the same host steals the lock from a stopped process
  (``backends.key_lock``), and the resumed holder re-checks ownership right before its rename and
  backs off with ``BackendUnavailable``. Left open: a holder stopped between that re-check
  and the rename itself (two syscalls apart) renames unguarded when it resumes; the lease
  adds its generation check on top of this (``appliance.roles.lease``).
- ``create_if_absent`` publishes with ``link(2)``, atomic across processes and NFS clients even
  where locks do not work, so acquiring a free lease never depends on ``flock``.
- Not covered: a process writing the files directly (not through a backend) bypasses the lock,
  and a filesystem without hard links (some FUSE mounts) cannot serve ``create_if_absent``.
- Every ``OSError`` is translated to a ``BackendError`` here, at the boundary.
"""

from __future__ import annotations

import errno
import os
import stat as stat_mode
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from backends.base import ObjectInfo, refuse_empty_prefix, validate_key, validate_prefix
from backends.durability import (
    NS_PER_SECOND,
    TempFile,
    file_chunks,
    fsync_dir,
    is_internal_name,
    remove_empty_dirs,
    write_local_file,
)
from backends.errors import BackendError, ObjectNotFound, PreconditionFailed
from backends.key_lock import key_lock
from backends.os_errors import local_file_error, translate_os_error

DEFAULT_LOCK_TIMEOUT_SECONDS = 30.0


def stat_etag(st: os.stat_result) -> str:
    """The etag of a file: inode, nanosecond mtime and size, in hex."""
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _info(key: str, st: os.stat_result) -> ObjectInfo:
    return ObjectInfo(
        key=key, size=st.st_size, mtime=st.st_mtime_ns / NS_PER_SECOND, etag=stat_etag(st)
    )


def _stat_regular(path: Path) -> os.stat_result | None:
    """Stat ``path``; None if nothing (or a folder) is there, so "missing" has one meaning."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if stat_mode.S_ISREG(st.st_mode) else None


def _check_still_held(still_held: Callable[[], bool]) -> None:
    """EAGAIN (transient) if a waiter took the key lock over while we were stopped."""
    if not still_held():
        raise OSError(errno.EAGAIN, "the key lock was taken over while this process was stopped")


class FilesystemBackend:
    """Objects as plain files under ``root``; see the module docstring for the fault model."""

    etag_changes_on_every_write = True

    def __init__(
        self, root: Path | str, *, lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS
    ) -> None:
        self.root = Path(root).absolute()
        self.name = f"filesystem:{self.root}"
        self._lock_timeout_seconds = lock_timeout_seconds

    def __repr__(self) -> str:
        return f"FilesystemBackend({str(self.root)!r})"

    # -- lifecycle ---------------------------------------------------------------------------

    def init(self) -> None:
        """Create the root folder if needed and check it is a folder."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"cannot create root folder: {exc.strerror or exc}", backend=self.name
            ) from exc
        if not self.root.is_dir():
            raise BackendError("root exists but is not a folder", backend=self.name)

    def close(self) -> None:
        """Nothing to release: every operation opens and closes its own files."""

    # -- reads -------------------------------------------------------------------------------

    def read(self, key: str) -> bytes:
        """Return the whole file."""
        path = self._path(key)
        with self._translate(key, "read"), open(path, "rb") as handle:
            return handle.read()

    def stat(self, key: str) -> ObjectInfo:
        """Return size, mtime and etag of the file."""
        path = self._path(key)
        with self._translate(key, "stat"):
            st = _stat_regular(path)
        if st is None:
            raise ObjectNotFound("no such object", backend=self.name, key=key)
        return _info(key, st)

    def download(self, key: str, local_path: Path) -> ObjectInfo:
        """Copy the file to ``local_path`` in chunks via a temp file renamed into place."""
        path = self._path(key)
        local_path = Path(local_path)
        with self._translate(key, "download"):
            source = open(path, "rb")  # noqa: SIM115 - closed by the with below
        with source:
            with self._translate(key, "download"):
                # fstat of the open file: the info describes exactly the bytes we copy.
                st = os.fstat(source.fileno())
            chunks = self._guard(
                file_chunks(source),
                lambda exc: translate_os_error(exc, backend=self.name, key=key, action="download"),
            )
            try:
                write_local_file(local_path, chunks)
            except OSError as exc:
                raise local_file_error(exc, backend=self.name, key=key, path=local_path) from exc
        return _info(key, st)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield files whose key starts with ``prefix``, recursively, in key order."""
        validate_prefix(prefix, backend=self.name)
        # Start at the deepest folder the prefix names in full; filter the rest by string.
        head = prefix.rpartition("/")[0]
        start = self.root.joinpath(*head.split("/")) if head else self.root
        return self._walk(start, f"{head}/" if head else "", prefix)

    def _walk(self, directory: Path, key_prefix: str, prefix: str) -> Iterator[ObjectInfo]:
        """Depth-first walk whose order equals key order (see the sort key below)."""
        try:
            with os.scandir(directory) as scan:
                entries = list(scan)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            raise translate_os_error(exc, backend=self.name, key=key_prefix, action="list") from exc
        # Sorting folders as "name/" makes depth-first order equal to sorting full keys:
        # "a.b" < "a/x" because "." < "/", so the file a.b comes before the folder a.
        entries.sort(key=lambda e: e.name + "/" if e.is_dir(follow_symlinks=False) else e.name)
        for entry in entries:
            key = key_prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                folder = key + "/"
                if folder.startswith(prefix) or prefix.startswith(folder):
                    yield from self._walk(Path(entry.path), folder, prefix)
            elif key.startswith(prefix) and not is_internal_name(entry.name):
                try:
                    st = entry.stat()
                except FileNotFoundError:
                    continue  # deleted while we walked: it is simply not in this listing
                except OSError as exc:
                    raise translate_os_error(
                        exc, backend=self.name, key=key, action="list"
                    ) from exc
                if stat_mode.S_ISREG(st.st_mode):
                    yield _info(key, st)

    # -- writes ------------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> ObjectInfo:
        """Replace the file atomically (temp, fsync, rename, fsync folder)."""
        return self._publish(key, [data])

    def upload(self, key: str, local_path: Path) -> ObjectInfo:
        """Copy a local file in, chunk by chunk, then publish it atomically."""
        local_path = Path(local_path)
        try:
            source = open(local_path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as exc:
            raise local_file_error(exc, backend=self.name, key=key, path=local_path) from exc
        with source:
            chunks = self._guard(
                file_chunks(source),
                lambda exc: local_file_error(exc, backend=self.name, key=key, path=local_path),
            )
            return self._publish(key, chunks)

    def create_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        """Publish with link(2), which fails if the name exists, even across NFS clients."""
        path = self._path(key)
        with self._translate(key, "create", writing=True), TempFile(path) as temp:
            temp.write_all([data])
            st = temp.stamp_mtime(None)
            if not temp.publish_link():
                raise PreconditionFailed(
                    "create_if_absent: the key already exists", backend=self.name, key=key
                )
        return _info(key, st)

    def replace_if_unchanged(self, key: str, data: bytes, etag: str) -> ObjectInfo:
        """Replace the file only if its etag is still ``etag``, under the key's flock."""
        return self._publish(key, [data], expected_etag=etag)

    def _publish(
        self, key: str, chunks: Iterable[bytes], *, expected_etag: str | None = None
    ) -> ObjectInfo:
        """Write a temp file, then compare (optionally) and rename it over the key, locked."""
        path = self._path(key)
        with self._translate(key, "write", writing=True), TempFile(path) as temp:
            temp.write_all(chunks)  # the slow part (copy + fsync) happens before the lock
            with key_lock(path, timeout_seconds=self._lock_timeout_seconds) as still_held:
                if os.path.isdir(path):
                    raise BackendError("a folder has this name", backend=self.name, key=key)
                current = _stat_regular(path)
                if expected_etag is not None:
                    self._check_etag(key, current, expected_etag)
                st = temp.stamp_mtime(current.st_mtime_ns if current is not None else None)
                _check_still_held(still_held)
                temp.publish_replace()
        return _info(key, st)

    def _check_etag(self, key: str, current: os.stat_result | None, expected: str) -> None:
        """Raise PreconditionFailed unless the current file has the expected etag."""
        if current is None:
            raise PreconditionFailed(
                "replace_if_unchanged: the key does not exist", backend=self.name, key=key
            )
        found = stat_etag(current)
        if found != expected:
            raise PreconditionFailed(
                f"replace_if_unchanged: etag is {found!r}, expected {expected!r}",
                backend=self.name,
                key=key,
            )

    # -- deletes -----------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """Remove the file (no-op if missing) and prune folders left empty."""
        path = self._path(key)
        if not os.path.lexists(path):
            return  # nothing to lock for: a racing create simply happens after this delete
        with self._translate(key, "delete", writing=True):
            with key_lock(path, timeout_seconds=self._lock_timeout_seconds) as still_held:
                _check_still_held(still_held)
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    return  # a racing delete won; deleting is idempotent
                except OSError as exc:
                    # unlink(2) of a folder fails with EISDIR (Linux) or EPERM (POSIX): a
                    # folder is not an object, so there is nothing to delete.
                    if exc.errno in (errno.EISDIR, errno.EPERM) and os.path.isdir(path):
                        return
                    raise
                fsync_dir(path.parent)
            remove_empty_dirs(path.parent, stop=self.root)

    def delete_prefix(self, prefix: str) -> int:
        """Delete every listed file under ``prefix``; an empty prefix is refused."""
        refuse_empty_prefix(prefix, backend=self.name)
        keys = [info.key for info in self.list(prefix)]  # materialise: we prune as we go
        for key in keys:
            self.delete(key)
        return len(keys)

    # -- helpers -----------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file for ``key``, after checking the key cannot escape the root."""
        validate_key(key, backend=self.name)
        return self.root.joinpath(*key.split("/"))

    @contextmanager
    def _translate(self, key: str, action: str, *, writing: bool = False) -> Iterator[None]:
        """Turn any OSError inside the block into the matching BackendError."""
        try:
            yield
        except OSError as exc:
            raise translate_os_error(
                exc, backend=self.name, key=key, action=action, writing=writing
            ) from exc

    @staticmethod
    def _guard(
        chunks: Iterator[bytes], translate: Callable[[OSError], BackendError]
    ) -> Iterator[bytes]:
        """Translate read errors of one side of a copy, so the other side is not blamed."""
        try:
            yield from chunks
        except OSError as exc:
            raise translate(exc) from exc
