"""Data on S3 (``RS_REMOTE_*``): build the object-store backend and the engine's mirror.

The composition root (``services.py``) calls ``build_mirror`` once and ``restore_mirror``
before the engine opens; the engine only sees the ``Mirror`` in its options.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable

from appliance.engine.mirror import DATA_SUFFIX, Mirror
from appliance.settings import Settings
from backends.base import Backend
from backends.errors import BackendError, PreconditionFailed

log = logging.getLogger(__name__)

FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 30.0


def remote_backend(settings: Settings) -> Backend:
    """The S3 backend ``RS_REMOTE_*`` describe (no request is made here)."""
    from backends.s3 import S3Backend  # late: boto3 costs ~0.3 s to import

    secret = settings.remote_secret_key
    prefix = settings.remote_prefix.strip()
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return S3Backend.from_settings(
        endpoint_url=settings.remote_endpoint.strip() or None,
        bucket=settings.remote_bucket.strip(),
        region=settings.remote_region.strip() or None,
        access_key=settings.remote_access_key or None,
        secret_key=secret.get_secret_value() if secret is not None else None,
        prefix=prefix,
        connect_timeout=settings.remote_connect_timeout,
        read_timeout=settings.remote_read_timeout,
        # As ReductStore: only block objects get the class; the metadata, read at every
        # startup and replica poll, and the lease objects keep the bucket's default.
        storage_class=settings.remote_default_storage_class or None,
        storage_class_keys=_is_data_object,
    )


def _is_data_object(key: str) -> bool:
    """Whether ``key`` is a block's data object (the objects a storage class applies to)."""
    return key.endswith(DATA_SUFFIX)


def build_mirror(settings: Settings, read_only: bool = False, lease: bool = False) -> Mirror | None:
    """The mirror of the cache folder, or None when the data is a local folder.

    Block descriptors are restored lazily when nothing reads them at startup: integrity
    checks off and no lease (a lease holder always reads their headers, engine/recovery.py).
    """
    if not settings.remote_enabled:
        return None
    return Mirror(
        remote_backend(settings),
        settings.data_path,
        cache_size=settings.remote_cache_size,
        sync_interval=settings.remote_sync_interval,
        read_only=read_only,
        lazy_descriptors=not settings.engine_enable_integrity_checks and not lease,
    )


def restore_mirror(
    mirror: Mirror,
    stopped: Callable[[], bool],
    sleep: Callable[[float], None] = time.sleep,
    fresh: bool = False,
) -> bool:
    """Restore the cache from the bucket, retrying with back-off while S3 is unreachable.

    ``fresh`` (a lease holder): drop the local cache first: another node may have written the
    bucket since, and the bucket is the truth. One log line per distinct failure (no botocore
    text). False if ``stopped`` first.
    """
    if fresh:
        mirror.wipe()
    delay = FIRST_RETRY_SECONDS
    last = None
    while not stopped():
        try:
            mirror.restore()
        except BackendError as exc:
            reason = f"{type(exc).__name__}: {exc}"
            if reason != last:
                log.error(
                    "remote storage unreachable at startup, retrying every <= %.0f s: %s",
                    MAX_RETRY_SECONDS,
                    reason,
                )
                last = reason
            mirror.last_error = f"startup: {type(exc).__name__}"
            sleep(delay)
            delay = min(MAX_RETRY_SECONDS, delay * 2)
            continue
        mirror.start()
        return True
    return False


class ConditionalWritesUnsupported(Exception):
    """The object store ignored ``If-None-Match``/``If-Match``: a lease on it is unsafe."""


def probe_conditional_writes(backend: Backend) -> None:
    """Check that the store refuses a second create and a replace with a stale ETag.

    Sequential only: it proves the store evaluates the conditions, not that it evaluates them
    atomically against a racing writer (moto does not; AWS S3, MinIO and R2 do).
    """
    key = f".probe-{uuid.uuid4().hex}"
    first = backend.create_if_absent(key, b"1")
    try:
        refused = 0
        try:
            backend.create_if_absent(key, b"2")
        except PreconditionFailed:
            refused += 1
        try:
            backend.replace_if_unchanged(key, b"3", first.etag + "0")
        except PreconditionFailed:
            refused += 1
        if refused != 2:
            raise ConditionalWritesUnsupported(
                "the object store does not honour conditional writes (If-None-Match/If-Match); "
                "PRIMARY/SECONDARY on it could both write: use STANDALONE or another store"
            )
    finally:
        backend.delete(key)
