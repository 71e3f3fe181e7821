"""A hook for the app to answer a request in Hypercorn's HTTP/1 protocol, before h11 and
Hypercorn's stream see it.

``make_early_handle`` wraps ``H11Protocol.handle``: bytes read while the connection has no
request in flight (no stream) go first to the answer the app registered under
``EARLY_KEY`` in its ``extensions`` (Quart's; Hypercorn's ``ASGIWrapper`` holds the app as
``.app``), a coroutine function ``(protocol, data) -> bool``. True means it took the bytes
(``api.protocol_lane``); False, that it left everything untouched, and Hypercorn's own
``handle`` runs. An app without one (the benchmark ceilings, other apps) costs one lookup
per connection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from hypercorn.events import RawData

EARLY_KEY = "appliance.early_answer"
Handle = Callable[[Any, Any], Awaitable[None]]
Answer = Callable[[Any, bytes], Awaitable[bool]]
_UNSET = object()


def early_answer(protocol: Any) -> Answer | None:
    """The answer the protocol's app registered, looked up once per connection."""
    found = protocol.__dict__.get("_appliance_early", _UNSET)
    if found is _UNSET:
        extensions = getattr(getattr(protocol.app, "app", None), "extensions", None)
        found = extensions.get(EARLY_KEY) if isinstance(extensions, dict) else None
        protocol._appliance_early = found
    return found  # type: ignore[return-value]


def make_early_handle(stock: Handle) -> Handle:
    """``H11Protocol.handle`` that offers bytes read between requests to the app first."""

    async def handle(self: Any, event: Any) -> None:
        """``H11Protocol.handle``: the app's early answer first, for bytes between requests."""
        if type(event) is RawData and self.stream is None:
            answer = early_answer(self)
            if answer is not None and await answer(self, event.data):
                return
        await stock(self, event)

    handle.stock = stock  # type: ignore[attr-defined]
    return handle
