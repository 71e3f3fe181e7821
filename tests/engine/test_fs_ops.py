"""fs_ops: atomic writes leave either the old or the new file, never a tmp or a mix."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from appliance.engine import fs_ops
from backends import durability as backends_durability


def test_fs_ops_atomic_write_replaces_and_leaves_no_tmp(tmp_path: Path) -> None:
    target = tmp_path / "f.bin"
    fs_ops.atomic_write(target, b"one")
    fs_ops.atomic_write(target, b"two-longer")
    assert target.read_bytes() == b"two-longer"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_fs_ops_atomic_write_failure_keeps_old_and_cleans_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f.bin"
    fs_ops.atomic_write(target, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "EIO")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        fs_ops.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_fs_ops_atomic_write_fsyncs_file_and_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd)))
    fs_ops.atomic_write(tmp_path / "x", b"data")
    assert len(calls) == 2  # the tmp file, then the directory
    calls.clear()
    fs_ops.atomic_write(tmp_path / "y", b"data", sync=False)
    assert calls == []


def test_fs_ops_move_picks_a_free_name(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1")
    (tmp_path / "b").write_bytes(b"2")
    dest = tmp_path / "q" / "x"
    assert fs_ops.move(tmp_path / "a", dest) == dest
    assert fs_ops.move(tmp_path / "b", dest) == tmp_path / "q" / "x.1"
    assert dest.read_bytes() == b"1" and (tmp_path / "q" / "x.1").read_bytes() == b"2"


def test_fs_ops_rename_dir_refuses_existing_target(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        fs_ops.rename_dir(tmp_path / "a", tmp_path / "b")
    fs_ops.rename_dir(tmp_path / "a", tmp_path / "c" / "d")
    assert (tmp_path / "c" / "d").is_dir() and not (tmp_path / "a").exists()


def test_fs_ops_truncate_remove_and_tree(tmp_path: Path) -> None:
    path = tmp_path / "t" / "f"
    path.parent.mkdir()
    path.write_bytes(b"0123456789")
    fs_ops.truncate(path, 4)
    assert path.read_bytes() == b"0123"
    assert fs_ops.remove_file(path) and not fs_ops.remove_file(path)
    fs_ops.remove_tree(tmp_path / "t")
    fs_ops.remove_tree(tmp_path / "t")  # missing is fine
    assert not (tmp_path / "t").exists()
    assert fs_ops.free_bytes(tmp_path) > 0


def test_durability_is_the_only_module_calling_fsync_or_rename() -> None:
    """``backends/durability.py`` is the one caller of the durability syscalls in the code base."""
    root = Path(backends_durability.__file__).parent.parent
    allowed = {Path("backends/durability.py")}
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


def test_fs_ops_shares_the_backends_primitives() -> None:
    """The engine re-exports the backends' flush and rename, it does not keep a second copy."""
    assert fs_ops.fsync_fd is backends_durability.fsync_fd
    assert fs_ops.fsync_dir is backends_durability.fsync_dir
    assert fs_ops.replace is backends_durability.replace


def test_fs_ops_write_all_at_offset_and_read_at(tmp_path: Path) -> None:
    """Positioned writes leave the file position alone; reads stop short only at end of file."""
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        fs_ops.write_all(fd, (b"head",))
        fs_ops.write_all(fd, (b"xy", memoryview(b"z")), 10)
        fs_ops.write_all(fd, (b"!",))  # continues after "head", not after "xyz"
        assert fs_ops.read_at(fd, 13, 0) == b"head!\0\0\0\0\0xyz"
        assert fs_ops.read_at(fd, 100, 10) == b"xyz"  # end of file: fewer bytes
        assert list(fs_ops.read_chunks(fd, 5, 0, 2)) == [b"he", b"ad", b"!"]
        assert list(fs_ops.read_chunks(fd, 0, 0)) == []
    finally:
        os.close(fd)


def test_fs_ops_write_all_list_at_offset_uses_one_pwritev_and_resumes_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list of chunks at an offset goes out with ``pwritev`` (no join), in groups of at most
    IOV_MAX buffers, and a short write resumes inside the buffer it cut."""
    chunks = [b"ab", b"", b"cde", bytearray(b"f" * 10), b"g", memoryview(b"h" * 5)]
    expected = b"".join(bytes(c) for c in chunks)
    calls: list[int] = []
    real = os.pwritev

    def short(fd: int, buffers: list[memoryview], offset: int) -> int:
        calls.append(len(buffers))
        first = bytes(buffers[0])
        if len(first) > 1:  # at most half of the first buffer: a short write each time
            return real(fd, [first[: len(first) // 2]], offset)
        return real(fd, buffers, offset)

    monkeypatch.setattr(backends_durability, "IOV_MAX", 3)
    monkeypatch.setattr(os, "pwritev", short)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        fs_ops.write_all(fd, chunks, 4)
        assert fs_ops.read_at(fd, 100, 0) == b"\0" * 4 + expected
        assert calls and max(calls) <= 3
    finally:
        os.close(fd)
    monkeypatch.undo()
    fd = os.open(tmp_path / "g", os.O_RDWR | os.O_CREAT)
    try:
        fs_ops.write_all(fd, chunks, 0)  # the real pwritev, one call
        assert fs_ops.read_at(fd, 100, 0) == expected
    finally:
        os.close(fd)


def test_fs_ops_write_all_refuses_a_pwritev_that_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zero-byte pwritev raises instead of looping forever."""
    monkeypatch.setattr(os, "pwritev", lambda fd, buffers, offset: 0)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError):
            fs_ops.write_all(fd, [b"a", b"b"], 0)
    finally:
        os.close(fd)


def test_fs_ops_write_all_writes_at_most_max_write_bytes_a_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No system call writes more than ``MAX_WRITE_BYTES`` (larger buffered writes take
    page-cache folios from the largest free blocks, slow on a VM): small buffers are grouped
    up to it, a larger one is written a slice at a time, and the bytes land where they
    should, positioned and appended."""
    cap = 10
    monkeypatch.setattr(backends_durability, "MAX_WRITE_BYTES", cap)
    sizes: list[tuple[str, int]] = []
    real_pwritev, real_pwrite, real_write = os.pwritev, os.pwrite, os.write

    def pwritev(fd: int, buffers: list[memoryview], offset: int) -> int:
        sizes.append(("pwritev", sum(map(len, buffers))))
        return real_pwritev(fd, buffers, offset)

    def pwrite(fd: int, data: memoryview, offset: int) -> int:
        sizes.append(("pwrite", len(data)))
        return real_pwrite(fd, data, offset)

    def write(fd: int, data: memoryview) -> int:
        sizes.append(("write", len(data)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "pwritev", pwritev)
    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "write", write)
    chunks = [b"a" * 3, b"b" * 4, b"c" * 5, b"d" * 25, b"e" * 2, b"f" * 10]
    expected = b"".join(chunks)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        fs_ops.write_all(fd, chunks, 0)  # a list: pwritev
        # 3+4, then 5 (5+25 is over), 25 a slice at a time, its last 5 grouped with the 2, 10
        assert [n for _, n in sizes] == [7, 5, 10, 10, 7, 10]
        sizes.clear()
        fs_ops.write_all(fd, (b"x" * 23,), len(expected))  # one buffer: pwrite
        assert sizes == [("pwrite", 10), ("pwrite", 10), ("pwrite", 3)]
        sizes.clear()
        os.lseek(fd, 0, os.SEEK_END)
        fs_ops.write_all(fd, (b"y" * 12,))  # appended: write
        assert sizes == [("write", 10), ("write", 2)]
        monkeypatch.undo()
        assert fs_ops.read_at(fd, 100, 0) == expected + b"x" * 23 + b"y" * 12
    finally:
        os.close(fd)
