"""The sink's DataService over gRPC, on a store that syncd itself filled.

Once per module, ``syncd run --once`` (run_daemon) uploads capture files (tabular and
binary, one binary big enough to stream), arbitrary files (with ``tag=``/``dataset=``
folders) and readings pushed through the outbox API into a sink. Each test then serves a
copy of that store and drives every DataClient call with requests shaped exactly as Viam's
Python SDK builds them (tests/data_api_requests.py), comparing the answers with what was
uploaded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import data_api_requests as sdk
import pytest
from capture_gen import (
    binary_header,
    binary_reading,
    tabular_header,
    tabular_reading,
    write_capture,
)
from google.protobuf.json_format import MessageToDict
from grpclib.client import Channel
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.data_api import tabular_cutoff_ns
from syncd.gen.app.data.v1 import data_pb2 as pb
from syncd.gen.app.data.v1.data_grpc import DataServiceStub
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.gen.proto.rpc.v1 import auth_pb2
from syncd.gen.proto.rpc.v1.auth_grpc import AuthServiceStub
from syncd.outbox import Outbox
from syncd.sink import Sink
from syncd.sink_index import INDEX_NAME, SinkIndex
from syncd.sink_index_types import CaptureIdentity, datetime_ns
from syncd.sink_store_items import iter_store

PART = "part-7"
IDENTITY = CaptureIdentity(
    organization_id="org-1",
    location_id="loc-1",
    robot_id="robot-1",
    robot_name="rover",
    part_name="rover-main",
)
KEY_ID = "9f0c2a51-3f5e-4c1b-8d7e-2b6a4c8e1f00"
KEY = "data-api-test-key"
H = timedelta(hours=1)
D = timedelta(days=1)


@dataclass
class Binary:
    """A binary reading or file as uploaded."""

    name: str
    method: str
    ctype: str
    payload: bytes
    requested: datetime
    received: datetime
    mime: str
    ext: str
    tags: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    file_name: str = ""


@dataclass
class Row:
    """A tabular reading as uploaded."""

    name: str
    data: dict[str, Any]
    requested: datetime
    received: datetime
    tags: list[str] = field(default_factory=list)


@dataclass
class Synced:
    store: Path
    midnight: datetime
    binaries: list[Binary]
    rows: list[Row]

    def binary(self, name: str) -> list[Binary]:
        return [b for b in self.binaries if b.name == name]


def _floats(value: Any) -> Any:
    """What a Struct gives back: every number a float."""
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _write_config(root: Path, port: int) -> Path:
    path = root / "syncd.yaml"
    path.write_text(
        f"part_id: {PART}\n"
        f"capture_dir: {root / 'capture'}\n"
        f"state_dir: {root / 'state'}\n"
        "cloud:\n"
        f"  address: 127.0.0.1:{port}\n"
        "  tls: false\n"
        "sync:\n"
        "  file_quiet_period_s: 0.1\n"
        "  retry_initial_s: 0.05\n"
    )
    return path


async def _fill(root: Path) -> Synced:
    rng = random.Random(11)
    capture = root / "capture"
    capture.mkdir()
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    rows: list[Row] = []
    binaries: list[Binary] = []

    # tabular capture files: imu straddles midnight of (today - 2 days), gps is older
    imu_times = [midnight - 2 * D + h * H for h in (-9, -6, -3, 3, 6, 9)]
    imu = [tabular_reading({"n": i, "x": i * 0.5}, t) for i, t in enumerate(imu_times)]
    write_capture(capture, tabular_header("imu"), imu, imu_times[0])
    gps_header = tabular_header(
        "gps", "Position", component_type="rdk:component:movement_sensor", tags=[]
    )
    gps_times = [midnight - 5 * D + h * H for h in range(4)]
    gps = [tabular_reading({"lat": 40 + i}, t) for i, t in enumerate(gps_times)]
    write_capture(capture, gps_header, gps, gps_times[0])
    for name, readings, tags in (("imu", imu, ["yard"]), ("gps", gps, [])):
        for reading in readings:
            md = reading.metadata
            rows.append(
                Row(
                    name,
                    _floats(MessageToDict(reading.struct)),
                    md.time_requested.ToDatetime(UTC),
                    md.time_received.ToDatetime(UTC),
                    tags,
                )
            )

    # binary capture files: three camera frames with annotations, one big point cloud
    front = []
    for i, labels in enumerate((["cat"], ["cat", "dog"], [])):
        reading = binary_reading(rng.randbytes(2000 + i), midnight - D + i * H)
        for label in labels:
            reading.metadata.annotations.bboxes.add(label=label, x_max_normalized=0.5)
        front.append(reading)
        md = reading.metadata
        binaries.append(
            Binary(
                "front",
                "ReadImage",
                "rdk:component:camera",
                reading.binary,
                md.time_requested.ToDatetime(UTC),
                md.time_received.ToDatetime(UTC),
                "image/jpeg",
                ".jpeg",
                tags=["cam"],
                labels=labels,
            )
        )
    write_capture(capture, binary_header("front", tags=["cam"]), front, midnight - D)
    cloud = binary_reading(rng.randbytes(1_200_000), midnight - D + 5 * H)
    lidar_header = binary_header("lidar", "NextPointCloud", file_extension=".pcd")
    write_capture(capture, lidar_header, [cloud], midnight - D + 5 * H)
    md = cloud.metadata
    binaries.append(
        Binary(
            "lidar",
            "NextPointCloud",
            "rdk:component:camera",
            cloud.binary,
            md.time_requested.ToDatetime(UTC),
            md.time_received.ToDatetime(UTC),
            "pointcloud/pcd",
            ".pcd",
        )
    )

    # arbitrary files, one in tag= and dataset= folders
    modified = midnight - 3 * D
    for rel, tags, datasets in (("notes.txt", [], []), ("tag=x/dataset=d1/log.txt", ["x"], ["d1"])):
        path = capture / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"contents of {rel}\n".encode())
        os.utime(path, (modified.timestamp(), modified.timestamp()))
        binaries.append(
            Binary(
                "",
                "",
                "",
                path.read_bytes(),
                modified,
                modified,  # time_received: when the sink got it, checked apart
                "text/plain",
                ".txt",
                tags=tags,
                datasets=datasets,
                file_name=str(path),
            )
        )

    # readings pushed by a robot program
    with Outbox(root / "state") as outbox:
        for i in range(3):
            t = midnight + H + i * timedelta(minutes=1)
            outbox.add_tabular(
                "rdk:component:sensor", "api", "Readings", {"i": i}, time_requested=t
            )
            rows.append(Row("api", {"i": float(i)}, t, t))  # received: checked apart
        t = midnight + 2 * H
        outbox.add_binary(
            "rdk:component:camera",
            "apicam",
            "ReadImage",
            b"api-png-bytes",
            file_extension=".png",
            mime_type="image/png",
            time_requested=t,
        )
        binaries.append(
            Binary(
                "apicam",
                "ReadImage",
                "rdk:component:camera",
                b"api-png-bytes",
                t,
                t,
                "image/png",
                ".png",
            )
        )

    store = root / "store"
    async with Sink(store, identity=IDENTITY) as sink:
        config = _write_config(root, sink.port)
        assert await run_daemon(load_config(config), once=True, timeout=60) == 0
    return Synced(store, midnight, binaries, rows)


@pytest.fixture(scope="module")
def synced(tmp_path_factory: pytest.TempPathFactory) -> Synced:
    return asyncio.run(_fill(tmp_path_factory.mktemp("synced")))


@dataclass
class Served:
    synced: Synced
    store: Path
    sink: Sink
    stub: DataServiceStub


@pytest.fixture
async def served(synced: Synced, tmp_path: Path) -> AsyncIterator[Served]:
    """A sink serving a fresh copy of the synced store (changes stay in this test)."""
    store = tmp_path / "store"
    shutil.copytree(synced.store, store)
    async with Sink(store, identity=IDENTITY) as sink:
        channel = Channel("127.0.0.1", sink.port)
        try:
            yield Served(synced, store, sink, DataServiceStub(channel))
        finally:
            channel.close()


def _dt(ts: Any) -> datetime:
    return ts.ToDatetime(UTC)


async def _all_binary(stub: DataServiceStub, **kwargs: Any) -> list[list[pb.BinaryData]]:
    """Every page of binary_data_by_filter, the SDK's documented loop."""
    pages: list[list[pb.BinaryData]] = []
    last = None
    while True:
        response = await stub.BinaryDataByFilter(sdk.binary_data_by_filter(last=last, **kwargs))
        if not response.data:
            return pages
        assert response.last, "a non-empty page must carry a cursor"
        pages.append(list(response.data))
        last = response.last
        assert len(pages) < 100


async def _all_tabular(stub: DataServiceStub, **kwargs: Any) -> list[tuple[dict, Any, Any]]:
    """Every reading of tabular_data_by_filter, as (data, CaptureMetadata, TabularData)."""
    out = []
    last = None
    while True:
        response = await stub.TabularDataByFilter(sdk.tabular_data_by_filter(last=last, **kwargs))
        if not response.data:
            return out
        assert response.last and response.count == len(response.data)
        for item in response.data:
            out.append((MessageToDict(item.data), response.metadata[item.metadata_index], item))
        last = response.last


# --- queries -----------------------------------------------------------------------------


async def test_tabular_by_filter_gives_back_every_reading(served: Served) -> None:
    synced = served.synced
    got = await _all_tabular(served.stub, limit=4)
    assert len(got) == len(synced.rows) == 13
    # newest first by default
    times = [_dt(item.time_requested) for _, _, item in got]
    assert times == sorted(times, reverse=True)
    by_data = {json.dumps(data, sort_keys=True): (meta, item) for data, meta, item in got}
    for row in synced.rows:
        meta, item = by_data[json.dumps(row.data, sort_keys=True)]
        assert _dt(item.time_requested) == row.requested
        if row.name != "api":
            assert _dt(item.time_received) == row.received
        assert (meta.component_name, meta.part_id, list(meta.tags)) == (row.name, PART, row.tags)
        assert meta.organization_id == "org-1" and meta.location_id == "loc-1"
        assert (meta.robot_id, meta.robot_name, meta.part_name) == (
            "robot-1",
            "rover",
            "rover-main",
        )
    imu = next(meta for data, meta, _ in got if "readings" in data)
    assert imu.component_type == "rdk:component:sensor" and imu.method_name == "Readings"

    ascending = await _all_tabular(served.stub, sort_order=pb.ORDER_ASCENDING, limit=5)
    assert [d for d, _, _ in ascending] == [d for d, _, _ in reversed(got)]
    count = await served.stub.TabularDataByFilter(
        sdk.tabular_data_by_filter(sdk.create_filter(component_name="imu"), count_only=True)
    )
    assert (count.count, list(count.data)) == (6, [])


async def test_tabular_page_lists_each_metadata_once(served: Served) -> None:
    response = await served.stub.TabularDataByFilter(sdk.tabular_data_by_filter())
    assert len(response.data) == 13 and response.count == 13  # under the default limit of 50
    names = [m.component_name for m in response.metadata]
    assert sorted(names) == ["api", "gps", "imu"]
    for item in response.data:
        assert item.metadata_index < len(response.metadata)


async def test_binary_by_filter_pages_with_bytes(served: Served) -> None:
    synced = served.synced
    pages = await _all_binary(served.stub, limit=2)
    assert [len(p) for p in pages] == [2, 2, 2, 1]
    got = [item for page in pages for item in page]
    assert sorted(item.binary for item in got) == sorted(b.payload for b in synced.binaries)
    by_payload = {item.binary: item.metadata for item in got}
    for expected in synced.binaries:
        md = by_payload[expected.payload]
        cm = md.capture_metadata
        assert md.binary_data_id and md.id == md.binary_data_id
        assert (cm.component_name, cm.method_name, cm.component_type) == (
            expected.name,
            expected.method,
            expected.ctype,
        )
        assert (cm.part_id, cm.organization_id, cm.location_id) == (PART, "org-1", "loc-1")
        assert (cm.mime_type, md.file_ext) == (expected.mime, expected.ext)
        assert (list(cm.tags), list(md.dataset_ids)) == (expected.tags, expected.datasets)
        assert [b.label for b in md.annotations.bboxes] == expected.labels
        assert md.file_size_bytes == len(expected.payload)
        assert _dt(md.time_requested) == expected.requested
        assert md.file_name == expected.file_name
    # the streamed point cloud kept its sensor times
    lidar = by_payload[synced.binary("lidar")[0].payload]
    assert _dt(lidar.time_received) == synced.binary("lidar")[0].received

    # without bytes: same metadata, empty binary; counts
    bare = await _all_binary(served.stub, include_binary_data=False, limit=50)
    assert [item.binary for item in bare[0]] == [b""] * 7
    assert sorted(i.metadata.binary_data_id for i in bare[0]) == sorted(
        i.metadata.binary_data_id for i in got
    )
    count = await served.stub.BinaryDataByFilter(sdk.binary_data_by_filter(count_only=True))
    assert (count.count, list(count.data)) == (7, [])


async def test_binary_order_and_the_final_cursor(served: Served) -> None:
    desc = (await _all_binary(served.stub, include_binary_data=False))[0]
    times = [_dt(i.metadata.time_requested) for i in desc]
    assert times == sorted(times, reverse=True)
    asc = await served.stub.BinaryDataByFilter(
        sdk.binary_data_by_filter(sort_order=pb.ORDER_ASCENDING, include_binary_data=False)
    )
    assert list(asc.data) == list(reversed(desc))
    # the cursor of the last item gives an empty page, and keeps the cursor
    after = await served.stub.BinaryDataByFilter(
        sdk.binary_data_by_filter(last=asc.last, sort_order=pb.ORDER_ASCENDING)
    )
    assert (list(after.data), after.last) == ([], asc.last)
    with pytest.raises(GRPCError) as err:
        await served.stub.BinaryDataByFilter(sdk.binary_data_by_filter(last="not-a-cursor"))
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_filters_select_what_they_name(served: Served) -> None:
    synced = served.synced

    async def names(**kwargs: Any) -> list[str]:
        response = await served.stub.BinaryDataByFilter(
            sdk.binary_data_by_filter(sdk.create_filter(**kwargs), include_binary_data=False)
        )
        return sorted(i.metadata.capture_metadata.component_name for i in response.data)

    assert await names(component_name="front") == ["front"] * 3
    assert await names(component_type="rdk:component:camera", method="NextPointCloud") == ["lidar"]
    assert await names(mime_type=["image/png", "pointcloud/pcd"]) == ["apicam", "lidar"]
    assert await names(tags=["x", "cam"]) == ["", "front", "front", "front"]
    assert await names(bbox_labels=["dog"]) == ["front"]
    assert await names(bbox_labels=["dog", "cat"]) == ["front", "front"]
    assert await names(dataset_id="d1") == [""]
    assert await names(part_id=PART, organization_ids=["org-1"], location_ids=["loc-1"]) == sorted(
        b.name for b in synced.binaries
    )
    assert await names(organization_ids=["org-2"]) == []
    assert await names(robot_id="robot-2") == []
    assert await names(robot_name="rover", part_name="rover-main") != []
    start = synced.midnight - D
    assert await names(start_time=start, end_time=start + 2 * H) == ["front", "front"]
    assert await names(start_time=synced.midnight) == ["apicam"]
    assert await names(end_time=synced.midnight - 2 * D) == ["", ""]  # the files' mtimes

    untagged = pb.Filter(tags_filter=pb.TagsFilter(type=pb.TAGS_FILTER_TYPE_UNTAGGED))
    response = await served.stub.BinaryDataByFilter(
        sdk.binary_data_by_filter(untagged, include_binary_data=False)
    )
    assert sorted(i.metadata.capture_metadata.component_name for i in response.data) == [
        "",
        "apicam",
        "lidar",
    ]
    tagged = pb.Filter(tags_filter=pb.TagsFilter(type=pb.TAGS_FILTER_TYPE_TAGGED))
    response = await served.stub.TabularDataByFilter(sdk.tabular_data_by_filter(tagged))
    assert {response.metadata[i.metadata_index].component_name for i in response.data} == {"imu"}


async def test_binary_by_ids_in_both_forms(served: Served) -> None:
    listing = await served.stub.BinaryDataByFilter(sdk.binary_data_by_filter())
    ids = [item.metadata.binary_data_id for item in listing.data]
    payloads = {item.metadata.binary_data_id: item.binary for item in listing.data}
    wanted = [ids[3], "0" * 32, ids[0]]
    response = await served.stub.BinaryDataByIDs(sdk.binary_data_by_ids(wanted))
    assert [i.metadata.binary_data_id for i in response.data] == [ids[3], ids[0]]
    assert [i.binary for i in response.data] == [payloads[ids[3]], payloads[ids[0]]]
    legacy = [pb.BinaryID(file_id=i, organization_id="org-1", location_id="loc-1") for i in wanted]
    old = await served.stub.BinaryDataByIDs(sdk.binary_data_by_ids(legacy))
    assert list(old.data) == list(response.data)
    # The sink is org-1/loc-1: another organization's or location's id names nothing here.
    elsewhere = [
        pb.BinaryID(file_id=ids[3], organization_id="org-2", location_id="loc-1"),
        pb.BinaryID(file_id=ids[0], organization_id="org-1", location_id="loc-2"),
        pb.BinaryID(file_id=ids[1]),
    ]
    mixed = await served.stub.BinaryDataByIDs(sdk.binary_data_by_ids(elsewhere))
    assert [i.metadata.binary_data_id for i in mixed.data] == [ids[1]]
    deleted = await served.stub.DeleteBinaryDataByIDs(sdk.delete_binary_data_by_ids(elsewhere[:2]))
    assert deleted.deleted_count == 0
    bare = await served.stub.BinaryDataByIDs(sdk.binary_data_by_ids(ids, include_binary_data=False))
    assert [i.metadata.binary_data_id for i in bare.data] == ids
    assert all(i.binary == b"" for i in bare.data)
    with pytest.raises(GRPCError) as err:
        await served.stub.BinaryDataByIDs(sdk.binary_data_by_ids([]))
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_tags_and_labels_by_filter(served: Served) -> None:
    tags = await served.stub.TagsByFilter(sdk.tags_by_filter())
    assert list(tags.tags) == ["cam", "x"]  # binary data only; "yard" is on tabular data
    only_files = await served.stub.TagsByFilter(
        sdk.tags_by_filter(sdk.create_filter(dataset_id="d1"))
    )
    assert list(only_files.tags) == ["x"]
    labels = await served.stub.BoundingBoxLabelsByFilter(sdk.bounding_box_labels_by_filter())
    assert list(labels.labels) == ["cat", "dog"]
    some = await served.stub.BoundingBoxLabelsByFilter(
        sdk.bounding_box_labels_by_filter(sdk.create_filter(bbox_labels=["dog"]))
    )
    assert list(some.labels) == ["cat", "dog"]  # the labels of the items that have a dog
    none = await served.stub.BoundingBoxLabelsByFilter(
        sdk.bounding_box_labels_by_filter(sdk.create_filter(component_name="lidar"))
    )
    assert list(none.labels) == []


# --- tags --------------------------------------------------------------------------------


def _stored_tags(store: Path) -> dict[str, list[str]]:
    return {item.id: list(item.upload_metadata.tags) for item in iter_store(store)}


async def test_tags_by_ids_change_the_sidecars(served: Served) -> None:
    stub = served.stub
    listing = await stub.BinaryDataByFilter(
        sdk.binary_data_by_filter(sdk.create_filter(component_name="front"))
    )
    ids = [i.metadata.binary_data_id for i in listing.data]
    await stub.AddTagsToBinaryDataByIDs(
        sdk.add_tags_to_binary_data_by_ids(["good", "cam"], ids[:2])
    )
    stored = _stored_tags(served.store)
    assert [stored[i] for i in ids] == [["cam", "good"], ["cam", "good"], ["cam"]]
    found = await stub.BinaryDataByFilter(
        sdk.binary_data_by_filter(sdk.create_filter(tags=["good"]))
    )
    assert sorted(i.metadata.binary_data_id for i in found.data) == sorted(ids[:2])
    assert list(found.data[0].metadata.capture_metadata.tags) == ["cam", "good"]

    removed = await stub.RemoveTagsFromBinaryDataByIDs(
        sdk.remove_tags_from_binary_data_by_ids(["good", "nope"], [pb.BinaryID(file_id=ids[0])])
    )
    assert removed.deleted_count == 1
    again = await stub.RemoveTagsFromBinaryDataByIDs(
        sdk.remove_tags_from_binary_data_by_ids(["good"], [ids[0]])
    )
    assert again.deleted_count == 0
    stored = _stored_tags(served.store)
    assert [stored[i] for i in ids] == [["cam"], ["cam", "good"], ["cam"]]
    for bad in (
        sdk.add_tags_to_binary_data_by_ids([], ids),
        sdk.add_tags_to_binary_data_by_ids(["t"], []),
        sdk.add_tags_to_binary_data_by_ids([""], ids),
    ):
        with pytest.raises(GRPCError) as err:
            await stub.AddTagsToBinaryDataByIDs(bad)
        assert err.value.status is Status.INVALID_ARGUMENT


async def test_tags_by_filter_and_a_restart(served: Served) -> None:
    stub = served.stub
    await stub.AddTagsToBinaryDataByFilter(
        sdk.add_tags_to_binary_data_by_filter(
            ["night"], sdk.create_filter(mime_type=["text/plain"])
        )
    )
    tags = await stub.TagsByFilter(sdk.tags_by_filter(sdk.create_filter(tags=["night"])))
    assert list(tags.tags) == ["night", "x"]
    removed = await stub.RemoveTagsFromBinaryDataByFilter(
        sdk.remove_tags_from_binary_data_by_filter(["x", "cam"])
    )
    assert removed.deleted_count == 4  # three frames lost "cam", one file lost "x"
    assert list((await stub.TagsByFilter(sdk.tags_by_filter())).tags) == ["night"]
    # the store holds the truth: an index built afresh from it agrees
    await served.sink.stop()
    (served.store / INDEX_NAME).unlink()
    with SinkIndex(served.store, IDENTITY) as index:
        assert index.tags() == ["night"]
        assert len(index.binary_page(limit=100).rows) == 7


# --- deletes -----------------------------------------------------------------------------


async def test_delete_binary_by_ids_and_by_filter(served: Served) -> None:
    stub = served.stub
    listing = await stub.BinaryDataByFilter(sdk.binary_data_by_filter(include_binary_data=False))
    by_name = {}
    for item in listing.data:
        by_name.setdefault(item.metadata.capture_metadata.component_name, []).append(
            item.metadata.binary_data_id
        )
    items = {item.id: item for item in iter_store(served.store)}
    doomed = by_name["front"][:2]
    deleted = await stub.DeleteBinaryDataByIDs(sdk.delete_binary_data_by_ids([*doomed, "0" * 32]))
    assert deleted.deleted_count == 2
    for binary_id in doomed:
        assert not items[binary_id].path.exists() and not items[binary_id].sidecar.exists()
    gone = await stub.BinaryDataByIDs(sdk.binary_data_by_ids(doomed))
    assert list(gone.data) == []
    legacy = await stub.DeleteBinaryDataByIDs(
        sdk.delete_binary_data_by_ids([pb.BinaryID(file_id=by_name["lidar"][0])])
    )
    assert legacy.deleted_count == 1
    by_filter = await stub.DeleteBinaryDataByFilter(
        sdk.delete_binary_data_by_filter(sdk.create_filter(mime_type=["text/plain"]))
    )
    assert by_filter.deleted_count == 2
    left = await stub.BinaryDataByFilter(sdk.binary_data_by_filter(include_binary_data=False))
    assert sorted(i.metadata.capture_metadata.component_name for i in left.data) == [
        "apicam",
        "front",
    ]
    everything = await stub.DeleteBinaryDataByFilter(sdk.delete_binary_data_by_filter(None))
    assert everything.deleted_count == 2
    assert [i.kind for i in iter_store(served.store)] == ["tabular"] * 3  # tabular untouched
    with pytest.raises(GRPCError) as err:
        await stub.DeleteBinaryDataByIDs(sdk.delete_binary_data_by_ids([]))
    assert err.value.status is Status.INVALID_ARGUMENT


async def test_delete_tabular_data_by_days(served: Served) -> None:
    stub = served.stub
    synced = served.synced
    # days=3: everything before 00:00 UTC two days ago; the imu file is cut in two
    response = await stub.DeleteTabularData(sdk.delete_tabular_data("org-1", 3))
    assert response.deleted_count == 3 + 4
    left = await _all_tabular(stub)
    cutoff = synced.midnight - 2 * D
    assert sorted(_dt(i.time_requested) for _, _, i in left) == sorted(
        r.requested for r in synced.rows if r.requested >= cutoff
    )
    imu = [i for i in iter_store(served.store) if i.upload_metadata.component_name == "imu"]
    assert len(imu) == 1 and imu[0].readings == 3
    assert [MessageToDict(r.struct)["readings"]["n"] for r in imu[0].sensor_data()] == [3, 4, 5]
    assert not any(i.upload_metadata.component_name == "gps" for i in iter_store(served.store))

    other_org = await stub.DeleteTabularData(sdk.delete_tabular_data("org-2", 0))
    assert other_org.deleted_count == 0
    narrowed = await stub.DeleteTabularData(
        sdk.delete_tabular_data("org-1", 0, pb.DeleteTabularFilter(component_name="api"))
    )
    assert narrowed.deleted_count == 3
    left = await _all_tabular(stub)
    assert {m.component_name for _, m, _ in left} == {"imu"}
    rest = await stub.DeleteTabularData(sdk.delete_tabular_data("org-1", 0))
    assert rest.deleted_count == 3
    assert sorted(i.kind for i in iter_store(served.store)) == ["binary"] * 5 + ["file"] * 2


def test_tabular_cutoff_counts_utc_calendar_days() -> None:
    now = datetime(2026, 12, 3, 16, 20, tzinfo=UTC)
    assert tabular_cutoff_ns(0, now) is None
    assert tabular_cutoff_ns(1, now) == datetime_ns(datetime(2026, 12, 3, tzinfo=UTC))
    assert tabular_cutoff_ns(3, now) == datetime_ns(datetime(2026, 12, 1, tzinfo=UTC))
    east = datetime(2026, 12, 4, 1, 0, tzinfo=UTC).astimezone()  # the UTC date decides
    assert tabular_cutoff_ns(1, east) == datetime_ns(datetime(2026, 12, 4, tzinfo=UTC))


# --- auth, other calls ----------------------------------------------------------------------


async def test_data_calls_need_a_token_when_a_key_is_set(synced: Synced, tmp_path: Path) -> None:
    store = tmp_path / "store"
    shutil.copytree(synced.store, store)
    async with Sink(store, api_key_id=KEY_ID, api_key=KEY) as sink:
        channel = Channel("127.0.0.1", sink.port)
        try:
            stub = DataServiceStub(channel)
            with pytest.raises(GRPCError) as err:
                await stub.TagsByFilter(sdk.tags_by_filter())
            assert err.value.status is Status.UNAUTHENTICATED
            token = await AuthServiceStub(channel).Authenticate(
                auth_pb2.AuthenticateRequest(
                    entity=KEY_ID, credentials=auth_pb2.Credentials(type="api-key", payload=KEY)
                )
            )
            metadata = {"authorization": f"Bearer {token.access_token}"}
            tags = await stub.TagsByFilter(sdk.tags_by_filter(), metadata=metadata)
            assert list(tags.tags) == ["cam", "x"]
        finally:
            channel.close()


async def test_other_data_service_calls_are_unimplemented(served: Served) -> None:
    method = served.stub.TagsByFilter
    unknown = type(method)(
        method.channel,
        "/viam.app.data.v1.DataService/TabularDataBySQL",
        pb.TagsByFilterRequest,
        pb.TagsByFilterResponse,
    )
    with pytest.raises(GRPCError) as err:
        await unknown(pb.TagsByFilterRequest())
    assert err.value.status is Status.UNIMPLEMENTED


async def test_new_uploads_are_queryable_at_once(served: Served) -> None:
    from syncd.cloud import CloudClient

    client = CloudClient("127.0.0.1", served.sink.port, tls=False)
    try:
        um = ds.UploadMetadata(
            part_id="p2",
            component_type="rdk:component:camera",
            component_name="rear",
            method_name="ReadImage",
            type=ds.DATA_TYPE_BINARY_SENSOR,
            file_extension=".jpeg",
        )
        reading = binary_reading(b"rear-frame", datetime(2026, 1, 1, tzinfo=UTC))
        binary_id = await client.data_capture_upload(
            ds.DataCaptureUploadRequest(metadata=um, sensor_contents=[reading])
        )
    finally:
        await client.close()
    response = await served.stub.BinaryDataByIDs(sdk.binary_data_by_ids([binary_id]))
    assert [i.binary for i in response.data] == [b"rear-frame"]
    assert response.data[0].metadata.capture_metadata.part_id == "p2"


def test_identity_comes_from_the_sink_config(tmp_path: Path) -> None:
    from syncd.errors import ConfigError
    from syncd.sink_config import load_sink_config

    path = tmp_path / "sink.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\nstore: store\norganization_id: org-1\nlocation_id: loc-1\n"
        "robot_id: robot-1\nrobot_name: rover\npart_name: rover-main\n"
    )
    cfg = load_sink_config(path)
    assert cfg.identity == IDENTITY
    assert load_sink_config(None, {"listen": "127.0.0.1:0", "store": "s"}).identity == (
        CaptureIdentity()
    )
    path.write_text("listen: 127.0.0.1:0\nstore: store\norganization_id: 12\n")
    with pytest.raises(ConfigError) as err:
        load_sink_config(path)
    assert err.value.problems == [f"{path}: organization_id: 12 is not a string"]
