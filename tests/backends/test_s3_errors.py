"""Every botocore / s3transfer failure maps to the right BackendError, without a server."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from s3transfer.exceptions import RetriesExceededError, S3DownloadFailedError

from backends.errors import (
    BackendError,
    BackendUnavailable,
    ObjectNotFound,
    PreconditionFailed,
)
from backends.s3_errors import translate_s3_error


def _client_error(code: str, status: int, retries: int = 0) -> ClientError:
    response = {
        "Error": {"Code": code, "Message": f"{code} happened"},
        "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries},
    }
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


def _translate(exc: Exception) -> BackendError:
    return translate_s3_error(exc, backend="s3://b/", bucket="b", key="k", action="write")


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_client_error("NoSuchKey", 404), ObjectNotFound),
        (_client_error("404", 404), ObjectNotFound),
        (_client_error("PreconditionFailed", 412), PreconditionFailed),
        (_client_error("ConditionalRequestConflict", 409), BackendUnavailable),
        (_client_error("SlowDown", 503), BackendUnavailable),
        (_client_error("InternalError", 500), BackendUnavailable),
        (_client_error("TooManyRequests", 429), BackendUnavailable),
        (_client_error("AccessDenied", 403), BackendError),
        (_client_error("NoSuchBucket", 404), BackendError),
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), BackendUnavailable),
        (ConnectionClosedError(endpoint_url="http://127.0.0.1:1"), BackendUnavailable),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), BackendUnavailable),
        (NoCredentialsError(), BackendError),
        (S3DownloadFailedError("did not match expected ETag"), PreconditionFailed),
        (RetriesExceededError(OSError("reset")), BackendUnavailable),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else value.__name__,
)
def test_s3_error_translation(exc: Exception, expected: type[BackendError]) -> None:
    translated = _translate(exc)
    assert type(translated) is expected
    assert translated.backend == "s3://b/" and translated.key == "k"
    assert translated.retryable is (expected is BackendUnavailable)


def test_s3_access_denied_names_the_credentials() -> None:
    translated = _translate(_client_error("403", 403))
    assert "access denied (HTTP 403, 403)" in str(translated)
    assert "secret key" in str(translated)


def test_s3_no_such_bucket_is_not_object_not_found() -> None:
    translated = _translate(_client_error("NoSuchBucket", 404))
    assert not isinstance(translated, ObjectNotFound)
    assert "'b' does not exist" in str(translated)


def test_s3_precondition_failed_after_a_retry_is_ambiguous() -> None:
    first_try = _translate(_client_error("PreconditionFailed", 412, retries=0))
    retried = _translate(_client_error("PreconditionFailed", 412, retries=1))
    assert isinstance(first_try, PreconditionFailed) and not first_try.ambiguous
    assert isinstance(retried, PreconditionFailed) and retried.ambiguous
    assert "may have landed" in str(retried)
