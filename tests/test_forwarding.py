"""Store and forward: robot → sink A; a base station's syncd forwards A's store → sink B."""

from __future__ import annotations

import os
from pathlib import Path

from capture_gen import (
    T0,
    binary_header,
    binary_reading,
    sample_tabular,
    tabular_header,
    write_capture,
)
from grpclib.client import Channel

from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.gen.app.data.v1 import data_pb2
from syncd.gen.app.data.v1.data_grpc import DataServiceStub
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.outbox import Outbox
from syncd.sink import Sink
from syncd.sink_store_items import StoredItem, iter_store


def config(tmp: Path, part: str, capture: Path, state: Path, port: int, tags: str) -> Path:
    path = tmp / f"{part}.yaml"
    path.write_text(
        f"part_id: {part}\ncapture_dir: {capture}\nstate_dir: {state}\n"
        f"cloud:\n  address: 127.0.0.1:{port}\n  tls: false\n"
        f"sync:\n  file_quiet_period_s: 0\n  tags: [{tags}]\n"
    )
    return path


def summary(item: StoredItem) -> tuple:
    md = item.upload_metadata
    key = (
        item.kind,
        md.part_id,
        md.component_type,
        md.component_name,
        md.method_name,
        md.file_extension,
        tuple(sorted(md.dataset_ids)),
    )
    if item.kind == "file":
        return (*key, md.file_name, item.read_bytes())
    return (*key, tuple(r.SerializeToString(deterministic=True) for r in item.sensor_data()))


async def test_a_store_forwards_to_another_sink_without_losing_metadata(tmp_path):
    robot_capture = tmp_path / "robot" / "capture"
    robot_capture.mkdir(parents=True)
    readings = sample_tabular(40)
    write_capture(robot_capture, tabular_header(), readings)
    write_capture(robot_capture, binary_header(), [binary_reading(os.urandom(5000), T0)])
    write_capture(
        robot_capture, binary_header(name="cam2"), [binary_reading(os.urandom(1_300_000), T0)]
    )
    notes = robot_capture / "dataset=ds1" / "notes.txt"
    notes.parent.mkdir()
    notes.write_bytes(b"field notes\n")
    with Outbox(tmp_path / "robot" / "state") as ob:
        ob.add_tabular("rdk:component:sensor", "gps", "Readings", {"lat": 1.5}, time_requested=5.0)

    async with Sink(tmp_path / "A") as sink_a, Sink(tmp_path / "B") as sink_b:
        robot = config(
            tmp_path, "robot", robot_capture, tmp_path / "robot" / "state", sink_a.port, "r"
        )
        assert await run_daemon(load_config(robot), once=True, timeout=60) == 0
        at_a = sorted(map(summary, iter_store(tmp_path / "A")))
        station = config(tmp_path, "station", tmp_path / "A", tmp_path / "st", sink_b.port, "hop")
        assert await run_daemon(load_config(station), once=True, timeout=60) == 0

    at_b = sorted(map(summary, iter_store(tmp_path / "B")))
    assert len(at_a) == 5
    assert at_b == at_a  # same parts, components, readings, file names and bytes
    b_items = list(iter_store(tmp_path / "B"))
    assert all(i.upload_metadata.part_id == "robot" for i in b_items)
    assert all(list(i.upload_metadata.tags)[-1] == "hop" for i in b_items)
    (forwarded_notes,) = [i for i in b_items if i.kind == "file"]
    assert forwarded_notes.upload_metadata.file_name == str(notes)
    assert list(forwarded_notes.upload_metadata.dataset_ids) == ["ds1"]
    (gps,) = [i for i in b_items if i.upload_metadata.component_name == "gps"]
    assert gps.sensor_data()[0].metadata.time_requested.seconds == 5
    assert gps.upload_metadata.type == ds.DATA_TYPE_TABULAR_SENSOR
    # The forwarded data and its sidecars are gone from A.
    assert [
        p for p in (tmp_path / "A").rglob("*") if p.is_file() and not p.name.startswith(".index")
    ] == []


async def test_tag_edits_made_at_the_receiver_go_onward(tmp_path):
    """Tags added or removed at sink A (Viam's data API) are what a forwarding syncd
    sends on, not the tags in the stored capture file's header."""
    robot_capture = tmp_path / "robot" / "capture"
    write_capture(
        robot_capture, binary_header(tags=["yard"]), [binary_reading(os.urandom(3000), T0)]
    )
    async with Sink(tmp_path / "A") as sink_a, Sink(tmp_path / "B") as sink_b:
        robot = config(
            tmp_path, "robot", robot_capture, tmp_path / "robot" / "state", sink_a.port, "r"
        )
        assert await run_daemon(load_config(robot), once=True, timeout=60) == 0
        (stored,) = iter_store(tmp_path / "A")
        assert list(stored.upload_metadata.tags) == ["yard", "r"]
        channel = Channel("127.0.0.1", sink_a.port)
        try:
            api = DataServiceStub(channel)
            await api.RemoveTagsFromBinaryDataByIDs(
                data_pb2.RemoveTagsFromBinaryDataByIDsRequest(
                    binary_data_ids=[stored.id], tags=["yard"]
                )
            )
            await api.AddTagsToBinaryDataByIDs(
                data_pb2.AddTagsToBinaryDataByIDsRequest(
                    binary_data_ids=[stored.id], tags=["reviewed"]
                )
            )
        finally:
            channel.close()
        station = config(tmp_path, "station", tmp_path / "A", tmp_path / "st", sink_b.port, "hop")
        assert await run_daemon(load_config(station), once=True, timeout=60) == 0
    (forwarded,) = iter_store(tmp_path / "B")
    assert list(forwarded.upload_metadata.tags) == ["r", "reviewed", "hop"]
