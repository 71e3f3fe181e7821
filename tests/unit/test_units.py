"""Duration and size literals."""

from __future__ import annotations

import pytest

from appliance.units import GB, GIB, MB, MIB, parse_duration, parse_size


@pytest.mark.parametrize(
    ("literal", "seconds"),
    [
        ("30", 30.0),
        (30, 30.0),
        ("30s", 30.0),
        ("500ms", 0.5),
        ("250us", 0.00025),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1.5s", 1.5),
        (" 2 s ", 2.0),
        ("0", 0.0),
    ],
)
def test_parse_duration_accepts_documented_forms(literal: str | int, seconds: float) -> None:
    assert parse_duration(literal) == pytest.approx(seconds)


@pytest.mark.parametrize("literal", ["", "abc", "5 parsecs", "-1", "1h30", "s", True])
def test_parse_duration_rejects_with_accepted_form(literal: str) -> None:
    with pytest.raises(ValueError, match="30s, 500ms"):
        parse_duration(literal)


@pytest.mark.parametrize(
    ("literal", "size"),
    [
        ("1048576", 1048576),
        (1048576, 1048576),
        ("64MB", 64 * MB),
        ("64mb", 64 * MB),
        ("64MiB", 64 * MIB),
        ("1GiB", GIB),
        ("1GB", GB),
        ("10G", 10 * GB),
        ("512B", 512),
        ("1.5KB", 1500),
    ],
)
def test_parse_size_accepts_decimal_and_binary_units(literal: str | int, size: int) -> None:
    assert parse_size(literal) == size


@pytest.mark.parametrize("literal", ["", "lots", "64XB", "-5", "0.5B", "1.5"])
def test_parse_size_rejects_with_accepted_form(literal: str) -> None:
    with pytest.raises(ValueError, match="64MB"):
        parse_size(literal)
