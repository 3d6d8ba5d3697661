"""The sink's query index: SQLite beside the store, so that data queries never walk the disk.

``<store>/.index.db`` is hidden like the sidecars, so :func:`~syncd.sink_store.iter_store`
and a syncd forwarding the store skip it. The sink records each upload once the store has
committed it (:meth:`SinkIndex.record`). :meth:`SinkIndex.open` builds the index from the
store's sidecars when it is missing, unreadable or of another schema version; otherwise the
sink reconciles it with the files at start-up and at every store sweep, which picks up
files added or removed while no sink was indexing (e.g. by a forwarding syncd).

Schema (version 4, kept in ``PRAGMA user_version``)::

    items          one row per data file (binary reading, uploaded file or tabular upload):
                   id, kind, path in the store, part/component/method, MIME type, file
                   name and extension, payload size and offset, times, annotations and
                   method parameters (protobuf bytes)
    readings       one row per tabular reading: its upload, position, times, Struct bytes
    item_tags      tags of an item, in order, indexed by tag
    item_labels    bounding-box labels of a binary reading's annotations, indexed by label
    item_datasets  dataset ids of an item, indexed by dataset id
    pending        files whose rows may disagree with the disk while a change is applied

Pages are keyset-paged (the cursor is the last row's sort key). SQLite keeps no statistics
here, so a page query first walks the next :data:`_WALK` rows in time order, and when that
does not fill the page it fetches every match and sorts it, starting from the smallest
set its filter names (see :func:`_driver`).

Semantics, where Viam's API leaves a choice:

- Times. ``time_requested`` is the reading's own (its SensorMetadata), else its
  ``time_received``, else when the sink received the upload; for an uploaded file, its
  ``file_modify_time``, else when the sink received it. ``time_received`` is the reading's,
  else when the sink received the upload. Both are always filled.
- Order and intervals use ``time_requested``: newest first unless ascending order is asked
  for; ties go by path (binary) or by upload and position (tabular). An interval includes
  its start and excludes its end; a missing bound is unbounded.
- Tags: ``UNSPECIFIED``/``MATCH_BY_OR`` match items with any of the tags (no tags: no
  constraint), ``TAGGED`` items with a tag, ``UNTAGGED`` items without. Bounding-box labels
  match if any is present. Every set field of a filter must match.
- Organization, location, robot and part name are the sink's :class:`CaptureIdentity`
  (from its config). A filter value for one of them excludes everything when the sink has
  a different non-empty value, and constrains nothing when the sink's value is empty.
- MIME type: the upload's ``mime_type``, else the reading's (deprecated enum), else one
  guessed from the file extension (``.jpeg`` → ``image/jpeg``, ``.pcd`` →
  ``pointcloud/pcd``, ...), else "".
- Tags are edited, listed and labels collected on binary data (readings and files) only.

Crash safety: the index never lists a file that a delete removed, and any drift heals:

- Upload: the store commits, then the sink indexes. A crash in between leaves the file
  unindexed until the next reconcile (start-up, or the next sweep).
- Tags: the affected paths go into ``pending`` (committed), the sidecars are rewritten,
  then rows and ``pending`` change in one transaction. After a crash the next start
  re-reads those paths' sidecars.
- Delete: rows go and the paths enter ``pending`` in one transaction, then the files are
  unlinked (data file first) and their folders fsynced, then ``pending`` is cleared. After
  a crash the next start finishes the unlinks.
- Deleting some readings of a tabular file: rows go and the path enters ``pending``, the
  file is rewritten (temp file and rename) with its sidecar, the item is indexed again.
  After a crash the next start indexes whichever version the disk holds.
- A failed change re-reads its pending paths from the disk at once. A payload read that
  finds its file gone drops the item.

Connections are per thread (WAL mode): queries run in parallel with one writer. Changes
are serialised by a lock, as the sink is the only process that changes a store.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any, Generic, TypeVar

from google.protobuf.message import DecodeError

from syncd import sink_edit
from syncd.capture_file import CaptureReader
from syncd.errors import CaptureFileError
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink_store import CorruptStoreFile, StoredItem, iter_store, load_item

log = logging.getLogger("syncd.sink")

INDEX_NAME = ".index.db"
SCHEMA_VERSION = 4
DEFAULT_LIMIT = 50
_WALK = 2000  # rows a page query walks in time order before it fetches and sorts instead
_COUNT_UP_TO = 100_000  # how far _driver() counts the items a filter value names

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NS = 1_000_000_000
_ITEM_ERRORS = (OSError, ValueError, DecodeError, CorruptStoreFile, CaptureFileError)

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


# --- what a query asks ----------------------------------------------------------------


class TagsMode(IntEnum):
    """How :attr:`ItemFilter.tags` applies; the values are Viam's ``TagsFilterType``."""

    UNSPECIFIED = 0
    MATCH_BY_OR = 1
    TAGGED = 2
    UNTAGGED = 3


@dataclass(frozen=True)
class ItemFilter:
    """Viam's ``Filter`` in plain values; empty fields constrain nothing.

    Times are nanoseconds since the epoch: ``start_ns`` included, ``end_ns`` excluded.
    """

    component_name: str = ""
    component_type: str = ""
    method: str = ""
    robot_name: str = ""
    robot_id: str = ""
    part_name: str = ""
    part_id: str = ""
    location_ids: tuple[str, ...] = ()
    organization_ids: tuple[str, ...] = ()
    mime_types: tuple[str, ...] = ()
    start_ns: int | None = None
    end_ns: int | None = None
    tags_mode: TagsMode = TagsMode.UNSPECIFIED
    tags: tuple[str, ...] = ()
    bbox_labels: tuple[str, ...] = ()
    dataset_id: str = ""


@dataclass(frozen=True)
class CaptureIdentity:
    """What the sink reports as the organization, location, robot and part name of its data."""

    organization_id: str = ""
    location_id: str = ""
    robot_id: str = ""
    robot_name: str = ""
    part_name: str = ""

    def admits(self, flt: ItemFilter) -> bool:
        """False when ``flt`` names another organization, location, robot or part name."""

        def ok(mine: str, wanted: Sequence[str]) -> bool:
            return not mine or not wanted or mine in wanted

        return (
            ok(self.organization_id, flt.organization_ids)
            and ok(self.location_id, flt.location_ids)
            and ok(self.robot_id, [flt.robot_id] if flt.robot_id else [])
            and ok(self.robot_name, [flt.robot_name] if flt.robot_name else [])
            and ok(self.part_name, [flt.part_name] if flt.part_name else [])
        )


# --- what a query answers --------------------------------------------------------------


@dataclass(frozen=True)
class Meta:
    """Where an item came from, as its upload said (tags as they are now)."""

    part_id: str
    component_type: str
    component_name: str
    method_name: str
    mime_type: str
    tags: tuple[str, ...]
    params: bytes | None  # a serialized UploadMetadata holding only method_parameters


@dataclass(frozen=True)
class BinaryRow:
    """One binary reading or uploaded file; ``cursor`` resumes a query after it."""

    id: str
    kind: str
    path: Path
    meta: Meta
    file_name: str
    file_ext: str
    size_bytes: int
    payload_offset: int
    time_requested_ns: int
    time_received_ns: int
    annotations: bytes | None  # a serialized viam.app.data.v1.Annotations
    dataset_ids: tuple[str, ...]
    cursor: str


@dataclass(frozen=True)
class TabularRow:
    """One tabular reading: ``data`` is its serialized google.protobuf.Struct."""

    upload_id: str
    index: int
    meta: Meta
    time_requested_ns: int
    time_received_ns: int
    data: bytes
    cursor: str


R = TypeVar("R", BinaryRow, TabularRow)


@dataclass(frozen=True)
class Page(Generic[R]):
    """A page of results; ``last`` is the cursor of its last row ("" when it has none)."""

    rows: list[R] = field(default_factory=list)
    last: str = ""
    count: int = 0


# --- pure helpers ------------------------------------------------------------------------


def timestamp_ns(ts: Any) -> int:
    """A google.protobuf.Timestamp as nanoseconds since the epoch."""
    return int(ts.seconds) * _NS + int(ts.nanos)


def datetime_ns(dt: datetime) -> int:
    """An aware datetime as nanoseconds since the epoch (microsecond precision)."""
    return (dt - _EPOCH) // timedelta(microseconds=1) * 1000


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


def _encode_cursor(*key: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(key, separators=(",", ":")).encode()).decode()


def _decode_cursor(cursor: str, kind: str, arity: int) -> list[Any]:
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor.encode()))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise ValueError(f"'last' is not a cursor this sink returned: {cursor!r}") from exc
    if not isinstance(key, list) or len(key) != arity + 1 or key[0] != kind:
        raise ValueError(f"'last' is not a cursor of a {_KINDS[kind]} query: {cursor!r}")
    return key[1:]


_KINDS = {"b": "binary data", "t": "tabular data"}


def _qmarks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))


def _where(flt: ItemFilter, identity: CaptureIdentity, tcol: str) -> tuple[str, list[Any]]:
    """SQL conditions on items ``i`` (and time column ``tcol``) for ``flt``."""
    if not identity.admits(flt):
        return "0", []
    conds: list[str] = []
    args: list[Any] = []
    for column, value in _column_filters(flt):
        conds.append(f"i.{column} = ?")
        args.append(value)
    if flt.mime_types:
        conds.append(f"i.mime_type IN ({_qmarks(flt.mime_types)})")
        args.extend(flt.mime_types)
    times, time_args = _time_conds(flt, tcol)
    conds += times
    args += time_args
    mode = flt.tags_mode
    if mode == TagsMode.TAGGED:
        conds.append("i.tagged = 1")
    elif mode == TagsMode.UNTAGGED:
        conds.append("i.tagged = 0")
    # checked item by item through (item, value) indexes; _driver() starts from the values
    for table, column, values in _value_filters(flt):
        conds.append(
            f"EXISTS (SELECT 1 FROM {table} v WHERE v.item = i.rowid "
            f"AND v.{column} IN ({_qmarks(values)}))"
        )
        args.extend(values)
    return (" AND ".join(conds) or "1"), args


def _column_filters(flt: ItemFilter) -> list[tuple[str, str]]:
    """The filters on indexed item columns: (column, value)."""
    return [
        (column, value)
        for column, value in (
            ("component_name", flt.component_name),
            ("component_type", flt.component_type),
            ("method_name", flt.method),
            ("part_id", flt.part_id),
        )
        if value
    ]


def _time_conds(flt: ItemFilter, column: str) -> tuple[list[str], list[Any]]:
    """The interval's conditions on a time column: start included, end excluded."""
    conds, args = [], []
    if flt.start_ns is not None:
        conds.append(f"{column} >= ?")
        args.append(flt.start_ns)
    if flt.end_ns is not None:
        conds.append(f"{column} < ?")
        args.append(flt.end_ns)
    return conds, args


def _value_filters(flt: ItemFilter) -> list[tuple[str, str, list[str]]]:
    """The filters on tags, labels and datasets: (table, column, any of these values)."""
    out = []
    if flt.tags and flt.tags_mode in (TagsMode.UNSPECIFIED, TagsMode.MATCH_BY_OR):
        out.append(("item_tags", "tag", list(flt.tags)))
    if flt.bbox_labels:
        out.append(("item_labels", "label", list(flt.bbox_labels)))
    if flt.dataset_id:
        out.append(("item_datasets", "dataset_id", [flt.dataset_id]))
    return out


def _driver(conn: sqlite3.Connection, flt: ItemFilter, tabular: bool) -> tuple[str, list[Any]]:
    """The items a query starts from: those of its rarest tag, label or dataset filter, or
    every item when a column filter (component, method, part) names fewer (the planner
    then uses that column's index). Counted here, up to a bound, as SQLite has no
    statistics to tell a rare value from a common one."""
    best: tuple[int, str, list[Any]] | None = None
    for table, column, values in _value_filters(flt):
        sql = f"SELECT item FROM {table} WHERE {column} IN ({_qmarks(values)})"
        count = conn.execute(f"SELECT count(*) FROM ({sql} LIMIT {_COUNT_UP_TO})", values)
        n = count.fetchone()[0]
        if best is None or n < best[0]:
            best = (n, sql, values)
    if best is None:
        return "items i", []
    for column, value in _column_filters(flt):
        sql = f"SELECT 1 FROM items WHERE tabular = ? AND {column} = ? LIMIT {_COUNT_UP_TO}"
        n = conn.execute(f"SELECT count(*) FROM ({sql})", (tabular, value)).fetchone()[0]
        if n < best[0]:
            return "items i", []
    return (
        f"(SELECT DISTINCT item FROM ({best[1]})) d CROSS JOIN items i ON i.rowid = d.item",
        best[2],
    )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


_BINARY_COLUMNS = (
    "i.rowid, i.id, i.kind, i.path, i.part_id, i.component_type, i.component_name, "
    "i.method_name, i.mime_type, i.file_name, i.file_ext, i.size_bytes, i.payload_offset, "
    "i.t, i.t_received, i.annotations, i.params"
)
_META_COLUMNS = (
    "i.rowid, i.part_id, i.component_type, i.component_name, i.method_name, i.mime_type, i.params"
)


# --- the index ---------------------------------------------------------------------------


class SinkIndex:
    """The index of the store under ``root`` (see the module docstring).

    Methods block (SQLite, file I/O): call them from worker threads in async code.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        identity: CaptureIdentity | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.root = Path(root).absolute()
        self.identity = identity or CaptureIdentity()
        self.path = Path(path) if path is not None else self.root / INDEX_NAME
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._change_lock = threading.RLock()
        self._unreadable: set[str] = set()

    # lifecycle

    def open(self, *, reconcile: bool = True) -> None:
        """Build the index if it is missing, unreadable or of another schema version.

        With ``reconcile`` (the sink, the only process changing the store), also finish
        changes a crash interrupted and index the files added or removed meanwhile.
        """
        try:
            version = self._conn().execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            log.warning("index %s is unreadable (%s); building it again", self.path, exc)
            self.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            version = 0
        if version != SCHEMA_VERSION:
            self.rebuild(only_if_stale=True)
        elif reconcile:
            self._settle()
            self.reconcile()

    def close(self) -> None:
        """Close every thread's connection (the index can be opened again)."""
        with self._connections_lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for conn in connections:
            conn.close()

    def __enter__(self) -> SinkIndex:
        self.open(reconcile=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    # filling

    def rebuild(self, *, only_if_stale: bool = False) -> int:
        """Index the whole store afresh from its sidecars; returns the number of items.

        ``only_if_stale``: unless another process built the current schema meanwhile.
        """
        count = 0
        with self._change_lock, _transaction(self._conn()) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if only_if_stale and version == SCHEMA_VERSION:
                return conn.execute("SELECT count(*) FROM items").fetchone()[0]
            log.info("building the index of %s", self.root)
            tables = [
                row[0]
                for row in conn.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'table' "
                    "AND name NOT LIKE 'sqlite_%'"
                )
            ]
            for table in sorted(tables, key=lambda t: t not in _CHILD_TABLES):
                conn.execute(f'DROP TABLE "{table}"')
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            for item in iter_store(self.root):
                if self._insert_quietly(conn, item):
                    count += 1
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        log.info("indexed %d item(s) of %s", count, self.root)
        return count

    def record(
        self, items: Sequence[StoredItem], readings: Sequence[ds.SensorData] | None = None
    ) -> None:
        """Index items the store just committed (``readings``: those of one tabular item).

        Never raises: a failure is logged, and the next reconcile indexes the files.
        """
        try:
            with _transaction(self._conn()) as conn:
                for item in items:
                    self._insert(conn, item, readings)
        except (sqlite3.Error, *_ITEM_ERRORS) as exc:
            log.error("cannot index %d new item(s) (the next sweep will): %s", len(items), exc)

    def reconcile(self) -> tuple[int, int]:
        """Index files the index lacks and drop rows whose files are gone: (added, dropped)."""
        with self._change_lock:
            conn = self._conn()
            # the index first, then the disk: a file committed in between is only re-added
            indexed = {row[0] for row in conn.execute("SELECT path FROM items")}
            on_disk = set(self._walk())
            missing = sorted(on_disk - indexed)
            gone = sorted(indexed - on_disk)
            added = 0
            if not (missing or gone):
                return 0, 0
            with _transaction(conn):
                conn.executemany("DELETE FROM items WHERE path = ?", [(p,) for p in gone])
                for rel in missing:
                    if rel in self._unreadable:
                        continue
                    try:
                        item = load_item(self.root / rel)
                    except _ITEM_ERRORS as exc:
                        self._unreadable.add(rel)
                        log.warning("not indexing unreadable stored file %s: %s", rel, exc)
                        continue
                    if self._insert_quietly(conn, item):
                        added += 1
        if added or gone:
            log.info("index of %s: %d item(s) added, %d dropped", self.root, added, len(gone))
        return added, len(gone)

    def _walk(self) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            rel = Path(dirpath).relative_to(self.root)
            for name in filenames:
                if not name.startswith("."):
                    yield (rel / name).as_posix()

    def _insert_quietly(self, conn: sqlite3.Connection, item: StoredItem) -> bool:
        try:
            conn.execute("SAVEPOINT item")
            self._insert(conn, item, None)
        except _ITEM_ERRORS as exc:
            conn.execute("ROLLBACK TO item")
            conn.execute("RELEASE item")
            log.warning("not indexing unreadable stored file %s: %s", item.path, exc)
            return False
        conn.execute("RELEASE item")
        return True

    def _insert(
        self,
        conn: sqlite3.Connection,
        item: StoredItem,
        readings: Sequence[ds.SensorData] | None,
    ) -> None:
        rel = item.path.relative_to(self.root).as_posix()
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

    # queries

    def binary_page(
        self,
        flt: ItemFilter | None = None,
        *,
        limit: int = 0,
        last: str = "",
        ascending: bool = False,
        count_only: bool = False,
    ) -> Page[BinaryRow]:
        """A page of binary data matching ``flt`` (``limit`` 0: :data:`DEFAULT_LIMIT`).

        With ``count_only`` the page has no rows and ``count`` is the number of matches;
        otherwise ``count`` is the number of rows. ``last`` resumes after a row's cursor;
        an empty page keeps the ``last`` it was given. ValueError for a bad cursor.
        """
        flt = flt or ItemFilter()
        where, args = _where(flt, self.identity, "i.t")
        conn = self._conn()
        if count_only:
            source, source_args = _driver(conn, flt, False)
            sql = f"SELECT count(*) FROM {source} WHERE i.tabular = 0 AND {where}"
            return Page(count=conn.execute(sql, source_args + args).fetchone()[0])
        order = "ASC" if ascending else "DESC"
        keyset, keyset_args = "", []
        if last:
            keyset = f" AND (i.t, i.path) {'>' if ascending else '<'} (?, ?)"
            keyset_args = _decode_cursor(last, "b", 2)
        times, time_args = _time_conds(flt, "i.t")
        within = "".join(f" AND {cond}" for cond in times)
        tail = f" ORDER BY i.t {order}, i.path {order} LIMIT ?"
        limit = limit or DEFAULT_LIMIT
        # first the next _WALK items in order: enough when matches are not rare
        window = (
            f"SELECT i.rowid AS id FROM items i WHERE i.tabular = 0{within}{keyset}"
            f" ORDER BY i.t {order}, i.path {order} LIMIT {_WALK}"
        )
        rows = conn.execute(
            f"SELECT {_BINARY_COLUMNS} FROM ({window}) w CROSS JOIN items i ON i.rowid = w.id "
            f"WHERE {where}{tail}",
            [*time_args, *keyset_args, *args, limit],
        ).fetchall()
        if len(rows) < limit:  # else fetch every match (from the rarest list) and sort
            source, source_args = _driver(conn, flt, False)
            rows = conn.execute(
                f"SELECT {_BINARY_COLUMNS} FROM {source} WHERE i.tabular = 0 AND {where}"
                f"{keyset}{tail}",
                [*source_args, *args, *keyset_args, limit],
            ).fetchall()
        found = self._binary_rows(conn, rows)
        return Page(found, found[-1].cursor if found else last, len(found))

    def binary_by_ids(self, ids: Sequence[str]) -> list[BinaryRow]:
        """The binary data with these ids, in the order asked, unknown ids left out."""
        wanted = list(dict.fromkeys(ids))
        conn = self._conn()
        rows = []
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            rows += conn.execute(
                f"SELECT {_BINARY_COLUMNS} FROM items i "
                f"WHERE i.tabular = 0 AND i.id IN ({_qmarks(chunk)}) ORDER BY i.path",
                chunk,
            ).fetchall()
        position = {item_id: n for n, item_id in enumerate(wanted)}
        return sorted(self._binary_rows(conn, rows), key=lambda row: position[row.id])

    def tabular_page(
        self,
        flt: ItemFilter | None = None,
        *,
        limit: int = 0,
        last: str = "",
        ascending: bool = False,
        count_only: bool = False,
    ) -> Page[TabularRow]:
        """A page of tabular readings matching ``flt``; as :meth:`binary_page` otherwise."""
        flt = flt or ItemFilter()
        where, args = _where(flt, self.identity, "r.t")
        conn = self._conn()
        uploads, uploads_args = _driver(conn, flt, True)
        from_uploads = f"{uploads} CROSS JOIN readings r ON r.item = i.rowid"
        if count_only:
            sql = f"SELECT count(*) FROM {from_uploads} WHERE i.tabular = 1 AND {where}"
            return Page(count=conn.execute(sql, uploads_args + args).fetchone()[0])
        order = "ASC" if ascending else "DESC"
        keyset, keyset_args = "", []
        if last:
            keyset = f" AND (r.t, r.upload, r.idx) {'>' if ascending else '<'} (?, ?, ?)"
            keyset_args = _decode_cursor(last, "t", 3)
        times, time_args = _time_conds(flt, "r.t")
        within = "".join(f" AND {cond}" for cond in times)
        columns = "r.item, r.upload, r.idx, r.t, r.t_received, r.data"
        tail = f" ORDER BY r.t {order}, r.upload {order}, r.idx {order} LIMIT ?"
        limit = limit or DEFAULT_LIMIT
        # first the next _WALK readings in order: enough when matches are not rare
        window = (
            f"SELECT r.rowid AS id FROM readings r WHERE 1{within}{keyset}"
            f" ORDER BY r.t {order}, r.upload {order}, r.idx {order} LIMIT {_WALK}"
        )
        rows = conn.execute(
            f"SELECT {columns} FROM ({window}) w CROSS JOIN readings r ON r.rowid = w.id "
            f"CROSS JOIN items i ON i.rowid = r.item WHERE i.tabular = 1 AND {where}{tail}",
            [*time_args, *keyset_args, *args, limit],
        ).fetchall()
        if len(rows) < limit:  # else fetch the matching uploads' readings and sort
            rows = conn.execute(
                f"SELECT {columns} FROM {from_uploads} WHERE i.tabular = 1 AND {where}"
                f"{keyset}{tail}",
                [*uploads_args, *args, *keyset_args, limit],
            ).fetchall()
        metas = self._metas(conn, {row[0] for row in rows})
        found = [
            TabularRow(
                upload, idx, metas[item], t, t_recv, data, _encode_cursor("t", t, upload, idx)
            )
            for item, upload, idx, t, t_recv, data in rows
        ]
        return Page(found, found[-1].cursor if found else last, len(found))

    def tags(self, flt: ItemFilter | None = None) -> list[str]:
        """The distinct tags of the binary data matching ``flt``, sorted."""
        return self._distinct("item_tags", "tag", flt)

    def bbox_labels(self, flt: ItemFilter | None = None) -> list[str]:
        """The distinct bounding-box labels of the binary data matching ``flt``, sorted."""
        return self._distinct("item_labels", "label", flt)

    def _distinct(self, table: str, column: str, flt: ItemFilter | None) -> list[str]:
        """Each distinct value (found by skipping through the value index, as there are
        few), kept if some matching item has it: no pass over every tagged item."""
        where, args = _where(flt or ItemFilter(), self.identity, "i.t")
        conn = self._conn()
        values = conn.execute(
            f"WITH RECURSIVE v(x) AS (SELECT min({column}) FROM {table} UNION ALL "
            f"SELECT (SELECT min({column}) FROM {table} WHERE {column} > v.x) FROM v "
            "WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL"
        ).fetchall()
        probe = (
            f"SELECT 1 FROM {table} g JOIN items i ON i.rowid = g.item "
            f"WHERE g.{column} = ? AND i.tabular = 0 AND {where} LIMIT 1"
        )
        return [x for (x,) in values if conn.execute(probe, [x, *args]).fetchone()]

    def _binary_rows(self, conn: sqlite3.Connection, rows: list[Any]) -> list[BinaryRow]:
        rowids = [row[0] for row in rows]
        tags = self._children(conn, "item_tags", "tag", rowids)
        datasets = self._children(conn, "item_datasets", "dataset_id", rowids)
        out = []
        for row in rows:
            rowid, item_id, kind, rel = row[:4]
            file_name, file_ext, size, offset, t, t_recv, annots, params = row[9:]
            out.append(
                BinaryRow(
                    item_id,
                    kind,
                    self.root / rel,
                    Meta(*row[4:9], tags=tags.get(rowid, ()), params=params),
                    file_name,
                    file_ext,
                    size,
                    offset,
                    t,
                    t_recv,
                    annots,
                    datasets.get(rowid, ()),
                    _encode_cursor("b", t, rel),
                )
            )
        return out

    def _metas(self, conn: sqlite3.Connection, rowids: set[int]) -> dict[int, Meta]:
        ids = sorted(rowids)
        tags = self._children(conn, "item_tags", "tag", ids)
        out = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            for rowid, *values, params in conn.execute(
                f"SELECT {_META_COLUMNS} FROM items i WHERE i.rowid IN ({_qmarks(chunk)})", chunk
            ):
                out[rowid] = Meta(*values, tags=tags.get(rowid, ()), params=params)
        return out

    @staticmethod
    def _children(
        conn: sqlite3.Connection, table: str, column: str, rowids: Sequence[int]
    ) -> dict[int, tuple[str, ...]]:
        found: dict[int, list[str]] = {}
        for start in range(0, len(rowids), 500):
            chunk = rowids[start : start + 500]
            for item, value in conn.execute(
                f"SELECT item, {column} FROM {table} WHERE item IN ({_qmarks(chunk)}) "
                "ORDER BY rowid",
                chunk,
            ):
                found.setdefault(item, []).append(value)
        return {item: tuple(values) for item, values in found.items()}

    def read_payload(self, row: BinaryRow) -> bytes | None:
        """The bytes of a binary reading or file, or None (and the row dropped) if it is gone."""
        try:
            with open(row.path, "rb") as f:
                f.seek(row.payload_offset)
                data = f.read(row.size_bytes)
        except FileNotFoundError:
            data = None
        if data is None or len(data) != row.size_bytes:
            log.warning("stored file %s is gone or cut short; dropping it from the index", row.path)
            with self._change_lock, _transaction(self._conn()) as conn:
                conn.execute(
                    "DELETE FROM items WHERE path = ?",
                    (row.path.relative_to(self.root).as_posix(),),
                )
            return None
        return data

    # changes

    def add_tags(self, target: ItemFilter | Sequence[str], tags: Sequence[str]) -> int:
        """Add ``tags`` to the binary data ``target`` names; returns the items changed."""
        wanted = list(dict.fromkeys(tags))
        return self._retag(target, lambda old: [*old, *(t for t in wanted if t not in old)])

    def remove_tags(self, target: ItemFilter | Sequence[str], tags: Sequence[str]) -> int:
        """Remove ``tags`` from the binary data ``target`` names; returns the items changed."""
        unwanted = set(tags)
        return self._retag(target, lambda old: [t for t in old if t not in unwanted])

    def _retag(self, target: ItemFilter | Sequence[str], change: Any) -> int:
        """Apply ``change`` (old tags → new tags) to each target; returns the items changed."""
        with self._change_lock:
            conn = self._conn()
            rows = self._targets(conn, target)
            current = self._children(conn, "item_tags", "tag", [rowid for rowid, _ in rows])
            todo = []
            for rowid, rel in rows:
                old = list(current.get(rowid, ()))
                if change(old) != old:
                    todo.append(rel)
            if not todo:
                return 0
            with _transaction(conn):
                self._add_pending(conn, todo, "reload")
            with self._settling(todo):
                changed, gone = [], []
                for rel in todo:
                    try:
                        item = load_item(self.root / rel)
                    except FileNotFoundError:
                        gone.append(rel)  # removed behind the sink's back
                        continue
                    old = list(item.upload_metadata.tags)
                    new = change(old)
                    changed.append(sink_edit.retag(item, new) if new != old else item)
                with _transaction(conn):
                    conn.executemany("DELETE FROM items WHERE path = ?", [(p,) for p in gone])
                    for item in changed:
                        self._insert(conn, item, None)
                    self._end_pending(conn, todo)
            return len(changed)

    def delete_binary(self, target: ItemFilter | Sequence[str]) -> int:
        """Delete the binary data ``target`` names, files and all; returns the number deleted."""
        with self._change_lock:
            conn = self._conn()
            paths = [rel for _, rel in self._targets(conn, target)]
            if not paths:
                return 0
            with _transaction(conn):
                conn.executemany("DELETE FROM items WHERE path = ?", [(p,) for p in paths])
                self._add_pending(conn, paths, "delete")
            with self._settling(paths):
                sink_edit.remove(self.root / p for p in paths)
                with _transaction(conn):
                    self._end_pending(conn, paths)
            return len(paths)

    def delete_tabular(self, flt: ItemFilter) -> int:
        """Delete the tabular readings matching ``flt``; returns the number deleted.

        Files whose every reading goes are deleted; others are rewritten without them.
        """
        with self._change_lock:
            conn = self._conn()
            where, args = _where(flt, self.identity, "r.t")
            matched: dict[int, tuple[str, set[int]]] = {}
            for item, rel, idx in conn.execute(
                "SELECT r.item, i.path, r.idx FROM readings r JOIN items i ON i.rowid = r.item "
                f"WHERE i.tabular = 1 AND {where}",
                args,
            ):
                matched.setdefault(item, (rel, set()))[1].add(idx)
            if not matched:
                return 0
            totals = dict(
                conn.execute(
                    f"SELECT item, count(*) FROM readings WHERE item IN ({_qmarks(list(matched))}) "
                    "GROUP BY item",
                    list(matched),
                ).fetchall()
            )
            whole = [rel for item, (rel, idx) in matched.items() if len(idx) == totals[item]]
            part = {rel: idx for item, (rel, idx) in matched.items() if len(idx) < totals[item]}
            with _transaction(conn):
                conn.executemany("DELETE FROM items WHERE path = ?", [(p,) for p in whole])
                for rel, idx in part.items():
                    conn.executemany(
                        "DELETE FROM readings WHERE item = (SELECT rowid FROM items WHERE path = ?) "
                        "AND idx = ?",
                        [(rel, i) for i in idx],
                    )
                self._add_pending(conn, whole, "delete")
                self._add_pending(conn, list(part), "reload")
            with self._settling([*whole, *part]):
                sink_edit.remove(self.root / p for p in whole)
                rewritten = [
                    sink_edit.rewrite_tabular(load_item(self.root / rel), drop)
                    for rel, drop in part.items()
                ]
                with _transaction(conn):
                    for item in rewritten:
                        self._insert(conn, item, None)
                    self._end_pending(conn, [*whole, *part])
            return sum(len(idx) for _, idx in matched.values())

    def _targets(
        self, conn: sqlite3.Connection, target: ItemFilter | Sequence[str]
    ) -> list[tuple[int, str]]:
        """(rowid, path) of the binary data a filter or a list of ids names."""
        if isinstance(target, ItemFilter):
            where, args = _where(target, self.identity, "i.t")
            sql = f"SELECT i.rowid, i.path FROM items i WHERE i.tabular = 0 AND {where}"
            return conn.execute(sql + " ORDER BY i.path", args).fetchall()
        ids = list(dict.fromkeys(target))
        out = []
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            out += conn.execute(
                "SELECT i.rowid, i.path FROM items i WHERE i.tabular = 0 "
                f"AND i.id IN ({_qmarks(chunk)})",
                chunk,
            ).fetchall()
        return sorted(out, key=lambda row: row[1])

    # pending changes

    @staticmethod
    def _add_pending(conn: sqlite3.Connection, paths: Iterable[str], op: str) -> None:
        conn.executemany(
            "INSERT OR REPLACE INTO pending (path, op) VALUES (?, ?)", [(p, op) for p in paths]
        )

    @staticmethod
    def _end_pending(conn: sqlite3.Connection, paths: Iterable[str]) -> None:
        conn.executemany("DELETE FROM pending WHERE path = ?", [(p,) for p in paths])

    @contextlib.contextmanager
    def _settling(self, paths: Sequence[str]) -> Iterator[None]:
        """On failure, bring the rows of ``paths`` in line with the disk, then re-raise."""
        try:
            yield
        except BaseException:
            try:
                self._settle(paths)
            except (sqlite3.Error, *_ITEM_ERRORS) as exc:
                log.error(
                    "cannot re-read %d changed file(s) (the next start will): %s", len(paths), exc
                )
            raise

    def _settle(self, paths: Sequence[str] | None = None) -> None:
        """Finish or undo the pending changes of ``paths`` (all of them: None)."""
        with self._change_lock:
            conn = self._conn()
            rows = conn.execute("SELECT path, op FROM pending").fetchall()
            if paths is not None:
                wanted = set(paths)
                rows = [row for row in rows if row[0] in wanted]
            if not rows:
                return
            log.info("finishing %d interrupted change(s) in %s", len(rows), self.root)
            sink_edit.remove(self.root / rel for rel, op in rows if op == "delete")
            with _transaction(conn):
                for rel, _ in rows:
                    conn.execute("DELETE FROM items WHERE path = ?", (rel,))
                    if (self.root / rel).exists():
                        with contextlib.suppress(*_ITEM_ERRORS):
                            self._insert_quietly(conn, load_item(self.root / rel))
                self._end_pending(conn, [rel for rel, _ in rows])


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
