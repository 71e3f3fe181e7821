"""Logging configuration, done once at the entrypoint (library modules never add handlers).

Records go through a ``QueueHandler`` to a ``QueueListener`` thread that writes to stderr, so a
slow terminal or journald never stalls the event loop.
"""

from __future__ import annotations

import atexit
import logging
import logging.handlers
import queue
import sys

from appliance.settings import LogLevel, Settings

_LEVELS = {
    LogLevel.TRACE: logging.DEBUG,
    LogLevel.DEBUG: logging.DEBUG,
    LogLevel.INFO: logging.INFO,
    LogLevel.WARN: logging.WARNING,
    LogLevel.WARNING: logging.WARNING,
    LogLevel.ERROR: logging.ERROR,
}
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_listener: logging.handlers.QueueListener | None = None


class _StderrHandler(logging.StreamHandler):
    """A stream handler writing to whatever ``sys.stderr`` is when a record is written.

    Why: a handler bound to the ``sys.stderr`` of the moment keeps writing to that object after
    it is replaced and closed (an embedding program, or pytest's capture between tests), and the
    records of background threads are then lost with a "Logging error" traceback."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102 - the property is the point
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def configure(level: LogLevel = LogLevel.INFO) -> None:
    """Route every log record through a queue to stderr at ``level``; idempotent."""
    global _listener
    root = logging.getLogger()
    if _listener is not None:
        root.setLevel(_LEVELS[level])
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    stream = _StderrHandler()
    stream.setFormatter(logging.Formatter(FORMAT))
    _listener = logging.handlers.QueueListener(records, stream, respect_handler_level=False)
    _listener.start()
    atexit.register(stop)
    for handler in list(root.handlers):
        root.removeHandler(handler)
    root.addHandler(logging.handlers.QueueHandler(records))
    root.setLevel(_LEVELS[level])
    # Hypercorn's per-request access log would dominate the output and cost time per request.
    logging.getLogger("hypercorn.access").setLevel(logging.WARNING)


def stop() -> None:
    """Flush queued records and stop the listener thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


def configure_from(settings: Settings) -> None:
    """Configure logging at the level ``RS_LOG_LEVEL`` asks for."""
    configure(settings.log_level)
