"""A damaged outbox at daemon start: set aside, salvaged where readable, rebuilt.

SQLite in WAL mode with ``synchronous=FULL`` survives process crashes and power cuts by
itself. It does not survive a failing SD card, a file system repaired with pieces
missing, or a database file copied while in use. Without this module such an outbox
stops the daemon at every start, for good, while the robot keeps capturing.

So at start the daemon calls :func:`repair_outbox`: ``PRAGMA quick_check`` on the
outbox, and if SQLite says it is damaged ("database disk image is malformed", "file is
not a database", or quick_check finds errors), the database and its ``-wal``/``-shm``
files are renamed to ``outbox.db.corrupt-<UTC time>`` (kept for a post-mortem), an error
is logged, readings that can still be read are copied into a fresh outbox, and the
daemon goes on with that. What is lost:

- files are not: the watcher's start scan finds every file still on disk and queues it
  again (a file kept after upload, ``delete_after_upload: false``, goes up once more:
  its "already synced" record was in the old database);
- readings that only lived in the damaged database and cannot be read from it are lost,
  and the log says how many (when the damaged database still says how many it held);
- dead letters become pending again (salvaged readings start over), and their reasons go.

Anything else (permissions, a busy database, a schema newer than this syncd) is not
damage: it is left alone and the normal open reports it. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from syncd.fsutil import fsync_dir
from syncd.outbox import Outbox, Reading
from syncd.outbox_schema import DB_NAME

log = logging.getLogger("syncd.outbox")

# SQLite's words for a database it cannot trust; anything else is not damage.
_DAMAGE = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_DAMAGE_TEXT = ("malformed", "not a database", "corrupt")
_SALVAGE_BATCH_BYTES = 8 * 1024 * 1024
# Past a damaged page, ids are probed one by one (about 10 µs each): up to this many.
_MAX_PROBES = 5_000_000


@dataclass(frozen=True)
class Repair:
    """What :func:`repair_outbox` did."""

    problem: str  # what SQLite said
    moved_to: Path
    salvaged: int  # readings copied into the fresh outbox
    known: int | None  # readings the damaged outbox said it held, if it still could


def damage_of(path: Path) -> str | None:
    """Why SQLite considers the database at ``path`` damaged, or None if it does not (or
    the file is missing). Other errors (permissions, busy) raise sqlite3.Error."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=60)
    except sqlite3.Error as exc:
        if _is_damage(exc):
            return str(exc)
        raise
    try:
        rows = conn.execute("PRAGMA quick_check").fetchall()
    except sqlite3.Error as exc:
        if _is_damage(exc):
            return str(exc)
        raise
    finally:
        conn.close()
    problems = [str(r[0]) for r in rows if r and r[0] != "ok"]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        return "quick_check: " + "; ".join(problems[:3]) + more
    return None


def _is_damage(exc: sqlite3.Error) -> bool:
    name = getattr(exc, "sqlite_errorname", "") or ""
    if any(name.startswith(d) for d in _DAMAGE):
        return True
    return not name and any(t in str(exc).lower() for t in _DAMAGE_TEXT)


def repair_outbox(state_dir: str | Path, now: float | None = None) -> Repair | None:
    """Check ``<state_dir>/outbox.db``; if damaged, set it aside, salvage its readings
    into a fresh outbox and return what was done (None when it was fine)."""
    state = Path(state_dir)
    path = state / DB_NAME
    try:
        problem = damage_of(path)
    except sqlite3.Error:
        return None  # not damage (permissions, a busy lock...): the normal open says what
    if problem is None:
        return None
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    moved = state / f"{DB_NAME}.corrupt-{stamp}"
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            os.replace(source, f"{moved}{suffix}")
    fsync_dir(state, strict=False)
    log.error(
        "the outbox %s is damaged (%s); moved it to %s and starting a fresh one. Files "
        "still on disk are queued again by the start scan; readings are salvaged where "
        "they can still be read",
        path,
        problem,
        moved,
    )
    salvaged, known = 0, None
    with Outbox(state) as fresh:
        try:
            salvaged, known = _salvage(moved, fresh)
        except sqlite3.Error as exc:
            log.error("salvaging readings from %s stopped: %s", moved, exc)
    if known is None:
        log.error(
            "salvaged %d readings from the damaged outbox; how many it held is unreadable, "
            "so an unknown number of readings is lost",
            salvaged,
        )
    elif salvaged < known:
        log.error(
            "salvaged %d of %d readings from the damaged outbox; %d readings are lost",
            salvaged,
            known,
            known - salvaged,
        )
    else:
        log.warning("salvaged all %d readings from the damaged outbox", salvaged)
    return Repair(problem, moved, salvaged, known)


def _open_damaged(path: Path) -> sqlite3.Connection:
    _pad_truncated(path)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.Error:
        # immutable: no locks, no WAL; what the main file holds is still worth reading
        return sqlite3.connect(f"file:{path}?immutable=1", uri=True)


def _pad_truncated(path: Path) -> None:
    """Extend a database file cut short back to the size its header declares (with
    zeros, sparse): SQLite refuses every read of a short file, while the pages that
    survived are still good."""
    try:
        with open(path, "rb") as f:
            header = f.read(100)
        if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
            return
        page_size = int.from_bytes(header[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        declared = int.from_bytes(header[28:32], "big") * page_size
        if declared > path.stat().st_size:
            log.warning("%s is cut short; padding it to its declared %d bytes", path, declared)
            os.truncate(path, declared)
    except OSError:
        pass


def _salvage(path: Path, fresh: Outbox) -> tuple[int, int | None]:
    """Copy every readable reading (pending and dead letters) into ``fresh``; returns
    (copied, readings the damaged outbox said it held, or None)."""
    conn = _open_damaged(path)
    try:
        known = _count(conn)
        streams = _streams(conn)
        if not streams:
            return 0, known
        copied = 0
        for table in ("readings", "dead_readings"):
            batch: list[Reading] = []
            size = 0
            for row in _rows(conn, table):
                stream_id, t_req, t_recv, payload = row
                key = streams.get(stream_id)
                if key is None or not isinstance(payload, bytes):
                    continue
                kind, ctype, cname, method, tags, ext, mime = key
                try:
                    batch.append(
                        Reading(kind, ctype, cname, method, payload, t_req, t_recv, tags, ext, mime)
                    )
                except (TypeError, ValueError):
                    continue
                size += len(payload)
                if size >= _SALVAGE_BATCH_BYTES:
                    copied += len(fresh.enqueue_readings(batch))
                    batch, size = [], 0
            copied += len(fresh.enqueue_readings(batch))
        return copied, known
    finally:
        conn.close()


def _count(conn: sqlite3.Connection) -> int | None:
    try:
        pending = conn.execute("SELECT readings FROM counters").fetchone()[0]
        dead = conn.execute("SELECT count(*) FROM dead_readings").fetchone()[0]
        return int(pending) + int(dead)
    except (sqlite3.Error, TypeError, ValueError):
        return None


def _streams(conn: sqlite3.Connection) -> dict[int, tuple]:
    out: dict[int, tuple] = {}
    try:
        rows = conn.execute(
            "SELECT id, kind, component_type, component_name, method_name, tags,"
            " file_extension, mime_type FROM streams"
        )
        for sid, kind, ctype, cname, method, tags, ext, mime in rows:
            try:
                tag_list = tuple(json.loads(tags))
            except (TypeError, ValueError):
                continue
            out[sid] = (kind, ctype, cname, method, tag_list, ext, mime)
    except sqlite3.Error:
        pass  # keep the streams read before the damage
    return out


def _rows(conn: sqlite3.Connection, table: str):
    """(stream_id, time_requested_ns, time_received_ns, payload) of every row of
    ``table`` that can be read, one by one, so a damaged page costs only its rows."""
    query = (
        f"SELECT stream_id, time_requested_ns, time_received_ns, payload FROM {table} WHERE id = ?"
    )
    for rid in _ids(conn, table):
        try:
            row = conn.execute(query, (rid,)).fetchone()
        except sqlite3.Error:
            continue
        if row is not None:
            yield row


def _ids(conn: sqlite3.Connection, table: str):
    """The ids of ``table``: in order as far as the index walk goes, then, past the
    damage, every id up to the largest (which sits on the b-tree's right edge), probed
    one by one (at most _MAX_PROBES of them)."""
    last = 0
    try:
        for (rid,) in conn.execute(f"SELECT id FROM {table} ORDER BY id"):
            yield rid
            last = rid
        return
    except sqlite3.Error:
        pass
    try:
        top = conn.execute(f"SELECT max(id) FROM {table}").fetchone()[0]
    except (sqlite3.Error, TypeError):
        top = None
    if not isinstance(top, int) or top <= last:
        return
    if top - last > _MAX_PROBES:
        log.error(
            "%s: ids %d to %d lie past the damage; probing only the first %d",
            table,
            last + 1,
            top,
            _MAX_PROBES,
        )
    yield from range(last + 1, min(top, last + _MAX_PROBES) + 1)
