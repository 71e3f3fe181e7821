"""The engine's one I/O error boundary: ``OSError`` in, an ``ApplianceError`` out.

Modelled on httpx's ``map_httpcore_exceptions``: the engine's public entry points (the methods
the API and the CLI call on ``Storage``, ``Bucket``, ``Entry`` and ``RecordWriter``) run their
body inside ``io_boundary(operation)``, and nothing below them translates an ``OSError`` merely
to report it. The mapping (issue 9 item 3):

- ``ENOSPC`` / ``EDQUOT`` -> 507 ``InsufficientStorage`` (the disk or the quota is full)
- ``EMFILE`` / ``ENFILE`` -> 503 ``ServiceUnavailable`` (out of file descriptors; transient)
- ``ENAMETOOLONG``        -> 422 ``UnprocessableEntity`` (a bucket/entry name is too long)
- anything else           -> 500 ``InternalError`` naming the operation and the reason

The message never contains a path (``strerror`` only, never ``str(exc)``, which names the
file); the operator's log line, written here, does.
"""

from __future__ import annotations

import errno
import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

from appliance.errors import (
    ApplianceError,
    InsufficientStorage,
    InternalError,
    ServiceUnavailable,
    UnprocessableEntity,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
DESCRIPTOR_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE})
# errnos that say the process ran short of something, never that a file is damaged.
RESOURCE_ERRNOS = DESCRIPTOR_ERRNOS | {errno.ENOMEM, errno.EINTR, errno.EAGAIN}
# errnos that say a file is not there (or not a file): damage when the index promised it.
MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


def is_missing(exc: OSError) -> bool:
    """True if ``exc`` says the file does not exist (damage), not that opening it failed."""
    return exc.errno in MISSING_ERRNOS


def translate(exc: OSError, operation: str) -> ApplianceError:
    """The client-safe ``ApplianceError`` for ``exc`` raised while doing ``operation``."""
    reason = exc.strerror or type(exc).__name__
    if exc.errno in FULL_ERRNOS:
        return InsufficientStorage(f"Not enough disk space to {operation}: {reason}")
    if exc.errno in DESCRIPTOR_ERRNOS:
        return ServiceUnavailable(
            f"Too many open files to {operation}; retry later or raise the open-file limit"
        )
    if exc.errno == errno.ENAMETOOLONG:
        return UnprocessableEntity(f"Can't {operation}: a name is too long for the file system")
    return InternalError(f"Storage error while trying to {operation}: {reason}")


@contextmanager
def io_boundary(operation: str) -> Iterator[None]:
    """Translate any ``OSError`` escaping the block (``operation`` reads "create bucket 'x'")."""
    try:
        yield
    except OSError as exc:
        error = translate(exc, operation)
        # The log keeps the full text (with the path): the client gets only ``error``.
        log.warning("i/o error: %s: %s", operation, exc)
        raise error from exc


def boundary(operation: str) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorator form of ``io_boundary`` for an entry-point method."""

    def wrap(fn: Callable[P, T]) -> Callable[P, T]:
        @functools.wraps(fn)
        def inner(*args: P.args, **kwargs: P.kwargs) -> T:
            with io_boundary(operation):
                return fn(*args, **kwargs)

        return inner

    return wrap


def guarded_iter(iterator: Iterator[T], operation: str) -> Iterator[T]:
    """Wrap a generator so that every step runs inside ``io_boundary``."""
    try:
        while True:
            with io_boundary(operation):
                try:
                    item = next(iterator)
                except StopIteration:
                    return
            yield item
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # an abandoned read releases its descriptor now, not at garbage collection
