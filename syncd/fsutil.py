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


def read_fd(fd: int, size: int | None = None) -> bytes:
    """``size`` bytes from ``fd`` (fewer if it ends first), or all that is left when
    ``size`` is None. With the size known, a whole small file takes one system call."""
    parts = []
    left = size
    while left is None or left > 0:
        part = os.read(fd, left if left is not None else 1 << 20)
        if not part:
            break
        parts.append(part)
        if left is not None:
            left -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)
