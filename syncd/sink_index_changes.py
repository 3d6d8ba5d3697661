"""Changes made through the sink's index: tag edits and deletes, in a crash-safe order.

The index decides what changes and keeps its rows in step; :mod:`syncd.sink_edit` changes
the files. Tags are edited on binary data (readings and files) only. The order is such
that the index never lists a file that a delete removed, and any drift heals:

- Tags: the affected paths go into ``pending`` (committed), the sidecars are rewritten,
  then rows and ``pending`` change in one transaction. After a crash the next start
  re-reads those paths' sidecars.
- Delete: rows go and the paths enter ``pending`` in one transaction, then the files are
  unlinked (data file first) and their folders fsynced, then ``pending`` is cleared. After
  a crash the next start finishes the unlinks.
- Deleting some readings of a tabular file: rows go and the path enters ``pending``, the
  file is rewritten (temp file and rename) with its sidecar, the item is indexed again.
  After a crash the next start indexes whichever version the disk holds.
- A failed change re-reads its pending paths from the disk at once (:func:`settle`).

Callers hold the index's change lock: the sink is the only process that changes a store,
and its changes run one at a time.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from syncd import sink_edit
from syncd.sink_index_query import IDS_PER_QUERY, item_values, qmarks, where
from syncd.sink_index_schema import (
    ITEM_ERRORS,
    insert_item,
    insert_item_quietly,
    transaction,
)
from syncd.sink_index_types import CaptureIdentity, ItemFilter
from syncd.sink_store_items import load_item

log = logging.getLogger("syncd.sink")


# --- tags --------------------------------------------------------------------------------


def add_tags(
    conn: sqlite3.Connection,
    root: Path,
    identity: CaptureIdentity,
    target: ItemFilter | Sequence[str],
    tags: Sequence[str],
) -> int:
    """Add ``tags`` to the binary data ``target`` names; returns the items changed."""
    wanted = list(dict.fromkeys(tags))
    return _retag(
        conn, root, identity, target, lambda old: [*old, *(t for t in wanted if t not in old)]
    )


def remove_tags(
    conn: sqlite3.Connection,
    root: Path,
    identity: CaptureIdentity,
    target: ItemFilter | Sequence[str],
    tags: Sequence[str],
) -> int:
    """Remove ``tags`` from the binary data ``target`` names; returns the items changed."""
    unwanted = set(tags)
    return _retag(conn, root, identity, target, lambda old: [t for t in old if t not in unwanted])


def _retag(
    conn: sqlite3.Connection,
    root: Path,
    identity: CaptureIdentity,
    target: ItemFilter | Sequence[str],
    change: Callable[[list[str]], list[str]],
) -> int:
    """Apply ``change`` (old tags → new tags) to each target; returns the items changed."""
    rows = _targets(conn, identity, target)
    current = item_values(conn, "item_tags", "tag", [rowid for rowid, _ in rows])
    todo = []
    for rowid, rel in rows:
        old = list(current.get(rowid, ()))
        if change(old) != old:
            todo.append(rel)
    if not todo:
        return 0
    with transaction(conn):
        _add_pending(conn, todo, "reload")
    with _settling(conn, root, todo):
        changed, gone = [], []
        for rel in todo:
            try:
                item = load_item(root / rel)
            except FileNotFoundError:
                gone.append(rel)  # removed behind the sink's back
                continue
            old = list(item.upload_metadata.tags)
            new = change(old)
            changed.append(sink_edit.retag(item, new) if new != old else item)
        with transaction(conn):
            conn.executemany("DELETE FROM items WHERE path = ?", [(p,) for p in gone])
            for item in changed:
                insert_item(conn, root, item, None)
            _end_pending(conn, todo)
    return len(changed)


# --- deletes -----------------------------------------------------------------------------


def delete_binary(
    conn: sqlite3.Connection,
    root: Path,
    identity: CaptureIdentity,
    target: ItemFilter | Sequence[str],
) -> int:
    """Delete the binary data ``target`` names, files and all; returns the number deleted."""
    paths = [rel for _, rel in _targets(conn, identity, target)]
    if not paths:
        return 0
    with transaction(conn):
        conn.executemany("DELETE FROM items WHERE path = ?", [(p,) for p in paths])
        _add_pending(conn, paths, "delete")
    with _settling(conn, root, paths):
        sink_edit.remove(root / p for p in paths)
        with transaction(conn):
            _end_pending(conn, paths)
    return len(paths)


def delete_tabular(
    conn: sqlite3.Connection, root: Path, identity: CaptureIdentity, flt: ItemFilter
) -> int:
    """Delete the tabular readings matching ``flt``; returns the number deleted.

    Files whose every reading goes are deleted; others are rewritten without them.
    """
    where_sql, args = where(flt, identity, "r.t")
    matched: dict[int, tuple[str, set[int]]] = {}
    for item, rel, idx in conn.execute(
        "SELECT r.item, i.path, r.idx FROM readings r JOIN items i ON i.rowid = r.item "
        f"WHERE i.tabular = 1 AND {where_sql}",
        args,
    ):
        matched.setdefault(item, (rel, set()))[1].add(idx)
    if not matched:
        return 0
    totals = dict(
        conn.execute(
            f"SELECT item, count(*) FROM readings WHERE item IN ({qmarks(list(matched))}) "
            "GROUP BY item",
            list(matched),
        ).fetchall()
    )
    whole = [rel for item, (rel, idx) in matched.items() if len(idx) == totals[item]]
    part = {rel: idx for item, (rel, idx) in matched.items() if len(idx) < totals[item]}
    with transaction(conn):
        conn.executemany("DELETE FROM items WHERE path = ?", [(p,) for p in whole])
        for rel, idx in part.items():
            conn.executemany(
                "DELETE FROM readings WHERE item = (SELECT rowid FROM items WHERE path = ?) "
                "AND idx = ?",
                [(rel, i) for i in idx],
            )
        _add_pending(conn, whole, "delete")
        _add_pending(conn, list(part), "reload")
    with _settling(conn, root, [*whole, *part]):
        sink_edit.remove(root / p for p in whole)
        rewritten = [
            sink_edit.rewrite_tabular(load_item(root / rel), drop) for rel, drop in part.items()
        ]
        with transaction(conn):
            for item in rewritten:
                insert_item(conn, root, item, None)
            _end_pending(conn, [*whole, *part])
    return sum(len(idx) for _, idx in matched.values())


def _targets(
    conn: sqlite3.Connection, identity: CaptureIdentity, target: ItemFilter | Sequence[str]
) -> list[tuple[int, str]]:
    """(rowid, path) of the binary data a filter or a list of ids names."""
    if isinstance(target, ItemFilter):
        where_sql, args = where(target, identity, "i.t")
        sql = f"SELECT i.rowid, i.path FROM items i WHERE i.tabular = 0 AND {where_sql}"
        return conn.execute(sql + " ORDER BY i.path", args).fetchall()
    ids = list(dict.fromkeys(target))
    out = []
    for start in range(0, len(ids), IDS_PER_QUERY):
        chunk = ids[start : start + IDS_PER_QUERY]
        out += conn.execute(
            f"SELECT i.rowid, i.path FROM items i WHERE i.tabular = 0 AND i.id IN ({qmarks(chunk)})",
            chunk,
        ).fetchall()
    return sorted(out, key=lambda row: row[1])


# --- pending changes ---------------------------------------------------------------------


def _add_pending(conn: sqlite3.Connection, paths: Iterable[str], op: str) -> None:
    conn.executemany(
        "INSERT OR REPLACE INTO pending (path, op) VALUES (?, ?)", [(p, op) for p in paths]
    )


def _end_pending(conn: sqlite3.Connection, paths: Iterable[str]) -> None:
    conn.executemany("DELETE FROM pending WHERE path = ?", [(p,) for p in paths])


@contextlib.contextmanager
def _settling(conn: sqlite3.Connection, root: Path, paths: Sequence[str]) -> Iterator[None]:
    """On failure, bring the rows of ``paths`` in line with the disk, then re-raise."""
    try:
        yield
    except BaseException:
        try:
            settle(conn, root, paths)
        except (sqlite3.Error, *ITEM_ERRORS) as exc:
            log.error(
                "cannot re-read %d changed file(s) (the next start will): %s", len(paths), exc
            )
        raise


def settle(conn: sqlite3.Connection, root: Path, paths: Sequence[str] | None = None) -> None:
    """Finish or undo the pending changes of ``paths`` (all of them: None)."""
    rows = conn.execute("SELECT path, op FROM pending").fetchall()
    if paths is not None:
        wanted = set(paths)
        rows = [row for row in rows if row[0] in wanted]
    if not rows:
        return
    log.info("finishing %d interrupted change(s) in %s", len(rows), root)
    sink_edit.remove(root / rel for rel, op in rows if op == "delete")
    with transaction(conn):
        for rel, _ in rows:
            conn.execute("DELETE FROM items WHERE path = ?", (rel,))
            if (root / rel).exists():
                with contextlib.suppress(*ITEM_ERRORS):
                    insert_item_quietly(conn, root, load_item(root / rel))
        _end_pending(conn, [rel for rel, _ in rows])
