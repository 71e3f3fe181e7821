"""CRC32C of a slice of a ``bytes`` object without copying the slice out.

``google_crc32c.value`` takes only ``bytes``, so checking each record of a span read with one
``pread`` (``Entry.read_run``) would copy every record out first, and it holds the GIL while it
computes. ``google_crc32c`` ships its C library (``crc32c_value``); called through ``ctypes`` on
a pointer into the span, a check copies nothing and releases the GIL (the event loop goes on
sending meanwhile). Loaded once and checked against ``google_crc32c.value``; if the library
cannot be found or disagrees, ``crc_at`` falls back to copying the slice.

``running_checksums`` chains records' stored checksums into the checksums of their
concatenation, so that a span of small records read with one ``pread`` is checked with one
CRC32C call instead of one a record (``Entry.read_columns``).
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from pathlib import Path

import google_crc32c

# Below this size a slice is copied and checked by ``google_crc32c`` (which takes only
# ``bytes``): the copy costs less than a ctypes call.
COPY_CHECK_BYTES = 4096


def _load() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    """``crc32c_value`` from the library bundled with ``google_crc32c``, or None."""
    folder = Path(google_crc32c.__file__).resolve().parent
    for path in sorted(folder.parent.glob("google_crc32c.libs/libcrc32c*.so*")):
        try:
            fn = ctypes.CDLL(str(path)).crc32c_value
        except (OSError, AttributeError):
            continue
        fn.restype = ctypes.c_uint32
        fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        sample = bytes(range(256)) * 5
        base = ctypes.cast(ctypes.c_char_p(sample), ctypes.c_void_p).value
        if base is not None and fn(base + 3, 1000) == google_crc32c.value(sample[3:1003]):
            return fn
    return None


_VALUE = _load()


def crc_at(data: bytes, offset: int, size: int) -> int:
    """CRC32C of ``data[offset:offset + size]``."""
    if offset < 0 or size < 0 or offset + size > len(data):  # never read past the buffer
        raise ValueError(f"slice {offset}+{size} outside a buffer of {len(data)} bytes")
    if _VALUE is None or size < COPY_CHECK_BYTES:  # small: the copy costs less than the ctypes call
        return google_crc32c.value(data[offset : offset + size])
    # c_char_p of a bytes object points at its own buffer (no copy); ``data`` outlives the call.
    base = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p).value
    return int(_VALUE(base + offset, size))


# Zero bytes to extend a checksum by (a record's length of them, in pieces of at most this):
# the memory stays bounded whatever the records' sizes.
_ZEROS = bytes(64 * 1024)


def _extend_zeros(crc: int, size: int) -> int:
    """``google_crc32c.extend(crc, bytes(size))`` without making ``size`` zero bytes."""
    extend = google_crc32c.extend
    step = len(_ZEROS)
    while size > step:
        crc = extend(crc, _ZEROS)
        size -= step
    return extend(crc, _ZEROS[:size]) if size < step else extend(crc, _ZEROS)


def running_checksums(crcs: Sequence[int], sizes: Sequence[int]) -> list[int]:
    """``out[k]``: the CRC32C that the payloads of the first ``k`` records, joined, have if
    each payload matches its checksum in ``crcs`` (``sizes`` their lengths).

    Derived from the checksums alone, never from data: CRC32C is affine, so
    ``crc(a + b) = extend(crc(a), zeros) ^ crc(zeros) ^ crc(b)`` with ``len(b)`` zero bytes
    (zlib's ``crc32_combine``). Then ``extend(out[lo], span) == out[hi]`` checks records
    ``lo`` to ``hi`` read back to back as one span, with one call.
    """
    extend = google_crc32c.extend
    # By size (records of a block often share one): its zero bytes, or None above the
    # piece size, and their checksum.
    zeros: dict[int, tuple[bytes | None, int]] = {}
    out = [0]
    running = 0
    for crc, size in zip(crcs, sizes, strict=True):
        if size:
            pair = zeros.get(size)
            if pair is None:
                pair = zeros[size] = (
                    _ZEROS[:size] if size <= len(_ZEROS) else None, _extend_zeros(0, size)
                )
            run, zeros_crc = pair
            shifted = extend(running, run) if run is not None else _extend_zeros(running, size)
            running = shifted ^ zeros_crc ^ crc
        out.append(running)
    return out


def available() -> bool:
    """True if slices are checked in place (the bundled library was found and agrees)."""
    return _VALUE is not None
