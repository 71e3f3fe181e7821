"""The in-process fixtures of ``tests/api`` (one definition, shared)."""

from tests.api.conftest import h, harness_factory  # noqa: F401 - pytest finds them here
