"""``<data>/.in-use``: servers share it, a check takes it alone, the holder is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.inuse import FolderInUse, InUseLock


def test_shared_holders_exclude_an_exclusive_one_and_are_named(tmp_path: Path) -> None:
    first, second, check = InUseLock(tmp_path), InUseLock(tmp_path), InUseLock(tmp_path)
    assert first.acquire(exclusive=False, who="server A")
    assert second.acquire(exclusive=False, who="server B")  # a replica next to its primary
    with pytest.raises(FolderInUse, match="server B"):
        check.acquire(exclusive=True, who="check")
    first.release()
    with pytest.raises(FolderInUse):
        check.acquire(exclusive=True, who="check")
    second.release()
    assert check.acquire(exclusive=True, who="check --repair")
    with pytest.raises(FolderInUse, match="check --repair"):
        first.acquire(exclusive=False, who="server A")
    check.release()
    check.release()  # idempotent


def test_taking_it_again_keeps_one_lock(tmp_path: Path) -> None:
    lock = InUseLock(tmp_path)
    assert lock.acquire(exclusive=False, who="first open")
    assert lock.acquire(exclusive=False, who="re-open after a rejoin")
    lock.release()
    assert InUseLock(tmp_path).acquire(exclusive=True, who="check")  # nothing left behind


def test_read_only_folder_without_the_file_is_not_marked(tmp_path: Path) -> None:
    missing = tmp_path / "not-there"
    assert InUseLock(missing).acquire(exclusive=False, who="replica") is False
