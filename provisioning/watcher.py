"""Watching the provisioning files: call back when their content changes.

``watch`` is only the loop (STYLE 8): it waits for file-system events with watchfiles and calls
``on_change`` when the content fingerprint of the provisioning files differs from the last one.
The step it drives is ``Provisioner.reload_once``, which tests call directly with the loop off.

Why the parent folder and a content fingerprint rather than the file itself: editors save by
writing a new file and renaming it over the old one, and Kubernetes swaps a ``..data`` symlink,
so an inotify watch on the file would go stale; events in the folder plus "did the bytes change"
catch all of those and ignore unrelated neighbours. Why also a timeout poll: a change made
between the boot load and the moment the watch is established, or on a file system without
inotify, is still picked up within ``poll_interval_s``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

from watchfiles import awatch

from provisioning.yaml_loader import fingerprint

log = logging.getLogger(__name__)

DEFAULT_DEBOUNCE_MS = 200  # editors write in bursts; 200 ms keeps us well inside the 2 s promise
DEFAULT_POLL_INTERVAL_S = 1.0
RETRY_DELAY_S = 1.0


async def watch(
    path: Path,
    on_change: Callable[[], Awaitable[object] | object],
    *,
    stop_event: asyncio.Event,
    initial_fingerprint: str | None = None,
    debounce_ms: int = DEFAULT_DEBOUNCE_MS,
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S,
    force_polling: bool | None = None,
) -> None:
    """Call ``on_change`` whenever the provisioning at ``path`` changes, until ``stop_event``."""
    if initial_fingerprint is None:
        initial_fingerprint = await asyncio.to_thread(fingerprint, path)
    last = initial_fingerprint
    while not stop_event.is_set():
        # File reads go to a thread: an SD card can stall, the event loop must not.
        is_dir = await asyncio.to_thread(path.is_dir)
        folder = path if is_dir else path.parent
        try:
            async for _changes in awatch(
                folder,
                watch_filter=None,  # the fingerprint decides what matters
                debounce=debounce_ms,
                step=50,
                stop_event=stop_event,
                rust_timeout=int(poll_interval_s * 1000),
                yield_on_timeout=True,
                recursive=is_dir,  # a folder: its subfolders (k8s ..data); a file: not all of /etc
                force_polling=force_polling,
            ):
                current = await asyncio.to_thread(fingerprint, path)
                if current == last:
                    continue
                last = current
                outcome = on_change()
                if inspect.isawaitable(outcome):
                    await outcome
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the folder vanished, inotify limit...: keep trying
            log.warning("provisioning watch on %s failed (%s); retrying", folder, exc)
            try:
                await asyncio.wait_for(stop_event.wait(), RETRY_DELAY_S)
            except TimeoutError:
                pass
