"""Queries of the sink's index: filters become SQL, and pages of rows come back.

Semantics, where Viam's API leaves a choice:

- Order and intervals use ``time_requested``: newest first unless ascending order is asked
  for; ties go by path (binary) or by upload and position (tabular). An interval includes
  its start and excludes its end; a missing bound is unbounded.
- Tags: ``UNSPECIFIED``/``MATCH_BY_OR`` match items with any of the tags (no tags: no
  constraint), ``TAGGED`` items with a tag, ``UNTAGGED`` items without. Bounding-box labels
  match if any is present. Every set field of a filter must match, and the sink's
  :class:`~syncd.sink_index_types.CaptureIdentity` must admit it.
- Tags are listed and labels collected on binary data (readings and files) only.

Pages are keyset-paged (the cursor is the last row's sort key). SQLite keeps no statistics
here, so a page query first walks the next :data:`_WALK` rows in time order, and when that
does not fill the page it fetches every match and sorts it, starting from the smallest
set its filter names (see :func:`_driver`).

The functions take the calling thread's connection and only read; :func:`where`,
:func:`qmarks` and :func:`item_values` also serve :mod:`syncd.sink_index_changes` to find
what a change targets.
"""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from syncd.sink_index_types import (
    BinaryRow,
    CaptureIdentity,
    ItemFilter,
    Meta,
    Page,
    TabularRow,
    TagsMode,
)

DEFAULT_LIMIT = 50
_WALK = 2000  # rows a page query walks in time order before it fetches and sorts instead
_COUNT_UP_TO = 100_000  # how far _driver() counts the items a filter value names
IDS_PER_QUERY = 500  # per ``IN (...)``: under SQLite's bound-parameter limit (999 in old builds)

_BINARY_COLUMNS = (
    "i.rowid, i.id, i.kind, i.path, i.part_id, i.component_type, i.component_name, "
    "i.method_name, i.mime_type, i.file_name, i.file_ext, i.size_bytes, i.payload_offset, "
    "i.t, i.t_received, i.annotations, i.params"
)
_META_COLUMNS = (
    "i.rowid, i.part_id, i.component_type, i.component_name, i.method_name, i.mime_type, i.params"
)
_KINDS = {"b": "binary data", "t": "tabular data"}


# --- pages -------------------------------------------------------------------------------


def binary_page(
    conn: sqlite3.Connection,
    root: Path,
    identity: CaptureIdentity,
    flt: ItemFilter,
    *,
    limit: int,
    last: str,
    ascending: bool,
    count_only: bool,
) -> Page[BinaryRow]:
    """A page of the binary data of the store under ``root`` (see SinkIndex.binary_page)."""
    where_sql, args = where(flt, identity, "i.t")
    if count_only:
        source, source_args = _driver(conn, flt, False)
        sql = f"SELECT count(*) FROM {source} WHERE i.tabular = 0 AND {where_sql}"
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
        f"WHERE {where_sql}{tail}",
        [*time_args, *keyset_args, *args, limit],
    ).fetchall()
    if len(rows) < limit:  # else fetch every match (from the rarest list) and sort
        source, source_args = _driver(conn, flt, False)
        rows = conn.execute(
            f"SELECT {_BINARY_COLUMNS} FROM {source} WHERE i.tabular = 0 AND {where_sql}"
            f"{keyset}{tail}",
            [*source_args, *args, *keyset_args, limit],
        ).fetchall()
    found = _binary_rows(conn, root, rows)
    return Page(found, found[-1].cursor if found else last, len(found))


def binary_by_ids(conn: sqlite3.Connection, root: Path, ids: Sequence[str]) -> list[BinaryRow]:
    """The binary data with these ids, in the order asked, unknown ids left out."""
    wanted = list(dict.fromkeys(ids))
    rows = []
    for start in range(0, len(wanted), IDS_PER_QUERY):
        chunk = wanted[start : start + IDS_PER_QUERY]
        rows += conn.execute(
            f"SELECT {_BINARY_COLUMNS} FROM items i "
            f"WHERE i.tabular = 0 AND i.id IN ({qmarks(chunk)}) ORDER BY i.path",
            chunk,
        ).fetchall()
    position = {item_id: n for n, item_id in enumerate(wanted)}
    return sorted(_binary_rows(conn, root, rows), key=lambda row: position[row.id])


def tabular_page(
    conn: sqlite3.Connection,
    identity: CaptureIdentity,
    flt: ItemFilter,
    *,
    limit: int,
    last: str,
    ascending: bool,
    count_only: bool,
) -> Page[TabularRow]:
    """A page of tabular readings (see SinkIndex.tabular_page)."""
    where_sql, args = where(flt, identity, "r.t")
    uploads, uploads_args = _driver(conn, flt, True)
    from_uploads = f"{uploads} CROSS JOIN readings r ON r.item = i.rowid"
    if count_only:
        sql = f"SELECT count(*) FROM {from_uploads} WHERE i.tabular = 1 AND {where_sql}"
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
        f"CROSS JOIN items i ON i.rowid = r.item WHERE i.tabular = 1 AND {where_sql}{tail}",
        [*time_args, *keyset_args, *args, limit],
    ).fetchall()
    if len(rows) < limit:  # else fetch the matching uploads' readings and sort
        rows = conn.execute(
            f"SELECT {columns} FROM {from_uploads} WHERE i.tabular = 1 AND {where_sql}"
            f"{keyset}{tail}",
            [*uploads_args, *args, *keyset_args, limit],
        ).fetchall()
    metas = _metas(conn, {row[0] for row in rows})
    found = [
        TabularRow(upload, idx, metas[item], t, t_recv, data, _encode_cursor("t", t, upload, idx))
        for item, upload, idx, t, t_recv, data in rows
    ]
    return Page(found, found[-1].cursor if found else last, len(found))


def tags(conn: sqlite3.Connection, identity: CaptureIdentity, flt: ItemFilter) -> list[str]:
    """The distinct tags of the binary data matching ``flt``, sorted."""
    return _distinct(conn, identity, "item_tags", "tag", flt)


def bbox_labels(conn: sqlite3.Connection, identity: CaptureIdentity, flt: ItemFilter) -> list[str]:
    """The distinct bounding-box labels of the binary data matching ``flt``, sorted."""
    return _distinct(conn, identity, "item_labels", "label", flt)


def _distinct(
    conn: sqlite3.Connection, identity: CaptureIdentity, table: str, column: str, flt: ItemFilter
) -> list[str]:
    """Each distinct value (found by skipping through the value index, as there are
    few), kept if some matching item has it: no pass over every tagged item."""
    where_sql, args = where(flt, identity, "i.t")
    values = conn.execute(
        f"WITH RECURSIVE v(x) AS (SELECT min({column}) FROM {table} UNION ALL "
        f"SELECT (SELECT min({column}) FROM {table} WHERE {column} > v.x) FROM v "
        "WHERE v.x IS NOT NULL) SELECT x FROM v WHERE x IS NOT NULL"
    ).fetchall()
    probe = (
        f"SELECT 1 FROM {table} g JOIN items i ON i.rowid = g.item "
        f"WHERE g.{column} = ? AND i.tabular = 0 AND {where_sql} LIMIT 1"
    )
    return [x for (x,) in values if conn.execute(probe, [x, *args]).fetchone()]


# --- rows --------------------------------------------------------------------------------


def _binary_rows(conn: sqlite3.Connection, root: Path, rows: list[Any]) -> list[BinaryRow]:
    rowids = [row[0] for row in rows]
    tags_of = item_values(conn, "item_tags", "tag", rowids)
    datasets = item_values(conn, "item_datasets", "dataset_id", rowids)
    out = []
    for row in rows:
        rowid, item_id, kind, rel = row[:4]
        file_name, file_ext, size, offset, t, t_recv, annots, params = row[9:]
        out.append(
            BinaryRow(
                item_id,
                kind,
                root / rel,
                Meta(*row[4:9], tags=tags_of.get(rowid, ()), params=params),
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


def _metas(conn: sqlite3.Connection, rowids: set[int]) -> dict[int, Meta]:
    ids = sorted(rowids)
    tags_of = item_values(conn, "item_tags", "tag", ids)
    out = {}
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start : start + IDS_PER_QUERY]
        for rowid, *values, params in conn.execute(
            f"SELECT {_META_COLUMNS} FROM items i WHERE i.rowid IN ({qmarks(chunk)})", chunk
        ):
            out[rowid] = Meta(*values, tags=tags_of.get(rowid, ()), params=params)
    return out


def item_values(
    conn: sqlite3.Connection, table: str, column: str, rowids: Sequence[int]
) -> dict[int, tuple[str, ...]]:
    """The values (tags, dataset ids, ...) ``table`` holds for each item, in stored order."""
    found: dict[int, list[str]] = {}
    for start in range(0, len(rowids), IDS_PER_QUERY):
        chunk = rowids[start : start + IDS_PER_QUERY]
        for item, value in conn.execute(
            f"SELECT item, {column} FROM {table} WHERE item IN ({qmarks(chunk)}) ORDER BY rowid",
            chunk,
        ):
            found.setdefault(item, []).append(value)
    return {item: tuple(values) for item, values in found.items()}


# --- cursors -----------------------------------------------------------------------------


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


# --- filters as SQL ----------------------------------------------------------------------


def qmarks(values: Sequence[Any]) -> str:
    """The placeholders of an ``IN (...)`` list of ``values``."""
    return ",".join("?" * len(values))


def where(flt: ItemFilter, identity: CaptureIdentity, tcol: str) -> tuple[str, list[Any]]:
    """SQL conditions on items ``i`` (and time column ``tcol``) for ``flt``."""
    if not identity.admits(flt):
        return "0", []
    conds: list[str] = []
    args: list[Any] = []
    for column, value in _column_filters(flt):
        conds.append(f"i.{column} = ?")
        args.append(value)
    if flt.mime_types:
        conds.append(f"i.mime_type IN ({qmarks(flt.mime_types)})")
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
            f"AND v.{column} IN ({qmarks(values)}))"
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
        sql = f"SELECT item FROM {table} WHERE {column} IN ({qmarks(values)})"
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
