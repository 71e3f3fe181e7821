"""fileio: atomic writes leave either the old or the new file, never a tmp or a mix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.engine import fileio
from backends import fileio as backends_fileio


def test_fileio_atomic_write_replaces_and_leaves_no_tmp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    fileio.atomic_write(target, b"one")
    fileio.atomic_write(target, b"two-longer")
    assert target.read_bytes() == b"two-longer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_fileio_atomic_write_failure_keeps_old_and_cleans_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.bin"
    fileio.atomic_write(target, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        fileio.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_fileio_atomic_write_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    fileio.atomic_write(tmp_path / "x", b"data")
    assert len(calls) == 2  # the tmp file, then the directory
    calls.clear()
    fileio.atomic_write(tmp_path / "y", b"data", sync=False)
    assert calls == []


def test_fileio_move_picks_a_free_name(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    dest = tmp_path / "q" / "x"
    assert fileio.move(tmp_path / "a", dest) == dest
    assert fileio.move(tmp_path / "b", dest) == tmp_path / "q" / "x.1"
    assert dest.read_bytes() == b"1" and (tmp_path / "q" / "x.1").read_bytes() == b"2"


def test_fileio_rename_dir_refuses_existing_target(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        fileio.rename_dir(tmp_path / "a", tmp_path / "b")
    fileio.rename_dir(tmp_path / "a", tmp_path / "c" / "d")
    assert (tmp_path / "c" / "d").is_dir() and not (tmp_path / "a").exists()


def test_fileio_truncate_remove_and_tree(tmp_path: Path) -> None:
    path = tmp_path / "t" / "f"
    path.parent.mkdir()
    path.write_bytes(b"0123456789")
    fileio.truncate(path, 4)
    assert path.read_bytes() == b"0123"
    assert fileio.remove_file(path) and not fileio.remove_file(path)
    fileio.remove_tree(tmp_path / "t")
    fileio.remove_tree(tmp_path / "t")  # missing is fine
    assert not (tmp_path / "t").exists()
    assert fileio.free_bytes(tmp_path) > 0


def test_fileio_is_the_only_module_calling_fsync_or_rename() -> None:
    """``backends/fileio.py`` is the one caller of the durability syscalls in the code base."""
    root = Path(backends_fileio.__file__).parent.parent
    allowed = {Path("backends/fileio.py")}
    offenders = []
    for package in ("appliance", "backends", "provisioning"):
        for module in sorted((root / package).rglob("*.py")):
            relative = module.relative_to(root)
            if relative in allowed:
                continue
            text = module.read_text()
            for call in (
                "os.fsync(",
                "os.fdatasync(",
                "os.rename(",
                "os.replace(",
                "os.link(",
                ".rename(",
                ".replace(Path",
            ):
                if call in text:
                    offenders.append(f"{relative}: {call}")
    assert not offenders


def test_fileio_engine_shares_the_backends_primitives() -> None:
    """The engine re-exports the backends' flush and rename, it does not keep a second copy."""
    assert fileio.fsync_fd is backends_fileio.fsync_fd
    assert fileio.fsync_dir is backends_fileio.fsync_dir
    assert fileio.replace is backends_fileio.replace
