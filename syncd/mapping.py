"""Pure mapping from what the robot has to what Viam's DataSyncService expects.

Mirrors how Viam's robot server builds its requests: metadata from the capture-file
header plus the configured part id, tags merged from the header, the config and the
folders; binary readings over 1,000,000 bytes go by the streaming RPC. No I/O here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from google.protobuf import struct_pb2, timestamp_pb2

from syncd.capture_file import encode_uvarint
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

# Viam's robot server streams binary readings above this size (units.MB in Go).
MAX_UNARY_BINARY_BYTES = 1_000_000

# What an extension becomes when a reading carries the deprecated MimeType enum.
_MIME_EXTENSIONS = {
    ds.MIME_TYPE_IMAGE_JPEG: ".jpeg",
    ds.MIME_TYPE_IMAGE_PNG: ".png",
    ds.MIME_TYPE_APPLICATION_PCD: ".pcd",
}


@dataclass(frozen=True)
class Stream:
    """Everything one request's UploadMetadata says about its readings."""

    component_type: str
    component_name: str
    method_name: str
    data_type: int
    tags: tuple[str, ...] = ()
    dataset_ids: tuple[str, ...] = ()
    file_extension: str = ""
    mime_type: str = ""


def merge_tags(*groups: Iterable[str]) -> list[str]:
    """Tags from every source, first occurrence wins, empty ones dropped."""
    return list(dict.fromkeys(tag for group in groups for tag in group if tag))


def with_dot(extension: str) -> str:
    return extension if not extension or extension.startswith(".") else "." + extension


def upload_metadata(
    part_id: str, stream: Stream, extra_tags: Iterable[str] = ()
) -> ds.UploadMetadata:
    return ds.UploadMetadata(
        part_id=part_id,
        component_type=stream.component_type,
        component_name=stream.component_name,
        method_name=stream.method_name,
        type=stream.data_type,
        file_extension=with_dot(stream.file_extension),
        tags=merge_tags(stream.tags, extra_tags),
        dataset_ids=list(stream.dataset_ids),
        mime_type=stream.mime_type,
    )


def header_metadata(
    header: ds.DataCaptureMetadata,
    part_id: str,
    extra_tags: Iterable[str] = (),
    dataset_ids: Sequence[str] = (),
) -> ds.UploadMetadata:
    """UploadMetadata for the readings of a capture file, as Viam's robot server sends."""
    md = ds.UploadMetadata(
        part_id=part_id,
        component_type=header.component_type,
        component_name=header.component_name,
        method_name=header.method_name,
        type=header.type,
        file_extension=header.file_extension,
        tags=merge_tags(header.tags, extra_tags),
        dataset_ids=list(dataset_ids),
        mime_type=header.mime_type,
    )
    for key, value in header.method_parameters.items():
        md.method_parameters[key].CopyFrom(value)
    return md


def for_binary_reading(md: ds.UploadMetadata, sensor: ds.SensorMetadata) -> ds.UploadMetadata:
    """A reading's deprecated MIME enum overrides the extension (as Viam's robot does)."""
    extension = _MIME_EXTENSIONS.get(sensor.mime_type)
    if extension is None or extension == md.file_extension:
        return md
    copy = ds.UploadMetadata()
    copy.CopyFrom(md)
    copy.file_extension = extension
    return copy


def file_metadata(
    path: str,
    st: os.stat_result,
    part_id: str,
    tags: Iterable[str] = (),
    dataset_ids: Sequence[str] = (),
) -> ds.UploadMetadata:
    """FileUpload metadata for an arbitrary file: its absolute path, extension and times."""
    md = ds.UploadMetadata(
        part_id=part_id,
        type=ds.DATA_TYPE_FILE,
        file_name=path,
        file_extension=os.path.splitext(path)[1],
        tags=merge_tags(tags),
        dataset_ids=list(dataset_ids),
    )
    # Linux has no portable birth time; the inode change time is its closest bound.
    # Set in place: this runs for every file, and a Timestamp copied in costs twice as much.
    created = md.file_create_time
    created.seconds, created.nanos = divmod(min(st.st_ctime_ns, st.st_mtime_ns), 1_000_000_000)
    modified = md.file_modify_time
    modified.seconds, modified.nanos = divmod(st.st_mtime_ns, 1_000_000_000)
    return md


def as_forwarded(
    md: ds.UploadMetadata, origin: ds.UploadMetadata, hop_tags: Iterable[str]
) -> ds.UploadMetadata:
    """Metadata for data a receiver stored with ``origin`` and this syncd now forwards:
    the origin (with the receiver's tag edits) says whose data it is, what it was called
    and how it is tagged; this hop adds ``hop_tags``, its config's and its folders'. Not
    the capture header's: they are the tags of the upload, edits since then left out."""
    out = ds.UploadMetadata()
    out.CopyFrom(origin)
    out.part_id = origin.part_id or md.part_id
    out.type = md.type
    del out.tags[:]
    out.tags.extend(merge_tags(origin.tags, hop_tags))
    del out.dataset_ids[:]
    out.dataset_ids.extend(merge_tags(origin.dataset_ids, md.dataset_ids))
    if md.type != ds.DATA_TYPE_FILE:
        # A capture file's own header describes its readings; keep it.
        for name in ("component_type", "component_name", "method_name", "file_extension"):
            setattr(out, name, getattr(md, name))
        out.method_parameters.clear()
        for key, value in md.method_parameters.items():
            out.method_parameters[key].CopyFrom(value)
        out.mime_type = md.mime_type or origin.mime_type
    else:
        for name in ("file_create_time", "file_modify_time"):
            if not out.HasField(name):
                getattr(out, name).CopyFrom(getattr(md, name))
    return out


def timestamp_from_ns(ns: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ns // 1_000_000_000, nanos=ns % 1_000_000_000)


def sensor_metadata(time_requested_ns: int, time_received_ns: int) -> ds.SensorMetadata:
    return ds.SensorMetadata(
        time_requested=timestamp_from_ns(time_requested_ns),
        time_received=timestamp_from_ns(time_received_ns),
    )


def tabular_reading(
    payload_json: bytes | str, time_requested_ns: int, time_received_ns: int
) -> ds.SensorData:
    """A SensorData with a Struct from a reading stored as a JSON object."""
    data = struct_pb2.Struct()
    data.update(json.loads(payload_json))
    return ds.SensorData(metadata=sensor_metadata(time_requested_ns, time_received_ns), struct=data)


def binary_reading(payload: bytes, time_requested_ns: int, time_received_ns: int) -> ds.SensorData:
    return ds.SensorData(
        metadata=sensor_metadata(time_requested_ns, time_received_ns), binary=payload
    )


def encode_request(metadata: bytes, delimited_readings: Sequence[bytes | memoryview]) -> bytes:
    """A serialized DataCaptureUploadRequest (metadata = 1, sensor_contents = 2) built from
    readings as a capture file holds them (each after its length prefix): a repeated
    field is its tag before each such piece, so protobuf would produce these very bytes."""
    head = b"\x0a" + encode_uvarint(len(metadata)) + metadata
    if not delimited_readings:
        return head
    return head + b"\x12" + b"\x12".join(delimited_readings)


def file_metadata_request(metadata: ds.UploadMetadata) -> bytes:
    """A serialized FileUploadRequest carrying ``metadata`` (= 1): framed here, as it
    costs half of building the message (which copies the metadata) and serializing it."""
    data = metadata.SerializeToString()
    return b"\x0a" + encode_uvarint(len(data)) + data


def file_chunk_request(chunk: bytes | memoryview) -> bytes:
    """A serialized FileUploadRequest carrying ``chunk`` (file_contents = 2, its data = 1):
    framed here, the chunk is copied once, where building the message copies it twice."""
    if not chunk:
        return b"\x12\x00"  # proto3 leaves an empty data field out
    data_head = encode_uvarint(len(chunk))
    inner_len = 1 + len(data_head) + len(chunk)
    return b"".join((b"\x12", encode_uvarint(inner_len), b"\x0a", data_head, chunk))


def streaming_chunk_request(chunk: bytes | memoryview) -> bytes:
    """A serialized StreamingDataCaptureUploadRequest carrying ``chunk`` (data = 2)."""
    return b"".join((b"\x12", encode_uvarint(len(chunk)), chunk))


def _varint_len(n: int) -> int:
    return max(1, (n.bit_length() + 6) // 7)


def field_size(payload_len: int) -> int:
    """Bytes a length-delimited field with a one-byte tag takes on the wire."""
    return 1 + _varint_len(payload_len) + payload_len
