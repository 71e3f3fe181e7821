"""Fixtures of the hot-copy tests: the in-process app harness of the API tier."""

from tests.api.conftest import harness_factory  # noqa: F401 - re-exported fixture
