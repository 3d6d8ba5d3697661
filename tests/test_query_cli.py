"""``syncd query``: tables, JSON lines, filters and downloads, straight from a store's index."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from syncd import mapping
from syncd.cli import main
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.query_cli import QueryArgs, run_query
from syncd.sink_index import INDEX_NAME
from syncd.sink_store import Store

S = 1_000_000_000
T = 1_780_000_000 * S  # 2026-05-28T20:26:40Z
BIG = bytes(range(256)) * 12_000  # 2.9 MiB: several chunks, so the progress line moves


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    st = Store(root)
    st.open()
    for i, (name, tags, payload) in enumerate(
        [("front", ("day",), b"small"), ("front", ("night",), BIG), ("rear", (), b"rear")]
    ):
        stream = mapping.Stream(
            "rdk:component:camera",
            name,
            "ReadImage",
            ds.DATA_TYPE_BINARY_SENSOR,
            tags,
            file_extension=".jpeg",
            mime_type="image/jpeg",
        )
        reading = mapping.binary_reading(payload, T + i * S, T + i * S + 5)
        st.put_binary(mapping.upload_metadata("p", stream), reading)
    pending = st.begin_file(
        ds.UploadMetadata(
            part_id="p", type=ds.DATA_TYPE_FILE, file_name="/robot/log.txt", file_extension=".txt"
        )
    )
    pending.write(b"log lines\n")
    pending.commit()
    tabular = mapping.Stream("rdk:component:sensor", "imu", "Readings", ds.DATA_TYPE_TABULAR_SENSOR)
    readings = [
        mapping.tabular_reading(json.dumps({"x": i}), T + i * S, T + i * S) for i in range(3)
    ]
    st.put_tabular(mapping.upload_metadata("p", tabular), readings)
    return root


def query(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["query", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_of_binary_data_newest_first(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert not (store / INDEX_NAME).exists()
    code, out, err = query(capsys, "--store", str(store))
    assert code == 0 and "indexing" in err  # built once from the sidecars
    header, *lines = out.splitlines()
    assert header.split() == [
        "TIME",
        "(UTC)",
        "COMPONENT",
        "METHOD",
        "ID",
        "MIME",
        "TYPE",
        "SIZE",
        "TAGS",
        "FILE",
    ]
    assert len(lines) == 4
    assert "log.txt" in lines[0] and "text/plain" in lines[0]  # uploaded just now
    assert "rdk:component:camera/rear" in lines[1] and "2026-05-28T20:26:42.000000Z" in lines[1]
    assert "2.9 MiB" in lines[2] and "night" in lines[2]
    code, _, err = query(capsys, "--store", str(store))
    assert code == 0 and err == ""


def test_filters_limit_and_order_as_json_lines(
    store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = query(
        capsys,
        "binary",
        "--store",
        str(store),
        "--component-name",
        "front",
        "--tag",
        "night",
        "--tag",
        "day",
        "--json",
    )
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [r["tags"] for r in rows] == [["night"], ["day"]]
    assert rows[0]["size_bytes"] == len(BIG) and rows[0]["file_ext"] == ".jpeg"
    assert Path(rows[0]["path"]).is_file()
    _, out, _ = query(
        capsys,
        "--store",
        str(store),
        "--start",
        "2026-05-28T20:26:41Z",
        "--end",
        "2026-05-28T22:26:42+02:00",  # 20:26:42Z, excluded
        "--json",
    )
    assert [json.loads(line)["tags"] for line in out.splitlines()] == [["night"]]
    _, out, _ = query(capsys, "--store", str(store), "--oldest-first", "--limit", "2", "--json")
    assert [json.loads(line)["tags"] for line in out.splitlines()] == [["day"], ["night"]]
    _, out, _ = query(capsys, "--store", str(store), "--mime-type", "text/plain", "--json")
    assert [json.loads(line)["file_name"] for line in out.splitlines()] == ["/robot/log.txt"]


def test_tabular_readings(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = query(capsys, "tabular", "--store", str(store), "--limit", "0")
    header, *lines = out.splitlines()
    assert code == 0 and header.split()[-1] == "DATA"
    assert [line.split()[-1] for line in lines] == ['{"x":2.0}', '{"x":1.0}', '{"x":0.0}']
    _, out, _ = query(capsys, "tabular", "--store", str(store), "--json", "--limit", "1")
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row["data"] == {"x": 2.0} and row["component_name"] == "imu" and row["index"] == 2


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_download_with_a_progress_line(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "out"
    out, err = io.StringIO(), Terminal()
    args = QueryArgs(store=store, component_name="front")
    assert run_query(args, download_to=target, out=out, err=err) == 0
    files = {p.name: p.read_bytes() for p in target.iterdir()}
    assert sorted(files.values()) == sorted([b"small", BIG])
    assert all(name.endswith(".jpeg") for name in files)
    progress = err.getvalue()
    assert progress.count("\r") >= 3  # at least one line per MiB chunk and per file
    assert "downloading 2/2 files" in progress and "(100%)" in progress
    assert progress.rstrip().endswith(f"into {target}")


def test_download_of_a_file_keeps_its_name_and_no_progress_off_a_terminal(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = query(
        capsys,
        "--store",
        str(store),
        "--mime-type",
        "text/plain",
        "--download",
        str(tmp_path / "d"),
    )
    assert code == 0 and "\r" not in err
    (saved,) = (tmp_path / "d").iterdir()
    assert saved.name.endswith("_log.txt") and saved.read_bytes() == b"log lines\n"


def test_mistakes_are_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = query(capsys, "--store", str(store), "--start", "yesterday")
    assert code == 1 and err.strip() == (
        "syncd: --start: 'yesterday' is not an ISO 8601 time (e.g. 2026-12-03T16:20Z)"
    )
    code, _, err = query(capsys, "tabular", "--store", str(store), "--download", str(tmp_path))
    assert code == 1 and "only binary data" in err
    code, _, err = query(capsys, "--store", str(tmp_path / "missing"))
    assert code == 1 and "is not a folder" in err
    code, _, err = query(capsys, "--store", str(store), "--limit", "-1")
    assert code == 1 and "--limit" in err
