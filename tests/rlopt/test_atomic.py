"""rlopt._atomic.atomic_write: all or nothing, no temporary file left, the permissions of an ordinary new file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rlopt._atomic import atomic_write


def test_the_file_appears_whole_and_nothing_else_is_left(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ckpt.bin"
    with atomic_write(path) as f:
        f.write(b"x" * 1000)
        assert not path.exists()  # nothing at the target until the write has finished
    assert path.read_bytes() == b"x" * 1000
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.bin"]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk"), atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.bin"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_the_file_follows_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        with atomic_write(tmp_path / "ckpt.bin") as f:
            f.write(b"data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "ckpt.bin").stat().st_mode) == mode
