"""The response class of the API, and ReductStore's error shape built on it."""

from __future__ import annotations

import json
import logging

from quart import Response

from appliance import metrics
from appliance.errors import ApplianceError, CorruptionError, ServiceUnavailable

log = logging.getLogger("appliance.app")


class ApiResponse(Response):
    """A Quart response whose content type is only what a handler sets."""

    default_mimetype = None  # type: ignore[assignment]


def error_response(status: int, message: str, *, body: bool = True) -> ApiResponse:
    """ReductStore's error shape: status, ``x-reduct-error`` and ``{"detail": ...}``."""
    message = message.replace('"', "'")
    header = message if message.isascii() and message.isprintable() else "Unparsable message"
    if status == 204 or not body:
        response = ApiResponse(b"", status=status)
        response.headers.pop("Content-Type", None)
        if status == 204:
            response.headers.pop("Content-Length", None)
    else:
        payload = json.dumps({"detail": message}, ensure_ascii=False).encode()
        response = ApiResponse(payload, status=status, content_type="application/json")
    response.headers["x-reduct-error"] = header
    return response


def report_error(error: ApplianceError) -> None:
    """Log what a failed request's error tells the operator: corruption (with file and offset,
    counted) and server-side failures; client errors and 503s are the client's to read."""
    if isinstance(error, CorruptionError):
        metrics.corruption("read")
        log.error(
            "corruption: %s", error.message, extra={"file": error.path, "offset": error.offset}
        )
    elif error.status >= 500 and not isinstance(error, ServiceUnavailable):
        log.error("request failed: %s", error.message)


def report_unexpected(method: str, path: str) -> None:
    """Log an unexpected exception being handled, with its traceback (the client gets a 500
    without one)."""
    log.exception("unexpected error in %s %s", method, path)


def unexpected_response(error: BaseException) -> ApiResponse:
    """The 500 of an unexpected exception: its type, never its message or traceback."""
    return error_response(500, f"Internal server error: {type(error).__name__}")
