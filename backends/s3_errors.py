"""Translation of botocore and s3transfer exceptions into ``backends.errors`` classes.

Classification, by S3 error code first and HTTP status second:

    NoSuchBucket                      BackendError (configuration, not retryable)
    NoSuchKey / 404                   ObjectNotFound
    PreconditionFailed / 412          PreconditionFailed (``ambiguous`` if botocore retried)
    409 ConditionalRequestConflict,
    429, 5xx, SlowDown, throttling    BackendUnavailable (retry after re-reading)
    connection / read errors          BackendUnavailable
    anything else (403, bad creds)    BackendError

A 412 after a retry is ambiguous because the first attempt may have landed and the retry then
failed against our own write (``spec/leases.md`` §3.3): the lease re-reads and compares its nonce.
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

from backends.errors import (
    BackendError,
    BackendUnavailable,
    ObjectNotFound,
    PreconditionFailed,
)

# Every exception type ``translate_s3_error`` understands; catch these around boto3 calls.
S3_ERRORS = (ClientError, BotoCoreError, S3DownloadFailedError, RetriesExceededError)

NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
TRANSIENT_CODES = frozenset(
    {
        "ConditionalRequestConflict",  # concurrent conditional writes: re-read and retry
        "InternalError",
        "OperationAborted",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
    }
)


def translate_s3_error(
    exc: Exception, *, backend: str, bucket: str, key: str | None, action: str
) -> BackendError:
    """Map one exception from boto3 or s3transfer to the backend error a caller can act on."""
    if isinstance(exc, ClientError):
        return _client_error(exc, backend=backend, bucket=bucket, key=key, action=action)
    if isinstance(exc, S3DownloadFailedError):
        # s3transfer's name for a 412 on a ranged GET pinned with If-Match: the object was
        # replaced mid-download (the S3 backend then starts the download over).
        return PreconditionFailed(
            f"{action}: the object changed while being fetched", backend=backend, key=key
        )
    detail = f"{action} failed: {exc}"
    if isinstance(
        exc, BotoConnectionError | HTTPClientError | IncompleteReadError | RetriesExceededError
    ):
        return BackendUnavailable(detail, backend=backend, key=key)
    return BackendError(detail, backend=backend, key=key)


def _client_error(
    exc: ClientError, *, backend: str, bucket: str, key: str | None, action: str
) -> BackendError:
    """Classify an S3 error response by code, then by HTTP status."""
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code = str(error.get("Code", ""))
    status = int(meta.get("HTTPStatusCode") or 0)
    detail = f"{action} failed: {code or 'error'} (HTTP {status}) {error.get('Message', '')}"
    if code == "NoSuchBucket":
        return BackendError(
            f"{action} failed: bucket {bucket!r} does not exist", backend=backend, key=key
        )
    if code in NOT_FOUND_CODES or status == 404:
        return ObjectNotFound("no such object", backend=backend, key=key)
    if code in PRECONDITION_CODES or status == 412:
        retried = int(meta.get("RetryAttempts") or 0) > 0
        note = " after a retry: the first attempt may have landed, re-read" if retried else ""
        return PreconditionFailed(
            f"{action}: precondition failed{note}", backend=backend, key=key, ambiguous=retried
        )
    if code in TRANSIENT_CODES or status in (409, 429) or status >= 500:
        return BackendUnavailable(detail.strip(), backend=backend, key=key)
    if status == 403:
        # A HEAD's 403 has no body, so no code says why: name what an operator checks.
        return BackendError(
            f"{action} failed: access denied (HTTP 403, {code or 'Forbidden'}): check the "
            "access key, the secret key and the bucket's policy",
            backend=backend,
            key=key,
        )
    return BackendError(detail.strip(), backend=backend, key=key)
