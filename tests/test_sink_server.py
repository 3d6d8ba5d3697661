"""The sink over real gRPC on loopback: uploads shaped like Viam's Python SDK and like syncd,
malformed streams, path tricks, size and space limits, API-key auth."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from google.protobuf.wrappers_pb2 import StringValue
from grpclib.client import Channel
from grpclib.const import Cardinality, Status
from grpclib.exceptions import GRPCError

from syncd.gen.app.data.v1 import data_pb2
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.app.datasync.v1.data_sync_grpc import DataSyncServiceStub
from syncd.gen.proto.rpc.v1 import auth_pb2
from syncd.gen.proto.rpc.v1.auth_grpc import AuthServiceStub
from syncd.sink import Sink
from syncd.sink_index import INDEX_NAME
from syncd.sink_store_items import StoredItem, iter_store

KEY_ID = "0b5e5b8c-6e36-4a8e-9d2b-1f1b3c1d2e3f"
KEY = "sink-test-key-3f9a1c"
KiB = 1024
MiB = 1024 * KiB


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
async def sink(store: Path) -> AsyncIterator[Sink]:
    async with Sink(store) as s:
        yield s


@pytest.fixture
async def stub(sink: Sink) -> AsyncIterator[DataSyncServiceStub]:
    channel = Channel("127.0.0.1", sink.port)
    yield DataSyncServiceStub(channel)
    channel.close()


def ts(text: str) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(datetime.fromisoformat(text))
    return out


def any_string(text: str) -> AnyProto:
    out = AnyProto()
    out.Pack(StringValue(value=text))
    return out


def struct(values: dict[str, Any]) -> Struct:
    out = Struct()
    out.update(values)
    return out


def all_files(root: Path) -> list[Path]:
    """The store's files, leaving out the sink's query index."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(INDEX_NAME))


def only_item(store: Path) -> StoredItem:
    items = list(iter_store(store))
    assert len(items) == 1, items
    return items[0]


async def stream_call(method: Any, messages: Sequence[Any], metadata: Any = None) -> Any:
    """A client-streaming call the way the SDK makes it: send all, end, read the reply."""
    async with method.open(metadata=metadata) as st:
        for message in messages[:-1]:
            await st.send_message(message)
        if messages:
            await st.send_message(messages[-1], end=True)
        else:
            await st.send_request(end=True)
        reply = await st.recv_message()
        if reply is None:
            await st.recv_trailing_metadata()
        return reply


async def expect_status(status: Status, coro: Any) -> GRPCError:
    with pytest.raises(GRPCError) as info:
        await coro
    assert info.value.status is status, info.value
    return info.value


def sdk_upload_metadata(**fields: Any) -> ds.UploadMetadata:
    base: dict[str, Any] = {
        "part_id": "part-1",
        "component_type": "rdk:component:camera",
        "component_name": "cam",
        "method_name": "ReadImage",
    }
    base.update(fields)
    return ds.UploadMetadata(**base)


def file_requests(
    um: ds.UploadMetadata, data: bytes, chunk: int | None = None
) -> list[ds.FileUploadRequest]:
    """``chunk=None``: the SDK's single data message; otherwise syncd's chunking."""
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    return [ds.FileUploadRequest(metadata=um)] + [
        ds.FileUploadRequest(file_contents=ds.FileData(data=p)) for p in pieces
    ]


def streaming_requests(
    um: ds.UploadMetadata, sm: ds.SensorMetadata, data: bytes, chunk: int | None = None
) -> list[ds.StreamingDataCaptureUploadRequest]:
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]
    first = ds.StreamingDataCaptureUploadRequest(
        metadata=ds.DataCaptureUploadMetadata(upload_metadata=um, sensor_metadata=sm)
    )
    return [first] + [ds.StreamingDataCaptureUploadRequest(data=p) for p in pieces]


def payload(size: int, seed: int = 0) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048
    return (block * (size // len(block) + 1))[:size]


# --- uploads shaped like Viam's Python SDK (wire spec §6) -----------------------------


async def test_sdk_binary_data_capture_upload(stub: DataSyncServiceStub, store: Path) -> None:
    data = payload(200 * KiB)
    um = sdk_upload_metadata(
        type=ds.DATA_TYPE_BINARY_SENSOR,
        tags=["a", "b"],
        dataset_ids=["ds1"],
        mime_type="image/jpeg",
        file_extension=".jpeg",
    )
    um.method_parameters["mime_type"].CopyFrom(any_string("image/jpeg"))
    sm = ds.SensorMetadata(
        time_requested=ts("2026-12-03T16:20:01.123456+00:00"),
        time_received=ts("2026-12-03T16:20:01.223456+00:00"),
        annotations=data_pb2.Annotations(
            classifications=[data_pb2.Classification(label="cat", confidence=0.5)]
        ),
    )
    reply = await stub.DataCaptureUpload(
        ds.DataCaptureUploadRequest(
            metadata=um, sensor_contents=[ds.SensorData(metadata=sm, binary=data)]
        )
    )
    assert reply.binary_data_id and reply.file_id == reply.binary_data_id

    item = only_item(store)
    assert (item.id, item.kind, item.size_bytes) == (reply.binary_data_id, "binary", len(data))
    assert item.path.parent == store / "part-1" / "rdk:component:camera" / "cam" / "ReadImage"
    assert item.path.name.endswith(f"Z_{item.id}.capture")
    assert item.read_bytes() == data
    assert item.upload_metadata == um
    assert item.sensor_metadata == sm
    assert item.sha256 == hashlib.sha256(data).hexdigest()
    # the capture file forwards everything: header from the upload, the reading as sent
    header = item.header()
    assert (header.component_type, header.component_name, header.method_name) == (
        "rdk:component:camera",
        "cam",
        "ReadImage",
    )
    assert header.type == ds.DATA_TYPE_BINARY_SENSOR
    assert list(header.tags) == ["a", "b"]
    assert (header.file_extension, header.mime_type) == (".jpeg", "image/jpeg")
    assert header.method_parameters["mime_type"] == any_string("image/jpeg")
    assert item.sensor_data() == [ds.SensorData(metadata=sm, binary=data)]


async def test_sdk_binary_upload_without_times(stub: DataSyncServiceStub, store: Path) -> None:
    # the SDK leaves SensorData.metadata out when no data_request_times are given
    um = sdk_upload_metadata(type=ds.DATA_TYPE_BINARY_SENSOR, file_extension=".png")
    await stub.DataCaptureUpload(
        ds.DataCaptureUploadRequest(metadata=um, sensor_contents=[ds.SensorData(binary=b"png")])
    )
    item = only_item(store)
    assert item.sensor_metadata is None
    assert item.read_bytes() == b"png"
    assert item.sensor_data() == [ds.SensorData(binary=b"png")]


async def test_sdk_tabular_data_capture_upload(stub: DataSyncServiceStub, store: Path) -> None:
    um = sdk_upload_metadata(
        component_type="rdk:component:movement_sensor",
        component_name="imu",
        method_name="Readings",
        type=ds.DATA_TYPE_TABULAR_SENSOR,
        tags=["field"],
    )
    readings = [
        ds.SensorData(
            metadata=ds.SensorMetadata(
                time_requested=ts(f"2026-12-03T16:20:0{i}+00:00"),
                time_received=ts(f"2026-12-03T16:20:0{i}.5+00:00"),
            ),
            struct=struct({"readings": {"x": i, "ok": True, "name": f"r{i}", "v": [1, 2]}}),
        )
        for i in range(5)
    ]
    reply = await stub.DataCaptureUpload(
        ds.DataCaptureUploadRequest(metadata=um, sensor_contents=readings)
    )
    item = only_item(store)
    assert (item.id, item.kind, item.readings) == (reply.file_id, "tabular", 5)
    assert reply.binary_data_id == reply.file_id
    assert item.path.suffix == ".capture"
    assert item.upload_metadata == um
    assert item.sensor_data() == readings
    assert item.header().type == ds.DATA_TYPE_TABULAR_SENSOR
    with pytest.raises(ValueError):
        item.read_bytes()


async def test_sdk_file_upload(stub: DataSyncServiceStub, store: Path) -> None:
    # file_upload_from_path sends the stem as file_name and the suffix as extension
    um = ds.UploadMetadata(
        part_id="part-1",
        type=ds.DATA_TYPE_FILE,
        file_name="report",
        file_extension=".txt",
        tags=["t"],
        dataset_ids=["d"],
        mime_type="text/plain",
    )
    data = payload(3 * MiB)
    reply = await stream_call(stub.FileUpload, file_requests(um, data))
    item = only_item(store)
    assert (item.id, item.kind) == (reply.binary_data_id, "file")
    assert reply.file_id == reply.binary_data_id
    assert item.path == store / "part-1" / "_" / "_" / "_" / item.path.name
    assert item.path.name.endswith(f"_{item.id}_report.txt")
    assert item.path.read_bytes() == data  # original bytes, openable by a person
    assert item.read_bytes() == data
    assert item.upload_metadata == um
    assert item.sidecar.exists() and item.sidecar.name.startswith(".")


async def test_sdk_file_upload_extension_without_dot(
    stub: DataSyncServiceStub, store: Path
) -> None:
    # DataClient.file_upload passes file_extension as given, dot or not
    um = ds.UploadMetadata(
        part_id="p", type=ds.DATA_TYPE_FILE, file_name="notes", file_extension="md"
    )
    await stream_call(stub.FileUpload, file_requests(um, b"# hi\n"))
    item = only_item(store)
    assert item.path.name.endswith("_notes.md")
    assert item.upload_metadata.file_extension == "md"


async def test_sdk_streaming_data_capture_upload(stub: DataSyncServiceStub, store: Path) -> None:
    um = sdk_upload_metadata(
        type=ds.DATA_TYPE_BINARY_SENSOR, file_extension=".pcd", tags=["x"], dataset_ids=["d1"]
    )
    sm = ds.SensorMetadata(
        time_requested=ts("2026-12-03T10:00:00+00:00"),
        time_received=ts("2026-12-03T10:00:01+00:00"),
    )
    data = payload(5 * MiB, seed=1)
    reply = await stream_call(stub.StreamingDataCaptureUpload, streaming_requests(um, sm, data))
    item = only_item(store)
    assert (item.id, item.kind, item.size_bytes) == (reply.binary_data_id, "binary", len(data))
    assert item.read_bytes() == data
    assert (item.upload_metadata, item.sensor_metadata) == (um, sm)
    assert item.sensor_data() == [ds.SensorData(metadata=sm, binary=data)]


# --- uploads chunked like syncd -------------------------------------------------------


async def test_chunked_file_upload_keeps_the_robot_file_name(
    stub: DataSyncServiceStub, store: Path
) -> None:
    um = ds.UploadMetadata(
        part_id="part-1",
        type=ds.DATA_TYPE_FILE,
        file_name="/home/robot/capture/tag=door/img.JPG",
        file_extension=".jpg",
        tags=["door"],
    )
    data = payload(40 * 64 * KiB + 123, seed=2)
    reply = await stream_call(stub.FileUpload, file_requests(um, data, chunk=64 * KiB))
    item = only_item(store)
    assert item.id == reply.binary_data_id
    assert item.path.name.endswith(f"_{item.id}_img.JPG")  # no second extension
    assert item.read_bytes() == data
    assert item.sha256 == hashlib.sha256(data).hexdigest()
    assert item.upload_metadata.file_name == "/home/robot/capture/tag=door/img.JPG"


async def test_chunked_streaming_upload(stub: DataSyncServiceStub, store: Path) -> None:
    um = sdk_upload_metadata(type=ds.DATA_TYPE_BINARY_SENSOR, file_extension=".jpeg")
    sm = ds.SensorMetadata(time_received=ts("2026-12-03T10:00:01+00:00"))
    data = payload(5 * MiB + 7, seed=3)
    await stream_call(stub.StreamingDataCaptureUpload, streaming_requests(um, sm, data, chunk=MiB))
    item = only_item(store)
    assert item.read_bytes() == data
    assert item.sensor_metadata == sm


async def test_several_binary_readings_become_several_files(
    stub: DataSyncServiceStub, store: Path
) -> None:
    um = sdk_upload_metadata(type=ds.DATA_TYPE_BINARY_SENSOR)
    readings = [ds.SensorData(binary=bytes([i]) * 10) for i in range(3)]
    reply = await stub.DataCaptureUpload(
        ds.DataCaptureUploadRequest(metadata=um, sensor_contents=readings)
    )
    items = list(iter_store(store))
    assert sorted(i.read_bytes() for i in items) == [r.binary for r in readings]
    assert reply.binary_data_id in {i.id for i in items}
    assert len({i.id for i in items}) == 3


async def test_empty_payloads_are_stored(stub: DataSyncServiceStub, store: Path) -> None:
    file_um = ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_FILE, file_name="empty")
    await stream_call(stub.FileUpload, file_requests(file_um, b""))
    bin_um = sdk_upload_metadata(type=ds.DATA_TYPE_BINARY_SENSOR)
    await stream_call(
        stub.StreamingDataCaptureUpload, streaming_requests(bin_um, ds.SensorMetadata(), b"")
    )
    items = sorted(iter_store(store), key=lambda i: i.kind)
    assert [(i.kind, i.read_bytes()) for i in items] == [("binary", b""), ("file", b"")]


async def test_ids_are_unique(stub: DataSyncServiceStub, store: Path) -> None:
    um = sdk_upload_metadata(type=ds.DATA_TYPE_BINARY_SENSOR)
    request = ds.DataCaptureUploadRequest(metadata=um, sensor_contents=[ds.SensorData(binary=b"x")])
    replies = await asyncio.gather(*(stub.DataCaptureUpload(request) for _ in range(20)))
    assert len({r.binary_data_id for r in replies}) == 20
    assert len(list(iter_store(store))) == 20


# --- malformed requests ---------------------------------------------------------------

FILE_UM = ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_FILE, file_name="f.txt")
BIN_UM = ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_BINARY_SENSOR)
CHUNK = ds.FileUploadRequest(file_contents=ds.FileData(data=b"abc"))
DATA = ds.StreamingDataCaptureUploadRequest(data=b"abc")
STREAM_META = ds.StreamingDataCaptureUploadRequest(
    metadata=ds.DataCaptureUploadMetadata(upload_metadata=BIN_UM)
)

MALFORMED_STREAMS = {
    "file: empty stream": ("FileUpload", [], "empty stream"),
    "file: data first": ("FileUpload", [CHUNK], "must carry metadata"),
    "file: metadata twice": (
        "FileUpload",
        [ds.FileUploadRequest(metadata=FILE_UM), CHUNK, ds.FileUploadRequest(metadata=FILE_UM)],
        "metadata sent twice",
    ),
    "file: empty message after metadata": (
        "FileUpload",
        [ds.FileUploadRequest(metadata=FILE_UM), ds.FileUploadRequest()],
        "has no file_contents",
    ),
    "file: binary type": (
        "FileUpload",
        [ds.FileUploadRequest(metadata=BIN_UM), CHUNK],
        "needs type DATA_TYPE_FILE",
    ),
    "streaming: empty stream": ("StreamingDataCaptureUpload", [], "empty stream"),
    "streaming: data first": ("StreamingDataCaptureUpload", [DATA], "must carry metadata"),
    "streaming: metadata twice": (
        "StreamingDataCaptureUpload",
        [STREAM_META, DATA, STREAM_META],
        "metadata sent twice",
    ),
    "streaming: tabular type": (
        "StreamingDataCaptureUpload",
        [
            ds.StreamingDataCaptureUploadRequest(
                metadata=ds.DataCaptureUploadMetadata(
                    upload_metadata=ds.UploadMetadata(type=ds.DATA_TYPE_TABULAR_SENSOR)
                )
            ),
            DATA,
        ],
        "needs type DATA_TYPE_BINARY_SENSOR",
    ),
}


@pytest.mark.parametrize("case", MALFORMED_STREAMS, ids=list(MALFORMED_STREAMS))
async def test_malformed_streams_are_invalid_argument(
    stub: DataSyncServiceStub, store: Path, case: str
) -> None:
    rpc, messages, message = MALFORMED_STREAMS[case]
    err = await expect_status(Status.INVALID_ARGUMENT, stream_call(getattr(stub, rpc), messages))
    assert message in (err.message or "")
    assert all_files(store) == []  # no data, no sidecar, no temp file


TAB = ds.SensorData(struct=struct({"a": 1}))
BIN = ds.SensorData(binary=b"x")
MALFORMED_UNARY = {
    "no metadata": (ds.DataCaptureUploadRequest(sensor_contents=[TAB]), "has no metadata"),
    "no readings": (ds.DataCaptureUploadRequest(metadata=BIN_UM), "no sensor_contents"),
    "empty reading": (
        ds.DataCaptureUploadRequest(metadata=BIN_UM, sensor_contents=[ds.SensorData()]),
        "neither struct nor binary",
    ),
    "mixed readings": (
        ds.DataCaptureUploadRequest(metadata=BIN_UM, sensor_contents=[TAB, BIN]),
        "mixes binary and tabular",
    ),
    "binary type, tabular readings": (
        ds.DataCaptureUploadRequest(metadata=BIN_UM, sensor_contents=[TAB]),
        "does not match",
    ),
    "file type": (
        ds.DataCaptureUploadRequest(metadata=FILE_UM, sensor_contents=[BIN]),
        "use FileUpload",
    ),
}


@pytest.mark.parametrize("case", MALFORMED_UNARY, ids=list(MALFORMED_UNARY))
async def test_malformed_data_capture_upload(
    stub: DataSyncServiceStub, store: Path, case: str
) -> None:
    request, message = MALFORMED_UNARY[case]
    err = await expect_status(Status.INVALID_ARGUMENT, stub.DataCaptureUpload(request))
    assert message in (err.message or "")
    assert all_files(store) == []


async def test_unspecified_type_is_taken_from_the_readings(
    stub: DataSyncServiceStub, store: Path
) -> None:
    um = ds.UploadMetadata(part_id="p")
    await stub.DataCaptureUpload(ds.DataCaptureUploadRequest(metadata=um, sensor_contents=[TAB]))
    assert only_item(store).kind == "tabular"


async def test_undecodable_message(sink: Sink, store: Path) -> None:
    channel = Channel("127.0.0.1", sink.port)
    try:
        async with channel.request(
            "/viam.app.datasync.v1.DataSyncService/DataCaptureUpload",
            Cardinality.UNARY_UNARY,
            _Raw,
            _Raw,
        ) as st:
            await st.send_message(_Raw(b"\x0a\xff\xff\xff"), end=True)
            await expect_status(Status.INVALID_ARGUMENT, st.recv_message())
    finally:
        channel.close()
    assert all_files(store) == []


class _Raw:
    """Bytes sent as they are, to put a broken protobuf on the wire."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = data

    def SerializeToString(self) -> bytes:
        return self.data

    @classmethod
    def FromString(cls, data: bytes) -> _Raw:
        return cls(data)


# --- path tricks ----------------------------------------------------------------------

HOSTILE = [
    dict(part_id="../../etc", component_type="/etc", component_name="..", method_name="a\x00b"),
    dict(part_id="..", component_type=".", component_name="...", method_name="../../../../x"),
    dict(part_id="\\..\\..\\win", component_type="c\nd\te", component_name="/", method_name=""),
    dict(part_id="tag=evil", component_type="dataset=x", component_name=".hidden", method_name="~"),
]
HOSTILE_FILES = [
    ("../../etc/passwd", ".conf"),
    ("/etc/shadow", "/../../x"),
    ("C:\\Users\\..\\..\\boot.ini", ".ini\x00.exe"),
    ("..", ".."),
    ("\x00", "\x7f"),
    ("x" * 1000, "." + "y" * 300),
]


@pytest.mark.parametrize("names", HOSTILE, ids=range(len(HOSTILE)))
@pytest.mark.parametrize("file_name,ext", HOSTILE_FILES, ids=range(len(HOSTILE_FILES)))
async def test_path_tricks_stay_inside_the_store(
    stub: DataSyncServiceStub, store: Path, tmp_path: Path, names: dict, file_name: str, ext: str
) -> None:
    um = ds.UploadMetadata(type=ds.DATA_TYPE_FILE, file_name=file_name, file_extension=ext, **names)
    await stream_call(stub.FileUpload, file_requests(um, b"data"))
    bin_um = ds.UploadMetadata(type=ds.DATA_TYPE_BINARY_SENSOR, file_extension=ext, **names)
    await stub.DataCaptureUpload(
        ds.DataCaptureUploadRequest(metadata=bin_um, sensor_contents=[BIN])
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]
    root = store.resolve()
    files = all_files(store)
    assert len(files) == 4  # two data files, two sidecars
    for path in files:
        assert path.resolve().is_relative_to(root)
        rel = path.relative_to(store).parts
        assert len(rel) == 5
        for part in rel[:-1]:
            assert part not in ("", ".", "..") and not part.startswith(".")
            assert not any(ch in part for ch in "/\\\x00\n\t=")
        assert len(rel[-1].encode()) <= 255
    items = sorted(iter_store(store), key=lambda i: i.kind)
    assert [i.kind for i in items] == ["binary", "file"]
    assert items[1].upload_metadata == um  # the original names are kept, in the sidecar
    assert items[0].upload_metadata == bin_um


async def test_a_link_out_of_the_store_is_refused(
    stub: DataSyncServiceStub, store: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store / "evil").symlink_to(outside)
    um = ds.UploadMetadata(part_id="evil", type=ds.DATA_TYPE_FILE, file_name="x")
    await expect_status(Status.INTERNAL, stream_call(stub.FileUpload, file_requests(um, b"x")))
    assert list(outside.rglob("*")) == []


# --- limits ---------------------------------------------------------------------------


async def test_message_over_max_message_bytes(store: Path) -> None:
    async with Sink(store, max_message_bytes=4 * MiB) as sink:
        channel = Channel("127.0.0.1", sink.port)
        stub = DataSyncServiceStub(channel)
        try:
            # the SDK's single-message upload of a 5 MiB file
            um = ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_FILE, file_name="big")
            err = await expect_status(
                Status.RESOURCE_EXHAUSTED,
                stream_call(stub.FileUpload, file_requests(um, payload(5 * MiB))),
            )
            assert "max_message_bytes" in (err.message or "")
            # the same bytes in syncd's chunks are fine
            await stream_call(stub.FileUpload, file_requests(um, payload(5 * MiB), chunk=MiB))
            request = ds.DataCaptureUploadRequest(
                metadata=BIN_UM, sensor_contents=[ds.SensorData(binary=payload(5 * MiB))]
            )
            await expect_status(Status.RESOURCE_EXHAUSTED, stub.DataCaptureUpload(request))
        finally:
            channel.close()
    assert len(list(iter_store(store))) == 1
    assert len(all_files(store)) == 2


@pytest.mark.parametrize("rpc", ["FileUpload", "StreamingDataCaptureUpload", "DataCaptureUpload"])
async def test_upload_over_max_upload_bytes(store: Path, rpc: str) -> None:
    async with Sink(store, max_upload_bytes=MiB) as sink:
        channel = Channel("127.0.0.1", sink.port)
        stub = DataSyncServiceStub(channel)
        data = payload(MiB + 1)
        try:
            if rpc == "FileUpload":
                call = stream_call(stub.FileUpload, file_requests(FILE_UM, data, chunk=64 * KiB))
            elif rpc == "StreamingDataCaptureUpload":
                messages = streaming_requests(BIN_UM, ds.SensorMetadata(), data, chunk=64 * KiB)
                call = stream_call(stub.StreamingDataCaptureUpload, messages)
            else:
                call = stub.DataCaptureUpload(
                    ds.DataCaptureUploadRequest(
                        metadata=BIN_UM, sensor_contents=[ds.SensorData(binary=data)]
                    )
                )
            err = await expect_status(Status.RESOURCE_EXHAUSTED, call)
            assert "max_upload_bytes" in (err.message or "")
            # exactly at the limit is fine
            await stream_call(stub.FileUpload, file_requests(FILE_UM, data[:MiB], chunk=64 * KiB))
        finally:
            channel.close()
    assert [i.size_bytes for i in iter_store(store)] == [MiB]
    assert len(all_files(store)) == 2


async def test_store_full_by_min_free_bytes(store: Path) -> None:
    store.mkdir()
    free = os.statvfs(store).f_bavail * os.statvfs(store).f_frsize
    async with Sink(store, min_free_bytes=free + 1024**3) as sink:
        channel = Channel("127.0.0.1", sink.port)
        stub = DataSyncServiceStub(channel)
        try:
            err = await expect_status(
                Status.RESOURCE_EXHAUSTED,
                stream_call(stub.FileUpload, file_requests(FILE_UM, b"abc")),
            )
            assert "store is full" in (err.message or "")
            request = ds.DataCaptureUploadRequest(metadata=BIN_UM, sensor_contents=[BIN])
            await expect_status(Status.RESOURCE_EXHAUSTED, stub.DataCaptureUpload(request))
            tab_um = ds.UploadMetadata(type=ds.DATA_TYPE_TABULAR_SENSOR)
            request = ds.DataCaptureUploadRequest(metadata=tab_um, sensor_contents=[TAB])
            await expect_status(Status.RESOURCE_EXHAUSTED, stub.DataCaptureUpload(request))
            messages = streaming_requests(BIN_UM, ds.SensorMetadata(), b"abc")
            await expect_status(
                Status.RESOURCE_EXHAUSTED, stream_call(stub.StreamingDataCaptureUpload, messages)
            )
        finally:
            channel.close()
    assert all_files(store) == []


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Any:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a 2 MiB tmpfs here: {result.stderr.strip() or result.returncode}"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=False)


async def test_real_full_filesystem(tiny_fs: Path) -> None:
    store = tiny_fs / "store"
    async with Sink(store, min_free_bytes=0) as sink:
        channel = Channel("127.0.0.1", sink.port)
        stub = DataSyncServiceStub(channel)
        try:
            await expect_status(
                Status.RESOURCE_EXHAUSTED,
                stream_call(stub.FileUpload, file_requests(FILE_UM, payload(3 * MiB), 64 * KiB)),
            )
            assert all_files(store) == []
            # a binary reading is spooled, then framed: it needs its size twice for a moment
            messages = streaming_requests(
                BIN_UM, ds.SensorMetadata(), payload(1200 * KiB), 64 * KiB
            )
            await expect_status(
                Status.RESOURCE_EXHAUSTED, stream_call(stub.StreamingDataCaptureUpload, messages)
            )
            assert all_files(store) == []
            # and the space is usable again afterwards
            data = payload(512 * KiB)
            await stream_call(stub.FileUpload, file_requests(FILE_UM, data, 64 * KiB))
        finally:
            channel.close()
    assert [i.read_bytes() == data for i in iter_store(store)] == [True]


async def test_cancelled_upload_leaves_nothing(sink: Sink, store: Path) -> None:
    channel = Channel("127.0.0.1", sink.port)
    stub = DataSyncServiceStub(channel)
    try:
        async with stub.FileUpload.open() as st:
            await st.send_message(ds.FileUploadRequest(metadata=FILE_UM))
            await st.send_message(CHUNK)
            for _ in range(100):
                if any(p.name.startswith(".tmp-") for p in all_files(store)):
                    break
                await asyncio.sleep(0.01)
            assert all_files(store), "the upload should have started a temp file"
            await st.cancel()
    finally:
        channel.close()
    for _ in range(200):
        if not all_files(store):
            break
        await asyncio.sleep(0.01)
    assert all_files(store) == []


# --- auth -----------------------------------------------------------------------------


@pytest.fixture
async def keyed_sink(store: Path) -> AsyncIterator[Sink]:
    async with Sink(store, api_key_id=KEY_ID, api_key=KEY) as s:
        yield s


@pytest.fixture
async def channel(keyed_sink: Sink) -> AsyncIterator[Channel]:
    ch = Channel("127.0.0.1", keyed_sink.port)
    yield ch
    ch.close()


async def authenticate(
    channel: Channel, key_id: str = KEY_ID, key: str = KEY, kind: str = "api-key"
) -> str:
    reply = await AuthServiceStub(channel).Authenticate(
        auth_pb2.AuthenticateRequest(
            entity=key_id, credentials=auth_pb2.Credentials(type=kind, payload=key)
        )
    )
    return reply.access_token


@pytest.mark.parametrize(
    "key_id,key,kind",
    [
        (KEY_ID, "wrong", "api-key"),
        ("other-id", KEY, "api-key"),
        (KEY_ID, KEY, "robot-secret"),
        ("", "", ""),
    ],
)
async def test_wrong_credentials_are_unauthenticated(
    channel: Channel, key_id: str, key: str, kind: str
) -> None:
    await expect_status(Status.UNAUTHENTICATED, authenticate(channel, key_id, key, kind))


async def test_data_calls_need_a_valid_token(
    keyed_sink: Sink, channel: Channel, store: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="syncd")
    stub = DataSyncServiceStub(channel)
    request = ds.DataCaptureUploadRequest(metadata=BIN_UM, sensor_contents=[BIN])
    await expect_status(Status.UNAUTHENTICATED, stub.DataCaptureUpload(request))
    for bad in ("Bearer nope", "nope", "bearer x", "Bearer "):
        await expect_status(
            Status.UNAUTHENTICATED, stub.DataCaptureUpload(request, metadata={"authorization": bad})
        )
    for rpc, messages in (
        ("FileUpload", file_requests(FILE_UM, payload(MiB))),
        ("StreamingDataCaptureUpload", streaming_requests(BIN_UM, ds.SensorMetadata(), b"x")),
    ):
        await expect_status(Status.UNAUTHENTICATED, stream_call(getattr(stub, rpc), messages))
    assert all_files(store) == []

    token = await authenticate(channel)
    auth = {"authorization": f"Bearer {token}"}
    await stub.DataCaptureUpload(request, metadata=auth)
    await stream_call(stub.FileUpload, file_requests(FILE_UM, b"abc"), metadata=auth)

    keyed_sink.revoke_tokens()
    await expect_status(Status.UNAUTHENTICATED, stub.DataCaptureUpload(request, metadata=auth))
    fresh = {"authorization": f"Bearer {await authenticate(channel)}"}
    await stub.DataCaptureUpload(request, metadata=fresh)
    assert len(list(iter_store(store))) == 3

    # (hpack logs headers at debug level; the CLI keeps it at warning)
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("syncd"))
    assert "stored binary" in logged and "refused: UNAUTHENTICATED" in logged
    for secret in (KEY, token, fresh["authorization"][7:]):
        assert secret not in logged


async def test_open_sink_accepts_any_credentials_and_no_token(
    stub: DataSyncServiceStub, sink: Sink
) -> None:
    channel = Channel("127.0.0.1", sink.port)
    try:
        assert await authenticate(channel, "anyone", "anything")
    finally:
        channel.close()
    request = ds.DataCaptureUploadRequest(metadata=BIN_UM, sensor_contents=[BIN])
    await stub.DataCaptureUpload(request)


# --- lifecycle ------------------------------------------------------------------------


async def test_start_stop_and_port(store: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="syncd.sink")
    sink = Sink(store)
    with pytest.raises(RuntimeError):
        _ = sink.port
    await sink.start()
    try:
        assert sink.port > 0
        assert f"sink listening on 127.0.0.1:{sink.port}, storing into {store}" in caplog.text
        with pytest.raises(RuntimeError):
            await sink.start()
    finally:
        await sink.stop()
    await sink.stop()  # idempotent


async def test_start_sweeps_leftovers(store: Path) -> None:
    part = store / "p" / "_" / "_" / "_"
    part.mkdir(parents=True)
    (part / ".tmp-0123.data").write_bytes(b"half")
    orphan = (
        part / ".2026-01-01T00_00_00.000000Z_00000000000000000000000000000000.capture.meta.json"
    )
    orphan.write_text("{}")
    os.utime(orphan, (0, 0))
    async with Sink(store):
        pass
    assert all_files(store) == []


def test_half_configured_key_is_refused(store: Path) -> None:
    from syncd.errors import ConfigError

    with pytest.raises(ConfigError):
        Sink(store, api_key_id=KEY_ID)
    with pytest.raises(ConfigError):
        Sink(store, api_key=KEY)


async def test_listen_on_a_busy_port_is_one_clear_error(sink: Sink, store: Path) -> None:
    from syncd.errors import SyncdError

    with pytest.raises(SyncdError, match=r"cannot listen on 127\.0\.0\.1"):
        async with Sink(store, port=sink.port):
            pass
