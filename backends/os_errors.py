"""Translation of ``OSError`` about local files into the backend errors callers act on."""

from __future__ import annotations

import errno
from pathlib import Path

from backends.errors import BackendError, BackendUnavailable, InvalidKey, ObjectNotFound

# errnos that describe a condition that may clear by itself (or by an operator freeing space).
TRANSIENT_ERRNOS = frozenset(
    {
        errno.EIO,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EAGAIN,
        errno.EINTR,
        errno.EBUSY,
        errno.ETIMEDOUT,
        errno.ESTALE,
        errno.ENOLCK,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
    }
)
MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR})


def translate_os_error(
    exc: OSError, *, backend: str, key: str, action: str, writing: bool = False
) -> BackendError:
    """Map an OSError about a stored object to the backend error a caller can act on.

    ENOENT/ENOTDIR/EISDIR mean "missing" when reading; when writing they mean a folder and a
    file want the same name (``a`` and ``a/b``), which is a conflict, not a missing object.
    """
    detail = f"{action} failed: {exc.strerror or exc}"
    if exc.errno in MISSING_ERRNOS:
        if writing:
            return BackendError(
                f"{detail} (part of the key names a file, or the key names a folder)",
                backend=backend,
                key=key,
            )
        return ObjectNotFound("no such object", backend=backend, key=key)
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidKey(f"{detail} (a key segment is too long)", backend=backend, key=key)
    if exc.errno in TRANSIENT_ERRNOS:
        return BackendUnavailable(detail, backend=backend, key=key)
    return BackendError(detail, backend=backend, key=key)


def local_file_error(exc: OSError, *, backend: str, key: str, path: Path) -> BackendError:
    """Map an OSError about the caller's local file; never ObjectNotFound, which means the key."""
    detail = f"local file {str(path)!r}: {exc.strerror or exc}"
    if exc.errno in TRANSIENT_ERRNOS:
        return BackendUnavailable(detail, backend=backend, key=key)
    return BackendError(detail, backend=backend, key=key)

