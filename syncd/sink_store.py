"""The sink's on-disk store: layout, path safety, atomic writes, free-space checks, reading back.

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
- Every data file has a hidden sidecar ``.<data file name>.meta.json`` (format 1): ``id``,
  ``kind`` (``tabular``/``binary``/``file``), ``rpc``, ``received_at``, ``data_file``,
  ``size_bytes`` (payload bytes), ``sha256`` (of the payload; null for tabular),
  ``readings``, and the full ``UploadMetadata`` (plus ``SensorMetadata`` for binary
  readings) twice: as protobuf JSON for people (``upload_metadata``, ``sensor_metadata``)
  and as base64 protobuf for programs (``upload_metadata_pb``, ``sensor_metadata_pb``),
  since JSON cannot carry ``method_parameters`` values of unknown ``Any`` types.
- A name starting with ``.`` is never data: sidecars, and ``.tmp-*`` files being written.
  A data file appears only by an atomic rename (after fsync, and after its sidecar), and
  the folder is fsynced, so a file that looks complete is complete. ``.tmp-*`` leftovers
  of a killed sink and sidecars whose data file is gone (a forwarding syncd removed it)
  are swept by :meth:`Store.sweep`. One sink process per store.

:func:`iter_store` reads a store back as :class:`StoredItem` objects, :func:`load_item` one
of them; :func:`write_sidecar` records a change made after the upload (e.g. edited tags).
"""

from __future__ import annotations

import base64
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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from syncd.errors import StorageLimitError, SyncdError
from syncd.fsutil import fsync_dir
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

log = logging.getLogger("syncd.sink")

Kind = Literal["tabular", "binary", "file"]

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024**3
DEFAULT_MIN_FREE_BYTES = 64 * 1024**2

CAPTURE_SUFFIX = ".capture"
SIDECAR_SUFFIX = ".meta.json"
TEMP_PREFIX = ".tmp-"
SIDECAR_FORMAT = 1

_MAX_COMPONENT_BYTES = 100
_MAX_EXTENSION_CHARS = 20
_UNSAFE_CHARS = re.compile(r"[^\w\-.:+@,~]")
_UNSAFE_EXT_CHARS = re.compile(r"[^A-Za-z0-9_+\-.]")
_TIME_FORMAT = "%Y-%m-%dT%H_%M_%S.%fZ"
_DATA_NAME = re.compile(
    r"^(?P<time>\d{4}-\d\d-\d\dT\d\d_\d\d_\d\d\.\d{6}Z)_(?P<id>[0-9a-f]{32})(?:_.*|\..*)?$"
)
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


# --- capture-file encoding ------------------------------------------------------------
# Viam's capture format is the "delimited" protobuf stream: uvarint length, then bytes.


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _delimited(payload: bytes) -> bytes:
    return _uvarint(len(payload)) + payload


def _read_uvarint(f: IO[bytes]) -> int | None:
    """The next uvarint, or None at a clean end of file."""
    shift = result = 0
    for i in range(10):
        b = f.read(1)
        if not b:
            if i == 0:
                return None
            raise CorruptStoreFile("truncated varint")
        result |= (b[0] & 0x7F) << shift
        if not b[0] & 0x80:
            return result
        shift += 7
    raise CorruptStoreFile("varint longer than 10 bytes")


class CorruptStoreFile(SyncdError):
    """A file in the store cannot be parsed; :func:`iter_store` skips it with a warning."""


def capture_header(um: ds.UploadMetadata, data_type: int) -> ds.DataCaptureMetadata:
    """The capture-file header that carries an upload's metadata across a forwarding hop."""
    header = ds.DataCaptureMetadata(
        component_type=um.component_type,
        component_name=um.component_name,
        method_name=um.method_name,
        type=data_type,  # type: ignore[arg-type]
        file_extension=um.file_extension,
        tags=list(um.tags),
        mime_type=um.mime_type,
    )
    for key, value in um.method_parameters.items():
        header.method_parameters[key].CopyFrom(value)
    return header


def _serialize(msg: Message) -> bytes:
    return msg.SerializeToString(deterministic=True)


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
        stamp = self.received_at.strftime(_TIME_FORMAT)
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
        header = _serialize(capture_header(self.upload_metadata, ds.DATA_TYPE_BINARY_SENSOR))
        body = _serialize(reading)
        self.store.ensure_room(len(header) + len(body) + 20)
        with _no_room_is_a_limit():
            self._file.write(_delimited(header) + _delimited(body))
        self._sha.update(reading.binary)
        self.size = len(reading.binary)
        self.readings = 1

    def put_readings(self, readings: Sequence[ds.SensorData]) -> None:
        """Write the whole capture file of tabular readings."""
        assert self._file is not None
        header = _serialize(capture_header(self.upload_metadata, ds.DATA_TYPE_TABULAR_SENSOR))
        chunks = [_delimited(header)] + [_delimited(_serialize(r)) for r in readings]
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
                sidecar = json.dumps(_sidecar_json(item), indent=2).encode() + b"\n"
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
        header = _serialize(capture_header(self.upload_metadata, ds.DATA_TYPE_BINARY_SENSOR))
        sd_prefix = b""
        if self.sensor_metadata is not None:
            sd_prefix += b"\x0a" + _delimited(_serialize(self.sensor_metadata))
        sd_prefix += b"\x1a" + _uvarint(self.size)  # SensorData.binary, field 3
        framing = _delimited(header) + _uvarint(len(sd_prefix) + self.size) + sd_prefix
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


# --- the sidecar ----------------------------------------------------------------------


def _message_json(msg: Message) -> dict[str, Any]:
    try:
        return json_format.MessageToDict(msg, preserving_proto_field_name=True)
    except (TypeError, KeyError, ValueError):
        # method_parameters may hold Any values whose type this process does not know
        assert isinstance(msg, ds.UploadMetadata)
        clone = ds.UploadMetadata()
        clone.CopyFrom(msg)
        clone.ClearField("method_parameters")
        out = json_format.MessageToDict(clone, preserving_proto_field_name=True)
        out["method_parameters"] = {
            key: {"@type": value.type_url, "value_base64": base64.b64encode(value.value).decode()}
            for key, value in msg.method_parameters.items()
        }
        return out


def _sidecar_json(item: StoredItem) -> dict[str, Any]:
    out: dict[str, Any] = {
        "format": SIDECAR_FORMAT,
        "id": item.id,
        "kind": item.kind,
        "rpc": item.rpc,
        "received_at": item.received_at.isoformat().replace("+00:00", "Z"),
        "data_file": item.path.name,
        "size_bytes": item.size_bytes,
        "sha256": item.sha256,
        "readings": item.readings,
        "upload_metadata": _message_json(item.upload_metadata),
        "upload_metadata_pb": base64.b64encode(_serialize(item.upload_metadata)).decode(),
    }
    if item.sensor_metadata is not None:
        out["sensor_metadata"] = _message_json(item.sensor_metadata)
        out["sensor_metadata_pb"] = base64.b64encode(_serialize(item.sensor_metadata)).decode()
    return out


def sidecar_path(data_path: Path) -> Path:
    """The hidden sidecar beside a data file."""
    return Path(sidecar_file(os.fspath(data_path)))


def sidecar_file(data_path: str) -> str:
    """:func:`sidecar_path` without pathlib, for the uploader's look at every file."""
    head, name = os.path.split(data_path)
    return os.path.join(head, f".{name}{SIDECAR_SUFFIX}")


def write_sidecar(item: StoredItem) -> None:
    """Replace ``item``'s sidecar with one describing ``item``, atomically and durably.

    For changes made after the upload (tags edited, a tabular file rewritten): the new
    sidecar is written to a temp file, fsynced and renamed over the old one.
    """
    temp = item.path.with_name(f"{TEMP_PREFIX}{item.id}.meta")
    try:
        with open(temp, "wb") as f:
            f.write(json.dumps(_sidecar_json(item), indent=2).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, item.sidecar)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
    fsync_dir(item.path.parent)


# --- reading back ---------------------------------------------------------------------


@dataclass(frozen=True)
class StoredItem:
    """One stored upload: where it is and everything the client sent about it.

    ``size_bytes`` counts payload bytes: the file, the binary reading, or the encoded
    tabular readings. ``sensor_metadata`` is set for binary readings that carried one.
    """

    id: str
    kind: Kind
    path: Path
    received_at: datetime
    size_bytes: int
    upload_metadata: ds.UploadMetadata
    sensor_metadata: ds.SensorMetadata | None = None
    sha256: str | None = None
    readings: int = 0
    rpc: str = ""

    @property
    def sidecar(self) -> Path:
        return sidecar_path(self.path)

    def header(self) -> ds.DataCaptureMetadata:
        """The capture-file header (sensor data only)."""
        with open(self.path, "rb") as f:
            return _read_header(f)

    def sensor_data(self) -> list[ds.SensorData]:
        """The readings of a capture file, each a full ``SensorData`` (loads them in memory)."""
        if self.kind == "file":
            raise ValueError("a stored file has no readings")
        out = []
        with open(self.path, "rb") as f:
            _read_header(f)
            while (size := _read_uvarint(f)) is not None:
                out.append(ds.SensorData.FromString(_read_exactly(f, size)))
        return out

    def read_bytes(self) -> bytes:
        """The payload of a stored file or binary reading."""
        if self.kind == "file":
            return self.path.read_bytes()
        if self.kind == "binary":
            with open(self.path, "rb") as f:
                _read_header(f)
                _, offset, size = _scan_binary_reading(f)
                f.seek(offset)
                return _read_exactly(f, size)
        raise ValueError("tabular data has no single payload; use sensor_data()")


def forwarded_metadata(data_path: str | os.PathLike[str]) -> ds.UploadMetadata | None:
    """The UploadMetadata a sink recorded for ``data_path``, or None when the file has no
    readable sidecar: what a syncd forwarding a store onward sends again."""
    try:
        with open(sidecar_file(os.fspath(data_path)), "rb") as f:
            doc = json.load(f)
        return ds.UploadMetadata.FromString(base64.b64decode(doc["upload_metadata_pb"]))
    except (OSError, ValueError, KeyError, TypeError, DecodeError):
        return None


def iter_store(root: str | os.PathLike[str]) -> Iterator[StoredItem]:
    """Every complete item under ``root``, folder by folder, oldest first within a folder.

    Sidecars provide the metadata; a data file without one (copied in by hand) is read
    from its capture header or taken as a plain file. Unreadable files are skipped with a
    warning.
    """
    root = Path(root)
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath, name)
            try:
                yield _load_item(path)
            except (OSError, ValueError, DecodeError, CorruptStoreFile) as exc:
                log.warning("skipping unreadable stored file %s: %s", path, exc)


def load_item(path: str | os.PathLike[str]) -> StoredItem:
    """The item whose data file is ``path``, read as :func:`iter_store` reads it."""
    return _load_item(Path(path))


def _load_item(path: Path) -> StoredItem:
    sidecar = sidecar_path(path)
    try:
        doc = json.loads(sidecar.read_text())
    except FileNotFoundError:
        return _item_without_sidecar(path)
    try:
        um = ds.UploadMetadata.FromString(base64.b64decode(doc["upload_metadata_pb"]))
        sm = None
        if "sensor_metadata_pb" in doc:
            sm = ds.SensorMetadata.FromString(base64.b64decode(doc["sensor_metadata_pb"]))
        return StoredItem(
            id=doc["id"],
            kind=doc["kind"],
            path=path,
            received_at=datetime.fromisoformat(doc["received_at"]),
            size_bytes=int(doc["size_bytes"]),
            upload_metadata=um,
            sensor_metadata=sm,
            sha256=doc.get("sha256"),
            readings=int(doc.get("readings", 0)),
            rpc=doc.get("rpc", ""),
        )
    except (KeyError, TypeError, AttributeError) as exc:  # JSON, but not a sidecar
        raise CorruptStoreFile(f"sidecar {sidecar.name} is not a sidecar: {exc!r}") from None


def _item_without_sidecar(path: Path) -> StoredItem:
    match = _DATA_NAME.match(path.name)
    if match:
        item_id = match["id"]
        received = datetime.strptime(match["time"], _TIME_FORMAT).replace(tzinfo=UTC)
    else:
        item_id = path.name
        received = datetime.fromtimestamp(path.stat().st_mtime, UTC)
    if path.suffix != CAPTURE_SUFFIX:
        um = ds.UploadMetadata(
            type=ds.DATA_TYPE_FILE, file_name=path.name, file_extension=path.suffix
        )
        return StoredItem(item_id, "file", path, received, path.stat().st_size, um)
    with open(path, "rb") as f:
        header = _read_header(f)
        um = ds.UploadMetadata(
            component_type=header.component_type,
            component_name=header.component_name,
            method_name=header.method_name,
            type=header.type,
            file_extension=header.file_extension,
            tags=list(header.tags),
            mime_type=header.mime_type,
        )
        for key, value in header.method_parameters.items():
            um.method_parameters[key].CopyFrom(value)
        if header.type == ds.DATA_TYPE_BINARY_SENSOR:
            sm, _, size = _scan_binary_reading(f)
            return StoredItem(item_id, "binary", path, received, size, um, sm, readings=1)
        count = 0
        total = 0
        while (size := _read_uvarint(f)) is not None:
            f.seek(size, io.SEEK_CUR)
            count += 1
            total += size + len(_uvarint(size))
        return StoredItem(item_id, "tabular", path, received, total, um, readings=count)


def _read_exactly(f: IO[bytes], size: int) -> bytes:
    # A length prefix is untrusted: f.read(n) allocates n bytes before reading, so a forged
    # prefix in a small file would ask for gigabytes (MemoryError). Check it first.
    remaining = os.fstat(f.fileno()).st_size - f.tell()
    if size > remaining:
        raise CorruptStoreFile(f"truncated: wanted {size} bytes, {max(0, remaining)} remain")
    data = f.read(size)
    if len(data) != size:
        raise CorruptStoreFile(f"truncated: wanted {size} bytes, found {len(data)}")
    return data


def _read_header(f: IO[bytes]) -> ds.DataCaptureMetadata:
    size = _read_uvarint(f)
    if size is None:
        raise CorruptStoreFile("empty capture file")
    return ds.DataCaptureMetadata.FromString(_read_exactly(f, size))


def _scan_binary_reading(f: IO[bytes]) -> tuple[ds.SensorMetadata | None, int, int]:
    """Walk one SensorData without loading its payload: (metadata, payload offset, size)."""
    size = _read_uvarint(f)
    if size is None:
        raise CorruptStoreFile("capture file has no reading")
    end = f.tell() + size
    metadata = None
    payload: tuple[int, int] | None = None
    while f.tell() < end:
        tag = _read_uvarint(f)
        if tag is None:
            raise CorruptStoreFile("truncated reading")
        field, wire = tag >> 3, tag & 7
        if wire == 2:
            length = _read_uvarint(f) or 0
            if field == 1:
                metadata = ds.SensorMetadata.FromString(_read_exactly(f, length))
                continue
            if field == 3:
                payload = (f.tell(), length)
            f.seek(length, io.SEEK_CUR)
        elif wire == 0:
            _read_uvarint(f)
        elif wire in (1, 5):
            f.seek(8 if wire == 1 else 4, io.SEEK_CUR)
        else:
            raise CorruptStoreFile(f"unsupported wire type {wire}")
    if payload is None or f.tell() != end:
        raise CorruptStoreFile("reading holds no binary payload")
    if end > os.fstat(f.fileno()).st_size:
        raise CorruptStoreFile("truncated reading")
    return metadata, payload[0], payload[1]
