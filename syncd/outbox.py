"""The durable SQLite outbox: what is waiting to be uploaded, and its retry schedule.

It owns enqueueing (files by reference, readings inline), claiming with leases, acks,
retries with a schedule, dead letters and counts. :class:`Outbox` is the synchronous core
that holds all the SQL; robot programs use it directly (``syncd.Outbox``), and the daemon
uses :class:`~syncd.outbox_async.AsyncOutbox`, which runs the same core on one worker
thread. This module imports the standard library only (no generated protobuf code and no
asyncio), so robot programs can import it beside the Viam SDK.

Delivery is at least once: an enqueue returns after its commit is durable (WAL,
``synchronous=FULL``: it survives a power cut); a claim leases rows, and a row goes only
when its upload is acked. A worker that dies leaves a lease that expires, so its rows go
up again: a duplicate is possible, a loss is not. Ids are never reused, so a late ack or
nack cannot touch another row.

Every operation is one ``BEGIN IMMEDIATE`` transaction, so several processes (a robot
program and the daemon) can write at once: a writer waits for the lock (busy timeout)
instead of failing with "database is locked". Times are epoch seconds (floats) in the API;
reading times are stored as integer nanoseconds. The tables are described in
:mod:`syncd.outbox_schema`, the value types (importable from here too) in
:mod:`syncd.outbox_items`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from syncd import outbox_schema as schema
from syncd.errors import OutboxError
from syncd.outbox_items import (  # noqa: F401  (the outbox's public types live there)
    ClaimedFile,
    ClaimedReading,
    FailedItem,
    FileItem,
    KeptFile,
    LiveFile,
    OutboxCounts,
    Reading,
    StreamKey,
    TimeLike,
    _meta_json,
    _reading_source,
    encode_tabular,
    to_ns,
)
from syncd.outbox_schema import FAILED, INFLIGHT, PENDING, STATE_NAMES

if TYPE_CHECKING:
    from syncd.outbox_async import AsyncOutbox

__all__ = [
    "AsyncOutbox",
    "ClaimedFile",
    "ClaimedReading",
    "FailedItem",
    "FileItem",
    "KeptFile",
    "LiveFile",
    "Outbox",
    "OutboxCounts",
    "Reading",
    "StreamKey",
]


def __getattr__(name: str) -> Any:
    # Lazy: AsyncOutbox pulls in asyncio, which robot programs need not load.
    if name == "AsyncOutbox":
        from syncd.outbox_async import AsyncOutbox

        return AsyncOutbox
    raise AttributeError(f"module 'syncd.outbox' has no attribute {name!r}")


# --- the outbox ----------------------------------------------------------------------


class _Waiter:
    # One caller's readings in a group commit.
    __slots__ = ("done", "error", "ids", "items")

    def __init__(self, items: Sequence[Reading]):
        self.items = items
        self.ids: list[int] = []
        self.error: BaseException | None = None
        self.done = False


def _id_list(ids: Iterable[int]) -> str:
    # Id sets go to SQLite as one JSON array, read back with json_each().
    return json.dumps([int(i) for i in ids])


_IDS = "(SELECT value FROM json_each(?))"

# A reading is due when it has no state row (fresh) or a retry whose time has come.
_DUE = "(s.id IS NULL OR (s.state = 0 AND s.next_attempt_at <= ?))"


class Outbox:
    """The outbox in ``<state_dir>/outbox.db``, used synchronously; thread-safe.

    Robot programs::

        with Outbox("/var/lib/syncd") as ob:
            ob.add_tabular("rdk:component:sensor", "imu", "Readings", {"x": 1.0})
            with ob.batch():  # one durable commit for many readings
                for sample in samples:
                    ob.add_tabular("rdk:component:sensor", "imu", "Readings", sample)

    ``clock`` gives "now" (epoch seconds) where a method's ``now`` is not passed. Open one
    per process: a connection must not cross a ``fork()``. Every commit is durable (it
    survives a power cut) unless ``durable=False``, which only the daemon uses, for its
    claims, acks and file rows (all of which it can redo).
    """

    def __init__(
        self,
        state_dir: str | Path,
        *,
        busy_timeout_s: float = schema.DEFAULT_BUSY_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        durable: bool = True,
    ):
        self._dir = Path(state_dir)
        self._clock = clock
        self._conn: sqlite3.Connection | None = schema.connect(
            self._dir, busy_timeout_s, durable=durable
        )
        self._lock = threading.Lock()
        # Group commit: concurrent enqueue_readings callers share one transaction.
        self._queue_lock = threading.Lock()
        self._queue: list[_Waiter] = []
        # Streams are never deleted, so ids cached here stay valid across processes.
        self._stream_ids: dict[StreamKey, int] = {}
        self._stream_keys: dict[int, StreamKey] = {}
        self._local = threading.local()

    # -- lifecycle --

    @property
    def path(self) -> Path:
        """The database file."""
        return self._dir / schema.DB_NAME

    @staticmethod
    def exists(state_dir: str | Path) -> bool:
        """Whether ``state_dir`` holds an outbox (opening one creates it)."""
        return (Path(state_dir) / schema.DB_NAME).exists()

    def close(self) -> None:
        """Close the database; readings still buffered by an open ``batch()`` are lost."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise OutboxError("the outbox is closed")
        return self._conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # Caller holds self._lock. IMMEDIATE takes the write lock up front (waiting up to
        # the busy timeout), so a transaction that reads then writes never meets a busy
        # error it cannot wait out.
        db = self._db
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {schema.explain(exc, self._dir)}") from exc

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        # Caller holds self._lock. One snapshot for several SELECTs.
        db = self._db
        try:
            db.execute("BEGIN")
            try:
                yield db
            finally:
                db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise OutboxError(f"outbox {self.path}: {schema.explain(exc, self._dir)}") from exc

    def _now(self, now: float | None) -> float:
        return self._clock() if now is None else now

    # -- readings API for robot programs --

    def add_tabular(
        self,
        component_type: str,
        component_name: str,
        method_name: str,
        data: Mapping[str, Any],
        *,
        time_requested: TimeLike = None,
        time_received: TimeLike = None,
        tags: Iterable[str] = (),
    ) -> int | None:
        """Queue one tabular reading; returns its id once durable (None inside ``batch()``)."""
        reading = Reading.tabular(
            component_type,
            component_name,
            method_name,
            data,
            time_requested=time_requested,
            time_received=time_received,
            tags=tags,
        )
        return self._add(reading)

    def add_binary(
        self,
        component_type: str,
        component_name: str,
        method_name: str,
        data: bytes | bytearray | memoryview,
        *,
        file_extension: str = "",
        mime_type: str = "",
        time_requested: TimeLike = None,
        time_received: TimeLike = None,
        tags: Iterable[str] = (),
    ) -> int | None:
        """Queue one binary reading; returns its id once durable (None inside ``batch()``)."""
        reading = Reading.binary(
            component_type,
            component_name,
            method_name,
            data,
            file_extension=file_extension,
            mime_type=mime_type,
            time_requested=time_requested,
            time_received=time_received,
            tags=tags,
        )
        return self._add(reading)

    def _add(self, reading: Reading) -> int | None:
        buffer: list[Reading] | None = getattr(self._local, "batch", None)
        if buffer is None:
            return self.enqueue_readings([reading])[0]
        buffer.append(reading)
        if len(buffer) >= self._local.flush_every:
            self.enqueue_readings(buffer)
            buffer.clear()
        return None

    @contextmanager
    def batch(self, flush_every: int = 1000) -> Iterator[Outbox]:
        """Group this thread's ``add_*`` calls into few commits: the readings are durable
        when the block exits (also on an exception) and every ``flush_every`` readings."""
        if getattr(self._local, "batch", None) is not None:
            yield self  # nested: the outer block commits
            return
        buffer: list[Reading] = []
        self._local.batch, self._local.flush_every = buffer, max(1, flush_every)
        try:
            yield self
        finally:
            self._local.batch = None
            if buffer:
                self.enqueue_readings(buffer)

    # -- enqueue --

    def enqueue_readings(self, items: Sequence[Reading], now: float | None = None) -> list[int]:
        """Insert readings with one durable commit (shared with callers in other threads
        waiting at the same time); returns their ids, in order."""
        if not items:
            return []
        waiter = _Waiter(items)
        with self._queue_lock:
            self._queue.append(waiter)
        with self._lock:
            if not waiter.done:
                # Lead a group: commit every waiter queued so far in one transaction.
                with self._queue_lock:
                    group, self._queue = self._queue, []
                try:
                    self._insert_readings(group, self._now(now))
                except BaseException as exc:
                    for member in group:
                        member.error = exc
                    raise
                finally:
                    for member in group:
                        member.done = True
        if waiter.error is not None:
            raise waiter.error
        return waiter.ids

    def _insert_readings(self, group: list[_Waiter], now: float) -> None:
        count = sum(len(w.items) for w in group)
        size = sum(len(r.payload) for w in group for r in w.items)
        new_streams: dict[StreamKey, int] = {}
        with self._write() as db:
            next_id = self._reserve_ids(db, count, count, size)
            rows = []
            for waiter in group:
                waiter.ids = list(range(next_id, next_id + len(waiter.items)))
                next_id += len(waiter.items)
                for rid, r in zip(waiter.ids, waiter.items, strict=True):
                    key = r.stream
                    sid = self._stream_ids.get(key) or new_streams.get(key)
                    if sid is None:
                        sid = new_streams[key] = self._stream_id(db, key)
                    rows.append((rid, sid, now, r.time_requested_ns, r.time_received_ns, r.payload))
            db.executemany(
                "INSERT INTO readings (id, stream_id, enqueued_at, time_requested_ns,"
                " time_received_ns, payload) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        # Only after the commit: a rolled-back stream row must not stay cached.
        for key, sid in new_streams.items():
            self._stream_ids[key] = sid
            self._stream_keys[sid] = key

    @staticmethod
    def _reserve_ids(db: sqlite3.Connection, ids: int, readings: int = 0, size: int = 0) -> int:
        # One statement per transaction: reserve ids and keep the readings totals.
        # fetchall: a RETURNING statement must run to completion before COMMIT.
        [(end,)] = db.execute(
            "UPDATE counters SET next_id = next_id + ?, readings = readings + ?,"
            " reading_bytes = reading_bytes + ? RETURNING next_id",
            (ids, readings, size),
        ).fetchall()
        return end - ids

    @staticmethod
    def _delete_readings(db: sqlite3.Connection, id_list: str) -> int:
        # Delete undelivered readings, keeping the totals; returns how many.
        sizes = db.execute(
            f"DELETE FROM readings WHERE id IN {_IDS} RETURNING length(payload)", (id_list,)
        ).fetchall()
        db.execute(f"DELETE FROM reading_state WHERE id IN {_IDS}", (id_list,))
        if sizes:
            db.execute(
                "UPDATE counters SET readings = readings - ?, reading_bytes = reading_bytes - ?",
                (len(sizes), sum(s for (s,) in sizes)),
            )
        return len(sizes)

    @staticmethod
    def _stream_id(db: sqlite3.Connection, key: StreamKey) -> int:
        params = (*key[:4], json.dumps(list(key.tags)), key.file_extension, key.mime_type)
        db.execute(
            "INSERT OR IGNORE INTO streams (kind, component_type, component_name, method_name,"
            " tags, file_extension, mime_type) VALUES (?, ?, ?, ?, ?, ?, ?)",
            params,
        )
        (sid,) = db.execute(
            "SELECT id FROM streams WHERE kind = ? AND component_type = ? AND component_name = ?"
            " AND method_name = ? AND tags = ? AND file_extension = ? AND mime_type = ?",
            params,
        ).fetchone()
        return sid

    def _stream_key(self, db: sqlite3.Connection, sid: int) -> StreamKey:
        key = self._stream_keys.get(sid)
        if key is None:
            row = db.execute(
                "SELECT kind, component_type, component_name, method_name, tags,"
                " file_extension, mime_type FROM streams WHERE id = ?",
                (sid,),
            ).fetchone()
            key = StreamKey(*row[:4], tuple(json.loads(row[4])), row[5], row[6])
            self._stream_keys[sid] = key
            self._stream_ids[key] = sid
        return key

    def enqueue_files(self, items: Sequence[FileItem], now: float | None = None) -> int:
        """Queue files, idempotently; returns how many rows were inserted.

        A path already live with the same size and mtime is left alone, as is a version
        already synced and kept on disk. A live path whose size or mtime differs is
        updated: a pending row in place; an inflight row is marked so that its ack
        queues it again; a failed row goes back to pending (new content, new chances).
        """
        now = self._now(now)
        latest = {item.path: item for item in items}  # the last word on each path wins
        # What the outbox knows of these paths, asked once for all of them: a start
        # scan queues thousands of files, and a query per file costs more than its row.
        paths = json.dumps(list(latest))
        with self._lock, self._write() as db:
            live = {
                row[0]: row[1:]
                for row in db.execute(
                    "SELECT path, id, state, size, mtime_ns FROM files"
                    " WHERE path IN (SELECT value FROM json_each(?))",
                    (paths,),
                )
            }
            synced = set(
                db.execute(
                    "SELECT path, size, mtime_ns FROM synced_files"
                    " WHERE path IN (SELECT value FROM json_each(?))",
                    (paths,),
                )
            )
            inserts = []
            for item in latest.values():
                meta = _meta_json(item.meta)
                row = live.get(item.path)
                if row is None:
                    if (item.path, item.size, item.mtime_ns) not in synced:
                        inserts.append((item, meta))
                    continue
                fid, state, size, mtime_ns = row
                if (size, mtime_ns) == (item.size, item.mtime_ns):
                    continue
                update = "UPDATE files SET size = ?, mtime_ns = ?, kind = ?, meta = ?"
                params: tuple[Any, ...] = (item.size, item.mtime_ns, item.kind, meta)
                if state == INFLIGHT:
                    update += ", changed = 1"
                elif state == FAILED:
                    update += ", state = 0, attempts = 0, next_attempt_at = ?, failed_at = NULL"
                    params += (now,)
                db.execute(update + " WHERE id = ?", (*params, fid))
            if inserts:
                first = self._reserve_ids(db, len(inserts))
                db.executemany(
                    "INSERT INTO files (id, path, kind, size, mtime_ns, meta, next_attempt_at,"
                    " enqueued_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (first + i, it.path, it.kind, it.size, it.mtime_ns, meta, now, now)
                        for i, (it, meta) in enumerate(inserts)
                    ],
                )
        return len(inserts)

    # -- claim --

    def claim_files(
        self,
        limit: int,
        lease_s: float,
        now: float | None = None,
        max_bytes: int | None = None,
    ) -> list[ClaimedFile]:
        """Lease up to ``limit`` due pending files, earliest due first (then oldest); with
        ``max_bytes``, only as many as fit in it, but always the first."""
        now = self._now(now)
        with self._lock, self._write() as db:
            rows = db.execute(
                # The claim reads the file as it is now: an earlier change mark is moot.
                "UPDATE files SET state = 1, lease_until = ?, changed = 0 WHERE id IN ("
                " SELECT id FROM (SELECT id, SUM(size) OVER w AS upto, ROW_NUMBER() OVER w AS n"
                "  FROM (SELECT id, size, next_attempt_at FROM files"
                "   WHERE state = 0 AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?)"
                "  WINDOW w AS (ORDER BY next_attempt_at, id))"
                " WHERE n = 1 OR upto <= ?)"
                " RETURNING next_attempt_at, id, path, kind, size, mtime_ns, meta, attempts",
                (now + lease_s, now, limit, 1 << 62 if max_bytes is None else max_bytes),
            ).fetchall()
        rows.sort(key=lambda r: (r[0], r[1]))
        return [
            ClaimedFile(fid, path, kind, size, mtime_ns, json.loads(meta), attempts)
            for _, fid, path, kind, size, mtime_ns, meta, attempts in rows
        ]

    def claim_readings(
        self, max_count: int, max_bytes: int, lease_s: float, now: float | None = None
    ) -> list[ClaimedReading]:
        """Lease due readings of one stream (that of the oldest due reading), in id order:
        at most ``max_count`` and ``max_bytes`` of payload, but at least one if any is due."""
        now = self._now(now)
        if max_count < 1:
            return []
        with self._lock, self._write() as db:
            # Walks the oldest rows, skipping those leased or waiting for a retry: few.
            # NOT INDEXED: rowid order, so LIMIT 1 stops early (a covering index of the
            # stream ids would need a sort of every row).
            head = db.execute(
                "SELECT r.id, r.stream_id FROM readings r NOT INDEXED"
                f" LEFT JOIN reading_state s ON s.id = r.id WHERE {_DUE} ORDER BY r.id LIMIT 1",
                (now,),
            ).fetchone()
            if head is None:
                return []
            head_id, sid = head
            # Sizes first: the byte cut must not load payloads it leaves behind. No due
            # reading of this stream is older than the head.
            sizes = db.execute(
                "SELECT r.id, length(r.payload) FROM readings r INDEXED BY readings_stream"
                " LEFT JOIN reading_state s ON s.id = r.id"
                f" WHERE r.stream_id = ? AND r.id >= ? AND {_DUE} ORDER BY r.id LIMIT ?",
                (sid, head_id, now, max_count),
            ).fetchall()
            chosen, total = [], 0
            for rid, size in sizes:
                total += size
                if total > max_bytes and chosen:
                    break
                chosen.append(rid)
            db.executemany(
                "INSERT INTO reading_state (id, state, lease_until) VALUES (?, 1, ?)"
                " ON CONFLICT (id) DO UPDATE SET state = 1, lease_until = excluded.lease_until",
                [(rid, now + lease_s) for rid in chosen],
            )
            rows = db.execute(
                "SELECT r.id, r.time_requested_ns, r.time_received_ns, s.attempts, r.payload"
                f" FROM readings r JOIN reading_state s ON s.id = r.id WHERE r.id IN {_IDS}"
                " ORDER BY r.id",
                (_id_list(chosen),),
            ).fetchall()
            key = self._stream_key(db, sid)
        return [
            ClaimedReading(rid, *key, payload, t_req, t_recv, attempts)
            for rid, t_req, t_recv, attempts, payload in rows
        ]

    # -- outcomes --

    def ack(
        self, ids: Sequence[int], now: float | None = None, kept: Sequence[KeptFile] = ()
    ) -> None:
        """Delivered: delete the rows (a file that changed during its upload is queued
        again). ``kept`` are files delivered and kept on disk: their rows go too, and in
        the same transaction the version uploaded is remembered as synced, so it is never
        uploaded again."""
        if not ids and not kept:
            return
        id_list, now = _id_list([*ids, *(k.id for k in kept)]), self._now(now)
        with self._lock, self._write() as db:
            self._delete_readings(db, id_list)
            db.execute(f"DELETE FROM dead_readings WHERE id IN {_IDS}", (id_list,))
            self._ack_files(db, id_list, now)
            db.executemany(
                "INSERT OR REPLACE INTO synced_files (path, size, mtime_ns, synced_at)"
                " VALUES (?, ?, ?, ?)",
                [(str(k.path), k.size, k.mtime_ns, now) for k in kept],
            )

    @staticmethod
    def _ack_files(db: sqlite3.Connection, id_list: str, now: float) -> None:
        db.execute(f"DELETE FROM files WHERE id IN {_IDS} AND changed = 0", (id_list,))
        db.execute(
            "UPDATE files SET state = 0, changed = 0, attempts = 0, lease_until = NULL,"
            f" next_attempt_at = ? WHERE id IN {_IDS} AND changed = 1",
            (now, id_list),
        )

    def ack_file_keep(
        self, id: int, path: str, size: int, mtime_ns: int, now: float | None = None
    ) -> None:
        """:meth:`ack` of one file kept on disk."""
        self.ack((), now, kept=[KeptFile(id, path, size, mtime_ns)])

    def nack(self, ids: Sequence[int], error: str, next_attempt_at: float) -> None:
        """Failed, will retry: pending again from ``next_attempt_at``, attempts + 1
        (dead letters are left alone)."""
        if not ids:
            return
        id_list = _id_list(ids)
        with self._lock, self._write() as db:
            db.execute(
                "INSERT INTO reading_state (id, state, attempts, next_attempt_at, last_error)"
                f" SELECT id, 0, 1, ?, ? FROM readings WHERE id IN {_IDS}"
                " ON CONFLICT (id) DO UPDATE SET state = 0, attempts = attempts + 1,"
                " next_attempt_at = excluded.next_attempt_at, last_error = excluded.last_error,"
                " lease_until = NULL",
                (next_attempt_at, error, id_list),
            )
            db.execute(
                "UPDATE files SET state = 0, attempts = attempts + 1, last_error = ?,"
                " next_attempt_at = ?, lease_until = NULL, changed = 0"
                f" WHERE id IN {_IDS} AND state <> 2",
                (error, next_attempt_at, id_list),
            )

    def dead_letter(self, ids: Sequence[int], reason: str, now: float | None = None) -> None:
        """Failed for good: state failed with the server's reason; a file stays on disk."""
        if not ids:
            return
        id_list, now = _id_list(ids), self._now(now)
        with self._lock, self._write() as db:
            db.execute(
                "INSERT INTO dead_readings (id, stream_id, enqueued_at, time_requested_ns,"
                " time_received_ns, attempts, reason, failed_at, payload)"
                " SELECT r.id, r.stream_id, r.enqueued_at, r.time_requested_ns,"
                " r.time_received_ns, coalesce(s.attempts, 0) + 1, ?, ?, r.payload"
                f" FROM readings r LEFT JOIN reading_state s ON s.id = r.id WHERE r.id IN {_IDS}",
                (reason, now, id_list),
            )
            self._delete_readings(db, id_list)
            db.execute(
                "UPDATE files SET state = 2, attempts = attempts + 1, last_error = ?,"
                f" failed_at = ?, lease_until = NULL, changed = 0 WHERE id IN {_IDS}"
                " AND state <> 2",
                (reason, now, id_list),
            )

    # -- leases --

    def release_expired(self, now: float | None = None) -> int:
        """Put inflight rows whose lease ended back to pending, due now; returns how many."""
        now = self._now(now)
        with self._lock, self._write() as db:
            return self._release(db, "lease_until <= ?", (now,), now)

    def release_all_inflight(self, now: float | None = None) -> int:
        """Put every inflight row back to pending (daemon start: it owns the outbox)."""
        now = self._now(now)
        with self._lock, self._write() as db:
            return self._release(db, "1", (), now)

    @staticmethod
    def _release(db: sqlite3.Connection, cond: str, params: tuple, now: float) -> int:
        # A reading never tried before simply loses its state row (fresh again).
        released = db.execute(
            f"DELETE FROM reading_state WHERE state = 1 AND {cond} AND attempts = 0",
            params,
        ).rowcount
        released += db.execute(
            "UPDATE reading_state SET state = 0, lease_until = NULL, next_attempt_at = ?"
            f" WHERE state = 1 AND {cond}",
            (now, *params),
        ).rowcount
        released += db.execute(
            f"UPDATE files SET state = 0, lease_until = NULL WHERE state = 1 AND {cond}",
            params,
        ).rowcount
        return released

    # -- dead letters --

    def list_failed(self) -> list[FailedItem]:
        """Every dead letter, oldest failure first."""
        with self._lock, self._read() as db:
            files = db.execute(
                "SELECT id, path, attempts, last_error, failed_at FROM files WHERE state = 2"
            ).fetchall()
            readings = db.execute(
                "SELECT id, stream_id, attempts, reason, failed_at FROM dead_readings"
            ).fetchall()
            items = [FailedItem(i, "file", p, a, e or "", f) for i, p, a, e, f in files]
            items += [
                FailedItem(i, "reading", _reading_source(self._stream_key(db, s)), a, e, f)
                for i, s, a, e, f in readings
            ]
        items.sort(key=lambda it: (it.failed_at, it.id))
        return items

    def retry_failed(self, ids: Sequence[int] | None = None, now: float | None = None) -> int:
        """Dead letters back to pending, due now, attempts reset; None means all."""
        now = self._now(now)
        where, params = self._failed_filter(ids)
        with self._lock, self._write() as db:
            moved = db.execute(
                "INSERT INTO readings (id, stream_id, enqueued_at, time_requested_ns,"
                " time_received_ns, payload) SELECT id, stream_id, enqueued_at,"
                f" time_requested_ns, time_received_ns, payload FROM dead_readings WHERE {where}"
                " RETURNING length(payload)",
                params,
            ).fetchall()
            if moved:
                db.execute(f"DELETE FROM dead_readings WHERE {where}", params)
                self._reserve_ids(db, 0, len(moved), sum(s for (s,) in moved))
            files = db.execute(
                "UPDATE files SET state = 0, attempts = 0, next_attempt_at = ?, failed_at = NULL"
                f" WHERE state = 2 AND {where}",
                (now, *params),
            ).rowcount
        return len(moved) + files

    def purge_failed(
        self, ids: Sequence[int] | None = None, older_than: float | None = None
    ) -> int:
        """Delete dead letters (None means all), only those failed before the epoch time
        ``older_than`` if given; a file stays on disk. Returns how many."""
        where, params = self._failed_filter(ids)
        if older_than is not None:
            where, params = f"{where} AND failed_at < ?", (*params, older_than)
        with self._lock, self._write() as db:
            n = db.execute(f"DELETE FROM dead_readings WHERE {where}", params).rowcount
            n += db.execute(f"DELETE FROM files WHERE state = 2 AND {where}", params).rowcount
        return n

    @staticmethod
    def _failed_filter(ids: Sequence[int] | None) -> tuple[str, tuple]:
        if ids is None:
            return "1", ()
        return f"id IN {_IDS}", (_id_list(ids),)

    # -- files kept on disk, reconcile --

    @staticmethod
    def _synced(db: sqlite3.Connection, path: str, size: int, mtime_ns: int) -> bool:
        row = db.execute(
            "SELECT 1 FROM synced_files WHERE path = ? AND size = ? AND mtime_ns = ?",
            (path, size, mtime_ns),
        ).fetchone()
        return row is not None

    def is_synced(self, path: str, size: int, mtime_ns: int) -> bool:
        """Whether this exact version of the file was uploaded and kept."""
        with self._lock:
            return self._synced(self._db, str(path), size, mtime_ns)

    def synced_paths(self) -> set[str]:
        """Paths with a synced version kept on disk."""
        with self._lock:
            return {p for (p,) in self._db.execute("SELECT path FROM synced_files")}

    def synced_stats(self) -> dict[str, tuple[int, int]]:
        """Synced files kept on disk: path -> (size, mtime_ns), for a fast reconcile."""
        with self._lock:
            rows = self._db.execute("SELECT path, size, mtime_ns FROM synced_files")
            return {p: (s, m) for p, s, m in rows}

    def forget_synced(self, paths: Iterable[str]) -> int:
        """Forget synced files no longer on disk; returns how many were forgotten."""
        path_list = json.dumps([str(p) for p in paths])
        with self._lock, self._write() as db:
            return db.execute(
                "DELETE FROM synced_files WHERE path IN (SELECT value FROM json_each(?))",
                (path_list,),
            ).rowcount

    def live_file_rows(self) -> list[LiveFile]:
        """Every file row, for the startup reconcile against the disk."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, path, size, mtime_ns, state FROM files ORDER BY id"
            ).fetchall()
        return [LiveFile(i, p, s, m, STATE_NAMES[st]) for i, p, s, m, st in rows]

    def drop(self, ids: Sequence[int]) -> int:
        """Delete rows whatever their state (e.g. their file vanished); returns how many."""
        if not ids:
            return 0
        id_list = _id_list(ids)
        with self._lock, self._write() as db:
            n = self._delete_readings(db, id_list)
            n += db.execute(f"DELETE FROM dead_readings WHERE id IN {_IDS}", (id_list,)).rowcount
            n += db.execute(f"DELETE FROM files WHERE id IN {_IDS}", (id_list,)).rowcount
        return n

    # -- observation --

    def counts(self, now: float | None = None) -> OutboxCounts:
        """Rows and bytes by state, and the age of the oldest undelivered row."""
        now = self._now(now)
        with self._lock, self._read() as db:
            files = {PENDING: (0, 0), INFLIGHT: (0, 0), FAILED: (0, 0)}
            for state, n, size in db.execute(
                "SELECT state, count(*), coalesce(sum(size), 0) FROM files GROUP BY state"
            ):
                files[state] = (n, size)
            readings, reading_bytes = db.execute(
                "SELECT readings, reading_bytes FROM counters"
            ).fetchone()
            inflight = db.execute(
                "SELECT count(*), coalesce(sum(length(r.payload)), 0) FROM reading_state s"
                " JOIN readings r ON r.id = s.id WHERE s.state = 1"
            ).fetchone()
            failed = db.execute(
                "SELECT count(*), coalesce(sum(length(payload)), 0) FROM dead_readings"
            ).fetchone()
            # Both in enqueue order by id; only dead letters can sit before the first
            # undelivered file, and the readings table holds undelivered rows only.
            oldest = [
                row[0]
                for row in (
                    db.execute("SELECT enqueued_at FROM readings ORDER BY id LIMIT 1").fetchone(),
                    db.execute(
                        "SELECT enqueued_at FROM files WHERE state IN (0, 1) ORDER BY id LIMIT 1"
                    ).fetchone(),
                )
                if row is not None
            ]
        pending = (readings - inflight[0], reading_bytes - inflight[1])
        return OutboxCounts(
            pending=files[PENDING][0] + pending[0],
            inflight=files[INFLIGHT][0] + inflight[0],
            failed=files[FAILED][0] + failed[0],
            pending_bytes=files[PENDING][1] + pending[1],
            inflight_bytes=files[INFLIGHT][1] + inflight[1],
            failed_bytes=files[FAILED][1] + failed[1],
            oldest_pending_age_s=max(0.0, now - min(oldest)) if oldest else None,
            files_pending=files[PENDING][0],
            files_inflight=files[INFLIGHT][0],
            files_failed=files[FAILED][0],
            readings_pending=pending[0],
            readings_inflight=inflight[0],
            readings_failed=failed[0],
        )

    def next_due_at(self) -> float | None:
        """The earliest time a pending row is due (a fresh reading is due from its enqueue
        time, so a past time means "now"); None when nothing is pending."""
        with self._lock, self._read() as db:
            queries = (
                "SELECT r.enqueued_at FROM readings r NOT INDEXED WHERE NOT EXISTS"
                " (SELECT 1 FROM reading_state s WHERE s.id = r.id) ORDER BY r.id LIMIT 1",
                "SELECT next_attempt_at FROM reading_state WHERE state = 0"
                " ORDER BY next_attempt_at LIMIT 1",
                "SELECT next_attempt_at FROM files WHERE state = 0"
                " ORDER BY next_attempt_at LIMIT 1",
            )
            times = [row[0] for q in queries if (row := db.execute(q).fetchone()) is not None]
        return min(times) if times else None

    def data_version(self) -> int:
        """Changes when another connection (e.g. a robot program) commits: cheap to poll."""
        with self._lock:
            return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def checkpoint(self) -> None:
        """Copy the WAL into the database file and truncate it (e.g. at shutdown)."""
        with self._lock:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
