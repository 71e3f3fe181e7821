"""The response class of the API: no implicit ``text/html`` content type on empty bodies."""

from __future__ import annotations

from quart import Response


class ApiResponse(Response):
    """A Quart response whose content type is only what a handler sets."""

    default_mimetype = None  # type: ignore[assignment]
