"""What goes into and comes out of the outbox: the value types (files and readings to
queue, claimed work, dead letters, counts) and the checks and conversions of reading
values. Standard library only, like the outbox itself."""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

FILE_KINDS = ("capture", "prog", "file")
READING_KINDS = ("tabular", "binary")

TimeLike = dt.datetime | float | int | None


# --- values --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileItem:
    """A file to upload: the bytes stay in the file, the row holds its identity."""

    path: str
    kind: str  # 'capture' | 'prog' | 'file'
    size: int
    mtime_ns: int
    meta: Mapping[str, Any] = field(default_factory=dict)  # e.g. tags, dataset_ids

    def __post_init__(self) -> None:
        if not isinstance(self.path, str):
            object.__setattr__(self, "path", str(self.path))
        if self.kind not in FILE_KINDS:
            raise ValueError(f"file kind must be one of {FILE_KINDS}, got {self.kind!r}")


class StreamKey(NamedTuple):
    """What one upload request's metadata describes; a claim never mixes two."""

    kind: str
    component_type: str
    component_name: str
    method_name: str
    tags: tuple[str, ...]
    file_extension: str
    mime_type: str


@dataclass(frozen=True, slots=True)
class Reading:
    """One sensor reading, stored inline: tabular payload is compact UTF-8 JSON of a dict,
    binary payload is the raw bytes. Build with :meth:`tabular` or :meth:`binary`."""

    kind: str  # 'tabular' | 'binary'
    component_type: str
    component_name: str
    method_name: str
    payload: bytes
    time_requested_ns: int
    time_received_ns: int
    tags: tuple[str, ...] = ()
    file_extension: str = ""
    mime_type: str = ""

    def __post_init__(self) -> None:
        if self.kind not in READING_KINDS:
            raise ValueError(f"reading kind must be one of {READING_KINDS}, got {self.kind!r}")
        for name in ("component_type", "component_name", "method_name"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a str, got {type(getattr(self, name)).__name__}")
        if not isinstance(self.payload, bytes):
            raise TypeError(f"payload must be bytes, got {type(self.payload).__name__}")
        if not isinstance(self.tags, tuple):
            object.__setattr__(self, "tags", _tags(self.tags))

    @classmethod
    def tabular(
        cls,
        component_type: str,
        component_name: str,
        method_name: str,
        data: Mapping[str, Any],
        *,
        time_requested: TimeLike = None,
        time_received: TimeLike = None,
        tags: Iterable[str] = (),
    ) -> Reading:
        """A tabular reading; ``data`` must fit a google.protobuf.Struct (ValueError if not)."""
        now_ns = time.time_ns()
        return cls(
            "tabular",
            component_type,
            component_name,
            method_name,
            encode_tabular(data),
            to_ns(time_requested, now_ns),
            to_ns(time_received, now_ns),
            _tags(tags),
        )

    @classmethod
    def binary(
        cls,
        component_type: str,
        component_name: str,
        method_name: str,
        data: bytes | bytearray | memoryview,
        *,
        file_extension: str = "",
        mime_type: str = "",
        time_requested: TimeLike = None,
        time_received: TimeLike = None,
        tags: Iterable[str] = (),
    ) -> Reading:
        """A binary reading (e.g. an image); ``file_extension`` like ``.jpeg``."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"binary data must be bytes, got {type(data).__name__}")
        if file_extension and not file_extension.startswith("."):
            file_extension = "." + file_extension
        now_ns = time.time_ns()
        return cls(
            "binary",
            component_type,
            component_name,
            method_name,
            bytes(data),
            to_ns(time_requested, now_ns),
            to_ns(time_received, now_ns),
            _tags(tags),
            file_extension,
            mime_type,
        )

    @property
    def stream(self) -> StreamKey:
        """The stream this reading belongs to."""
        return StreamKey(
            self.kind,
            self.component_type,
            self.component_name,
            self.method_name,
            self.tags,
            self.file_extension,
            self.mime_type,
        )


@dataclass(frozen=True, slots=True)
class ClaimedFile:
    """A file row leased to one uploader."""

    id: int
    path: str
    kind: str
    size: int
    mtime_ns: int
    meta: dict[str, Any]
    attempts: int


@dataclass(frozen=True, slots=True)
class ClaimedReading:
    """A reading row leased to one uploader, with its stream's metadata."""

    id: int
    kind: str
    component_type: str
    component_name: str
    method_name: str
    tags: tuple[str, ...]
    file_extension: str
    mime_type: str
    payload: bytes
    time_requested_ns: int
    time_received_ns: int
    attempts: int

    @property
    def stream(self) -> StreamKey:
        """The stream this reading belongs to (the same for every reading of one claim)."""
        return StreamKey(
            self.kind,
            self.component_type,
            self.component_name,
            self.method_name,
            self.tags,
            self.file_extension,
            self.mime_type,
        )

    def tabular_data(self) -> dict[str, Any]:
        """The decoded dict of a tabular reading."""
        if self.kind != "tabular":
            raise ValueError(f"reading {self.id} is {self.kind}, not tabular")
        return json.loads(self.payload)


@dataclass(frozen=True, slots=True)
class FailedItem:
    """A dead letter: ``source`` is the file's path or ``type/name/method`` of a reading."""

    id: int
    kind: str  # 'file' | 'reading'
    source: str
    attempts: int
    reason: str
    failed_at: float


class KeptFile(NamedTuple):
    """A file uploaded and kept on disk: this version of it counts as synced."""

    id: int
    path: str
    size: int
    mtime_ns: int


class LiveFile(NamedTuple):
    """A file row as the startup reconcile sees it; ``state`` is pending|inflight|failed."""

    id: int
    path: str
    size: int
    mtime_ns: int
    state: str


@dataclass(frozen=True, slots=True)
class OutboxCounts:
    """Rows by state. Pending and inflight rows are "not yet delivered";
    ``oldest_pending_age_s`` is the age of the oldest of them, None when there is none.
    Bytes are file sizes plus reading payload sizes."""

    pending: int
    inflight: int
    failed: int
    pending_bytes: int
    inflight_bytes: int
    failed_bytes: int
    oldest_pending_age_s: float | None
    files_pending: int
    files_inflight: int
    files_failed: int
    readings_pending: int
    readings_inflight: int
    readings_failed: int

    @classmethod
    def zero(cls) -> OutboxCounts:
        """The counts of an empty outbox."""
        return cls(0, 0, 0, 0, 0, 0, None, 0, 0, 0, 0, 0, 0)

    def as_dict(self) -> dict[str, Any]:
        """A plain dict, e.g. for JSON output."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


# --- value conversion -----------------------------------------------------------------

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def to_ns(value: TimeLike, now_ns: int | None = None) -> int:
    """Epoch nanoseconds from a datetime (naive means UTC), epoch seconds, or None (now)."""
    if value is None:
        return time.time_ns() if now_ns is None else now_ns
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(
            f"a time must be a datetime, epoch seconds or None, got {type(value).__name__}"
        )
    if not math.isfinite(value):
        raise ValueError(f"a time must be finite, got {value!r}")
    if isinstance(value, int):
        return value * 1_000_000_000
    return round(value * 1e9)


def encode_tabular(data: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON of ``data``; ValueError naming the first value a Struct cannot hold."""
    if not isinstance(data, Mapping):
        raise ValueError(f"tabular data must be a dict, got {type(data).__name__}")
    if not _plain_struct(data, 0):
        _check_struct_value(data, "data")  # names the culprit, or accepts a subclass
    try:
        return _JSON.encode(data).encode("utf-8")
    except (TypeError, ValueError, UnicodeEncodeError, RecursionError) as exc:
        raise ValueError(f"tabular data cannot be stored as JSON: {exc}") from None


_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _plain_struct(value: Any, depth: int) -> bool:
    # The hot path: exact built-in types only, leaves checked inline, no error message
    # built. False sends the value to _check_struct_value for a precise message.
    t = type(value)
    if t is dict:
        items: Iterable[Any] = value.values()
        if not all(type(k) is str for k in value):
            return False
    elif t is list or t is tuple:
        items = value
    else:
        return _plain_scalar(value)
    if depth > 100:
        return False
    for item in items:
        t = type(item)
        if t is float:
            if item - item != 0.0:  # nan or inf
                return False
        elif not (t is str or t is int or t is bool or item is None) and not _plain_struct(
            item, depth + 1
        ):
            return False
    return True


def _plain_scalar(value: Any) -> bool:
    t = type(value)
    if t is float:
        return value - value == 0.0
    return t is str or t is int or t is bool or value is None


def _check_struct_value(value: Any, where: str, depth: int = 0) -> None:
    # What google.protobuf.Struct holds: null, bool, number, string, list, string-keyed
    # map. json.dumps alone would silently turn int keys into strings and accept tuples.
    if depth > 100:
        raise ValueError(f"{where}: nested too deeply")
    if value is None or isinstance(value, str | bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where}: {value!r} is not a finite number")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where}: key {key!r} is not a string")
            _check_struct_value(item, f"{where}[{key!r}]", depth + 1)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_struct_value(item, f"{where}[{index}]", depth + 1)
        return
    raise ValueError(f"{where}: a {type(value).__name__} cannot be stored in a reading")


def _tags(tags: Iterable[str]) -> tuple[str, ...]:
    if isinstance(tags, str):
        raise TypeError("tags must be a sequence of strings, not one string")
    out = tuple(tags)
    for tag in out:
        if not isinstance(tag, str):
            raise TypeError(f"a tag must be a str, got {type(tag).__name__}")
    return out


def _meta_json(meta: Mapping[str, Any]) -> str:
    if not meta:
        return "{}"  # most files: no tags or datasets of their own
    try:
        return json.dumps(dict(meta), separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"file metadata cannot be stored as JSON: {exc}") from None


def _reading_source(key: StreamKey) -> str:
    return f"{key.component_type}/{key.component_name}/{key.method_name}"
