"""The outbox, operation by operation, on real SQLite files: enqueue, claim, ack, retry,
dead letters, counts, schema and migrations, the readings API and the async wrapper."""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncd.errors import OutboxError
from syncd.outbox import (
    ClaimedReading,
    FileItem,
    KeptFile,
    LiveFile,
    Outbox,
    OutboxCounts,
    Reading,
    StreamKey,
    encode_tabular,
)
from syncd.outbox_async import AsyncOutbox
from syncd.outbox_schema import LATEST_VERSION, MIGRATIONS, migrate

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000.0
SENSOR = ("rdk:component:sensor", "imu", "Readings")
CAMERA = ("rdk:component:camera", "cam", "ReadImage")


class Clock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def ob(tmp_path, clock):
    outbox = Outbox(tmp_path / "state", clock=clock)
    yield outbox
    outbox.close()


def tab(i: int, stream=SENSOR, tags=()) -> Reading:
    return Reading.tabular(*stream, {"i": i}, time_requested=T0 + i, tags=tags)


def fitem(path: str, size: int = 10, mtime_ns: int = 1, kind: str = "file", **meta) -> FileItem:
    return FileItem(path, kind, size, mtime_ns, meta)


# --- schema -------------------------------------------------------------------------


def test_new_outbox_is_wal_with_full_sync_and_latest_schema(ob):
    db = sqlite3.connect(ob.path)
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
    finally:
        db.close()
    assert ob._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert ob._db.execute("PRAGMA busy_timeout").fetchone()[0] >= 10_000
    assert ob.path.name == "outbox.db"


def test_the_daemons_connection_trades_fsyncs_for_redoable_commits(tmp_path):
    with Outbox(tmp_path, durable=False) as daemon, Outbox(tmp_path) as program:
        assert daemon._db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert program._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_migrates_an_existing_empty_version_0_database(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "outbox.db")
    db.execute("PRAGMA user_version = 0")
    db.close()
    with Outbox(state) as ob:
        assert ob.enqueue_readings([tab(1)]) == [1]
        assert ob.counts().readings_pending == 1
    # Opening again migrates nothing and keeps the data.
    with Outbox(state) as ob:
        assert [r.id for r in ob.claim_readings(10, 1 << 20, 30)] == [1]


def test_migration_steps_equal_a_fresh_schema(tmp_path):
    stepwise = sqlite3.connect(tmp_path / "a.db", isolation_level=None)
    for version in range(LATEST_VERSION):
        assert migrate(stepwise, target=version + 1) == version
    fresh = sqlite3.connect(tmp_path / "b.db", isolation_level=None)
    assert migrate(fresh) == 0
    query = "SELECT type, name, sql FROM sqlite_schema ORDER BY name"
    assert stepwise.execute(query).fetchall() == fresh.execute(query).fetchall()
    assert migrate(fresh) == LATEST_VERSION  # a no-op now
    assert len(MIGRATIONS) == LATEST_VERSION


def test_failed_migration_leaves_the_old_version_intact(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "outbox.db")
    db.execute("CREATE TABLE readings (x)")  # someone else's table in the way
    db.commit()
    db.close()
    with pytest.raises(OutboxError, match="already exists"):
        Outbox(state)
    db = sqlite3.connect(state / "outbox.db")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 0
    names = {n for (n,) in db.execute("SELECT name FROM sqlite_schema")}
    db.close()
    assert names == {"readings"}


def test_a_newer_schema_is_refused(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "outbox.db")
    db.execute(f"PRAGMA user_version = {LATEST_VERSION + 1}")
    db.close()
    with pytest.raises(OutboxError, match="newer than this syncd"):
        Outbox(state)


def test_unusable_state_dir_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OutboxError, match="cannot create the state dir"):
        Outbox(blocker / "state")


def test_closed_outbox_raises(ob):
    ob.close()
    with pytest.raises(OutboxError, match="closed"):
        ob.counts()
    ob.close()  # twice is fine


# --- readings API ---------------------------------------------------------------------


def test_add_tabular_round_trip(ob, clock):
    rid = ob.add_tabular(
        *SENSOR,
        {"x": 1.5, "nested": {"ok": [1, "two", None, True]}},
        time_requested=dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC),
        time_received=1_704_164_645.5,
        tags=("a", "b"),
    )
    [got] = ob.claim_readings(10, 1 << 20, 30)
    assert got.id == rid
    assert got.stream == StreamKey("tabular", *SENSOR, ("a", "b"), "", "")
    assert got.tabular_data() == {"x": 1.5, "nested": {"ok": [1, "two", None, True]}}
    assert got.payload == b'{"x":1.5,"nested":{"ok":[1,"two",null,true]}}'  # compact
    assert got.time_requested_ns == 1_704_164_645_123_456_000
    assert got.time_received_ns == 1_704_164_645_500_000_000
    assert got.attempts == 0


def test_add_binary_round_trip(ob):
    blob = bytes(range(256)) * 10
    rid = ob.add_binary(*CAMERA, bytearray(blob), file_extension="jpeg", mime_type="image/jpeg")
    [got] = ob.claim_readings(10, 1 << 20, 30)
    assert (got.id, got.kind, got.payload) == (rid, "binary", blob)
    assert (got.file_extension, got.mime_type) == (".jpeg", "image/jpeg")
    with pytest.raises(ValueError, match="not tabular"):
        got.tabular_data()


def test_times_default_to_now_and_accept_naive_utc(ob):
    before = dt.datetime.now(dt.UTC).timestamp()
    ob.add_tabular(*SENSOR, {"a": 1})
    ob.add_tabular(*SENSOR, {"a": 2}, time_requested=dt.datetime(2024, 1, 1), time_received=5)
    after = dt.datetime.now(dt.UTC).timestamp()
    first, second = ob.claim_readings(10, 1 << 20, 30)
    assert first.time_requested_ns == first.time_received_ns
    assert before * 1e9 - 1e6 <= first.time_requested_ns <= after * 1e9 + 1e6
    assert second.time_requested_ns == 1_704_067_200 * 10**9
    assert second.time_received_ns == 5 * 10**9


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"x": math.nan}, r"data\['x'\]: nan is not a finite number"),
        ({"x": [1, math.inf]}, r"data\['x'\]\[1\]: inf is not a finite number"),
        ({1: "a"}, "key 1 is not a string"),
        ({"x": {None: 1}}, "key None is not a string"),
        ({"x": b"raw"}, "a bytes cannot be stored"),
        ({"x": {1, 2}}, "a set cannot be stored"),
        ({"x": object()}, "a object cannot be stored"),
        ([1, 2], "must be a dict, got list"),
        ("text", "must be a dict, got str"),
        ({"x": "\ud800"}, "cannot be stored as JSON"),
    ],
)
def test_values_a_struct_cannot_hold_are_value_errors(ob, data, message):
    with pytest.raises(ValueError, match=message):
        ob.add_tabular(*SENSOR, data)
    assert ob.counts().pending == 0


def _valid(value) -> bool:
    # The reference: what a google.protobuf.Struct can hold.
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _valid(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return all(_valid(v) for v in value)
    return False


_leaves = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)
_odd = st.binary(max_size=3) | st.frozensets(st.integers(), max_size=2)
_values = st.recursive(
    _leaves | _odd,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner, inner)
        | st.dictionaries(st.text(max_size=3) | st.integers(), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=3), _values, max_size=4))
def test_encode_tabular_accepts_exactly_what_a_struct_holds(data):
    if _valid(data):
        assert json.loads(encode_tabular(data)) == json.loads(json.dumps(data))
    else:
        with pytest.raises(ValueError):
            encode_tabular(data)


def test_bad_times_and_tags_are_rejected(ob):
    with pytest.raises(TypeError, match="a time must be"):
        ob.add_tabular(*SENSOR, {}, time_requested="yesterday")
    with pytest.raises(ValueError, match="finite"):
        ob.add_tabular(*SENSOR, {}, time_received=math.nan)
    with pytest.raises(TypeError, match="not one string"):
        ob.add_tabular(*SENSOR, {}, tags="abc")
    with pytest.raises(TypeError, match="binary data must be bytes"):
        ob.add_binary(*CAMERA, "text")


def test_batch_commits_once_at_exit(ob, tmp_path):
    other = Outbox(tmp_path / "state")
    try:
        with ob.batch():
            for i in range(5):
                assert ob.add_tabular(*SENSOR, {"i": i}) is None
            assert other.counts().pending == 0  # nothing committed yet
        assert other.counts().pending == 5
        ids = [r.id for r in other.claim_readings(10, 1 << 20, 30)]
        assert ids == sorted(ids) and len(set(ids)) == 5
    finally:
        other.close()


def test_batch_flushes_every_n_and_on_exception(ob):
    with pytest.raises(RuntimeError), ob.batch(flush_every=3):
        for i in range(4):
            ob.add_tabular(*SENSOR, {"i": i})
        assert ob.counts().pending == 3
        raise RuntimeError("the program failed after adding readings")
    assert ob.counts().pending == 4


def test_batch_is_per_thread(ob):
    seen = []
    with ob.batch():
        ob.add_tabular(*SENSOR, {"main": 1})
        worker = threading.Thread(target=lambda: seen.append(ob.add_tabular(*SENSOR, {"w": 1})))
        worker.start()
        worker.join()
        assert isinstance(seen[0], int)  # the other thread committed on its own
        assert ob.counts().pending == 1
    assert ob.counts().pending == 2


def test_concurrent_threads_share_group_commits(ob):
    threads, per_thread = 8, 40
    ids: list[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def produce(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            rid = ob.add_tabular(*SENSOR, {"t": t, "i": i})
            with lock:
                ids.append(rid)

    workers = [threading.Thread(target=produce, args=(t,)) for t in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(ids) == list(range(1, threads * per_thread + 1))
    # Every commit stamps its rows with one enqueue time: fewer times than calls means
    # callers waiting together were committed together.
    (commits,) = ob._db.execute("SELECT count(DISTINCT enqueued_at) FROM readings").fetchone()
    assert commits < threads * per_thread


def test_import_loads_no_asyncio_nor_protobuf(tmp_path):
    code = (
        "import sys, syncd\n"
        f"ob = syncd.Outbox({str(tmp_path)!r})\n"
        "ob.add_tabular('t', 'n', 'm', {'x': 1})\n"
        "ob.close()\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('asyncio', 'google')"
        " or m.startswith('syncd.gen')]\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_robot_program_uses_the_outbox_beside_the_viam_sdk(tmp_path, viam_python):
    code = (
        "import sys\n"
        "from viam.proto.app.datasync import DataCaptureUploadRequest\n"
        "from syncd import Outbox\n"
        f"with Outbox({str(tmp_path)!r}) as ob:\n"
        "    print(ob.add_tabular('rdk:component:sensor', 'imu', 'Readings', {'x': 1.0}))\n"
    )
    env = {"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [viam_python, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1"
    with Outbox(tmp_path) as ob:
        [got] = ob.claim_readings(10, 1 << 20, 30)
        assert got.tabular_data() == {"x": 1.0}


# --- claims -------------------------------------------------------------------------


def test_claim_readings_takes_one_stream_oldest_first(ob):
    ob.enqueue_readings([tab(0, CAMERA), tab(1), tab(2, CAMERA), tab(3), tab(4, tags=("t",))])
    first = ob.claim_readings(10, 1 << 20, 30)
    assert [r.id for r in first] == [1, 3]
    assert {r.stream for r in first} == {first[0].stream}
    assert first[0].component_name == "cam"
    assert [r.id for r in ob.claim_readings(10, 1 << 20, 30)] == [2, 4]
    # Other tags, another stream: one request's metadata must fit all its readings.
    [tagged] = ob.claim_readings(10, 1 << 20, 30)
    assert (tagged.id, tagged.tags) == (5, ("t",))
    assert ob.claim_readings(10, 1 << 20, 30) == []


def test_claim_readings_limits_count_and_bytes_but_takes_at_least_one(ob):
    ob.enqueue_readings([tab(i) for i in range(10)])
    size = len(tab(0).payload)
    assert [r.id for r in ob.claim_readings(3, 1 << 20, 30)] == [1, 2, 3]
    assert [r.id for r in ob.claim_readings(100, 2 * size, 30)] == [4, 5]
    assert [r.id for r in ob.claim_readings(100, 1, 30)] == [6]  # alone over the limit
    assert ob.claim_readings(0, 1 << 20, 30) == []
    assert [r.id for r in ob.claim_readings(100, 1 << 20, 30)] == [7, 8, 9, 10]


def test_a_lease_hides_rows_until_it_expires(ob, clock):
    ob.enqueue_readings([tab(1), tab(2)])
    ob.enqueue_files([fitem("/d/a")])
    assert len(ob.claim_readings(10, 1 << 20, lease_s=30)) == 2
    assert len(ob.claim_files(10, lease_s=30)) == 1
    assert ob.claim_readings(10, 1 << 20, 30) == [] and ob.claim_files(10, 30) == []
    assert ob.release_expired(now=T0 + 29) == 0
    assert ob.release_expired(now=T0 + 30) == 3
    again = ob.claim_readings(10, 1 << 20, 30, now=T0 + 31)
    assert [(r.id, r.attempts) for r in again] == [(1, 0), (2, 0)]
    assert [f.path for f in ob.claim_files(10, 30, now=T0 + 31)] == ["/d/a"]


def test_release_all_inflight_at_start(ob):
    ob.enqueue_readings([tab(1)])
    ob.enqueue_files([fitem("/d/a")])
    ob.claim_readings(10, 1 << 20, 3600)
    ob.claim_files(10, 3600)
    ob.nack([1], "x", T0)
    ob.claim_readings(10, 1 << 20, 3600)  # claimed again, now with one attempt
    assert ob.release_all_inflight() == 2
    assert ob.counts().inflight == 0
    [again] = ob.claim_readings(10, 1 << 20, 30)
    assert again.attempts == 1


def test_claim_files_due_order_limit_and_metadata(ob, clock):
    ob.enqueue_files([fitem("/d/a", tags=["x"]), fitem("/d/b", kind="capture")])
    clock.t += 1
    ob.enqueue_files([fitem("/d/c", kind="prog", dataset_ids=["ds"])])
    [a] = ob.claim_files(1, 30)
    assert (a.path, a.kind, a.size, a.mtime_ns, a.meta, a.attempts) == (
        "/d/a",
        "file",
        10,
        1,
        {"tags": ["x"]},
        0,
    )
    ob.nack([a.id], "unavailable", next_attempt_at=T0 + 100)
    assert [f.path for f in ob.claim_files(10, 30)] == ["/d/b", "/d/c"]
    assert ob.claim_files(10, 30, now=T0 + 99) == []
    [again] = ob.claim_files(10, 30, now=T0 + 100)
    assert (again.path, again.attempts) == ("/d/a", 1)


def test_claim_files_takes_the_earliest_due_first(ob, clock):
    ob.enqueue_files([fitem("/d/old")])
    [old] = ob.claim_files(1, 30)
    ob.nack([old.id], "unavailable", next_attempt_at=T0 + 5)
    clock.t = T0 + 1
    ob.enqueue_files([fitem("/d/new")])  # due from T0 + 1, before the retry at T0 + 5
    assert [f.path for f in ob.claim_files(1, 30, now=T0 + 10)] == ["/d/new"]
    assert [f.path for f in ob.claim_files(1, 30, now=T0 + 10)] == ["/d/old"]


# --- outcomes -----------------------------------------------------------------------


def test_ack_deletes_and_late_acks_are_harmless(ob):
    ob.enqueue_readings([tab(1), tab(2)])
    ob.enqueue_files([fitem("/d/a")])
    claimed = [r.id for r in ob.claim_readings(10, 1 << 20, 30)]
    [f] = ob.claim_files(10, 30)
    ob.ack([*claimed, f.id])
    assert ob.counts() == OutboxCounts.zero()
    # Ids are never reused: an old id acked again cannot touch a newer row.
    ob.enqueue_readings([tab(3)])
    ob.ack(claimed)
    [r] = ob.claim_readings(10, 1 << 20, 30)
    assert r.id == 4


def test_one_ack_takes_readings_deleted_files_and_kept_files_together(ob):
    ob.enqueue_readings([tab(1)])
    ob.enqueue_files([fitem("/d/gone"), fitem("/d/kept", size=5, mtime_ns=7)])
    [r] = ob.claim_readings(10, 1 << 20, 30)
    gone, kept = sorted(ob.claim_files(10, 30), key=lambda f: f.path)
    ob.ack([r.id, gone.id], kept=[KeptFile(kept.id, kept.path, kept.size, kept.mtime_ns)])
    assert ob.counts() == OutboxCounts.zero()
    assert ob.synced_stats() == {"/d/kept": (5, 7)}
    assert ob.enqueue_files([fitem("/d/kept", size=5, mtime_ns=7)]) == 0


def test_a_late_ack_also_clears_a_dead_letter(ob):
    # Worker A's lease ran out, worker B got a permanent error, then A's upload succeeded:
    # the reading was delivered.
    ob.enqueue_readings([tab(1)])
    ob.enqueue_files([fitem("/d/a")])
    ob.dead_letter([1, 2], "INVALID_ARGUMENT")
    ob.ack([1, 2])
    assert ob.list_failed() == []
    assert ob.counts() == OutboxCounts.zero()


def test_nack_schedules_a_retry_and_keeps_the_error(ob):
    ob.enqueue_readings([tab(1), tab(2)])
    ob.claim_readings(10, 1 << 20, 30)
    ob.nack([1, 2], "UNAVAILABLE: try later", next_attempt_at=T0 + 60)
    assert ob.counts().pending == 2
    assert ob.next_due_at() == T0 + 60
    assert ob.claim_readings(10, 1 << 20, 30, now=T0 + 59) == []
    got = ob.claim_readings(10, 1 << 20, 30, now=T0 + 60)
    assert [(r.id, r.attempts) for r in got] == [(1, 1), (2, 1)]
    ob.nack([1], "again", next_attempt_at=T0 + 120)
    ob.ack([2])
    assert ob._db.execute("SELECT attempts, last_error FROM reading_state").fetchall() == [
        (2, "again")
    ]


def test_fresh_readings_of_a_stream_go_past_its_retries(ob):
    ob.enqueue_readings([tab(1), tab(2)])
    ob.claim_readings(1, 1 << 20, 30)
    ob.nack([1], "later", next_attempt_at=T0 + 60)
    assert [r.id for r in ob.claim_readings(10, 1 << 20, 30)] == [2]
    assert [r.id for r in ob.claim_readings(10, 1 << 20, 30, now=T0 + 61)] == [1]


def test_dead_letters_list_retry_and_purge(ob, clock):
    ob.enqueue_readings([tab(1), tab(2, CAMERA)])
    ob.enqueue_files([fitem("/d/a.txt")])
    ob.claim_readings(10, 1 << 20, 30)
    ob.dead_letter([1], "INVALID_ARGUMENT: bad reading")
    clock.t += 5
    ob.dead_letter([3], "INVALID_ARGUMENT: bad file")
    ob.nack([1, 3], "ignored: dead letters stay dead", T0)
    failed = ob.list_failed()
    assert [(f.id, f.kind, f.source, f.attempts, f.reason, f.failed_at) for f in failed] == [
        (1, "reading", "rdk:component:sensor/imu/Readings", 1, "INVALID_ARGUMENT: bad reading", T0),
        (3, "file", "/d/a.txt", 1, "INVALID_ARGUMENT: bad file", T0 + 5),
    ]
    counts = ob.counts()
    assert (counts.failed, counts.readings_failed, counts.files_failed) == (2, 1, 1)
    assert counts.failed_bytes == len(tab(1).payload) + 10
    assert ob.claim_files(10, 30) == []

    assert ob.retry_failed([1]) == 1
    [again] = ob.claim_readings(10, 1 << 20, 30)
    assert (again.id, again.attempts, again.tabular_data()) == (1, 0, {"i": 1})
    ob.dead_letter([1], "still bad")
    assert ob.purge_failed(older_than=T0 + 5) == 0  # both failed at T0 + 5
    assert ob.purge_failed([3]) == 1
    assert ob.retry_failed() == 1
    assert ob.list_failed() == []
    assert ob.purge_failed() == 0


def test_retry_failed_all_and_purge_older_than(ob, clock):
    ob.enqueue_files([fitem("/d/a"), fitem("/d/b")])
    ob.enqueue_readings([tab(1)])
    ob.dead_letter([1], "old")
    clock.t += 100
    ob.dead_letter([2, 3], "new")
    assert ob.purge_failed(older_than=T0 + 50) == 1
    assert [f.id for f in ob.list_failed()] == [2, 3]
    assert ob.retry_failed() == 2
    assert ob.counts().pending == 2


def test_dead_lettered_file_stays_on_disk(ob, tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"abc")
    ob.enqueue_files([FileItem(str(path), "file", 3, path.stat().st_mtime_ns)])
    [f] = ob.claim_files(1, 30)
    ob.dead_letter([f.id], "too big")
    ob.purge_failed()
    assert path.read_bytes() == b"abc"


# --- files: idempotent enqueue, synced files, reconcile ----------------------------------


def test_enqueue_files_is_idempotent_and_follows_changes(ob, clock):
    assert ob.enqueue_files([fitem("/d/a"), fitem("/d/b"), fitem("/d/a")]) == 2
    assert ob.enqueue_files([fitem("/d/a"), fitem("/d/b")]) == 0
    assert ob.enqueue_files([fitem("/d/a", size=20, mtime_ns=2, tags=["new"])]) == 0
    [a, b] = ob.claim_files(10, 30)
    assert (a.path, a.size, a.mtime_ns, a.meta) == ("/d/a", 20, 2, {"tags": ["new"]})
    assert ob.counts().inflight_bytes == 30

    # Changed while uploading: the ack queues it again instead of deleting it.
    assert ob.enqueue_files([fitem("/d/a", size=30, mtime_ns=3)]) == 0
    ob.ack([a.id, b.id])
    assert ob.live_file_rows() == [LiveFile(a.id, "/d/a", 30, 3, "pending")]
    [again] = ob.claim_files(10, 30)
    assert (again.id, again.size, again.attempts) == (a.id, 30, 0)

    # Changed after failing for good: new content, new chances.
    ob.dead_letter([again.id], "bad")
    assert ob.enqueue_files([fitem("/d/a", size=30, mtime_ns=3)]) == 0
    assert ob.list_failed()[0].id == again.id
    assert ob.enqueue_files([fitem("/d/a", size=40, mtime_ns=4)]) == 0
    assert ob.list_failed() == []
    assert [(f.size, f.attempts) for f in ob.claim_files(10, 30)] == [(40, 0)]


def test_a_new_claim_clears_an_earlier_change_mark(ob):
    ob.enqueue_files([fitem("/d/a")])
    [first] = ob.claim_files(1, lease_s=30)
    ob.enqueue_files([fitem("/d/a", size=20, mtime_ns=2)])  # changed during the upload
    assert ob.release_expired(now=T0 + 30) == 1  # that worker died
    [second] = ob.claim_files(1, 30, now=T0 + 31)
    assert (second.id, second.size) == (first.id, 20)  # this upload reads the new content
    ob.ack([second.id])
    assert ob.live_file_rows() == []


def test_file_kept_on_disk_is_never_queued_twice(ob):
    ob.enqueue_files([fitem("/d/a", size=5, mtime_ns=7)])
    [f] = ob.claim_files(1, 30)
    ob.ack_file_keep(f.id, f.path, f.size, f.mtime_ns)
    assert ob.live_file_rows() == []
    assert ob.is_synced("/d/a", 5, 7) and not ob.is_synced("/d/a", 5, 8)
    assert ob.synced_paths() == {"/d/a"}
    assert ob.synced_stats() == {"/d/a": (5, 7)}
    assert ob.enqueue_files([fitem("/d/a", size=5, mtime_ns=7)]) == 0
    assert ob.enqueue_files([fitem("/d/a", size=6, mtime_ns=8)]) == 1  # it changed
    [f] = ob.claim_files(1, 30)
    ob.ack_file_keep(f.id, f.path, f.size, f.mtime_ns)
    assert ob.synced_stats() == {"/d/a": (6, 8)}
    assert ob.forget_synced(["/d/a", "/d/never"]) == 1
    assert ob.synced_paths() == set()


def test_live_file_rows_and_drop(ob):
    ob.enqueue_files([fitem("/d/a"), fitem("/d/b"), fitem("/d/c")])
    ob.enqueue_readings([tab(1)])
    ob.claim_files(1, 30)
    ob.dead_letter([3], "x")
    assert ob.live_file_rows() == [
        LiveFile(1, "/d/a", 10, 1, "inflight"),
        LiveFile(2, "/d/b", 10, 1, "pending"),
        LiveFile(3, "/d/c", 10, 1, "failed"),
    ]
    assert ob.drop([1, 3, 4, 99]) == 3
    assert [r.path for r in ob.live_file_rows()] == ["/d/b"]
    assert ob.counts().pending == 1


def test_file_item_validation():
    with pytest.raises(ValueError, match="file kind"):
        FileItem("/a", "photo", 1, 1)
    assert FileItem(Path("/a/b"), "file", 1, 1).path == "/a/b"


# --- observation ----------------------------------------------------------------------


def test_counts_and_next_due(ob, clock):
    assert ob.counts() == OutboxCounts.zero()
    assert ob.counts().oldest_pending_age_s is None
    assert ob.next_due_at() is None
    ob.enqueue_files([fitem("/d/a", size=1000)])
    clock.t += 10
    ob.enqueue_readings([tab(1), tab(2)])
    c = ob.counts(now=T0 + 25)
    size = len(tab(1).payload) + len(tab(2).payload)
    assert (c.pending, c.inflight, c.failed) == (3, 0, 0)
    assert (c.files_pending, c.readings_pending) == (1, 2)
    assert c.pending_bytes == 1000 + size
    assert c.oldest_pending_age_s == 25
    assert ob.next_due_at() == T0
    ob.claim_files(1, 30)
    c = ob.counts(now=T0 + 25)
    assert (c.pending, c.inflight, c.inflight_bytes) == (2, 1, 1000)
    assert c.oldest_pending_age_s == 25  # inflight is not delivered yet
    assert ob.next_due_at() == T0 + 10
    assert c.as_dict()["pending"] == 2 and json.dumps(c.as_dict())


def test_data_version_changes_when_another_process_commits(ob, tmp_path):
    seen = ob.data_version()
    assert ob.data_version() == seen
    ob.enqueue_readings([tab(1)])
    assert ob.data_version() == seen  # own commits do not count
    with Outbox(tmp_path / "state") as other:
        other.add_tabular(*SENSOR, {"x": 1})
    assert ob.data_version() != seen


def test_checkpoint_truncates_the_wal(ob):
    ob.enqueue_readings([tab(i) for i in range(100)])
    assert Path(f"{ob.path}-wal").stat().st_size > 0
    ob.checkpoint()
    assert Path(f"{ob.path}-wal").stat().st_size == 0


def test_lazy_async_export():
    import syncd.outbox

    assert syncd.outbox.AsyncOutbox is AsyncOutbox
    with pytest.raises(AttributeError):
        syncd.outbox.Nope  # noqa: B018


# --- async ----------------------------------------------------------------------------


async def test_async_outbox_runs_the_same_operations(tmp_path):
    ob = await AsyncOutbox.open(tmp_path, clock=Clock())
    try:
        assert ob.path == tmp_path / "outbox.db"
        ids = await ob.enqueue_readings([tab(i) for i in range(3)])
        assert ids == [1, 2, 3]
        assert await ob.enqueue_files([fitem("/d/a")]) == 1
        assert (await ob.counts()).pending == 4
        claimed = await ob.claim_readings(2, 1 << 20, 30)
        assert all(isinstance(r, ClaimedReading) for r in claimed)
        await ob.nack([claimed[0].id], "later", T0 + 5)
        await ob.ack([claimed[1].id])
        [f] = await ob.claim_files(5, 30)
        await ob.dead_letter([f.id], "bad")
        assert [x.id for x in await ob.list_failed()] == [f.id]
        assert await ob.retry_failed() == 1
        assert [r.path for r in await ob.live_file_rows()] == ["/d/a"]
        assert await ob.next_due_at() == T0
        assert await ob.release_expired(now=T0 + 100) == 0
        assert await ob.release_all_inflight() == 0
        assert await ob.drop([f.id]) == 1
        assert isinstance(await ob.data_version(), int)
        assert await ob.purge_failed() == 0
        assert not await ob.is_synced("/d/a", 10, 1)
        assert await ob.synced_paths() == set() and await ob.synced_stats() == {}
        assert await ob.forget_synced([]) == 0
        await ob.checkpoint()
        assert ob.sync.counts().pending == 2
    finally:
        await ob.close()


async def test_async_outbox_open_failure_is_an_outbox_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutboxError):
        await AsyncOutbox.open(tmp_path / "file" / "state")


async def test_async_outbox_as_context_manager(tmp_path):
    async with await AsyncOutbox.open(tmp_path) as ob:
        await ob.enqueue_readings([tab(1)])
        [r] = await ob.claim_readings(10, 1 << 20, 30)
        await ob.ack_file_keep(999, "/x", 1, 1)
        assert r.id == 1
    with Outbox(tmp_path) as sync:
        assert sync.counts().inflight == 1
        assert sync.is_synced("/x", 1, 1)


def test_a_claim_of_files_stops_at_its_byte_budget_but_takes_at_least_one(ob):
    ob.enqueue_files([fitem(f"/d/{i}", size=size) for i, size in enumerate((60, 30, 20, 5))])
    assert [f.path for f in ob.claim_files(10, 30, max_bytes=100)] == ["/d/0", "/d/1"]
    assert [f.path for f in ob.claim_files(10, 30, max_bytes=10)] == ["/d/2"]
    assert [f.path for f in ob.claim_files(10, 30, max_bytes=10)] == ["/d/3"]
    ob.enqueue_files([fitem(f"/d/many{i}", size=1) for i in range(5)])
    assert len(ob.claim_files(3, 30, max_bytes=100)) == 3
