"""Open-file limits (issue 8 item 1): the soft limit is raised, the fd cache stays under it."""

from __future__ import annotations

import resource
from collections.abc import Iterator

import pytest

from appliance.engine.fd_cache import MIN_CAPACITY, fd_budget
from appliance.server import raise_open_file_limit


@pytest.fixture
def limits() -> Iterator[tuple[int, int]]:
    """The current RLIMIT_NOFILE, restored after the test."""
    saved = resource.getrlimit(resource.RLIMIT_NOFILE)
    yield saved
    resource.setrlimit(resource.RLIMIT_NOFILE, saved)


def test_open_files_server_raises_soft_limit_to_hard(limits: tuple[int, int]) -> None:
    soft, hard = limits
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"hard limit {hard} leaves nothing to raise")
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    raised, _ = raise_open_file_limit()
    assert raised > 256
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised


def test_open_files_cache_budget_is_a_quarter_of_the_soft_limit(limits: tuple[int, int]) -> None:
    _, hard = limits
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
    assert fd_budget() == 64
    resource.setrlimit(resource.RLIMIT_NOFILE, (40, hard))
    assert fd_budget() == MIN_CAPACITY
    plenty = hard if hard != resource.RLIM_INFINITY else 1 << 16
    resource.setrlimit(resource.RLIMIT_NOFILE, (plenty, hard))
    assert fd_budget() == 256  # DEFAULT_CAPACITY: more descriptors buy little
