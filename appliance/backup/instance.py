"""What a data folder says about its instance: a running server holds it, a restore marked it.

``hold(data)``: a serving instance keeps a *shared* ``flock`` on ``<data>/.instance.lock`` for
its lifetime (the kernel drops it when the process dies, SIGKILL included), so several
processes sharing a folder (PRIMARY/SECONDARY, replicas) can all hold it. ``ensure_stopped``
takes the lock exclusively without waiting: offline tools that rewrite a folder (restore,
``set-read-write --data``) refuse a folder any running instance holds.

``<data>/.restored`` (JSON: backup id, time) marks a folder restored from a backup: the
instance serving it is read-only until ``appliance set-read-write`` removes the marker (as
HyperDex brings a restored cluster up read-only: an operator checks it before writing).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from appliance.engine import fs_ops
from appliance.errors import Conflict

LOCK_NAME = ".instance.lock"
MARKER_NAME = ".restored"


def read_only_message(backup: str) -> str:
    """The 403 message of a write to a restored instance."""
    return f"restored from backup {backup}: read-only until `appliance set-read-write`"


def hold(data_path: Path) -> int | None:
    """Take the shared instance lock of ``data_path``; the fd to keep open (None if impossible)."""
    try:
        fd = os.open(data_path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError:
        return None  # a read-only mount (replica): nothing offline can rewrite it anyway
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        os.close(fd)
        return None
    return fd


def release(fd: int | None) -> None:
    """Drop the instance lock taken by ``hold``."""
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def stopped(data_path: Path) -> Iterator[None]:
    """Hold ``data_path`` exclusively while an offline tool changes it (409 if in use)."""
    if not data_path.exists():
        yield
        return
    fd = os.open(data_path / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(
                f"data folder {data_path} is in use by a running instance; stop it first"
            ) from None
        yield
    finally:
        os.close(fd)


def mark_restored(data_path: Path, backup: str) -> None:
    """Mark ``data_path`` as restored from ``backup`` (read-only until lifted)."""
    data_path.mkdir(parents=True, exist_ok=True)
    body = {"backup": backup, "restored_at": time.time()}
    fs_ops.atomic_write(data_path / MARKER_NAME, json.dumps(body).encode())


def restored_from(data_path: Path) -> str | None:
    """The backup id ``data_path`` was restored from while still read-only, else None."""
    try:
        body = json.loads((data_path / MARKER_NAME).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return "unknown"  # a damaged marker still means "restored": stay read-only
    return str(body.get("backup", "unknown"))


def clear_restored(data_path: Path) -> bool:
    """Lift the read-only mark; whether there was one."""
    return fs_ops.remove_file(data_path / MARKER_NAME, sync=True)
