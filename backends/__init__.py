"""Where bytes live: the ``Backend`` protocol and its implementations (ARCHITECTURE.md §4).

    backends.base        Backend protocol, ObjectInfo, key rules
    backends.errors      BackendError tree (ObjectNotFound is the one "missing" error)
    backends.memory      MemoryBackend: reference semantics, for tests
    backends.filesystem  FilesystemBackend: plain files under a root folder
    backends.s3          S3Backend: boto3, conditional PUTs (import it only when needed)
    backends.s3_errors   botocore error -> BackendError translation
    backends.durability  local durability primitives (temp file, fsync, rename/link publish)
    backends.key_lock    per-key flock locks across processes (stale holders stolen)
    backends.os_errors   OSError about local files -> BackendError translation

This package imports nothing from ``appliance``; the dependency points the other way.
"""

from backends.base import Backend, ObjectInfo
from backends.errors import (
    BackendError,
    BackendUnavailable,
    InvalidKey,
    ObjectNotFound,
    PreconditionFailed,
)

__all__ = [
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "PreconditionFailed",
]
