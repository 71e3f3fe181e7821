"""The backend contract against the in-memory reference backend."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from backends.memory import MemoryBackend
from tests.backends.contract import BackendContract


class TestMemoryBackend(BackendContract):
    """Memory: the reference semantics."""

    @pytest.fixture
    def backend(self) -> Iterator[MemoryBackend]:
        yield MemoryBackend()
