"""Name validation: the gate between client names and filesystem paths."""

from __future__ import annotations

import pytest

from appliance.engine.names import (
    BUCKET_NAME_MESSAGE,
    ENTRY_CHARS_MESSAGE,
    ENTRY_EMPTY_MESSAGE,
    is_meta_entry,
    is_same_or_descendant,
    parents,
    validate_bucket_name,
    validate_entry_name,
)
from appliance.errors import UnprocessableEntity


@pytest.mark.parametrize("name", ["b", "bucket-1", "A_b-9", "x" * 200])
def test_names_valid_bucket(name: str) -> None:
    assert validate_bucket_name(name) == name


@pytest.mark.parametrize(
    "name", ["", "..", ".", "a/b", "/abs", "a b", "$system", "a\x00b", "ä", "a.b", "a\\b"]
)
def test_names_invalid_bucket_is_422_with_reductstore_message(name: str) -> None:
    with pytest.raises(UnprocessableEntity) as excinfo:
        validate_bucket_name(name)
    assert excinfo.value.message == BUCKET_NAME_MESSAGE


@pytest.mark.parametrize("name", ["e", "a/b/c", "a-1/b_2", "$meta", "a/$meta", "a/b/$meta"])
def test_names_valid_entry(name: str) -> None:
    assert validate_entry_name(name) == name


@pytest.mark.parametrize("name", ["", "/a", "a/", "a//b", "/"])
def test_names_entry_with_empty_segments_is_422(name: str) -> None:
    with pytest.raises(UnprocessableEntity) as excinfo:
        validate_entry_name(name)
    assert excinfo.value.message == ENTRY_EMPTY_MESSAGE


@pytest.mark.parametrize(
    "name", ["..", "a/../b", "a/.", ".wal", "a b", "a\x00", "$meta/a", "$x", "a/$meta/$meta", "ü"]
)
def test_names_entry_with_bad_characters_is_422(name: str) -> None:
    with pytest.raises(UnprocessableEntity) as excinfo:
        validate_entry_name(name)
    assert excinfo.value.message == ENTRY_CHARS_MESSAGE


def test_names_helpers() -> None:
    assert parents("a/b/c") == ["a", "a/b"]
    assert parents("a") == []
    assert is_meta_entry("$meta") and is_meta_entry("a/$meta") and not is_meta_entry("meta")
    assert is_same_or_descendant("a/b", "a") and is_same_or_descendant("a", "a")
    assert not is_same_or_descendant("ab", "a")
