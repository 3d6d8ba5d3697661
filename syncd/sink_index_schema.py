"""The index's SQLite database: its tables, its connections, and the rows a stored item becomes.

Schema (version 4, kept in ``PRAGMA user_version``; another version is rebuilt from the
store's sidecars, never migrated)::

    items          one row per data file (binary reading, uploaded file or tabular upload):
                   id, kind, path in the store, part/component/method, MIME type, file
                   name and extension, payload size and offset, times, annotations and
                   method parameters (protobuf bytes)
    readings       one row per tabular reading: its upload, position, times, Struct bytes
    item_tags      tags of an item, in order, indexed by tag
    item_labels    bounding-box labels of a binary reading's annotations, indexed by label
    item_datasets  dataset ids of an item, indexed by dataset id
    pending        files whose rows may disagree with the disk while a change is applied

What the rows hold, where Viam's API leaves a choice:

- Times. ``time_requested`` is the reading's own (its SensorMetadata), else its
  ``time_received``, else when the sink received the upload; for an uploaded file, its
  ``file_modify_time``, else when the sink received it. ``time_received`` is the reading's,
  else when the sink received the upload. Both are always filled.
- MIME type: the upload's ``mime_type``, else the reading's (deprecated enum), else one
  guessed from the file extension (``.jpeg`` → ``image/jpeg``, ``.pcd`` →
  ``pointcloud/pcd``, ...), else "".
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

from google.protobuf.message import DecodeError

from syncd.capture_file import CaptureReader
from syncd.errors import CaptureFileError
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink_index_types import datetime_ns, timestamp_ns
from syncd.sink_store_items import CorruptStoreFile, StoredItem

log = logging.getLogger("syncd.sink")

SCHEMA_VERSION = 4

# What reading one stored file can raise: that file stays out of the index, the rest goes on.
ITEM_ERRORS = (OSError, ValueError, DecodeError, CorruptStoreFile, CaptureFileError)

_SCHEMA = """
CREATE TABLE items (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    tabular INTEGER NOT NULL,
    tagged INTEGER NOT NULL,
    path TEXT NOT NULL UNIQUE,
    part_id TEXT NOT NULL,
    component_type TEXT NOT NULL,
    component_name TEXT NOT NULL,
    method_name TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    file_name TEXT NOT NULL,
    file_ext TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    payload_offset INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    t INTEGER NOT NULL,
    t_received INTEGER NOT NULL,
    annotations BLOB,
    params BLOB
);
CREATE INDEX items_id ON items(id);
CREATE INDEX items_t ON items(tabular, t, path);
CREATE INDEX items_component_name ON items(tabular, component_name, t, path);
CREATE INDEX items_component_type ON items(tabular, component_type, t, path);
CREATE INDEX items_method ON items(tabular, method_name, t, path);
CREATE INDEX items_part ON items(tabular, part_id, t, path);
CREATE INDEX items_mime ON items(tabular, mime_type, t, path);
CREATE INDEX items_tagged ON items(tabular, tagged, t, path);
CREATE TABLE readings (
    rowid INTEGER PRIMARY KEY,
    item INTEGER NOT NULL REFERENCES items(rowid) ON DELETE CASCADE,
    upload TEXT NOT NULL,
    idx INTEGER NOT NULL,
    t INTEGER NOT NULL,
    t_received INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX readings_item ON readings(item, t);
CREATE INDEX readings_t ON readings(t, upload, idx);
CREATE TABLE item_tags (
    rowid INTEGER PRIMARY KEY,
    item INTEGER NOT NULL REFERENCES items(rowid) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    UNIQUE (item, tag)
);
CREATE INDEX item_tags_tag ON item_tags(tag, item);
CREATE TABLE item_labels (
    item INTEGER NOT NULL REFERENCES items(rowid) ON DELETE CASCADE,
    label TEXT NOT NULL,
    PRIMARY KEY (label, item)
) WITHOUT ROWID;
CREATE INDEX item_labels_item ON item_labels(item);
CREATE TABLE item_datasets (
    rowid INTEGER PRIMARY KEY,
    item INTEGER NOT NULL REFERENCES items(rowid) ON DELETE CASCADE,
    dataset_id TEXT NOT NULL,
    UNIQUE (item, dataset_id)
);
CREATE INDEX item_datasets_dataset ON item_datasets(dataset_id, item);
CREATE TABLE pending (path TEXT PRIMARY KEY, op TEXT NOT NULL) WITHOUT ROWID;
"""
# dropped before the tables they reference, whatever an older schema called the rest
_CHILD_TABLES = ("readings", "item_tags", "item_labels", "item_datasets", "pending")

# MIME types of the extensions robots produce most; Viam's own for point clouds.
_MIME_BY_EXTENSION = {
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".png": "image/png",
    ".gif": "image/gif",
    ".pcd": "pointcloud/pcd",
    ".mp4": "video/mp4",
    ".json": "application/json",
    ".csv": "text/csv",
    ".txt": "text/plain",
    ".log": "text/plain",
    ".pdf": "application/pdf",
}
_MIME_BY_ENUM = {
    ds.MIME_TYPE_IMAGE_JPEG: "image/jpeg",
    ds.MIME_TYPE_IMAGE_PNG: "image/png",
    ds.MIME_TYPE_APPLICATION_PCD: "pointcloud/pcd",
    ds.MIME_TYPE_VIDEO_MP4: "video/mp4",
}


# --- the database ------------------------------------------------------------------------


def connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection for one thread, in autocommit mode (transactions are explicit)."""
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")  # queries run beside the one writer
    # a committed ``pending`` row must outlive a power cut before the files change
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")  # an item's rows go with it (ON DELETE CASCADE)
    return conn


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction, taken at once so that two writers wait rather than deadlock."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version the database holds (0: none)."""
    return conn.execute("PRAGMA user_version").fetchone()[0]


def recreate_tables(conn: sqlite3.Connection) -> None:
    """Drop every table, whatever its schema version, and create empty ones (in a transaction)."""
    tables = [
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
    ]
    for table in sorted(tables, key=lambda t: t not in _CHILD_TABLES):
        conn.execute(f'DROP TABLE "{table}"')
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


# --- the rows of a stored item -----------------------------------------------------------


def item_times(item: StoredItem, sm: ds.SensorMetadata | None) -> tuple[int, int]:
    """(time_requested, time_received) in ns for a reading of ``item`` (see module doc)."""
    received = datetime_ns(item.received_at)
    if item.kind == "file":
        um = item.upload_metadata
        modified = um.file_modify_time
        return (timestamp_ns(modified) if um.HasField("file_modify_time") else received), received
    if sm is None:
        return received, received
    t_recv = timestamp_ns(sm.time_received) if sm.HasField("time_received") else received
    if sm.HasField("time_requested"):
        return timestamp_ns(sm.time_requested), t_recv
    return (t_recv if sm.HasField("time_received") else received), t_recv


def item_mime_type(item: StoredItem) -> str:
    """The MIME type the index reports for ``item`` (see module doc)."""
    um = item.upload_metadata
    if um.mime_type or item.kind == "tabular":
        return um.mime_type
    sm = item.sensor_metadata
    if sm is not None and sm.mime_type in _MIME_BY_ENUM:
        return _MIME_BY_ENUM[sm.mime_type]
    ext = um.file_extension.lower() or os.path.splitext(item.path.name)[1].lower()
    if not ext.startswith("."):
        ext = "." + ext
    return _MIME_BY_EXTENSION.get(ext, "")


def insert_item(
    conn: sqlite3.Connection,
    root: Path,
    item: StoredItem,
    readings: Sequence[ds.SensorData] | None,
) -> None:
    """Index ``item`` of the store under ``root``, replacing its rows if it has some.

    ``readings``: those of a tabular item when the caller has them (else read from its file).
    """
    rel = item.path.relative_to(root).as_posix()
    um = item.upload_metadata
    sm = item.sensor_metadata
    t, t_received = item_times(item, sm)
    offset = 0
    annotations: bytes | None = None
    labels: list[str] = []
    if item.kind == "binary":
        offset = _payload_offset(item.path)
        if sm is not None and sm.HasField("annotations"):
            annotations = sm.annotations.SerializeToString(deterministic=True) or None
            labels = [box.label for box in sm.annotations.bboxes]
    params = None
    if um.method_parameters:
        holder = ds.UploadMetadata()
        for key, value in um.method_parameters.items():
            holder.method_parameters[key].CopyFrom(value)
        params = holder.SerializeToString(deterministic=True)
    rows = []
    if item.kind == "tabular":
        if readings is None:
            readings = _read_tabular(item.path)
        for index, reading in enumerate(readings):
            sm_r = reading.metadata if reading.HasField("metadata") else None
            t_r, t_recv_r = item_times(item, sm_r)
            data = reading.struct.SerializeToString(deterministic=True)
            rows.append((item.id, index, t_r, t_recv_r, data))
    conn.execute("DELETE FROM items WHERE path = ?", (rel,))
    rowid = conn.execute(
        "INSERT INTO items (id, kind, tabular, tagged, path, part_id, component_type, "
        "component_name, method_name, mime_type, file_name, file_ext, size_bytes, "
        "payload_offset, readings, t, t_received, annotations, params) "
        "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
        (
            item.id,
            item.kind,
            item.kind == "tabular",
            any(um.tags),
            rel,
            um.part_id,
            um.component_type,
            um.component_name,
            um.method_name,
            item_mime_type(item),
            um.file_name,
            um.file_extension,
            item.size_bytes,
            offset,
            len(rows),
            t,
            t_received,
            annotations,
            params,
        ),
    ).lastrowid
    conn.executemany(
        "INSERT OR IGNORE INTO item_tags (item, tag) VALUES (?, ?)",
        [(rowid, tag) for tag in um.tags if tag],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO item_datasets (item, dataset_id) VALUES (?, ?)",
        [(rowid, d) for d in um.dataset_ids],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO item_labels (item, label) VALUES (?, ?)",
        [(rowid, label) for label in labels],
    )
    conn.executemany(
        "INSERT INTO readings (item, upload, idx, t, t_received, data) VALUES (?,?,?,?,?,?)",
        [(rowid, *row) for row in rows],
    )


def insert_item_quietly(conn: sqlite3.Connection, root: Path, item: StoredItem) -> bool:
    """:func:`insert_item` inside a transaction, leaving out (and logging) an unreadable file."""
    try:
        conn.execute("SAVEPOINT item")
        insert_item(conn, root, item, None)
    except ITEM_ERRORS as exc:
        conn.execute("ROLLBACK TO item")
        conn.execute("RELEASE item")
        log.warning("not indexing unreadable stored file %s: %s", item.path, exc)
        return False
    conn.execute("RELEASE item")
    return True


def _payload_offset(path: Path) -> int:
    """Where a binary capture file's payload starts, found without reading the payload."""
    with CaptureReader(path, large_reading_bytes=0) as reader:
        for record in reader:
            if record.binary_offset is not None:
                return record.binary_offset
            break
    raise CorruptStoreFile(f"{path}: holds no binary reading")


def _read_tabular(path: Path) -> list[ds.SensorData]:
    with CaptureReader(path) as reader:
        return [record.sensor_data for record in reader if record.sensor_data is not None]
