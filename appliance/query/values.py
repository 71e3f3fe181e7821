"""Values of the ``when`` language: typing, conversion, comparison and arithmetic (spec §5.5).

A value is a plain Python ``bool``, ``int``, ``float`` or ``str``, or a ``Duration`` (an ``int``
of microseconds that remembers it came from a literal such as ``"5s"``). The rules mirror
ReductStore's ``Value`` enum so that queries select the same records:

* label values are typed on read (``"true"`` -> bool, ``"12"`` -> int, ``"1.5"`` -> float);
* numbers of different kinds compare after coercion (bool -> 0/1, int -> float with a float);
  a string never equals a number and has no order with one;
* strings render as Rust would print them (``1.0`` -> ``"1"``, durations as ``"1h 30m"``).

Every failure raises ``UnprocessableEntity`` with ReductStore's message.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

from appliance.errors import UnprocessableEntity

__all__ = [
    "Duration",
    "Value",
    "add",
    "as_bool",
    "as_float",
    "as_int",
    "cast",
    "compare",
    "divide",
    "divide_num",
    "equals",
    "multiply",
    "parse_duration_literal",
    "parse_label_value",
    "remainder",
    "subtract",
    "to_string",
    "absolute",
]

I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

_INT = re.compile(r"[+-]?[0-9]+")
# Rust's f64 grammar: digits with an optional fraction and exponent, or inf/infinity/nan.
_FLOAT = re.compile(
    r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|inf|infinity|nan)", re.IGNORECASE
)
_DURATION_UNITS_US = {
    "us": 1,
    "ms": 1_000,
    "s": 1_000_000,
    "m": 60_000_000,
    "h": 3_600_000_000,
    "d": 86_400_000_000,
}
_DURATION_PARTS_US = (
    ("d", 86_400_000_000),
    ("h", 3_600_000_000),
    ("m", 60_000_000),
    ("s", 1_000_000),
    ("ms", 1_000),
    ("us", 1),
)


class Duration(int):
    """A span of time in microseconds, parsed from a literal like ``"1h 30m"``."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Duration({int(self)})"


Value = bool | int | float | str


def _parse_i64(text: str) -> int | None:
    # An i64 has at most 19 digits: refuse longer strings before int() (which raises past
    # 4,300 digits and is quadratic below that).
    if len(text) > 40 or not _INT.fullmatch(text):
        return None
    number = int(text)
    return number if I64_MIN <= number <= I64_MAX else None


def _parse_f64(text: str) -> float | None:
    return float(text) if _FLOAT.fullmatch(text) else None


def parse_label_value(raw: str) -> Value:
    """Type a stored label value: bool, then i64, then f64, else the string itself."""
    if raw == "true":
        return True
    if raw == "false":
        return False
    number = _parse_i64(raw)
    if number is not None:
        return number
    real = _parse_f64(raw)
    return raw if real is None else real


def _parse_single_duration(part: str) -> int | None:
    # ReductStore splits the characters into "number-ish" and "unit" groups wherever they
    # occur ("m5" is five minutes); we keep that quirk so the same strings become durations.
    digits = "".join(c for c in part if c in "0123456789.-")
    unit = "".join(c for c in part if c not in "0123456789.-")
    number = _parse_i64(digits)
    factor = _DURATION_UNITS_US.get(unit)
    if number is None or factor is None:
        return None
    return number * factor


def parse_duration_literal(text: str) -> Duration | None:
    """Parse ``"5s"``, ``"1h -30m"`` (units us ms s m h d, parts summed) into µs, else None."""
    parts = text.split()
    if not parts:
        return None
    total = 0
    for part in parts:
        value = _parse_single_duration(part)
        if value is None:
            return None
        total += value
    return Duration(total)


def type_name(value: Value) -> str:
    """The word ReductStore uses for a value's type in error messages."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, Duration):
        return "duration"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "float"
    return "string"


def _format_float(value: float) -> str:
    # Rust prints the shortest round-trip digits without an exponent: 1.0 -> "1", 1e21 -> "1000…".
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    text = format(Decimal(repr(value)), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _format_duration(usec: int) -> str:
    parts = []
    for unit, size in _DURATION_PARTS_US:
        if abs(usec) >= size:
            count = abs(usec) // size * (1 if usec >= 0 else -1)  # Rust truncates toward zero
            parts.append(f"{count}{unit}")
            usec -= count * size
    return " ".join(parts) if parts else "0us"


def to_string(value: Value) -> str:
    """The string form used by ``$cast``, ``$contains`` and label-name operands."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Duration):
        return _format_duration(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value)
    return value


def as_bool(value: Value) -> bool:
    """Truthiness: non-zero numbers and non-empty strings are true."""
    if isinstance(value, str):
        return value != ""
    return value != 0


def _float_to_i64(value: float) -> int:
    # Rust's `as i64` saturates and maps NaN to 0.
    if math.isnan(value):
        return 0
    if math.isinf(value):
        return I64_MAX if value > 0 else I64_MIN
    return max(I64_MIN, min(I64_MAX, int(value)))


def as_int(value: Value) -> int:
    """Convert to an integer; a string must parse as one."""
    if isinstance(value, str):
        number = _parse_i64(value)
        if number is None:
            raise UnprocessableEntity(f"Value '{value}' could not be parsed as integer")
        return number
    if isinstance(value, float):
        return _float_to_i64(value)
    return int(value)


def as_float(value: Value) -> float:
    """Convert to a float; a string must parse as one."""
    if isinstance(value, str):
        real = _parse_f64(value)
        if real is None:
            raise UnprocessableEntity(f"Value '{value}' could not be parsed as float")
        return real
    return float(value)


def _numeric_pair(left: Value, right: Value) -> tuple[int | float, int | float]:
    if isinstance(left, float) or isinstance(right, float):
        return float(left), float(right)
    return int(left), int(right)


def equals(left: Value, right: Value) -> bool:
    """ReductStore equality: numbers coerce, strings only equal strings."""
    if isinstance(left, str) or isinstance(right, str):
        return isinstance(left, str) and isinstance(right, str) and left == right
    a, b = _numeric_pair(left, right)
    return a == b


def compare(left: Value, right: Value) -> int | None:
    """-1/0/1 like a partial order, or None when the values have no order (string vs number)."""
    if isinstance(left, str) or isinstance(right, str):
        if not (isinstance(left, str) and isinstance(right, str)):
            return None
        # Rust compares strings by bytes; UTF-8 byte order equals code point order.
        return (left > right) - (left < right)
    a, b = _numeric_pair(left, right)
    if isinstance(a, float) and (math.isnan(a) or math.isnan(b)):
        return None
    return (a > b) - (a < b)


def _is_string(value: Value) -> bool:
    return isinstance(value, str)


def add(left: Value, right: Value) -> Value:
    """``$add`` on two values: numbers sum, strings concatenate."""
    if _is_string(left) or _is_string(right):
        if isinstance(left, str) and isinstance(right, str):
            return left + right
        raise UnprocessableEntity(f"Cannot add {type_name(left)} to {type_name(right)}")
    if isinstance(left, float) or isinstance(right, float):
        return float(left) + float(right)
    return int(left) + int(right)


def subtract(left: Value, right: Value) -> Value:
    """``$sub`` on two values."""
    if isinstance(left, str) and isinstance(right, str):
        raise UnprocessableEntity("Cannot subtract string")
    if isinstance(left, str) or isinstance(right, str):
        other = right if isinstance(left, str) else left
        raise UnprocessableEntity(f"Cannot subtract string from {type_name(other)}")
    if isinstance(left, float) or isinstance(right, float):
        return float(left) - float(right)
    return int(left) - int(right)


def multiply(left: Value, right: Value) -> Value:
    """``$mult`` on two values."""
    if _is_string(left) or _is_string(right):
        raise UnprocessableEntity(f"Cannot multiply {type_name(left)} by {type_name(right)}")
    if isinstance(left, float) or isinstance(right, float):
        return float(left) * float(right)
    return int(left) * int(right)


def divide(left: Value, right: Value) -> float:
    """``$div``: float division."""
    if _is_string(left):
        raise UnprocessableEntity("Cannot divide string")
    if _is_string(right):
        raise UnprocessableEntity("Cannot divide by string")
    divisor = as_float(right)
    if divisor == 0.0:
        raise UnprocessableEntity("Cannot divide by zero")
    return as_float(left) / divisor


def _truncated_divmod(left: int, right: int) -> tuple[int, int]:
    # Rust integer division truncates toward zero; the remainder takes the dividend's sign.
    quotient = abs(left) // abs(right)
    if (left < 0) != (right < 0):
        quotient = -quotient
    return quotient, left - quotient * right


def divide_num(left: Value, right: Value) -> int:
    """``$div_num``: integer division truncated toward zero."""
    if _is_string(left):
        raise UnprocessableEntity("Cannot divide string")
    if _is_string(right):
        raise UnprocessableEntity("Cannot divide by string")
    divisor = as_int(right)
    if divisor == 0:
        raise UnprocessableEntity("Cannot divide by zero")
    return _truncated_divmod(as_int(left), divisor)[0]


def remainder(left: Value, right: Value) -> Value:
    """``$rem``: remainder with the sign of the dividend (Rust ``%``)."""
    if isinstance(left, str) and isinstance(right, str):
        raise UnprocessableEntity("Cannot divide string")
    if _is_string(left) or _is_string(right):
        raise UnprocessableEntity(f"Cannot divide {type_name(left)} by {type_name(right)}")
    if isinstance(left, float) or isinstance(right, float):
        try:
            return math.fmod(float(left), float(right))
        except ValueError:
            return math.nan  # inf % x and x % 0.0 are NaN in Rust; Python raises instead
    if int(right) == 0:
        # Rust would panic here; a clean 422 is the only sane observable behaviour.
        raise UnprocessableEntity("Cannot divide by zero")
    return _truncated_divmod(int(left), int(right))[1]


def absolute(value: Value) -> Value:
    """``$abs``."""
    if isinstance(value, str):
        raise UnprocessableEntity("Cannot calculate absolute value of a string")
    if isinstance(value, float):
        return abs(value)
    return abs(int(value))


def cast(value: Value, type_name_: str) -> Value:
    """``$cast`` to bool / int / float / string / duration."""
    if type_name_ == "bool":
        return as_bool(value)
    if type_name_ == "int":
        return as_int(value)
    if type_name_ == "float":
        return as_float(value)
    if type_name_ == "string":
        return to_string(value)
    if type_name_ == "duration":
        if isinstance(value, str):
            literal = parse_duration_literal(value)
            if literal is not None:
                return literal
        # Numbers are taken as microseconds, the unit every duration is kept in.
        return Duration(_float_to_i64(as_float(value)) if isinstance(value, str) else as_int(value))
    raise UnprocessableEntity(f"Unknown type '{type_name_}'")
