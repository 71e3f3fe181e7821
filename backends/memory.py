"""In-memory backend: the reference semantics of the ``Backend`` protocol, for tests.

Objects live in a dict guarded by one lock, so every operation is atomic and linearizable;
when another backend disagrees with this one, the other backend is wrong (or the contract in
``tests/backends/contract.py`` needs a documented exception). Nothing survives the process.

Fault model: none of its own. ``upload``/``download`` still touch local files, through
``backends.durability``, so their local-side failures are translated like everywhere else.
"""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from backends.base import ObjectInfo, refuse_empty_prefix, validate_key, validate_prefix
from backends.durability import CHUNK_BYTES, file_chunks, write_local_file
from backends.errors import ObjectNotFound, PreconditionFailed
from backends.os_errors import local_file_error


class MemoryBackend:
    """Objects in a dict; thread-safe; the reference for every other backend."""

    etag_changes_on_every_write = True

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, ObjectInfo]] = {}
        # A process-wide write counter in the etag makes it change even on identical rewrites.
        self._writes = itertools.count(1)

    def __repr__(self) -> str:
        return f"MemoryBackend({self.name!r})"

    def init(self) -> None:
        """Nothing to prepare."""

    def close(self) -> None:
        """Nothing to release; the objects stay readable (handy in tests)."""

    def read(self, key: str) -> bytes:
        """Return the stored bytes."""
        return self._get(key)[0]

    def stat(self, key: str) -> ObjectInfo:
        """Return the stored object's info."""
        return self._get(key)[1]

    def write(self, key: str, data: bytes) -> ObjectInfo:
        """Store a copy of ``data``, replacing any previous object."""
        validate_key(key, backend=self.name)
        return self._put(key, bytes(data))

    def upload(self, key: str, local_path: Path) -> ObjectInfo:
        """Read a local file in chunks and store it."""
        validate_key(key, backend=self.name)
        local_path = Path(local_path)
        buffer = bytearray()
        try:
            with open(local_path, "rb") as source:
                for chunk in file_chunks(source):
                    buffer += chunk
        except OSError as exc:
            raise local_file_error(exc, backend=self.name, key=key, path=local_path) from exc
        return self._put(key, bytes(buffer))

    def download(self, key: str, local_path: Path) -> ObjectInfo:
        """Write the stored bytes to a local file atomically."""
        data, info = self._get(key)  # one snapshot: info describes exactly these bytes
        local_path = Path(local_path)
        view = memoryview(data)
        chunks = (view[at : at + CHUNK_BYTES] for at in range(0, len(data), CHUNK_BYTES))
        try:
            write_local_file(local_path, chunks)
        except OSError as exc:
            raise local_file_error(exc, backend=self.name, key=key, path=local_path) from exc
        return info

    def delete(self, key: str) -> None:
        """Forget the object; missing keys are fine."""
        validate_key(key, backend=self.name)
        with self._lock:
            self._objects.pop(key, None)

    def delete_prefix(self, prefix: str) -> int:
        """Forget every object under a non-empty prefix; return how many."""
        validate_prefix(prefix, backend=self.name)
        refuse_empty_prefix(prefix, backend=self.name)
        with self._lock:
            doomed = [key for key in self._objects if key.startswith(prefix)]
            for key in doomed:
                del self._objects[key]
        return len(doomed)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Yield a sorted snapshot of the objects under ``prefix``."""
        validate_prefix(prefix, backend=self.name)
        with self._lock:
            infos = [info for key, (_, info) in self._objects.items() if key.startswith(prefix)]
        infos.sort(key=lambda info: info.key)
        return iter(infos)

    def create_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        """Store ``data`` only if the key is free."""
        validate_key(key, backend=self.name)
        with self._lock:
            if key in self._objects:
                raise PreconditionFailed(
                    "create_if_absent: the key already exists", backend=self.name, key=key
                )
            return self._put_locked(key, bytes(data))

    def replace_if_unchanged(self, key: str, data: bytes, etag: str) -> ObjectInfo:
        """Replace the object only if its etag is still ``etag``."""
        validate_key(key, backend=self.name)
        with self._lock:
            current = self._objects.get(key)
            if current is None:
                raise PreconditionFailed(
                    "replace_if_unchanged: the key does not exist", backend=self.name, key=key
                )
            if current[1].etag != etag:
                raise PreconditionFailed(
                    f"replace_if_unchanged: etag is {current[1].etag!r}, expected {etag!r}",
                    backend=self.name,
                    key=key,
                )
            return self._put_locked(key, bytes(data))

    def _get(self, key: str) -> tuple[bytes, ObjectInfo]:
        validate_key(key, backend=self.name)
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise ObjectNotFound("no such object", backend=self.name, key=key)
        return found

    def _put(self, key: str, data: bytes) -> ObjectInfo:
        with self._lock:
            return self._put_locked(key, data)

    def _put_locked(self, key: str, data: bytes) -> ObjectInfo:
        digest = hashlib.blake2b(data, digest_size=8).hexdigest()
        info = ObjectInfo(
            key=key, size=len(data), mtime=time.time(), etag=f"{digest}-{next(self._writes):x}"
        )
        self._objects[key] = (data, info)
        return info
