"""Viam's own Python SDK (DataClient, in its own interpreter) uploading to the sink."""

from __future__ import annotations

import asyncio
import base64
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from google.protobuf.json_format import MessageToDict
from google.protobuf.wrappers_pb2 import StringValue

from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink import Sink
from syncd.sink_store_items import StoredItem, iter_store

SCRIPT = Path(__file__).with_name("viam_sdk_client.py")
KEY_ID = "6c1d7d2e-8a4b-4f0e-9b1a-2d3c4e5f6a7b"
KEY = "sdk-test-key-0d9e"
PART = "a1b2c3d4-part"
T = [datetime(2026, 12, 3, 16, 20, s, 123456 * (s % 2), tzinfo=UTC) for s in range(6)]


def b(data: bytes) -> dict[str, str]:
    return {"$bytes": base64.b64encode(data).decode()}


def when(dt: datetime) -> dict[str, str]:
    return {"$datetime": dt.isoformat()}


def pair(a: datetime, z: datetime) -> dict[str, Any]:
    return {"$tuple": [when(a), when(z)]}


async def run_sdk(python: str, plan: dict[str, Any]) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        python,
        str(SCRIPT),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=SCRIPT.parent,
    )
    out, err = await asyncio.wait_for(proc.communicate(json.dumps(plan).encode()), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def times(item: StoredItem | ds.SensorData) -> tuple[datetime, datetime]:
    sm = item.sensor_metadata if isinstance(item, StoredItem) else item.metadata
    assert sm is not None
    return (
        sm.time_requested.ToDatetime(tzinfo=UTC),
        sm.time_received.ToDatetime(tzinfo=UTC),
    )


async def test_viam_sdk_uploads_land_in_the_store(viam_python: str, tmp_path: Path) -> None:
    image = bytes(range(256)) * 4000
    cloud = b"VERSION .7\n" + bytes(range(256)) * 48_000  # about 12 MB in one message
    notes = b"field notes\n" * 100
    csv = tmp_path / "report.csv"
    csv.write_bytes(b"a,b\n1,2\n")
    rows = [
        {"readings": {"x": 1.5, "ok": True, "name": "n", "list": [1.0, 2.0]}},
        {"readings": {"x": -2.0, "nested": {"y": 0.25}}},
    ]
    common = {"part_id": PART, "tags": ["t1", "t2"]}
    calls = [
        {
            "method": "binary_data_capture_upload",
            "kwargs": {
                **common,
                "binary_data": b(image),
                "component_type": "rdk:component:camera",
                "component_name": "front",
                "method_name": "ReadImage",
                "file_extension": "jpeg",  # the SDK adds the dot
                "method_parameters": {"mime_type": {"$any_string": "image/jpeg"}},
                "dataset_ids": ["ds-1"],
                "data_request_times": pair(T[0], T[1]),
                "mime_type": "image/jpeg",
            },
        },
        {
            "method": "tabular_data_capture_upload",
            "kwargs": {
                **common,
                "tabular_data": rows,
                "component_type": "rdk:component:movement_sensor",
                "component_name": "imu",
                "method_name": "Readings",
                "data_request_times": [pair(T[0], T[1]), pair(T[2], T[3])],
            },
        },
        {
            "method": "streaming_data_capture_upload",
            "kwargs": {
                **common,
                "data": b(cloud),
                "file_ext": "pcd",
                "component_type": "rdk:component:camera",
                "component_name": "lidar",
                "method_name": "NextPointCloud",
                "data_request_times": pair(T[4], T[5]),
                "dataset_ids": ["ds-2"],
                "mime_type": "pointcloud/pcd",
            },
        },
        {
            "method": "file_upload",
            "kwargs": {
                **common,
                "data": b(notes),
                "file_name": "notes",
                "file_extension": ".txt",
                "component_name": "logger",
                "dataset_ids": ["ds-3"],
            },
        },
        {
            "method": "file_upload_from_path",
            "kwargs": {**common, "filepath": str(csv), "mime_type": "text/csv"},
        },
    ]
    store = tmp_path / "store"
    async with Sink(store, api_key_id=KEY_ID, api_key=KEY) as sink:
        plan = {"host": "127.0.0.1", "port": sink.port, "api_key_id": KEY_ID, "api_key": KEY}
        out = await run_sdk(viam_python, {**plan, "calls": calls})
    assert out["auth"] == "ok", out
    assert all("id" in r for r in out["results"]), out
    ids = [r["id"] for r in out["results"]]
    items = {item.id: item for item in iter_store(store)}
    assert sorted(items) == sorted(ids)
    binary, tabular, streamed, note, from_path = (items[i] for i in ids)

    assert binary.kind == "binary" and binary.read_bytes() == image
    um = binary.upload_metadata
    assert (um.part_id, um.component_type, um.component_name, um.method_name) == (
        PART,
        "rdk:component:camera",
        "front",
        "ReadImage",
    )
    assert (um.file_extension, um.mime_type, list(um.tags), list(um.dataset_ids)) == (
        ".jpeg",
        "image/jpeg",
        ["t1", "t2"],
        ["ds-1"],
    )
    param = StringValue()
    assert um.method_parameters["mime_type"].Unpack(param) and param.value == "image/jpeg"
    assert times(binary) == (T[0], T[1])
    assert binary.path.parent == store / PART / "rdk:component:camera" / "front" / "ReadImage"

    assert tabular.kind == "tabular" and tabular.readings == 2
    readings = tabular.sensor_data()
    assert [MessageToDict(r.struct) for r in readings] == rows
    assert [times(r) for r in readings] == [(T[0], T[1]), (T[2], T[3])]
    assert tabular.upload_metadata.type == ds.DATA_TYPE_TABULAR_SENSOR

    assert streamed.kind == "binary" and streamed.read_bytes() == cloud
    assert streamed.upload_metadata.file_extension == ".pcd"
    assert list(streamed.upload_metadata.dataset_ids) == ["ds-2"]
    assert streamed.upload_metadata.mime_type == "pointcloud/pcd"
    assert times(streamed) == (T[4], T[5])

    assert note.kind == "file" and note.read_bytes() == notes
    assert note.path.name.endswith(f"_{note.id}_notes.txt")
    assert note.path.parent == store / PART / "_" / "logger" / "_"
    assert (note.upload_metadata.file_name, list(note.upload_metadata.dataset_ids)) == (
        "notes",
        ["ds-3"],
    )

    assert from_path.read_bytes() == b"a,b\n1,2\n"
    assert from_path.path.name.endswith("_report.csv")
    assert (from_path.upload_metadata.file_name, from_path.upload_metadata.file_extension) == (
        "report",
        ".csv",
    )
    assert from_path.upload_metadata.mime_type == "text/csv"


async def test_viam_sdk_with_a_wrong_key_is_unauthenticated(
    viam_python: str, tmp_path: Path
) -> None:
    store = tmp_path / "store"
    call = {
        "method": "file_upload",
        "kwargs": {"part_id": PART, "data": b(b"x"), "file_name": "x"},
    }
    async with Sink(store, api_key_id=KEY_ID, api_key=KEY) as sink:
        plan = {"host": "127.0.0.1", "port": sink.port, "api_key_id": KEY_ID, "api_key": "nope"}
        out = await run_sdk(viam_python, {**plan, "calls": [call]})
    assert out["auth"]["error"]["status"] == "UNAUTHENTICATED"
    assert out["results"][0]["error"]["status"] == "UNAUTHENTICATED"
    assert list(iter_store(store)) == []
