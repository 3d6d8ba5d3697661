"""The sink's query index: SQLite beside the store, so that data queries never walk the disk.

``<store>/.index.db`` is hidden like the sidecars, so :func:`~syncd.sink_store_items.iter_store`
and a syncd forwarding the store skip it. The sink records each upload once the store has
committed it (:meth:`SinkIndex.record`). :meth:`SinkIndex.open` builds the index from the
store's sidecars when it is missing, unreadable or of another schema version; otherwise the
sink reconciles it with the files at start-up and at every store sweep, which picks up
files added or removed while no sink was indexing (e.g. by a forwarding syncd). An upload
the sink fails to record (a crash between the store's commit and the index's) is indexed
by the next reconcile; a payload read that finds its file gone drops the item.

:class:`SinkIndex` is what the sink, the data API and ``syncd query`` hold: it owns the
connections and the lock, keeps the index in step with the store, and hands queries and
changes to the modules that make them:

- :mod:`syncd.sink_index_types`: what queries ask and answer (filters, rows, pages);
- :mod:`syncd.sink_index_schema`: the tables, and the rows a stored item becomes;
- :mod:`syncd.sink_index_query`: filters as SQL, and paged queries;
- :mod:`syncd.sink_index_changes`: tag edits and deletes, in a crash-safe order.

Connections are per thread (WAL mode): queries run in parallel with one writer. Changes
are serialised by a lock, as the sink is the only process that changes a store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from syncd import sink_index_changes as changes
from syncd import sink_index_query as query
from syncd import sink_index_schema as schema
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink_index_types import BinaryRow, CaptureIdentity, ItemFilter, Page, TabularRow
from syncd.sink_store_items import StoredItem, iter_store, load_item

log = logging.getLogger("syncd.sink")

INDEX_NAME = ".index.db"


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
        self._unreadable: set[str] = set()  # files reconcile gave up on, not retried

    # lifecycle

    def open(self, *, reconcile: bool = True) -> None:
        """Build the index if it is missing, unreadable or of another schema version.

        With ``reconcile`` (the sink, the only process changing the store), also finish
        changes a crash interrupted and index the files added or removed meanwhile.
        """
        try:
            version = schema.user_version(self._conn())
        except sqlite3.DatabaseError as exc:
            log.warning("index %s is unreadable (%s); building it again", self.path, exc)
            self.close()
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            version = 0
        if version != schema.SCHEMA_VERSION:
            self.rebuild(only_if_stale=True)
        elif reconcile:
            with self._change_lock:
                changes.settle(self._conn(), self.root)
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
            conn = schema.connect(self.path)
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    # keeping in step with the store

    def rebuild(self, *, only_if_stale: bool = False) -> int:
        """Index the whole store afresh from its sidecars; returns the number of items.

        ``only_if_stale``: unless another process built the current schema meanwhile.
        """
        count = 0
        with self._change_lock, schema.transaction(self._conn()) as conn:
            if only_if_stale and schema.user_version(conn) == schema.SCHEMA_VERSION:
                return conn.execute("SELECT count(*) FROM items").fetchone()[0]
            log.info("building the index of %s", self.root)
            schema.recreate_tables(conn)
            for item in iter_store(self.root):
                if schema.insert_item_quietly(conn, self.root, item):
                    count += 1
            conn.execute(f"PRAGMA user_version = {schema.SCHEMA_VERSION}")
        log.info("indexed %d item(s) of %s", count, self.root)
        return count

    def record(
        self, items: Sequence[StoredItem], readings: Sequence[ds.SensorData] | None = None
    ) -> None:
        """Index items the store just committed (``readings``: those of one tabular item).

        Never raises: a failure is logged, and the next reconcile indexes the files.
        """
        try:
            with schema.transaction(self._conn()) as conn:
                for item in items:
                    schema.insert_item(conn, self.root, item, readings)
        except (sqlite3.Error, *schema.ITEM_ERRORS) as exc:
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
            with schema.transaction(conn):
                conn.executemany("DELETE FROM items WHERE path = ?", [(p,) for p in gone])
                for rel in missing:
                    if rel in self._unreadable:
                        continue
                    try:
                        item = load_item(self.root / rel)
                    except schema.ITEM_ERRORS as exc:
                        self._unreadable.add(rel)
                        log.warning("not indexing unreadable stored file %s: %s", rel, exc)
                        continue
                    if schema.insert_item_quietly(conn, self.root, item):
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

    # queries (semantics: syncd.sink_index_query)

    def binary_page(
        self,
        flt: ItemFilter | None = None,
        *,
        limit: int = 0,
        last: str = "",
        ascending: bool = False,
        count_only: bool = False,
    ) -> Page[BinaryRow]:
        """A page of binary data matching ``flt``.

        ``limit`` 0 means :data:`~syncd.sink_index_query.DEFAULT_LIMIT`. With
        ``count_only`` the page has no rows and ``count`` is the number of matches;
        otherwise ``count`` is the number of rows. ``last`` resumes after a row's cursor;
        an empty page keeps the ``last`` it was given. ValueError for a bad cursor.
        """
        return query.binary_page(
            self._conn(),
            self.root,
            self.identity,
            flt or ItemFilter(),
            limit=limit,
            last=last,
            ascending=ascending,
            count_only=count_only,
        )

    def binary_by_ids(self, ids: Sequence[str]) -> list[BinaryRow]:
        """The binary data with these ids, in the order asked, unknown ids left out."""
        return query.binary_by_ids(self._conn(), self.root, ids)

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
        return query.tabular_page(
            self._conn(),
            self.identity,
            flt or ItemFilter(),
            limit=limit,
            last=last,
            ascending=ascending,
            count_only=count_only,
        )

    def tags(self, flt: ItemFilter | None = None) -> list[str]:
        """The distinct tags of the binary data matching ``flt``, sorted."""
        return query.tags(self._conn(), self.identity, flt or ItemFilter())

    def bbox_labels(self, flt: ItemFilter | None = None) -> list[str]:
        """The distinct bounding-box labels of the binary data matching ``flt``, sorted."""
        return query.bbox_labels(self._conn(), self.identity, flt or ItemFilter())

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
            with self._change_lock, schema.transaction(self._conn()) as conn:
                conn.execute(
                    "DELETE FROM items WHERE path = ?",
                    (row.path.relative_to(self.root).as_posix(),),
                )
            return None
        return data

    # changes (crash safety: syncd.sink_index_changes)

    def add_tags(self, target: ItemFilter | Sequence[str], tags: Sequence[str]) -> int:
        """Add ``tags`` to the binary data ``target`` names; returns the items changed."""
        with self._change_lock:
            return changes.add_tags(self._conn(), self.root, self.identity, target, tags)

    def remove_tags(self, target: ItemFilter | Sequence[str], tags: Sequence[str]) -> int:
        """Remove ``tags`` from the binary data ``target`` names; returns the items changed."""
        with self._change_lock:
            return changes.remove_tags(self._conn(), self.root, self.identity, target, tags)

    def delete_binary(self, target: ItemFilter | Sequence[str]) -> int:
        """Delete the binary data ``target`` names, files and all; returns the number deleted."""
        with self._change_lock:
            return changes.delete_binary(self._conn(), self.root, self.identity, target)

    def delete_tabular(self, flt: ItemFilter) -> int:
        """Delete the tabular readings matching ``flt``; returns the number deleted.

        Files whose every reading goes are deleted; others are rewritten without them.
        """
        with self._change_lock:
            return changes.delete_tabular(self._conn(), self.root, self.identity, flt)
