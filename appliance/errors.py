"""One error tree for the whole appliance; mapped to HTTP in one place (``appliance/app.py``).

    ApplianceError (500)
    ├── NoContent (204)            query exhausted / nothing yet ("No content")
    ├── BadRequest (400)           HARD quota exceeded, body shorter/longer than content-length
    ├── Unauthorized (401)
    ├── Forbidden (403)            permission denied, read-only replica
    ├── NotFound (404)             bucket / entry / record / token / query
    ├── Conflict (409)             exists, duplicate timestamp, being deleted, provisioned
    ├── UnprocessableEntity (422)  validation: names, timestamps, JSON, headers
    ├── TooEarly (425)             record still being written
    ├── TooManyRequests (429)
    ├── InternalError (500)        errored record, FIFO failure, storage limit
    │   └── CorruptionError (500)  a checksum or decode failure on disk: says where
    ├── ServiceUnavailable (503)   not ready / lease not held
    └── InsufficientStorage (507)  not enough free disk

Every class carries the HTTP ``status`` and a stable machine ``code``. ``public_message`` is what
the client sees in ``x-reduct-error`` and ``{"detail": ...}``; for every class but
``CorruptionError`` it is the message itself. A ``CorruptionError``'s ``message`` is the
operator's text (logged, shown by ``appliance check``) and names the file and offset; its
``public_message`` names only bucket/entry/block/record and the kind of damage, never a server
path. No caller outside ``backends/`` ever sees an ``OSError`` or a botocore error for a storage
failure: they are translated at the boundary (for the engine: ``engine/ioerrors.py``).
"""

from __future__ import annotations

from typing import ClassVar


class ApplianceError(Exception):
    """Base of every error the appliance reports to a client or operator."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    @property
    def public_message(self) -> str:
        """What a client is told (``x-reduct-error``, ``detail``); the log may say more."""
        return self.message


class NoContent(ApplianceError):
    """A query has no (more) records to return right now."""

    status, code = 204, "no_content"


class BadRequest(ApplianceError):
    """The request is well-formed but cannot be honoured (quota, body length)."""

    status, code = 400, "bad_request"


class Unauthorized(ApplianceError):
    """No token, an unknown token or an expired one."""

    status, code = 401, "unauthorized"


class Forbidden(ApplianceError):
    """The token lacks a permission, or the instance is read-only."""

    status, code = 403, "forbidden"


class NotFound(ApplianceError):
    """A bucket, entry, record, token or query does not exist."""

    status, code = 404, "not_found"


class Conflict(ApplianceError):
    """The object exists already, is being deleted, or is provisioned."""

    status, code = 409, "conflict"


class PayloadTooLarge(ApplianceError):
    """A request exceeds a size limit (batch records, batch header bytes, JSON body)."""

    status, code = 413, "payload_too_large"


class UnprocessableEntity(ApplianceError):
    """Input failed validation (names, timestamps, headers, JSON)."""

    status, code = 422, "unprocessable_entity"


class TooEarly(ApplianceError):
    """The record is still being written."""

    status, code = 425, "too_early"


class TooManyRequests(ApplianceError):
    """A rate limit or the writer-slot limit was hit."""

    status, code = 429, "too_many_requests"


class InternalError(ApplianceError):
    """Something failed on the server side (errored record, FIFO quota failure...)."""

    status, code = 500, "internal"


# What a client sees for a corruption whose raiser gave no client-safe description.
UNDESCRIBED_CORRUPTION = "Stored data is corrupted (details in the server log)"


class CorruptionError(InternalError):
    """A checksum or decode failure in a file on disk.

    ``path`` and ``offset`` say where the damage is; ``recoverable`` tells whether startup
    recovery can repair it (a torn WAL tail can be truncated; a bad descriptor cannot).
    ``message`` (the log's and ``check``'s text) may name the file; ``public_detail``, when the
    raiser gives one, is the client-safe description (bucket/entry/block/record, kind of damage).
    """

    code = "corruption"

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        offset: int | None = None,
        recoverable: bool = False,
        public_detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = path
        self.offset = offset
        self.recoverable = recoverable
        self.public_detail = public_detail

    @property
    def public_message(self) -> str:
        """The client-safe description, or a generic one: never a server path."""
        return self.public_detail if self.public_detail is not None else UNDESCRIBED_CORRUPTION


class ServiceUnavailable(ApplianceError):
    """The instance is not ready (starting up, or not holding the lease)."""

    status, code = 503, "service_unavailable"


class InsufficientStorage(ApplianceError):
    """The disk does not have room for the write."""

    status, code = 507, "insufficient_storage"


class ConfigError(Exception):
    """A setting or provisioning file is invalid; the message is one line naming what and where."""
