"""One atomic file write for every checkpoint the project saves (standard library only)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from io import BufferedWriter
from pathlib import Path

__all__ = ["atomic_write"]


@contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[BufferedWriter]:
    """A binary file that replaces ``path`` only once the ``with`` block has finished writing it.

    The data goes to a temporary file in the same directory, is flushed to disk, and is moved over ``path``
    with ``os.replace`` (atomic on POSIX and Windows), so a crash or an exception mid-write leaves either the
    old file or none, never a truncated one; the temporary file is removed on failure. The file gets the
    permissions of an ordinary new file (``0o666`` less the process umask), unlike ``tempfile.mkstemp``'s
    ``0o600``. Parent directories are created.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
