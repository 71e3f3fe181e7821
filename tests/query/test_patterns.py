"""Entry selection patterns of multi-entry queries (spec §5.4)."""

from __future__ import annotations

import pytest

from appliance.engine.names import is_meta_entry
from appliance.query.patterns import matches, select_entries

NAMES = [
    "$meta",
    "a",
    "a/$meta",
    "a/x",
    "a/x/y",
    "a/x/y/$meta",
    "a/x/yz",
    "a/x/y/z",
    "b",
    "b-1",
    "sensor",
    "sensor/temp",
    "sensor/temp/$meta",
]
NON_META = sorted(n for n in NAMES if not is_meta_entry(n))


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        (None, NON_META),
        ([], NON_META),
        (["*"], NON_META),
        (["*", "a/$meta"], sorted([*NON_META, "a/$meta"])),
        (["a"], ["a"]),
        (["a/$meta"], ["a/$meta"]),
        (["$meta"], ["$meta"]),
        (["missing"], []),
        (["b*"], ["b", "b-1"]),
        (["sen*"], ["sensor", "sensor/temp"]),  # prefix match crosses '/' but never $meta
        (["a/x/y*"], ["a/x/y", "a/x/yz"]),  # spec example: not a/x/y/$meta
        (["/a/x/y*"], ["a/x/y", "a/x/yz"]),  # leading '/' stripped
        (["a/*"], ["a/x"]),
        (["a/*/y"], ["a/x/y"]),
        (["a/**"], ["a/x", "a/x/y", "a/x/y/z", "a/x/yz"]),
        (["a/**/z"], ["a/x/y/z"]),
        (["**/y"], ["a/x/y"]),
        (["**"], NON_META),
        (["a", "b"], ["a", "b"]),
        (["a", "a"], ["a"]),
        (["!a"], [n for n in NON_META if n != "a"]),
        (["*", "!sensor*"], [n for n in NON_META if not n.startswith("sensor")]),
        (["a/**", "!a/x/y"], ["a/x", "a/x/y/z", "a/x/yz"]),
        (["a/$meta", "!a/$meta"], []),
        (["a/x/*", "!a/x/*z"], ["a/x/y"]),
        (["a/x/*", "!*z"], ["a/x/y", "a/x/yz"]),  # a one-segment glob never matches a/x/yz
        (["a/**/y"], ["a/x/y"]),
    ],
)
def test_select_entries(patterns: list[str] | None, expected: list[str]) -> None:
    assert select_entries(patterns, NAMES) == expected


def test_select_entries_sorts_and_accepts_any_iterable() -> None:
    assert select_entries(None, iter(["c", "a", "b"])) == ["a", "b", "c"]
    assert select_entries(["x"], []) == []


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("a/x", "a/x", True),
        ("a/x", "a/x/y", False),
        ("*", "anything/at/all", True),
        ("*", "a/$meta", False),
        ("a*b", "a-long-b", True),  # no '/', but does not end with '*': one segment glob
        ("a*b", "a/b", False),
        ("a/*x*", "a/abxcd", True),
        ("a/b.c", "a/bxc", False),  # only '*' is special
        ("a/**/**/b", "a/b", True),
        ("a/**", "a", False),
        ("**", "a", True),
        ("a*b*", "a-b-c", True),  # more than one '*': a one-segment glob, not a prefix
        ("a*b*", "a-b/c", False),
        ("**/$meta", "a/$meta", False),  # $meta only by exact name
    ],
)
def test_matches(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("$meta", True), ("a/$meta", True), ("a/$meta/b", False), ("a$meta", False), ("a", False)],
)
def test_is_meta_entry(name: str, expected: bool) -> None:
    assert is_meta_entry(name) is expected
