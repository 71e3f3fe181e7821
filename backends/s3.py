"""S3 backend (boto3): each object is ``s3://<bucket>/<prefix><key>``.

The boto3 client is injected (``S3Backend(client, bucket, prefix)``; the caller keeps owning
it) or built by ``S3Backend.from_settings`` (then ``close`` closes it); nothing is built at
import time. Every call blocks; async callers
run it in a thread (ARCHITECTURE.md §3, "Concurrency").

Semantics and fault model:

- ``write`` is one PutObject, atomic on S3: readers see the old or the new object.
- ``upload``/``download`` use boto3's transfer manager (multipart above 8 MiB, bounded memory).
  A multipart upload becomes visible only when completed, so it is atomic too. A download first
  HEADs the object, then pins that ETag with ``If-Match`` on every GET, so a concurrent overwrite
  fails the download (retried) instead of mixing two versions; bytes land in a temp file that
  is fsynced and renamed into place.
- ``storage_class`` (``RS_REMOTE_DEFAULT_STORAGE_CLASS``) is sent with ``write`` and ``upload``
  (single PUT and multipart) of the keys ``storage_class_keys`` accepts (default: all of them);
  never with the conditional PUTs, so a lease's objects keep the bucket's default class.
- ``create_if_absent`` is PutObject with ``If-None-Match: *``; ``replace_if_unchanged`` is
  PutObject with ``If-Match: <etag>``. Real S3 (since 2024), MinIO and R2 evaluate these
  atomically. moto 5.2 checks and then writes without a lock, so racing writers can both win
  there (``tests/backends/test_s3.py`` skips the race tests on moto for that reason).
- The etag is S3's ETag: the MD5 of the content for a single PUT. An identical rewrite keeps it
  (``etag_changes_on_every_write = False``), and ``If-Match`` can only compare that value, so a
  lease on S3 must put a counter or nonce in every write (``spec/leases.md`` §3.5).
- 412 → ``PreconditionFailed``; if botocore had retried the request, the first attempt may have
  landed, so the error is marked ``ambiguous`` (``spec/leases.md`` §3.3). 409
  ConditionalRequestConflict, 429, 5xx, throttling and connection errors (after botocore's own
  retries) → ``BackendUnavailable``. Every botocore error is translated at this boundary
  (rules in ``backends.s3_errors``); callers never see one.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from s3transfer.manager import TransferManager
from s3transfer.subscribers import BaseSubscriber

from backends.base import ObjectInfo, refuse_empty_prefix, validate_key, validate_prefix
from backends.durability import (
    CHUNK_BYTES,
    MIB,
    publish_local_path,
    temp_path_for,
    write_local_file,
)
from backends.errors import (
    BackendError,
    BackendUnavailable,
    ObjectNotFound,
    PreconditionFailed,
)
from backends.os_errors import local_file_error
from backends.s3_errors import S3_ERRORS, translate_s3_error

MULTIPART_THRESHOLD_BYTES = 8 * MIB
TRANSFER_CONCURRENCY = 4
DELETE_BATCH_COUNT = 1000  # DeleteObjects accepts at most 1000 keys per request
DOWNLOAD_ATTEMPTS = 3  # the object may be overwritten while we fetch it; then we start over
REQUEST_ATTEMPTS = 3  # botocore "standard" retries: throttling, 5xx, dropped connections
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 60.0


class S3Backend:
    """Objects in an S3 bucket under a key prefix; the client is injected."""

    etag_changes_on_every_write = False

    def __init__(
        self,
        client: Any,
        bucket: str,
        prefix: str = "",
        *,
        transfer_config: TransferConfig | None = None,
        owns_client: bool = False,
        storage_class: str | None = None,
        storage_class_keys: Callable[[str], bool] | None = None,
    ) -> None:
        self._client = client
        self.storage_class = storage_class or None
        self._storage_class_keys = storage_class_keys
        # Whoever builds the client closes it: an injected client may be shared.
        self._owns_client = owns_client
        self.bucket = bucket
        self.root = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.name = f"s3://{bucket}/{self.root}"
        validate_prefix(self.root, backend=self.name)
        self._transfer_config = transfer_config or TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD_BYTES,
            multipart_chunksize=MULTIPART_THRESHOLD_BYTES,
            max_concurrency=TRANSFER_CONCURRENCY,
            io_chunksize=CHUNK_BYTES,
        )
        self._closed = False

    @classmethod
    def from_settings(
        cls,
        endpoint_url: str | None,
        bucket: str,
        region: str | None,
        access_key: str | None,
        secret_key: str | None,
        prefix: str = "",
        *,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        read_timeout: float = READ_TIMEOUT_SECONDS,
        storage_class: str | None = None,
        storage_class_keys: Callable[[str], bool] | None = None,
    ) -> S3Backend:
        """Build a boto3 client from settings and wrap it; ``close`` will close the client.

        With ``access_key``/``secret_key`` unset, boto3's default chain applies (environment,
        config files, instance role), which is what an operator on EC2 or ECS expects.
        ``read_timeout`` bounds each wait for a response byte; a request that hits it is
        retried by botocore (``REQUEST_ATTEMPTS`` in all), then fails as ``BackendUnavailable``.
        """
        config = Config(
            region_name=region,
            retries={"mode": "standard", "max_attempts": REQUEST_ATTEMPTS},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=4 * TRANSFER_CONCURRENCY,
            # Custom endpoints (MinIO, moto, Garage) want path-style URLs.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
            # botocore >= 1.36 adds CRC checksums to every PUT by default, which several
            # S3-compatible stores reject; the engine checksums payloads itself.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        session = boto3.session.Session(
            aws_access_key_id=access_key, aws_secret_access_key=secret_key, region_name=region
        )
        client = session.client("s3", endpoint_url=endpoint_url or None, config=config)
        return cls(
            client,
            bucket,
            prefix,
            owns_client=True,
            storage_class=storage_class,
            storage_class_keys=storage_class_keys,
        )

    def __repr__(self) -> str:
        return f"S3Backend({self.name!r})"

    @property
    def client(self) -> Any:
        """The boto3 S3 client this backend uses (to share it with another backend)."""
        return self._client

    # -- lifecycle ---------------------------------------------------------------------------

    def init(self) -> None:
        """Check that the bucket exists and is reachable with our credentials."""
        try:
            with self._translate(None, "check bucket"):
                self._client.head_bucket(Bucket=self.bucket)
        except ObjectNotFound as exc:  # HeadBucket has no body: a bare 404 means no bucket
            raise BackendError(f"bucket {self.bucket!r} does not exist", backend=self.name) from exc

    def close(self) -> None:
        """Close the client's connection pool (once), if this backend built the client."""
        if not self._closed:
            self._closed = True
            if self._owns_client:
                self._client.close()

    # -- reads -------------------------------------------------------------------------------

    def read(self, key: str) -> bytes:
        """GetObject and return the body."""
        full = self._full_key(key)
        with self._translate(key, "read"):
            body = self._client.get_object(Bucket=self.bucket, Key=full)["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

    def stat(self, key: str) -> ObjectInfo:
        """HeadObject."""
        full = self._full_key(key)
        with self._translate(key, "stat"):
            head = self._client.head_object(Bucket=self.bucket, Key=full)
        return ObjectInfo(
            key=key,
            size=int(head["ContentLength"]),
            mtime=head["LastModified"].timestamp(),
            etag=_strip_etag(head["ETag"]),
        )

    def download(self, key: str, local_path: Path) -> ObjectInfo:
        """Fetch into ``local_path`` via a temp file; the info matches the bytes fetched."""
        local_path = Path(local_path)
        for _ in range(DOWNLOAD_ATTEMPTS):
            info = self.stat(key)
            try:
                self._download_pinned(key, info, local_path)
            except PreconditionFailed:
                continue  # overwritten while we fetched it: fetch the new version
            return info
        raise BackendUnavailable(
            f"download: the object changed {DOWNLOAD_ATTEMPTS} times while being fetched",
            backend=self.name,
            key=key,
        )

    def _download_pinned(self, key: str, info: ObjectInfo, local_path: Path) -> None:
        """Fetch exactly the version with ``info.etag``; PreconditionFailed if it changed."""
        full = self._full_key(key)
        etag = f'"{info.etag}"'
        if info.size < MULTIPART_THRESHOLD_BYTES:
            # One streamed GET; s3transfer would not pin the ETag on a single GET.
            with self._translate(key, "download"):
                response = self._client.get_object(Bucket=self.bucket, Key=full, IfMatch=etag)
                body = response["Body"]
                try:
                    write_local_file(local_path, body.iter_chunks(CHUNK_BYTES))
                except OSError as exc:
                    raise local_file_error(
                        exc, backend=self.name, key=key, path=local_path
                    ) from exc
                finally:
                    body.close()
            return
        temp = temp_path_for(local_path)
        try:
            local_path.parent.mkdir(parents=True, exist_ok=True)
            with (
                self._translate(key, "download"),
                TransferManager(self._client, self._transfer_config) as manager,
            ):
                future = manager.download(
                    self.bucket, full, str(temp), subscribers=[_KnownObject(info.size, etag)]
                )
                future.result()
            publish_local_path(temp, local_path)
        except OSError as exc:
            raise local_file_error(exc, backend=self.name, key=key, path=local_path) from exc
        finally:
            temp.unlink(missing_ok=True)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """ListObjectsV2 under the prefix; S3 returns keys in UTF-8 byte order (= str order)."""
        validate_prefix(prefix, backend=self.name)
        return self._list(prefix)

    def _list(self, prefix: str) -> Iterator[ObjectInfo]:
        paginator = self._client.get_paginator("list_objects_v2")
        with self._translate(prefix, "list"):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.root + prefix):
                for item in page.get("Contents", ()):
                    yield ObjectInfo(
                        key=item["Key"][len(self.root) :],
                        size=int(item["Size"]),
                        mtime=item["LastModified"].timestamp(),
                        etag=_strip_etag(item["ETag"]),
                    )

    # -- writes ------------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> ObjectInfo:
        """One PutObject (with the storage class, if one applies to ``key``)."""
        return self._put(key, data, "write", **self._class_args(key))

    def create_if_absent(self, key: str, data: bytes) -> ObjectInfo:
        """PutObject with ``If-None-Match: *``."""
        return self._put(key, data, "create_if_absent", IfNoneMatch="*")

    def replace_if_unchanged(self, key: str, data: bytes, etag: str) -> ObjectInfo:
        """PutObject with ``If-Match: "<etag>"``; a missing object is a failed precondition."""
        try:
            return self._put(key, data, "replace_if_unchanged", IfMatch=f'"{etag}"')
        except ObjectNotFound as exc:
            raise PreconditionFailed(
                "replace_if_unchanged: the key does not exist", backend=self.name, key=key
            ) from exc

    def _put(self, key: str, data: bytes, action: str, **conditions: str) -> ObjectInfo:
        full = self._full_key(key)
        with self._translate(key, action):
            response = self._client.put_object(
                Bucket=self.bucket, Key=full, Body=bytes(data), **conditions
            )
        return ObjectInfo(
            key=key,
            size=len(data),
            mtime=_server_time(response),
            etag=_strip_etag(response["ETag"]),
        )

    def upload(self, key: str, local_path: Path) -> ObjectInfo:
        """Stream a local file up with the transfer manager, then HEAD it for the etag."""
        full = self._full_key(key)
        local_path = Path(local_path)
        if not local_path.is_file():
            raise BackendError(
                f"local file {str(local_path)!r} does not exist or is not a file",
                backend=self.name,
                key=key,
            )
        try:
            with (
                self._translate(key, "upload"),
                TransferManager(self._client, self._transfer_config) as manager,
            ):
                manager.upload(
                    str(local_path), self.bucket, full, extra_args=self._class_args(key)
                ).result()
        except OSError as exc:
            raise local_file_error(exc, backend=self.name, key=key, path=local_path) from exc
        # The transfer does not hand back the ETag; a concurrent writer could slip in here,
        # so the info may describe a newer version (never an older or partial one).
        return self.stat(key)

    # -- deletes -----------------------------------------------------------------------------

    def delete(self, key: str) -> None:
        """DeleteObject; S3 answers 204 for a missing key too."""
        full = self._full_key(key)
        with self._translate(key, "delete"):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def delete_prefix(self, prefix: str) -> int:
        """List, then DeleteObjects in batches of 1000; an empty prefix is refused."""
        refuse_empty_prefix(prefix, backend=self.name)
        keys = [info.key for info in self.list(prefix)]
        for start in range(0, len(keys), DELETE_BATCH_COUNT):
            batch = keys[start : start + DELETE_BATCH_COUNT]
            with self._translate(prefix, "delete_prefix"):
                response = self._client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": self.root + k} for k in batch], "Quiet": True},
                )
            errors = response.get("Errors") or []
            if errors:
                first = errors[0]
                raise BackendError(
                    f"delete_prefix: {len(errors)} keys not deleted, first "
                    f"{first.get('Key')!r}: {first.get('Code')} {first.get('Message')}",
                    backend=self.name,
                    key=prefix,
                )
        return len(keys)

    # -- helpers -----------------------------------------------------------------------------

    def _class_args(self, key: str) -> dict[str, str]:
        """``StorageClass`` for an unconditional PUT of ``key``, when one is configured for it."""
        if self.storage_class is None:
            return {}
        if self._storage_class_keys is not None and not self._storage_class_keys(key):
            return {}
        return {"StorageClass": self.storage_class}

    def _full_key(self, key: str) -> str:
        validate_key(key, backend=self.name)
        return self.root + key

    @contextmanager
    def _translate(self, key: str | None, action: str) -> Iterator[None]:
        """Turn botocore and s3transfer errors inside the block into BackendError subclasses."""
        try:
            yield
        except S3_ERRORS as exc:
            raise translate_s3_error(
                exc, backend=self.name, bucket=self.bucket, key=key, action=action
            ) from exc


class _KnownObject(BaseSubscriber):  # type: ignore[misc]
    """s3transfer subscriber: tell the transfer the size and ETag we already HEADed.

    With both known it skips its own HEAD and sends ``If-Match`` on every ranged GET, so all
    parts come from the version our ObjectInfo describes.
    """

    def __init__(self, size: int, etag: str) -> None:
        self._size = size
        self._etag = etag

    def on_queued(self, future: Any, **kwargs: Any) -> None:
        """Hand the known size and ETag to the transfer before it starts."""
        future.meta.provide_transfer_size(self._size)
        future.meta.provide_object_etag(self._etag)


def _strip_etag(etag: str) -> str:
    """S3 quotes ETags; we hand out the bare value and add quotes back for If-Match."""
    return etag.strip('"')


def _server_time(response: dict[str, Any]) -> float:
    """The server's Date header (what LastModified will say, to the second), else our clock."""
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if date:
        try:
            return email.utils.parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            pass
    return time.time()
