"""Small file-system helpers shared by the outbox, the capture files and the receiver's
store. Standard library only: robot programs import the outbox."""

from __future__ import annotations

import contextlib
import os


def fsync_dir(path: str | os.PathLike[str], *, strict: bool = True) -> None:
    """Make a folder's entries (a file created or renamed in it) durable.

    ``strict=False`` ignores failures, for callers to whom it is a best effort (some file
    systems refuse to open or fsync a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        if strict:
            raise
        return
    try:
        os.fsync(fd)
    except OSError:
        if strict:
            raise
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def read_fd(fd: int, limit: int = -1) -> bytes:
    """What is left to read from ``fd``, up to ``limit`` bytes (all when negative)."""
    parts = []
    left = limit
    while left != 0:
        part = os.read(fd, left if left > 0 else 1 << 20)
        if not part:
            break
        parts.append(part)
        left -= len(part) if left > 0 else 0
    return parts[0] if len(parts) == 1 else b"".join(parts)
