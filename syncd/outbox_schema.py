"""The outbox database: connection settings, schema and forward migrations.

The schema version lives in ``PRAGMA user_version``; version 0 is an empty database.
Each migration runs in one ``BEGIN IMMEDIATE`` transaction (SQLite DDL is transactional),
so two processes opening a new outbox at once cannot both create it, and a crash
mid-migration leaves the previous version intact. Standard library only: robot programs
import this beside the Viam SDK.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from syncd.errors import OutboxError
from syncd.fsutil import fsync_dir

DB_NAME = "outbox.db"

# Row states, stored as small integers: SQLite stores 0 and 1 in the record header alone.
PENDING, INFLIGHT, FAILED = 0, 1, 2
STATE_NAMES = {PENDING: "pending", INFLIGHT: "inflight", FAILED: "failed"}

# Version 1. Files and readings live in separate tables but share one id space
# (`counters.next_id`), so `ack`, `nack` and `syncd failed` take ids without a kind. Ids
# are never reused: a late ack from a worker whose lease expired cannot delete a newer row.
#
# A reading row is written once and deleted once. What changes (a lease, a retry schedule)
# lives in the small `reading_state` table, and dead letters move to `dead_readings`:
# claiming a batch then writes a few small rows instead of rewriting every page of the
# batch, and the readings table holds only undelivered readings, in enqueue order.
_V1 = (
    # One row, updated once per enqueue: the next id and the readings table's totals,
    # so counting a backlog of millions costs nothing.
    """CREATE TABLE counters (
        one INTEGER PRIMARY KEY CHECK (one = 1),
        next_id INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        reading_bytes INTEGER NOT NULL
    )""",
    "INSERT INTO counters VALUES (1, 1, 0, 0)",
    # A stream is what one upload request's metadata describes; readings refer to it by id,
    # which keeps the per-reading row small and makes "claim one stream" an index range.
    """CREATE TABLE streams (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        component_type TEXT NOT NULL,
        component_name TEXT NOT NULL,
        method_name TEXT NOT NULL,
        tags TEXT NOT NULL,
        file_extension TEXT NOT NULL,
        mime_type TEXT NOT NULL,
        UNIQUE (kind, component_type, component_name, method_name, tags, file_extension,
                mime_type)
    )""",
    # Undelivered readings (pending or inflight). Payload last: reading the other columns
    # never walks a large blob's overflow pages.
    """CREATE TABLE readings (
        id INTEGER PRIMARY KEY,
        stream_id INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        time_requested_ns INTEGER NOT NULL,
        time_received_ns INTEGER NOT NULL,
        payload BLOB NOT NULL
    )""",
    "CREATE INDEX readings_stream ON readings (stream_id)",
    # A reading without a row here is pending and due since it was enqueued. state 1:
    # inflight until lease_until; state 0: pending, due at next_attempt_at (a retry).
    """CREATE TABLE reading_state (
        id INTEGER PRIMARY KEY,
        state INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        lease_until REAL,
        last_error TEXT
    )""",
    "CREATE INDEX reading_state_leased ON reading_state (lease_until) WHERE state = 1",
    "CREATE INDEX reading_state_due ON reading_state (next_attempt_at) WHERE state = 0",
    """CREATE TABLE dead_readings (
        id INTEGER PRIMARY KEY,
        stream_id INTEGER NOT NULL,
        enqueued_at REAL NOT NULL,
        time_requested_ns INTEGER NOT NULL,
        time_received_ns INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        reason TEXT NOT NULL,
        failed_at REAL NOT NULL,
        payload BLOB NOT NULL
    )""",
    # Files are few and large: their state stays in the row. Every row is live (acked rows
    # are deleted), so the path is unique over the table. `changed` marks an inflight row
    # whose file changed during its upload: the ack then queues it again.
    """CREATE TABLE files (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        kind TEXT NOT NULL,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        meta TEXT NOT NULL,
        state INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL NOT NULL,
        enqueued_at REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        lease_until REAL,
        last_error TEXT,
        failed_at REAL,
        changed INTEGER NOT NULL DEFAULT 0
    )""",
    "CREATE INDEX files_due ON files (next_attempt_at) WHERE state = 0",
    "CREATE INDEX files_leased ON files (lease_until) WHERE state = 1",
    "CREATE INDEX files_failed ON files (failed_at) WHERE state = 2",
    # Files uploaded but kept on disk (delete_after_upload: false), so none goes up twice.
    """CREATE TABLE synced_files (
        path TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        synced_at REAL NOT NULL
    ) WITHOUT ROWID""",
)

# MIGRATIONS[v] takes a database from version v to v + 1. Append, never edit.
MIGRATIONS: tuple[tuple[str, ...], ...] = (_V1,)
LATEST_VERSION = len(MIGRATIONS)

# A writer waits this long for another process's write transaction before giving up.
# Outbox transactions last milliseconds, so reaching it means something is badly stuck.
DEFAULT_BUSY_TIMEOUT_S = 60.0

# Checkpoint about every 4 MiB of WAL (SQLite's default) and truncate the WAL back to
# 16 MiB after a burst, so a backlog does not leave a huge file behind.
_WAL_AUTOCHECKPOINT_PAGES = 1000
_JOURNAL_SIZE_LIMIT = 16 * 1024 * 1024


def connect(
    state_dir: Path, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S, *, durable: bool = True
) -> sqlite3.Connection:
    """Open (creating and migrating if needed) ``<state_dir>/outbox.db``.

    ``durable=False`` is for the daemon's own connection: see :func:`_configure`.
    """
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutboxError(f"cannot create the state dir {state_dir}: {exc.strerror}") from None
    path = state_dir / DB_NAME
    created = not path.exists()
    try:
        # isolation_level=None: we issue BEGIN IMMEDIATE / COMMIT ourselves.
        # check_same_thread=False: the Outbox serialises access with its own lock.
        conn = sqlite3.connect(
            path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
        )
    except sqlite3.Error as exc:
        raise OutboxError(f"cannot open {path}: {explain(exc, state_dir)}") from None
    try:
        _retry_busy(lambda: _configure(conn, durable), busy_timeout_s)
        _retry_busy(lambda: migrate(conn), busy_timeout_s)
    except sqlite3.Error as exc:
        conn.close()
        raise OutboxError(f"cannot open {path}: {explain(exc, state_dir)}") from None
    except BaseException:
        conn.close()
        raise
    if created:
        fsync_dir(state_dir, strict=False)
    return conn


# Below this much free space, an SQLite error is most likely the disk being full.
_NEARLY_FULL_BYTES = 1024 * 1024


def explain(exc: sqlite3.Error, state_dir: Path) -> str:
    """SQLite's message, plus the likely cause when the disk is (nearly) full: SQLite
    says "disk I/O error" when it cannot even create its shared-memory file."""
    text = str(exc)
    try:
        st = os.statvfs(state_dir)
    except OSError:
        return text
    free = st.f_bavail * st.f_frsize
    full = getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL"
    if full or free < _NEARLY_FULL_BYTES:
        text += f" (no space left: {free} bytes free on the disk of {state_dir})"
    return text


def _configure(conn: sqlite3.Connection, durable: bool = True) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise OutboxError(f"the outbox needs WAL mode, SQLite gave {mode!r}")
    # FULL in WAL mode fsyncs the WAL at every commit: a commit that returned survives a
    # power cut. NORMAL would only survive a process crash, and readings pushed by robot
    # programs exist nowhere else once acknowledged.
    #
    # The daemon's own connection may use NORMAL: everything it commits can be redone.
    # A claim or an ack lost to a power cut means one more upload (at least once); a
    # file queued but lost is found again by the startup scan. Robot programs and
    # `syncd capture` always use FULL. Per connection, so both coexist on one database.
    conn.execute(f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
    # Some builds (Debian's among them) zero every deleted row, which rewrites each page
    # an ack frees; FAST zeroes only within pages written anyway: no extra flash wear.
    conn.execute("PRAGMA secure_delete = FAST")
    conn.execute(f"PRAGMA wal_autocheckpoint = {_WAL_AUTOCHECKPOINT_PAGES}")
    conn.execute(f"PRAGMA journal_size_limit = {_JOURNAL_SIZE_LIMIT}")


def user_version(conn: sqlite3.Connection) -> int:
    """The schema version stored in the database file."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, target: int = LATEST_VERSION) -> int:
    """Bring the schema forward to ``target``; returns the version found before."""
    found = user_version(conn)
    if found > LATEST_VERSION:
        raise OutboxError(
            f"the outbox schema is version {found}, newer than this syncd understands "
            f"({LATEST_VERSION}); upgrade syncd"
        )
    if found >= target:
        return found
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Re-read under the write lock: another process may have migrated meanwhile.
        found = user_version(conn)
        for version in range(found, target):
            for statement in MIGRATIONS[version]:
                conn.execute(statement)
        if found < target:
            conn.execute(f"PRAGMA user_version = {int(target)}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found


def _retry_busy(step, busy_timeout_s: float) -> None:
    # Switching a new file to WAL takes a lock the busy handler does not always wait
    # for; retry such steps until the busy timeout instead of failing the caller.
    deadline = time.monotonic() + busy_timeout_s
    delay = 0.001
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
