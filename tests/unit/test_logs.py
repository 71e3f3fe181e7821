"""The log handler follows ``sys.stderr`` when it is replaced (pytest's capture, an embedder)."""

from __future__ import annotations

import io
import logging
import sys

from appliance import logs


def test_records_go_to_the_current_stderr_after_the_old_one_is_closed(monkeypatch) -> None:
    """A record logged after ``sys.stderr`` was swapped and the old one closed is written to the
    new one, not lost with a "Logging error" traceback."""
    logs.stop()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    first, second = io.StringIO(), io.StringIO()
    try:
        monkeypatch.setattr(sys, "stderr", first)
        logs.configure()
        logging.getLogger("t").warning("one")
        logs.stop()  # flushes the queue
        logs.configure()  # a fresh listener, its handler made while sys.stderr is `first`
        assert "one" in first.getvalue()
        monkeypatch.setattr(sys, "stderr", second)
        first.close()
        logging.getLogger("t").warning("two")
        logs.stop()
        assert "two" in second.getvalue()
        assert "Logging error" not in second.getvalue()
    finally:
        logs.stop()
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
