"""The files behind uploads: what the uploader learns of a queued file before its
upload, and what becomes of the file after the server's ack (deleted, kept as synced, or
left as it is when it changed meanwhile)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

from syncd.capture_file import CaptureReader
from syncd.errors import SourceError
from syncd.fsutil import read_fd
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.outbox import KeptFile
from syncd.sink_store_items import forwarded_metadata, read_sidecar, sidecar_file

# --- before the upload ----------------------------------------------------------------


@dataclass
class Source:
    """What one look at a queued file learned before its upload."""

    st: os.stat_result
    origin: ds.UploadMetadata | None  # what a receiver recorded, when forwarding its store
    sidecar: bool  # a receiver's sidecar lies beside it (deleted with it)
    content: bytes | None = None  # the whole of a small arbitrary file
    reader: CaptureReader | None = None  # an open capture file


def open_source(path: str, kind: str, small_bytes: int) -> Source:
    """Stat, look for a receiver's sidecar, and read or open the file: at most one thread
    hop, and few system calls (this runs for every small file). FileNotFoundError passes
    through; other local I/O errors become SourceError, so they are never mistaken for
    the network's."""
    with local_io(path):
        sidecar = read_sidecar(path)
        origin = None if not sidecar else forwarded_metadata(sidecar)
        if kind != "file":
            st = os.stat(path)
            source = Source(st, origin, sidecar is not None)
            source.reader = CaptureReader(path)
            return source
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            source = Source(st, origin, sidecar is not None)
            if st.st_size <= small_bytes:
                # What grows meanwhile is seen after the upload, and sent again then.
                source.content = read_fd(fd, st.st_size)
                if len(source.content) != st.st_size:
                    raise SourceError(f"{path}: shrank while being read")
        finally:
            os.close(fd)
    return source


@contextlib.contextmanager
def local_io(path: str) -> Iterator[None]:
    """Local I/O errors while reading ``path`` raised as SourceError (FileNotFoundError
    passes through): the uploader retries them, never taking them for the network's."""
    try:
        yield
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SourceError(f"{path}: cannot read: {exc.strerror or exc}") from None


# --- after the server's ack ------------------------------------------------------------


# What became of an uploaded file: None (deleted, or kept as synced), its new stat (it
# changed since it was read: left as it is), or why it could not be deleted.
Outcome = os.stat_result | OSError | None


@dataclass(frozen=True)
class Close:
    """A file to close after its upload, unless it changed since it was read: deleted,
    with a receiver's sidecar beside it, or with ``keep``, left on disk as synced."""

    id: int
    path: str
    size: int
    mtime_ns: int
    sidecar: bool
    keep: bool = False


def remove_file(path: str) -> None:
    """Delete ``path`` if it is still there."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def changed_since(path: str, size: int, mtime_ns: int) -> os.stat_result | None:
    """After the server's ack: the file's new stat if it changed meanwhile, else None
    (also when it is gone: it was removed after we read all of it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st if (st.st_size, st.st_mtime_ns) != (size, mtime_ns) else None


def close_files(closes: list[Close]) -> tuple[list[int], list[KeptFile], dict[int, Outcome]]:
    """Close each uploaded file (see :class:`Close`) unless it changed since it was read.
    Returns the ids of the files deleted, the files kept, and, by id, the new stat of
    each changed file and the error of each that could not be deleted."""
    deleted: list[int] = []
    kept: list[KeptFile] = []
    outcomes: dict[int, Outcome] = {}
    for close in closes:
        try:
            changed = changed_since(close.path, close.size, close.mtime_ns)
            if changed is None and not close.keep:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(close.path)
        except OSError as exc:
            if not close.keep:
                outcomes[close.id] = exc
                continue
            changed = None  # kept, and cannot be looked at now: it went as it was read
        if changed is not None:
            outcomes[close.id] = changed
        elif close.keep:
            kept.append(KeptFile(close.id, close.path, close.size, close.mtime_ns))
        else:
            deleted.append(close.id)
            if close.sidecar:
                # The data is gone; a sidecar left behind is hidden, and a receiver's own
                # cleanup removes it.
                with contextlib.suppress(OSError):
                    os.unlink(sidecar_file(close.path))
    return deleted, kept, outcomes


def close_more(
    done: tuple[list[int], list[KeptFile], dict[int, Outcome]], closes: list[Close]
) -> tuple[list[int], list[KeptFile], dict[int, Outcome]]:
    """``done`` (the ids to ack, the files kept, the outcomes) with ``closes`` closed too."""
    closed, kept, outcomes = close_files(closes)
    return done[0] + closed, done[1] + kept, done[2] | outcomes
