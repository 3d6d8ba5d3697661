"""The sink's on-disk store: layout, path safety, atomic writes, free-space checks.

Layout::

    <store>/<part_id>/<component_type>/<component_name>/<method_name>/
        2026-12-03T16_20_01.123456Z_<id>.capture               sensor data (tabular or binary)
        .2026-12-03T16_20_01.123456Z_<id>.capture.meta.json    its sidecar
        2026-12-03T16_20_02.654321Z_<id>_notes.txt             an uploaded file, original bytes
        .2026-12-03T16_20_02.654321Z_<id>_notes.txt.meta.json  its sidecar

- Each folder is the upload's value made safe: every character other than a letter, a digit
  or one of ``-_.:+@,~`` becomes ``_``, a leading ``.`` becomes ``_``, an empty value
  becomes ``_`` and a long one is cut at 100 bytes. (``=`` is replaced so that a component
  never poses as a ``tag=`` or ``dataset=`` folder to a syncd that forwards the store.)
- Names start with the UTC time the sink received the upload (``:`` written as ``_``)
  and the upload's id (32 hex digits), which is the ``binary_data_id`` (and ``file_id``)
  returned to the client.
- Sensor data is stored in Viam's capture-file format: a uvarint-length-prefixed
  ``DataCaptureMetadata`` header (component type, name, method, data type,
  method_parameters, tags, file_extension, mime_type from the upload), then the
  ``SensorData`` readings as received. A tabular ``DataCaptureUpload`` becomes one file
  holding all its readings; every binary reading (``DataCaptureUpload`` or
  ``StreamingDataCaptureUpload``) becomes its own file holding one ``SensorData`` whose
  ``binary`` is the payload, so its times and annotations are kept. The store can
  therefore be the ``capture_dir`` of another syncd that forwards it onward unchanged.
  A streamed reading's length is only known at its end, so it is spooled to a temp file
  and framed on commit: for a moment it takes its size twice on disk.
- A ``FileUpload`` keeps its original bytes so a person can open it. It is named
  ``<time>_<id>_<basename of file_name>``, plus ``file_extension`` when the name lacks it.
- Every data file has a hidden sidecar ``.<data file name>.meta.json`` holding all the
  upload's metadata (its format: :mod:`syncd.sink_store_items`).
- A name starting with ``.`` is never data: sidecars, and ``.tmp-*`` files being written.
  A data file appears only by an atomic rename (after fsync, and after its sidecar), and
  the folder is fsynced, so a file that looks complete is complete. ``.tmp-*`` leftovers
  of a killed sink and sidecars whose data file is gone (a forwarding syncd removed it)
  are swept by :meth:`Store.sweep`. One sink process per store.

Reading a store back (:func:`~syncd.sink_store_items.iter_store`) and the sidecar format
live in :mod:`syncd.sink_store_items`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

from syncd.errors import StorageLimitError, SyncdError
from syncd.fsutil import fsync_dir
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink_store_items import (
    CAPTURE_SUFFIX,
    SIDECAR_SUFFIX,
    TEMP_PREFIX,
    TIME_FORMAT,
    Kind,
    StoredItem,
    capture_header,
    delimited,
    serialize,
    sidecar_json,
    uvarint,
)

log = logging.getLogger("syncd.sink")

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024**3
DEFAULT_MIN_FREE_BYTES = 64 * 1024**2

_MAX_COMPONENT_BYTES = 100
_MAX_EXTENSION_CHARS = 20
_UNSAFE_CHARS = re.compile(r"[^\w\-.:+@,~]")
_UNSAFE_EXT_CHARS = re.compile(r"[^A-Za-z0-9_+\-.]")
_NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_COPY_CHUNK = 1024 * 1024


# --- path safety ----------------------------------------------------------------------


def safe_component(value: str) -> str:
    """``value`` as one harmless path component (see the module docstring for the rules)."""
    text = _UNSAFE_CHARS.sub("_", value)
    if text.startswith("."):
        text = "_" + text[1:]
    text = _cut_utf8(text, _MAX_COMPONENT_BYTES)
    return text or "_"


def safe_extension(ext: str) -> str:
    """A file extension with its leading dot, or "" (Python SDK callers may omit the dot)."""
    ext = ext.strip()
    if not ext:
        return ""
    body = _UNSAFE_EXT_CHARS.sub("_", ext.lstrip("."))[:_MAX_EXTENSION_CHARS]
    return f".{body}" if body.strip("._") else ""


def file_basename(file_name: str) -> str:
    """The last part of a robot-side path, whichever separator the robot used."""
    return re.split(r"[/\\]", file_name)[-1]


def _cut_utf8(text: str, limit: int) -> str:
    return text.encode()[:limit].decode(errors="ignore")


# --- writing --------------------------------------------------------------------------


def _utcnow() -> datetime:
    return datetime.now(UTC)


@contextlib.contextmanager
def _no_room_is_a_limit() -> Iterator[None]:
    """Turn "disk full" OS errors into the error the sink reports as RESOURCE_EXHAUSTED."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _NO_ROOM:
            raise StorageLimitError(f"store is full: {exc.strerror}") from exc
        raise


class Store:
    """The store under ``root``: hands out :class:`PendingUpload` writers and unary writes.

    ``max_upload_bytes`` bounds one upload's payload; ``min_free_bytes`` is the free space
    every write leaves on the store's filesystem. Both refusals raise
    :class:`~syncd.errors.StorageLimitError` and leave nothing behind. Methods block
    (file I/O, fsync): call them from a worker thread in async code.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
        min_free_bytes: int = DEFAULT_MIN_FREE_BYTES,
    ) -> None:
        self.root = Path(root).absolute()
        self.max_upload_bytes = max_upload_bytes
        self.min_free_bytes = min_free_bytes

    # lifecycle

    def open(self) -> None:
        """Create the store if needed and sweep what a killed sink left behind."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweep(temp_files=True)

    def sweep(self, *, temp_files: bool = False, grace_s: float = 60.0) -> int:
        """Remove sidecars whose data file is gone (and, with ``temp_files``, every ``.tmp-*``).

        ``temp_files`` is for start-up only, when no upload of this store is in flight.
        A sidecar younger than ``grace_s`` is kept: its data file is renamed just after it.
        Returns the number of files removed.
        """
        removed = 0
        now = time.time()
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            names = set(filenames)
            for name in filenames:
                path = Path(dirpath, name)
                stale = False
                if name.startswith(TEMP_PREFIX):
                    stale = temp_files
                elif name.startswith(".") and name.endswith(SIDECAR_SUFFIX):
                    data_name = name[1 : -len(SIDECAR_SUFFIX)]
                    if data_name not in names:
                        with contextlib.suppress(FileNotFoundError):
                            stale = now - path.stat().st_mtime > grace_s
                if stale:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
                        removed += 1
        if removed:
            log.info("swept %d leftover file(s) from %s", removed, self.root)
        return removed

    # space

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def ensure_room(self, nbytes: int) -> None:
        """Refuse a write of ``nbytes`` that would leave less than ``min_free_bytes`` free."""
        free = self.free_bytes()
        if free - nbytes < self.min_free_bytes:
            raise StorageLimitError(
                f"store is full: {free} bytes free, {nbytes} more requested, "
                f"{self.min_free_bytes} kept free (min_free_bytes)"
            )

    def check_upload_size(self, nbytes: int) -> None:
        if nbytes > self.max_upload_bytes:
            raise StorageLimitError(
                f"upload exceeds max_upload_bytes ({self.max_upload_bytes} bytes)"
            )

    # writers

    def begin_file(self, um: ds.UploadMetadata) -> PendingUpload:
        """Start storing a ``FileUpload``: feed chunks to ``write``, then ``commit``."""
        return PendingUpload(self, "file", "FileUpload", um, None)

    def begin_binary(
        self, um: ds.UploadMetadata, sensor_metadata: ds.SensorMetadata | None
    ) -> PendingUpload:
        """Start storing a ``StreamingDataCaptureUpload`` reading of unknown length."""
        return PendingUpload(self, "binary", "StreamingDataCaptureUpload", um, sensor_metadata)

    def put_binary(self, um: ds.UploadMetadata, reading: ds.SensorData) -> StoredItem:
        """Store one binary ``DataCaptureUpload`` reading as its own capture file."""
        self.check_upload_size(len(reading.binary))
        sensor_metadata = reading.metadata if reading.HasField("metadata") else None
        pending = PendingUpload(self, "binary", "DataCaptureUpload", um, sensor_metadata)
        try:
            pending.put_reading(reading)
            return pending.commit()
        finally:
            pending.abort()

    def put_tabular(self, um: ds.UploadMetadata, readings: Sequence[ds.SensorData]) -> StoredItem:
        """Store the readings of one tabular ``DataCaptureUpload`` as one capture file."""
        pending = PendingUpload(self, "tabular", "DataCaptureUpload", um, None)
        try:
            pending.put_readings(readings)
            return pending.commit()
        finally:
            pending.abort()

    def _item_dir(self, um: ds.UploadMetadata) -> Path:
        parts = [
            safe_component(v)
            for v in (um.part_id, um.component_type, um.component_name, um.method_name)
        ]
        root = self.root.resolve(strict=True)
        path = self.root
        for part in parts:
            path = path / part
            # Sanitising already rules out "..", separators and hidden names; this also
            # catches a symlink planted inside the store, before anything is made through it.
            if not path.resolve().is_relative_to(root):
                raise SyncdError(f"refusing to write outside the store: {path} leads out of it")
            if not path.is_dir():
                with contextlib.suppress(FileExistsError):
                    path.mkdir()
                    # the new folder's entry must survive a power cut like the file in it
                    fsync_dir(path.parent)
        return path


class PendingUpload:
    """One upload being written: a hidden temp file that becomes a data file on commit.

    ``abort`` (safe to call at any time, also after ``commit``) removes every temp file.
    """

    def __init__(
        self,
        store: Store,
        kind: Kind,
        rpc: str,
        um: ds.UploadMetadata,
        sensor_metadata: ds.SensorMetadata | None,
    ) -> None:
        self.store = store
        self.kind: Kind = kind
        self.rpc = rpc
        self.id = uuid.uuid4().hex
        self.received_at = _utcnow()
        self.upload_metadata = um
        self.sensor_metadata = sensor_metadata
        self.size = 0
        self.readings = 0
        self._sha = hashlib.sha256()
        self._lock = threading.Lock()
        self._state = "open"
        self.dir = store._item_dir(um)
        stamp = self.received_at.strftime(TIME_FORMAT)
        if kind == "file":
            ext = safe_extension(um.file_extension)
            base = file_basename(um.file_name)
            stem = safe_component(base) if base else ""
            name = f"{stamp}_{self.id}" + (f"_{stem}" if stem else "")
            if ext and not name.lower().endswith(ext.lower()):
                name += ext
        else:
            name = f"{stamp}_{self.id}{CAPTURE_SUFFIX}"
        self.name = name
        self._temp = self.dir / f"{TEMP_PREFIX}{self.id}.data"
        # binary readings of unknown length are spooled, then framed at commit
        self._spool = (
            self.dir / f"{TEMP_PREFIX}{self.id}.spool" if rpc.startswith("Stream") else None
        )
        self._temp_sidecar = self.dir / f"{TEMP_PREFIX}{self.id}.meta"
        with _no_room_is_a_limit():
            self._file: IO[bytes] | None = open(self._spool or self._temp, "xb")  # noqa: SIM115

    @property
    def path(self) -> Path:
        """Where the data file will be once committed."""
        return self.dir / self.name

    def write(self, data: bytes) -> None:
        """Append payload bytes (a file chunk or a streamed binary chunk)."""
        assert self._file is not None and self.kind != "tabular"
        self.store.check_upload_size(self.size + len(data))
        self.store.ensure_room(len(data))
        with _no_room_is_a_limit():
            self._file.write(data)
        self._sha.update(data)
        self.size += len(data)

    def put_reading(self, reading: ds.SensorData) -> None:
        """Write the whole capture file of one binary reading that is already in memory."""
        assert self._file is not None
        header = serialize(capture_header(self.upload_metadata, ds.DATA_TYPE_BINARY_SENSOR))
        body = serialize(reading)
        self.store.ensure_room(len(header) + len(body) + 20)
        with _no_room_is_a_limit():
            self._file.write(delimited(header) + delimited(body))
        self._sha.update(reading.binary)
        self.size = len(reading.binary)
        self.readings = 1

    def put_readings(self, readings: Sequence[ds.SensorData]) -> None:
        """Write the whole capture file of tabular readings."""
        assert self._file is not None
        header = serialize(capture_header(self.upload_metadata, ds.DATA_TYPE_TABULAR_SENSOR))
        chunks = [delimited(header)] + [delimited(serialize(r)) for r in readings]
        total = sum(map(len, chunks))
        self.store.check_upload_size(total)
        self.store.ensure_room(total)
        with _no_room_is_a_limit():
            for chunk in chunks:
                self._file.write(chunk)
        self.size = total - len(chunks[0])
        self.readings = len(readings)

    def commit(self) -> StoredItem:
        """fsync, write the sidecar, rename both into place, fsync the folder."""
        with self._lock:
            if self._state != "open":
                raise RuntimeError(f"upload {self.id} is already {self._state}")
            self._state = "committing"
        try:
            with _no_room_is_a_limit():
                if self._spool is not None:
                    self._frame_spool()
                assert self._file is not None
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._file = None
                item = self._item()
                sidecar = json.dumps(sidecar_json(item), indent=2).encode() + b"\n"
                self.store.ensure_room(len(sidecar))
                with open(self._temp_sidecar, "xb") as f:
                    f.write(sidecar)
                    f.flush()
                    os.fsync(f.fileno())
            # sidecar first: a data file never shows up without its metadata
            os.replace(self._temp_sidecar, item.sidecar)
            os.replace(self._temp, item.path)
            fsync_dir(self.dir)
        except BaseException:
            self._cleanup()
            with self._lock:
                self._state = "aborted"
            raise
        with self._lock:
            self._state = "committed"
        return item

    def abort(self) -> None:
        """Drop the upload and its temp files; a no-op once committing or committed."""
        with self._lock:
            if self._state != "open":
                return
            self._state = "aborted"
        self._cleanup()

    def _cleanup(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        for path in (self._temp, self._spool, self._temp_sidecar):
            if path is not None:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    def _frame_spool(self) -> None:
        """Turn the spooled payload into a capture file: header, SensorData framing, bytes."""
        assert self._file is not None and self._spool is not None
        self._file.close()
        self._file = None
        header = serialize(capture_header(self.upload_metadata, ds.DATA_TYPE_BINARY_SENSOR))
        sd_prefix = b""
        if self.sensor_metadata is not None:
            sd_prefix += b"\x0a" + delimited(serialize(self.sensor_metadata))
        sd_prefix += b"\x1a" + uvarint(self.size)  # SensorData.binary, field 3
        framing = delimited(header) + uvarint(len(sd_prefix) + self.size) + sd_prefix
        self.store.ensure_room(len(framing) + self.size)
        self._file = open(self._temp, "xb")  # noqa: SIM115
        self._file.write(framing)
        self._file.flush()
        with open(self._spool, "rb") as src:
            _copy_all(src, self._file, self.size)
        self._spool.unlink()
        self._spool = None

    def _item(self) -> StoredItem:
        return StoredItem(
            id=self.id,
            kind=self.kind,
            path=self.path,
            received_at=self.received_at,
            size_bytes=self.size,
            upload_metadata=self.upload_metadata,
            sensor_metadata=self.sensor_metadata,
            sha256=None if self.kind == "tabular" else self._sha.hexdigest(),
            readings={"binary": 1, "tabular": self.readings}.get(self.kind, 0),
            rpc=self.rpc,
        )


def _copy_all(src: IO[bytes], dst: IO[bytes], size: int) -> None:
    """Copy ``size`` bytes in the kernel where possible (bounded memory either way)."""
    remaining = size
    try:
        while remaining:
            n = os.copy_file_range(src.fileno(), dst.fileno(), min(remaining, 1 << 30))
            if n == 0:
                raise OSError(errno.EIO, "spool file ended early")
            remaining -= n
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        src.seek(size - remaining)
        dst.seek(0, io.SEEK_END)
        shutil.copyfileobj(src, dst, _COPY_CHUNK)
