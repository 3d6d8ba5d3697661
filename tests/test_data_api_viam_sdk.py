"""Viam's own Python SDK (ViamClient.data_client, in its own interpreter) querying the sink.

The sink is filled by syncd's uploader path (CloudClient, requests built with syncd's
mapping functions); then one run of tests/viam_sdk_data_client.py makes the DataClient
query, tag and delete calls a user's script would, and prints what the SDK returned.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from google.protobuf.wrappers_pb2 import StringValue

from syncd import mapping
from syncd.cloud import CloudClient
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink import Sink
from syncd.sink_index_types import CaptureIdentity, datetime_ns
from syncd.sink_store_items import iter_store

SCRIPT = Path(__file__).with_name("viam_sdk_data_client.py")
KEY_ID = "2d3c4e5f-6a7b-4c8d-9e0f-1a2b3c4d5e6f"
KEY = "sdk-query-key"
PART = "part-sdk"
IDENTITY = CaptureIdentity(organization_id="org-sdk", location_id="loc-sdk", robot_name="rover")
T0 = datetime(2026, 11, 2, 8, 30, 0, 250000, tzinfo=UTC)
ROWS = [
    {"x": 1, "ok": True, "name": "a", "list": [1, "b"], "nested": {"y": 0.5}, "none": None},
    {"x": 2},
    {"x": 3},
]


def at(seconds: int) -> int:
    return datetime_ns(T0 + timedelta(seconds=seconds))


async def fill(client: CloudClient) -> dict[str, Any]:
    """Five camera frames (two annotated), one file, three readings; returns their ids."""
    cam = mapping.Stream(
        "rdk:component:camera",
        "cam",
        "ReadImage",
        ds.DATA_TYPE_BINARY_SENSOR,
        tags=("robot",),
        file_extension=".jpeg",
        mime_type="image/jpeg",
    )
    frames = []
    for i in range(5):
        reading = mapping.binary_reading(f"frame-{i}".encode() * 100, at(i), at(i) + 1000)
        for label in (["cat", "dog"], ["cat"])[i] if i < 2 else []:
            reading.metadata.annotations.bboxes.add(label=label, x_max_normalized=1.0)
        metadata = mapping.upload_metadata(PART, cam)
        metadata.method_parameters["mime_type"].Pack(StringValue(value="image/jpeg"))
        frames.append(
            await client.data_capture_upload(
                ds.DataCaptureUploadRequest(metadata=metadata, sensor_contents=[reading])
            )
        )
    note = ds.UploadMetadata(
        part_id=PART,
        type=ds.DATA_TYPE_FILE,
        file_name="/home/robot/notes.txt",
        file_extension=".txt",
        dataset_ids=["ds1"],
        file_modify_time=mapping.timestamp_from_ns(at(100)),
    )

    async def chunks() -> AsyncIterator[bytes]:
        yield b"field notes\n"

    file_id = await client.file_upload(note, chunks)
    imu = mapping.Stream("rdk:component:sensor", "imu", "Readings", ds.DATA_TYPE_TABULAR_SENSOR)
    readings = [
        mapping.tabular_reading(json.dumps(row), at(10 + i), at(10 + i) + 2000)
        for i, row in enumerate(ROWS)
    ]
    await client.data_capture_upload(
        ds.DataCaptureUploadRequest(
            metadata=mapping.upload_metadata(PART, imu), sensor_contents=readings
        )
    )
    return {"frames": frames, "file": file_id}


async def run_sdk(python: str, plan: dict[str, Any]) -> list[Any]:
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
    return json.loads(out)["results"]


def naive(seconds: int, micros: int = 0) -> str:
    """How the SDK gives times back: naive UTC datetimes."""
    return (T0 + timedelta(seconds=seconds, microseconds=micros)).replace(tzinfo=None).isoformat()


def payload(item: dict[str, Any]) -> bytes:
    return base64.b64decode(item["binary"])


async def test_viam_sdk_queries_tags_and_deletes(viam_python: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with Sink(store, api_key_id=KEY_ID, api_key=KEY, identity=IDENTITY) as sink:
        client = CloudClient("127.0.0.1", sink.port, tls=False, api_key_id=KEY_ID, api_key=KEY)
        try:
            ids = await fill(client)
        finally:
            await client.close()
        f0, f1, f2, f3, f4 = ids["frames"]
        calls: list[dict[str, Any]] = [
            # 0-2: tabular
            {
                "method": "tabular_data_by_filter",
                "kwargs": {"filter": {"$filter": {"component_name": "imu"}}},
            },
            {"method": "tabular_data_by_filter", "kwargs": {"count_only": True}},
            {
                "method": "page_tabular",
                "kwargs": {"limit": 2, "sort_order": {"$order": "ORDER_ASCENDING"}},
            },
            # 3-5: binary by filter, paged; without bytes; by interval and labels
            {"method": "page_binary", "kwargs": {"limit": 2}},
            {
                "method": "binary_data_by_filter",
                "kwargs": {
                    "filter": {"$filter": {"tags": ["robot"], "organization_ids": ["org-sdk"]}},
                    "include_binary_data": False,
                },
            },
            {
                "method": "binary_data_by_filter",
                "kwargs": {
                    "filter": {
                        "$filter": {
                            "start_time": {"$datetime": (T0 + timedelta(seconds=1)).isoformat()},
                            "end_time": {"$datetime": (T0 + timedelta(seconds=3)).isoformat()},
                        }
                    },
                    "sort_order": {"$order": "ORDER_ASCENDING"},
                },
            },
            # 6-8: by ids, both forms, and none
            {"method": "binary_data_by_ids", "kwargs": {"binary_ids": [f3, f0]}},
            {
                "method": "binary_data_by_ids",
                "kwargs": {
                    "binary_ids": [{"$binary_id": {"file_id": ids["file"]}}],
                    "include_binary_data": False,
                },
            },
            {"method": "binary_data_by_ids", "kwargs": {"binary_ids": []}},
            # 9-15: tags
            {
                "method": "add_tags_to_binary_data_by_ids",
                "kwargs": {"tags": ["keep"], "binary_ids": [f0, f1]},
            },
            {
                "method": "remove_tags_from_binary_data_by_ids",
                "kwargs": {"tags": ["keep"], "binary_ids": [f0]},
            },
            {
                "method": "add_tags_to_binary_data_by_filter",
                "kwargs": {"tags": ["doc"], "filter": {"$filter": {"dataset_id": "ds1"}}},
            },
            {"method": "tags_by_filter", "kwargs": {}},
            {
                "method": "remove_tags_from_binary_data_by_filter",
                "kwargs": {"tags": ["robot"], "filter": {"$filter": {"component_name": "cam"}}},
            },
            {"method": "tags_by_filter", "kwargs": {"filter": {"$filter": {"tags": ["keep"]}}}},
            {
                "method": "binary_data_by_filter",
                "kwargs": {
                    "filter": {"$tags_filter": {"type": "TAGS_FILTER_TYPE_UNTAGGED"}},
                    "include_binary_data": False,
                },
            },
            # 16-17: labels
            {"method": "bounding_box_labels_by_filter", "kwargs": {}},
            {
                "method": "bounding_box_labels_by_filter",
                "kwargs": {"filter": {"$filter": {"tags": ["keep"]}}},
            },
            # 18-23: deletes
            {"method": "delete_binary_data_by_ids", "kwargs": {"binary_ids": [f4]}},
            {
                "method": "delete_binary_data_by_filter",
                "kwargs": {"filter": {"$filter": {"mime_type": ["text/plain"]}}},
            },
            {
                "method": "delete_tabular_data",
                "kwargs": {
                    "organization_id": "org-sdk",
                    "delete_older_than_days": 0,
                    "filter": {"$delete_filter": {"component_name": "nope"}},
                },
            },
            {
                "method": "delete_tabular_data",
                "kwargs": {"organization_id": "org-sdk", "delete_older_than_days": 0},
            },
            {"method": "delete_tabular_data_by_filter", "kwargs": {"filter": None}},
            {"method": "binary_data_by_filter", "kwargs": {"count_only": True}},
        ]
        plan = {"host": "127.0.0.1", "port": sink.port, "api_key_id": KEY_ID, "api_key": KEY}
        results = await run_sdk(viam_python, {**plan, "calls": calls})

    # tabular: dict data (numbers as floats, null as 0), naive UTC times, metadata by index
    data, count, last = results[0]
    assert count == 3 and last
    assert [row["data"] for row in data] == [
        {"x": 3.0},
        {"x": 2.0},
        {
            "x": 1.0,
            "ok": True,
            "name": "a",
            "list": [1.0, "b"],
            "nested": {"y": 0.5},
            "none": 0,
        },
    ]
    assert [row["time_requested"] for row in data] == [naive(12), naive(11), naive(10)]
    assert data[0]["time_received"] == naive(12, 2)
    meta = data[0]["metadata"]
    assert (meta["component_name"], meta["method_name"], meta["part_id"]) == (
        "imu",
        "Readings",
        PART,
    )
    assert (meta["organization_id"], meta["location_id"], meta["robot_name"]) == (
        "org-sdk",
        "loc-sdk",
        "rover",
    )
    assert results[1][:2] == [[], 3]
    assert [[r["data"]["x"] for r in p["data"]] for p in results[2]] == [[1.0, 2.0], [3.0]]

    # binary: paging ends, bytes and metadata come back
    pages = results[3]
    assert [len(p["data"]) for p in pages] == [2, 2, 2]
    items = [item for p in pages for item in p["data"]]
    assert payload(items[0]) == b"field notes\n"  # newest first: the file's mtime is latest
    assert [payload(i) for i in items[1:]] == [f"frame-{i}".encode() * 100 for i in (4, 3, 2, 1, 0)]
    frame0 = items[-1]["metadata"]
    assert frame0["binary_data_id"] == frame0["id"] == f0
    cm = frame0["capture_metadata"]
    assert (cm["component_name"], cm["mime_type"], cm["tags"]) == ("cam", "image/jpeg", ["robot"])
    assert cm["method_parameters"] == {
        "mime_type": {
            "@type": "type.googleapis.com/google.protobuf.StringValue",
            "value": "image/jpeg",
        }
    }
    assert [b["label"] for b in frame0["annotations"]["bboxes"]] == ["cat", "dog"]
    assert frame0["file_ext"] == ".jpeg" and frame0["file_size_bytes"] == "700"
    assert frame0["time_requested"] == "2026-11-02T08:30:00.250Z"
    bare, count, _ = results[4]
    assert count == 5 and all(payload(i) == b"" for i in bare)
    window, _, _ = results[5]
    assert [payload(i) for i in window] == [b"frame-1" * 100, b"frame-2" * 100]

    by_ids = results[6]
    assert [i["metadata"]["binary_data_id"] for i in by_ids] == [f3, f0]
    assert payload(by_ids[0]) == b"frame-3" * 100
    (note,) = results[7]
    assert payload(note) == b"" and note["metadata"]["file_name"] == "/home/robot/notes.txt"
    assert note["metadata"]["dataset_ids"] == ["ds1"]
    assert results[8]["error"]["status"] == "INVALID_ARGUMENT"

    # tags
    assert results[9] is None and results[10] == 1 and results[11] is None
    assert results[12] == ["doc", "keep", "robot"]
    assert results[13] == 5
    assert results[14] == ["keep"]
    untagged, _, _ = results[15]
    assert sorted(i["metadata"]["binary_data_id"] for i in untagged) == sorted([f0, f2, f3, f4])
    assert results[16] == ["cat", "dog"]
    assert results[17] == ["cat"]  # only frame 1 keeps "keep"

    # deletes
    assert results[18:22] == [1, 1, 0, 3]
    assert results[22]["error"]["status"] == "NotImplementedError"  # the SDK sends nothing
    assert results[23][1] == 4
    kinds = sorted(item.kind for item in iter_store(store))
    assert kinds == ["binary"] * 4
    tags = {item.id: list(item.upload_metadata.tags) for item in iter_store(store)}
    assert tags == {f0: [], f1: ["keep"], f2: [], f3: []}


async def test_viam_sdk_without_a_key_and_wrong_cursor(viam_python: str, tmp_path: Path) -> None:
    store = tmp_path / "store"
    async with Sink(store) as sink:
        client = CloudClient("127.0.0.1", sink.port, tls=False)
        try:
            await fill(client)
        finally:
            await client.close()
        calls = [
            {"method": "binary_data_by_filter", "kwargs": {"last": "bogus", "limit": 1}},
            {"method": "tabular_data_by_filter", "kwargs": {"limit": 1}},
        ]
        results = await run_sdk(
            viam_python, {"host": "127.0.0.1", "port": sink.port, "calls": calls}
        )
    assert results[0]["error"]["status"] == "INVALID_ARGUMENT"
    (row,), count, last = results[1]
    assert count == 1 and last
    assert "organization_id" not in row["metadata"]  # no identity configured: empty
    assert row["metadata"]["part_id"] == PART
