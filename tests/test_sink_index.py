"""The sink's index and the store agree: rebuilds, reconciles, failures and crashes mid-change.

The store is filled through :class:`syncd.sink_store.Store`, as the sink fills it; crashes
are real (a child process dies with ``os._exit`` at a chosen step of a change), and the
next :meth:`SinkIndex.open` (what the sink does at start) must leave the index describing
exactly what the disk holds, never a file that is gone.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from syncd import mapping
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink_index import INDEX_NAME, SinkIndex
from syncd.sink_index_schema import SCHEMA_VERSION
from syncd.sink_index_types import ItemFilter
from syncd.sink_store import Store
from syncd.sink_store_items import iter_store

ROOT = Path(__file__).resolve().parent.parent


def fill(root: Path) -> dict[str, str]:
    """Three binary readings, a file and a tabular upload of four readings; ids by name."""
    store = Store(root)
    store.open()
    ids = {}
    for i in range(3):
        um = mapping.upload_metadata(
            "p",
            mapping.Stream(
                "rdk:component:camera", "cam", "ReadImage", ds.DATA_TYPE_BINARY_SENSOR, ("t",)
            ),
        )
        item = store.put_binary(um, mapping.binary_reading(b"frame%d" % i, i * 10**9, i * 10**9))
        ids[f"frame{i}"] = item.id
    pending = store.begin_file(
        ds.UploadMetadata(part_id="p", type=ds.DATA_TYPE_FILE, file_name="n.txt")
    )
    pending.write(b"notes")
    ids["file"] = pending.commit().id
    um = mapping.upload_metadata(
        "p", mapping.Stream("rdk:component:sensor", "imu", "Readings", ds.DATA_TYPE_TABULAR_SENSOR)
    )
    readings = [
        mapping.tabular_reading(json.dumps({"i": i}), i * 10**9, i * 10**9) for i in range(4)
    ]
    ids["imu"] = store.put_tabular(um, readings).id
    return ids


def disk_state(root: Path) -> dict[str, tuple[list[str], int]]:
    """What the store holds: tags and reading counts by id."""
    return {item.id: (list(item.upload_metadata.tags), item.readings) for item in iter_store(root)}


def index_state(index: SinkIndex) -> dict[str, tuple[list[str], int]]:
    """What the index says, in the same shape."""
    out = {
        row.id: (list(row.meta.tags), 1 if row.kind == "binary" else 0)
        for row in index.binary_page(limit=1000).rows
    }
    for row in index.tabular_page(limit=1000).rows:
        tags, count = out.get(row.upload_id, (list(row.meta.tags), 0))
        out[row.upload_id] = (tags, count + 1)
    return out


def assert_agree(root: Path) -> None:
    with SinkIndex(root) as index:
        assert index_state(index) == disk_state(root)
        for row in index.binary_page(limit=1000).rows:
            assert row.path.exists(), f"the index lists a file that is gone: {row.path}"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    fill(root)
    return root


def test_built_from_the_sidecars_when_missing(store: Path) -> None:
    index = SinkIndex(store)
    index.open()
    try:
        assert len(index.binary_page(limit=100).rows) == 4
        assert index.tabular_page(count_only=True).count == 4
        assert index.tags() == ["t"]
    finally:
        index.close()
    assert_agree(store)


def test_rebuilt_when_of_another_schema_or_unreadable(store: Path) -> None:
    SinkIndex(store).open()
    db = store / INDEX_NAME
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM items")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    assert_agree(store)  # open() saw another version and rebuilt
    db.write_bytes(b"this is not a database" * 100)
    for extra in ("-wal", "-shm"):
        (store / (INDEX_NAME + extra)).unlink(missing_ok=True)
    assert_agree(store)


def test_reconcile_follows_files_changed_behind_its_back(store: Path, tmp_path: Path) -> None:
    index = SinkIndex(store)
    index.open()
    try:
        frame = next(r for r in index.binary_page().rows if r.meta.component_name == "cam")
        frame.path.unlink()  # a forwarding syncd uploaded and deleted it
        copied = store / "p" / "hand" / "copied.bin"
        copied.parent.mkdir(parents=True)
        copied.write_bytes(b"by hand")  # no sidecar: indexed as a plain file
        assert index.reconcile() == (1, 1)
        assert index.reconcile() == (0, 0)
        rows = index.binary_page(limit=100).rows
        assert frame.id not in {r.id for r in rows}
        (hand,) = [r for r in rows if r.id == "copied.bin"]
        assert index.read_payload(hand) == b"by hand"
        # a payload read that finds the file gone drops the row at once
        other = next(r for r in rows if r.meta.component_name == "cam")
        other.path.unlink()
        assert index.read_payload(other) is None
        assert other.id not in {r.id for r in index.binary_page(limit=100).rows}
    finally:
        index.close()


def test_a_failed_change_leaves_index_and_disk_agreeing(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from syncd import sink_edit

    def broken(*args: object) -> None:
        raise OSError(5, "Input/output error")

    index = SinkIndex(store)
    index.open()
    try:
        monkeypatch.setattr(sink_edit, "rewrite_tabular", broken)
        with pytest.raises(OSError):
            index.delete_tabular(ItemFilter(end_ns=2 * 10**9))  # two of the four readings
        assert index.tabular_page(count_only=True).count == 4  # the file is unchanged
        monkeypatch.setattr(sink_edit, "retag", broken)
        with pytest.raises(OSError):
            index.add_tags(ItemFilter(), ["new"])
        assert index.tags() == ["t"]
        assert not index._conn().execute("SELECT count(*) FROM pending").fetchone()[0]
    finally:
        index.close()
    assert_agree(store)


# --- real crashes --------------------------------------------------------------------------

_CRASH = r"""
import os, sys
from syncd import sink_edit
from syncd.sink_index import SinkIndex
from syncd.sink_index_types import ItemFilter

root, step, change = sys.argv[1], sys.argv[2], sys.argv[3]
real = getattr(sink_edit, step)

def die_after(*args, **kwargs):
    real(*args, **kwargs)
    os._exit(3)

def die_before(*args, **kwargs):
    os._exit(3)

setattr(sink_edit, step, die_after if change.endswith("after") else die_before)
index = SinkIndex(root)
index.open(reconcile=False)
if change.startswith("delete"):
    index.delete_binary(ItemFilter(component_name="cam"))
elif change.startswith("tags"):
    index.add_tags(ItemFilter(), ["crash"])
else:
    index.delete_tabular(ItemFilter(end_ns=2 * 10**9))
os._exit(0)
"""


@pytest.mark.parametrize(
    ("step", "change", "expect"),
    [
        # killed after the rows went, before any file did: the start finishes the unlinks
        ("remove", "delete-before", {"frames": 0, "readings": 4, "crash_tags": 0}),
        # killed after the sidecars changed, before the rows did: the start re-reads them
        ("retag", "tags-after", {"frames": 3, "readings": 4, "crash_tags": 1}),
        # killed before the tabular file was rewritten: the readings come back
        ("rewrite_tabular", "tabular-before", {"frames": 3, "readings": 4, "crash_tags": 0}),
        # killed after it was rewritten, before it was indexed again: the rest is indexed
        ("rewrite_tabular", "tabular-after", {"frames": 3, "readings": 2, "crash_tags": 0}),
    ],
)
def test_a_crash_mid_change_heals_at_the_next_start(
    store: Path, step: str, change: str, expect: dict[str, int]
) -> None:
    SinkIndex(store).open()
    result = subprocess.run(
        [sys.executable, "-c", _CRASH, str(store), step, change],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 3, result.stderr
    with SinkIndex(store) as index:
        # before the start: the index may lag the disk, but never lists a deleted file
        for row in index.binary_page(limit=100).rows:
            if change.startswith("delete"):
                assert row.meta.component_name != "cam"
    index = SinkIndex(store)
    index.open()  # what the sink does at start
    try:
        frames = [r for r in index.binary_page(limit=100).rows if r.meta.component_name == "cam"]
        assert len(frames) == expect["frames"]
        assert index.tabular_page(count_only=True).count == expect["readings"]
        tagged = index.binary_page(ItemFilter(tags=("crash",)), count_only=True).count
        assert (tagged > 0) == bool(expect["crash_tags"])
        assert not index._conn().execute("SELECT count(*) FROM pending").fetchone()[0]
    finally:
        index.close()
    assert_agree(store)
