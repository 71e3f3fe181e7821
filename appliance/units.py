"""Units and the two human-friendly literal forms the settings accept: durations and byte sizes.

Durations: ``30`` (seconds), ``30s``, ``500ms``, ``250us``, ``5m``, ``1h``, ``2d``; fractions allowed
(``1.5s``). Sizes: ``1048576`` (bytes), ``64KB``/``64MB``/``1GB``/``1TB`` (powers of 10),
``64KiB``/``64MiB``/``1GiB``/``1TiB`` (powers of 2); ``B`` suffix and case of the unit letters are
accepted (``64mb`` == ``64MB``), ``K``/``M``/``G`` alone mean KB/MB/GB as in ReductStore.
"""

from __future__ import annotations

import re

KB = 1000
MB = 1000 * KB
GB = 1000 * MB
TB = 1000 * GB
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
TIB = 1024 * GIB

US_PER_SECOND = 1_000_000

DURATION_FORM = "a number of seconds or a number with a unit: 30, 30s, 500ms, 5m, 1h, 1d"
SIZE_FORM = "a number of bytes or a number with a unit: 1048576, 64KB, 64MB, 1GB, 64KiB, 1GiB"

_DURATION_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "d": 86400.0,
}
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": KB,
    "kb": KB,
    "m": MB,
    "mb": MB,
    "g": GB,
    "gb": GB,
    "t": TB,
    "tb": TB,
    "kib": KIB,
    "mib": MIB,
    "gib": GIB,
    "tib": TIB,
}
_LITERAL = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_duration(value: str | int | float) -> float:
    """Parse a duration literal into seconds; raise ValueError naming the accepted form."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_FORM}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"must not be negative; expected {DURATION_FORM}")
        return float(value)
    match = _LITERAL.match(str(value))
    if not match:
        raise ValueError(f"expected {DURATION_FORM}")
    number, unit = match.groups()
    factor = _DURATION_UNITS.get(unit.lower() if unit else "s")
    if factor is None:
        raise ValueError(f"unknown unit {unit!r}; expected {DURATION_FORM}")
    return float(number) * factor


def parse_size(value: str | int) -> int:
    """Parse a byte-size literal into bytes; raise ValueError naming the accepted form."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_FORM}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative; expected {SIZE_FORM}")
        return value
    if isinstance(value, float):
        if value < 0 or not value.is_integer():
            raise ValueError(f"expected {SIZE_FORM}")
        return int(value)
    match = _LITERAL.match(str(value))
    if not match:
        raise ValueError(f"expected {SIZE_FORM}")
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        raise ValueError(f"unknown unit {unit!r}; expected {SIZE_FORM}")
    result = float(number) * factor
    if not result.is_integer():
        raise ValueError(f"{value!r} is not a whole number of bytes; expected {SIZE_FORM}")
    return int(result)


_EXACT_UNITS = (("TB", TB), ("TiB", TIB), ("GB", GB), ("GiB", GIB), ("MB", MB), ("MiB", MIB),
                ("KB", KB), ("KiB", KIB))


def format_size(value: int) -> str:
    """Bytes as the literal an operator would write: ``16MiB``, ``64MB``, else ``1.5 GiB``;
    every form printed is accepted back by ``parse_size`` except the rounded one."""
    if value <= 0:
        return "0"
    for unit, factor in _EXACT_UNITS:
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    for unit, factor in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if value >= factor:
            return f"{value / factor:.1f} {unit} ({value} bytes)"
    return f"{value} bytes"


def format_duration(seconds: float) -> str:
    """Seconds as a literal ``parse_duration`` accepts: ``30s``, ``500ms``, ``5m``, ``1h``."""
    if seconds == 0:
        return "0"
    for unit, factor in (("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= factor and (seconds / factor).is_integer():
            return f"{int(seconds / factor)}{unit}"
    if seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"
