"""The one error tree every backend raises; nothing else ever escapes a backend.

    BackendError               anything that went wrong; not retryable unless a subclass says so
    ├── ObjectNotFound         the key does not exist (the ONE error that means "missing")
    ├── PreconditionFailed     a conditional write lost: the key exists / its etag changed
    ├── InvalidKey             the key or prefix breaks the naming rules (``backends.base``)
    └── BackendUnavailable     transient I/O trouble (EIO, ENOSPC, timeouts, 5xx, throttling)

Backends translate ``OSError`` and botocore errors into these at the boundary with
``raise ... from exc``, so callers import neither ``botocore`` nor ``errno`` and can tell
"missing" from "broken" without string matching. Every message names the backend and the key,
because a log line that says only "No such file" cannot be acted on.
"""

# The class names are the design's vocabulary (ARCHITECTURE.md §4, spec/leases.md), which reads
# better than an "Error" suffix on each.
# ruff: noqa: N818

from __future__ import annotations

from typing import ClassVar


class BackendError(Exception):
    """Base of every backend failure; carries the backend name and the key involved."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str, *, backend: str, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.backend = backend
        self.key = key

    def __str__(self) -> str:
        where = f" (key {self.key!r})" if self.key is not None else ""
        return f"{self.backend}: {self.message}{where}"


class ObjectNotFound(BackendError):
    """The key does not exist: the one error meaning "missing" (read, stat, download)."""


class PreconditionFailed(BackendError):
    """A conditional write lost: ``create_if_absent`` met an existing key, or
    ``replace_if_unchanged`` met a different etag or no object at all.

    ``ambiguous`` is true when the request was retried after a transport failure: the first
    attempt may have landed, so the caller should re-read the key and compare its own nonce
    before concluding it lost (``spec/leases.md`` §3.3, "Retried conditional PUTs").
    """

    def __init__(
        self, message: str, *, backend: str, key: str | None = None, ambiguous: bool = False
    ) -> None:
        super().__init__(message, backend=backend, key=key)
        self.ambiguous = ambiguous


class InvalidKey(BackendError):
    """The key or prefix is not a valid relative name (``..``, leading ``/``, NUL, ``//``...)."""


class BackendUnavailable(BackendError):
    """Transient I/O failure (disk error or full, timeout, throttling, 5xx): retrying may work."""

    retryable = True
