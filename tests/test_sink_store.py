"""The sink's store on real files: name safety, atomic commit and abort, sweeping, sidecars,
reading back, and capture files that syncd's own reader accepts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from google.protobuf.any_pb2 import Any as AnyProto
from google.protobuf.struct_pb2 import Struct
from hypothesis import given
from hypothesis import strategies as st

from syncd.errors import StorageLimitError
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink_store import Store, file_basename, safe_component, safe_extension
from syncd.sink_store_items import iter_store, read_sidecar, sidecar_path

BIN_UM = ds.UploadMetadata(
    part_id="p", component_type="camera", component_name="c", method_name="ReadImage", type=1
)
FILE_UM = ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_FILE, file_name="/x/y/z.txt")


def files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store", min_free_bytes=0)
    s.open()
    return s


# --- names ----------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_safe_component_is_one_harmless_name(value: str) -> None:
    name = safe_component(value)
    assert name and name not in (".", "..")
    assert not name.startswith(".")
    assert not any(ch in name for ch in "/\\\x00=") and name.isprintable()
    assert len(name.encode()) <= 100


@pytest.mark.parametrize(
    "value,expected",
    [
        ("rdk:component:camera", "rdk:component:camera"),
        ("", "_"),
        ("..", "_."),
        ("../../etc", "_._.._etc"),
        ("a/b\\c\x00d", "a_b_c_d"),
        ("tag=x", "tag_x"),
        ("kamera-ü", "kamera-ü"),
    ],
)
def test_safe_component_examples(value: str, expected: str) -> None:
    assert safe_component(value) == expected


@pytest.mark.parametrize(
    "value,expected",
    [
        (".jpg", ".jpg"),
        ("jpg", ".jpg"),
        ("", ""),
        (".", ""),
        ("/../../x", "._.._.._x"),
        (".tar.gz", ".tar.gz"),
        (".a\x00b", ".a_b"),
    ],
)
def test_safe_extension(value: str, expected: str) -> None:
    assert safe_extension(value) == expected


@pytest.mark.parametrize(
    "value,expected",
    [("/home/r/img.jpg", "img.jpg"), ("stem", "stem"), ("C:\\x\\y.bin", "y.bin"), ("a/", "")],
)
def test_file_basename(value: str, expected: str) -> None:
    assert file_basename(value) == expected


# --- writing --------------------------------------------------------------------------


def test_nothing_looks_complete_before_commit(store: Store) -> None:
    pending = store.begin_file(FILE_UM)
    pending.write(b"hello ")
    pending.write(b"world")
    assert list(iter_store(store.root)) == []
    assert all(Path(f).name.startswith(".tmp-") for f in files(store.root))
    item = pending.commit()
    assert files(store.root) == sorted(
        [str(item.path.relative_to(store.root)), str(item.sidecar.relative_to(store.root))]
    )
    assert [i.read_bytes() for i in iter_store(store.root)] == [b"hello world"]
    pending.abort()  # after commit: nothing happens
    assert item.path.exists()


def test_abort_removes_the_temp_files(store: Store) -> None:
    for pending in (store.begin_file(FILE_UM), store.begin_binary(BIN_UM, ds.SensorMetadata())):
        pending.write(b"x" * 1000)
        pending.abort()
    assert files(store.root) == []


def test_upload_limit_is_checked_before_writing(tmp_path: Path) -> None:
    store = Store(tmp_path, max_upload_bytes=10, min_free_bytes=0)
    pending = store.begin_file(FILE_UM)
    pending.write(b"x" * 10)
    with pytest.raises(StorageLimitError, match="max_upload_bytes"):
        pending.write(b"y")
    pending.abort()
    with pytest.raises(StorageLimitError):
        store.put_binary(BIN_UM, ds.SensorData(binary=b"z" * 11))
    assert files(tmp_path) == []


def test_free_space_reserve(tmp_path: Path) -> None:
    store = Store(tmp_path, min_free_bytes=2**62)
    with pytest.raises(StorageLimitError, match="min_free_bytes"):
        store.put_tabular(BIN_UM, [ds.SensorData(struct=Struct())])
    assert files(tmp_path) == []


def test_sidecar_keeps_unknown_any_values(store: Store) -> None:
    um = ds.UploadMetadata()
    um.CopyFrom(FILE_UM)
    um.method_parameters["opaque"].CopyFrom(
        AnyProto(type_url="type.example.com/nobody.Knows", value=b"\x01\x02")
    )
    pending = store.begin_file(um)
    pending.write(b"data")
    item = pending.commit()
    doc = json.loads(item.sidecar.read_text())
    assert doc["upload_metadata"]["method_parameters"]["opaque"]["@type"].endswith("nobody.Knows")
    assert doc["upload_metadata"]["file_name"] == "/x/y/z.txt"
    assert doc["kind"] == "file" and doc["id"] == item.id and doc["size_bytes"] == 4
    [back] = iter_store(store.root)
    assert back.upload_metadata == um


def test_sweep_removes_orphans_but_not_recent_ones(store: Store) -> None:
    item = store.put_binary(BIN_UM, ds.SensorData(binary=b"abc"))
    item.path.unlink()  # as a forwarding syncd does once the cloud has it
    assert store.sweep() == 0  # too recent: its data file might be about to appear
    os.utime(item.sidecar, (0, 0))
    assert store.sweep() == 1
    assert files(store.root) == []


def test_items_without_sidecar_are_read_from_the_data(store: Store) -> None:
    sm = ds.SensorMetadata(time_received={"seconds": 1_800_000_000})
    binary = store.put_binary(BIN_UM, ds.SensorData(metadata=sm, binary=b"\x00" * 300))
    readings = [ds.SensorData(struct=Struct(fields={"a": {"number_value": i}})) for i in range(3)]
    tabular_um = ds.UploadMetadata(component_name="imu", type=ds.DATA_TYPE_TABULAR_SENSOR)
    tabular = store.put_tabular(tabular_um, readings)
    pending = store.begin_file(FILE_UM)
    pending.write(b"text")
    plain = pending.commit()
    for item in (binary, tabular, plain):
        item.sidecar.unlink()
    by_kind = {i.kind: i for i in iter_store(store.root)}
    assert by_kind["binary"].id == binary.id
    assert by_kind["binary"].received_at == binary.received_at
    assert by_kind["binary"].sensor_metadata == sm
    assert by_kind["binary"].read_bytes() == b"\x00" * 300
    assert by_kind["binary"].upload_metadata.component_name == "c"
    assert by_kind["tabular"].readings == 3
    assert by_kind["tabular"].sensor_data() == readings
    assert by_kind["file"].read_bytes() == b"text"


def test_corrupt_files_are_skipped(store: Store, caplog: pytest.LogCaptureFixture) -> None:
    good = store.put_binary(BIN_UM, ds.SensorData(binary=b"abc"))
    bad = good.path.with_name("2026-01-01T00_00_00.000000Z_" + "0" * 32 + ".capture")
    bad.write_bytes(good.path.read_bytes()[:-2])  # truncated, no sidecar
    assert [i.id for i in iter_store(store.root)] == [good.id]
    assert "skipping unreadable stored file" in caplog.text


def test_store_is_a_capture_dir_for_syncd(store: Store) -> None:
    capture_file = pytest.importorskip("syncd.capture_file")
    sm = ds.SensorMetadata(time_requested={"seconds": 5}, time_received={"seconds": 6})
    pending = store.begin_binary(BIN_UM, sm)
    for _ in range(3):
        pending.write(b"\xff" * 100_000)
    binary = pending.commit()
    readings = [ds.SensorData(metadata=sm, struct=Struct(fields={"x": {"bool_value": True}}))] * 4
    tabular = store.put_tabular(BIN_UM, readings)
    with capture_file.CaptureReader(binary.path, large_reading_bytes=1 << 30) as reader:
        assert reader.header.component_name == "c"
        assert reader.header.type == ds.DATA_TYPE_BINARY_SENSOR
        [record] = list(reader)
        assert record.sensor_data == ds.SensorData(metadata=sm, binary=b"\xff" * 300_000)
        assert reader.tail_error is None
    with capture_file.CaptureReader(tabular.path) as reader:
        assert reader.header.type == ds.DATA_TYPE_TABULAR_SENSOR
        assert [r.sensor_data for r in reader] == readings


def test_sidecar_path() -> None:
    assert sidecar_path(Path("/s/a.capture")) == Path("/s/.a.capture.meta.json")


def test_only_files_named_as_a_store_names_them_have_sidecars(tmp_path) -> None:
    stored = tmp_path / "2026-12-03T16_20_01.123456Z_0123456789abcdef0123456789abcdef_notes.txt"
    other = tmp_path / "notes.txt"
    for data in (stored, other):
        data.write_text("data")
        sidecar_path(data).write_text("{}")
    assert read_sidecar(str(stored)) == b"{}"
    assert read_sidecar(str(other)) is None
    sidecar_path(stored).unlink()
    assert read_sidecar(str(stored)) is None
