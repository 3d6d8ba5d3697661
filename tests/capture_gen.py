"""Capture files for tests, built two ways.

``write_capture`` and the reading builders use the generated protobuf classes and
``CaptureWriter``. The ``hand_*`` functions encode the same messages byte by byte from the
field numbers and tag bytes of the wire spec, with no generated class, so that reading its
output proves the reader reads the real format (and comparing bytes proves the writer
writes it).
"""

from __future__ import annotations

import struct as _struct
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf import struct_pb2

from syncd.capture_file import CaptureWriter, capture_path
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

T0 = datetime(2025, 3, 14, 15, 9, 26, 535897, tzinfo=UTC)


# --- with the generated classes -------------------------------------------------------------


def tabular_header(
    name: str = "imu", method: str = "Readings", **extra: Any
) -> ds.DataCaptureMetadata:
    """A header as RDK writes it for a sensor's Readings."""
    fields = {
        "component_type": "rdk:component:sensor",
        "component_name": name,
        "method_name": method,
        "type": ds.DATA_TYPE_TABULAR_SENSOR,
        "file_extension": ".dat",
        "tags": ["yard"],
    }
    fields.update(extra)
    return ds.DataCaptureMetadata(**fields)


def binary_header(
    name: str = "cam", method: str = "ReadImage", **extra: Any
) -> ds.DataCaptureMetadata:
    """A header as RDK writes it for a camera's ReadImage with mime_type image/jpeg."""
    fields = {
        "component_type": "rdk:component:camera",
        "component_name": name,
        "method_name": method,
        "type": ds.DATA_TYPE_BINARY_SENSOR,
        "file_extension": ".jpeg",
    }
    fields.update(extra)
    return ds.DataCaptureMetadata(**fields)


def _metadata(requested: datetime, received: datetime | None) -> ds.SensorMetadata:
    metadata = ds.SensorMetadata()
    metadata.time_requested.FromDatetime(requested)
    metadata.time_received.FromDatetime(received or requested + timedelta(milliseconds=3))
    return metadata


def tabular_reading(
    values: Mapping[str, Any], requested: datetime = T0, received: datetime | None = None
) -> ds.SensorData:
    """A sensor reading wrapped as RDK does: Struct {"readings": {...}}, with both times."""
    reading = ds.SensorData(metadata=_metadata(requested, received))
    reading.struct.update({"readings": dict(values)})
    return reading


def binary_reading(
    payload: bytes, requested: datetime = T0, received: datetime | None = None
) -> ds.SensorData:
    """A binary reading (an image, a point cloud) with both times."""
    return ds.SensorData(metadata=_metadata(requested, received), binary=payload)


def sample_tabular(count: int, start: datetime = T0) -> list[ds.SensorData]:
    """``count`` varied tabular readings one millisecond apart."""
    return [
        tabular_reading(
            {
                "x": i * 0.5,
                "label": f"r{i}",
                "ok": i % 2 == 0,
                "nested": {"list": [1, "a", None, {"deep": True}], "empty": {}},
            },
            start + timedelta(milliseconds=i),
        )
        for i in range(count)
    ]


def write_capture(
    capture_dir: Path,
    header: ds.DataCaptureMetadata,
    readings: Iterable[ds.SensorData],
    dt: datetime = T0,
) -> Path:
    """Write a complete capture file in Viam's layout; return its ``.capture`` path."""
    with CaptureWriter(capture_path(capture_dir, header, dt), header) as writer:
        for reading in readings:
            writer.write(reading)
    return Path(writer.path)


# --- by hand, from the wire spec ------------------------------------------------------------

_VARINT, _I64, _LEN = 0, 1, 2


def hand_uvarint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def hand_tag(number: int, wire: int) -> bytes:
    return hand_uvarint((number << 3) | wire)


def hand_len(number: int, payload: bytes) -> bytes:
    return hand_tag(number, _LEN) + hand_uvarint(len(payload)) + payload


def hand_varint(number: int, value: int) -> bytes:
    return hand_tag(number, _VARINT) + hand_uvarint(value)


def hand_string(number: int, text: str) -> bytes:
    # proto3 leaves a field at its default value out of the encoding
    return hand_len(number, text.encode()) if text else b""


def hand_timestamp(dt: datetime) -> bytes:
    delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
    seconds = delta.days * 86400 + delta.seconds
    nanos = delta.microseconds * 1000
    return (hand_varint(1, seconds) if seconds else b"") + (hand_varint(2, nanos) if nanos else b"")


def hand_value(obj: Any) -> bytes:
    """google.protobuf.Value: null 1, number 2, string 3, bool 4, struct 5, list 6."""
    if obj is None:
        return hand_varint(1, 0)
    if isinstance(obj, bool):
        return hand_varint(4, int(obj))
    if isinstance(obj, int | float):
        return hand_tag(2, _I64) + _struct.pack("<d", float(obj))
    if isinstance(obj, str):
        return hand_len(3, obj.encode())
    if isinstance(obj, Mapping):
        return hand_len(5, hand_struct(obj))
    return hand_len(6, b"".join(hand_len(1, hand_value(item)) for item in obj))


def hand_struct(mapping: Mapping[str, Any]) -> bytes:
    """google.protobuf.Struct: map<string, Value> fields = 1; each entry {key 1, value 2}."""
    return b"".join(
        hand_len(1, hand_len(1, key.encode()) + hand_len(2, hand_value(v)))
        for key, v in mapping.items()
    )


def hand_header(
    component_type: str,
    component_name: str,
    method_name: str,
    data_type: int,
    file_extension: str = "",
    tags: Sequence[str] = (),
    mime_type: str = "",
) -> bytes:
    """DataCaptureMetadata: tags 0A 12 22 28 3A 42 52 (field 3 and 9 reserved)."""
    return (
        hand_string(1, component_type)
        + hand_string(2, component_name)
        + hand_string(4, method_name)
        + (hand_varint(5, data_type) if data_type else b"")
        + hand_string(7, file_extension)
        + b"".join(hand_len(8, t.encode()) for t in tags)
        + hand_string(10, mime_type)
    )


def hand_sensor_metadata(requested: datetime, received: datetime) -> bytes:
    """SensorMetadata: time_requested 0A, time_received 12."""
    return hand_len(1, hand_timestamp(requested)) + hand_len(2, hand_timestamp(received))


def hand_sensor_data(
    requested: datetime,
    received: datetime,
    struct: Mapping[str, Any] | None = None,
    binary: bytes | None = None,
) -> bytes:
    """SensorData: metadata 0A, then struct 12 or binary 1A."""
    body = hand_len(1, hand_sensor_metadata(requested, received))
    if struct is not None:
        body += hand_len(2, hand_struct(struct))
    if binary is not None:
        body += hand_len(3, binary)
    return body


def hand_delimited(*messages: bytes) -> bytes:
    """The capture file framing: each message preceded by its uvarint length."""
    return b"".join(hand_uvarint(len(m)) + m for m in messages)


def struct_pb(mapping: Mapping[str, Any]) -> struct_pb2.Struct:
    """The protobuf Struct for ``mapping``, for comparing against hand-encoded readings."""
    message = struct_pb2.Struct()
    message.update(dict(mapping))
    return message
