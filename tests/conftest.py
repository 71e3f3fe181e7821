"""Fixtures shared by every test tier."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Strip RS_* variables so a developer's shell cannot change what a test sees."""
    for name in list(os.environ):
        if name.upper().startswith("RS_"):
            monkeypatch.delenv(name, raising=False)
    yield
