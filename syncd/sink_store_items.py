"""A stored item on disk: its file names, capture framing and sidecar, and reading it back.

What a store holds, as :mod:`syncd.sink_store` writes it and everything else reads it:
the index (:mod:`syncd.sink_index`), the data API's edits (:mod:`syncd.sink_edit`), and a
syncd that forwards the store onward (its uploader reads the sidecars).

- Data files are named ``<UTC time received>_<id>...`` (:data:`TIME_FORMAT`, ``:``
  written as ``_``); sensor data ends in :data:`CAPTURE_SUFFIX`. A name starting with
  ``.`` is never data: sidecars, and ``.tmp-*`` files being written (:data:`TEMP_PREFIX`).
- Sensor data is Viam's capture-file format: the "delimited" protobuf stream (uvarint
  length, then bytes) of a ``DataCaptureMetadata`` header (:func:`capture_header`) and
  ``SensorData`` readings.
- Every data file has a hidden sidecar ``.<data file name>.meta.json`` (format 1): ``id``,
  ``kind`` (``tabular``/``binary``/``file``), ``rpc``, ``received_at``, ``data_file``,
  ``size_bytes`` (payload bytes), ``sha256`` (of the payload; null for tabular),
  ``readings``, and the full ``UploadMetadata`` (plus ``SensorMetadata`` for binary
  readings) twice: as protobuf JSON for people (``upload_metadata``, ``sensor_metadata``)
  and as base64 protobuf for programs (``upload_metadata_pb``, ``sensor_metadata_pb``),
  since JSON cannot carry ``method_parameters`` values of unknown ``Any`` types.

:func:`iter_store` reads a store back as :class:`StoredItem` objects, :func:`load_item` one
of them; :func:`write_sidecar` records a change made after the upload (e.g. edited tags).
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Literal

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from syncd.errors import SyncdError
from syncd.fsutil import fsync_dir, read_fd
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

log = logging.getLogger("syncd.sink")

Kind = Literal["tabular", "binary", "file"]

CAPTURE_SUFFIX = ".capture"
SIDECAR_SUFFIX = ".meta.json"
TEMP_PREFIX = ".tmp-"
SIDECAR_FORMAT = 1
TIME_FORMAT = "%Y-%m-%dT%H_%M_%S.%fZ"

# How every data file a sink writes begins: its time, then its id.
_DATA_NAME_HEAD = r"(?P<time>\d{4}-\d\d-\d\dT\d\d_\d\d_\d\d\.\d{6}Z)_(?P<id>[0-9a-f]{32})"
_DATA_NAME = re.compile(f"^{_DATA_NAME_HEAD}(?:_.*|\\..*)?$")
_DATA_NAME_START = re.compile(_DATA_NAME_HEAD)


# --- capture-file encoding ------------------------------------------------------------
# Viam's capture format is the "delimited" protobuf stream: uvarint length, then bytes.


def uvarint(n: int) -> bytes:
    """``n`` as a protobuf base-128 varint."""
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def delimited(payload: bytes) -> bytes:
    """``payload`` with its uvarint length in front: one message of a capture file."""
    return uvarint(len(payload)) + payload


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


def serialize(msg: Message) -> bytes:
    """``msg``'s bytes, the same every time (map fields in key order)."""
    return msg.SerializeToString(deterministic=True)


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


def sidecar_json(item: StoredItem) -> dict[str, Any]:
    """The sidecar document describing ``item`` (see the module docstring)."""
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
        "upload_metadata_pb": base64.b64encode(serialize(item.upload_metadata)).decode(),
    }
    if item.sensor_metadata is not None:
        out["sensor_metadata"] = _message_json(item.sensor_metadata)
        out["sensor_metadata_pb"] = base64.b64encode(serialize(item.sensor_metadata)).decode()
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
            f.write(json.dumps(sidecar_json(item), indent=2).encode() + b"\n")
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


def read_sidecar(data_path: str) -> bytes | None:
    """The bytes of ``data_path``'s sidecar; None when it has none, b"" when it has one
    that cannot be read. The uploader asks this of every file it sends: a file not named
    as a sink names its data files has no sidecar, which costs no system call to learn,
    and one so named that has none costs one access() and no exception."""
    if not _DATA_NAME_START.match(os.path.basename(data_path)):
        return None
    path = sidecar_file(data_path)
    if not os.access(path, os.F_OK):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError:
        return b""
    try:
        return read_fd(fd)
    except OSError:
        return b""
    finally:
        os.close(fd)


def forwarded_metadata(sidecar: bytes) -> ds.UploadMetadata | None:
    """The UploadMetadata a sink recorded in ``sidecar`` (see :func:`read_sidecar`), or
    None if it does not parse: what a syncd forwarding a store onward sends again."""
    try:
        doc = json.loads(sidecar)
        return ds.UploadMetadata.FromString(base64.b64decode(doc["upload_metadata_pb"]))
    except (ValueError, KeyError, TypeError, DecodeError):
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
        received = datetime.strptime(match["time"], TIME_FORMAT).replace(tzinfo=UTC)
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
            total += size + len(uvarint(size))
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
