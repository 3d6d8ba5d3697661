"""The outbox against a plain in-memory model: no sequence of enqueues, claims, acks,
nacks, dead letters, retries, purges, lease expiries and restarts loses or duplicates an
item, and every claim, count and listing is exactly what the model predicts."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from syncd.outbox import FileItem, LiveFile, Outbox, Reading

STREAMS = [
    ("tabular", ("rdk:component:sensor", "imu", "Readings"), ()),
    ("tabular", ("rdk:component:sensor", "imu", "Readings"), ("tagged",)),
    ("binary", ("rdk:component:camera", "cam", "ReadImage"), ()),
]
PATHS = ["/cap/a.capture", "/cap/b.capture", "/cap/c.txt", "/cap/d.prog"]
LEASE_S = 30.0
# Durability is tested elsewhere (kill -9); here fsyncs would only slow the search down.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") else None


@dataclass
class Item:
    kind: str  # 'reading' | 'file'
    state: str  # 'pending' | 'inflight' | 'failed'
    enqueued_at: float
    due_at: float
    attempts: int = 0
    lease_until: float | None = None
    failed_at: float | None = None
    reason: str = ""
    # readings
    stream: int = 0
    payload: bytes = b""
    # files
    path: str = ""
    size: int = 0
    mtime_ns: int = 0
    changed: bool = False
    claimed_stat: tuple[int, int] = (0, 0)

    @property
    def nbytes(self) -> int:
        return len(self.payload) if self.kind == "reading" else self.size


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="outbox-model-", dir=SCRATCH)
        self.now = 1_000.0
        self.ob = Outbox(self.dir, clock=lambda: self.now)
        self.items: dict[int, Item] = {}
        self.synced: dict[str, tuple[int, int]] = {}
        self.max_id = 0
        self.serial = 0

    def teardown(self) -> None:
        self.ob.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # -- model queries --

    def fresh_ids(self, ids: list[int]) -> None:
        assert ids == sorted(ids) and ids[0] > self.max_id, "ids must be new and increasing"
        self.max_id = ids[-1]

    def live(self, kind: str, state: str | None = None) -> list[int]:
        return sorted(
            i for i, it in self.items.items() if it.kind == kind and state in (None, it.state)
        )

    def some_ids(self, data: st.DataObject, prefer: str | None = None) -> list[int]:
        # Mostly rows in the state the operation is meant for, sometimes any row, or an
        # id that never existed.
        preferred = sorted(i for i, it in self.items.items() if it.state == prefer)
        anything = [*sorted(self.items), self.max_id + 1000]
        pools = [anything] + ([preferred] * 3 if preferred else [])
        pool = data.draw(st.sampled_from(pools))
        return data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))

    # -- rules --

    @rule(specs=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 40)), min_size=1, max_size=6))
    def enqueue_readings(self, specs: list[tuple[int, int]]) -> None:
        readings = []
        for stream, size in specs:
            kind, (ctype, cname, method), tags = STREAMS[stream]
            self.serial += 1
            if kind == "tabular":
                r = Reading.tabular(ctype, cname, method, {"n": self.serial, "pad": "x" * size})
                r = Reading(*r.stream[:4], r.payload, 1, 2, tags)
            else:
                payload = self.serial.to_bytes(4, "big") + b"\0" * size
                r = Reading(kind, ctype, cname, method, payload, 1, 2, tags, ".bin")
            readings.append((stream, r))
        ids = self.ob.enqueue_readings([r for _, r in readings])
        self.fresh_ids(ids)
        for rid, (stream, r) in zip(ids, readings, strict=True):
            self.items[rid] = Item(
                "reading", "pending", self.now, self.now, stream=stream, payload=r.payload
            )

    @rule(
        specs=st.lists(
            st.tuples(st.sampled_from(PATHS), st.integers(1, 2), st.integers(1, 2)), max_size=4
        )
    )
    def enqueue_files(self, specs: list[tuple[str, int, int]]) -> None:
        latest = {path: (size, mtime) for path, size, mtime in specs}
        expected_new = []
        for path, (size, mtime) in latest.items():
            row = next((it for it in self.items.values() if it.path == path), None)
            if row is None:
                if self.synced.get(path) != (size, mtime):
                    expected_new.append(path)
                continue
            if (row.size, row.mtime_ns) == (size, mtime):
                continue
            row.size, row.mtime_ns = size, mtime
            if row.state == "inflight":
                row.changed = True
            elif row.state == "failed":
                row.state, row.attempts, row.due_at, row.failed_at = "pending", 0, self.now, None
        items = [FileItem(p, "file", s, m, {"p": p}) for p, s, m in specs]
        assert self.ob.enqueue_files(items) == len(expected_new)
        if expected_new:
            ids = {r.path: r.id for r in self.ob.live_file_rows() if r.path in expected_new}
            self.fresh_ids(sorted(ids.values()))
            for path, fid in ids.items():
                size, mtime = latest[path]
                self.items[fid] = Item(
                    "file", "pending", self.now, self.now, path=path, size=size, mtime_ns=mtime
                )

    @rule(data=st.data(), max_count=st.integers(1, 5))
    def claim_readings(self, data: st.DataObject, max_count: int) -> None:
        due = [i for i in self.live("reading", "pending") if self.items[i].due_at <= self.now]
        candidates = [i for i in due if self.items[i].stream == self.items[due[0]].stream]
        # Byte limits right at, just under and just over each prefix of the batch.
        sums, total = [1, 10_000], 0
        for i in candidates[:max_count]:
            total += len(self.items[i].payload)
            sums += [total - 1, total, total + 1]
        max_bytes = data.draw(st.sampled_from(sums))
        expected, total = [], 0
        for i in candidates[:max_count]:
            total += len(self.items[i].payload)
            if total > max_bytes and expected:
                break
            expected.append(i)
        got = self.ob.claim_readings(max_count, max_bytes, LEASE_S)
        assert [r.id for r in got] == expected
        for r in got:
            item = self.items[r.id]
            assert r.payload == item.payload and r.attempts == item.attempts
            assert r.stream == got[0].stream
            item.state, item.lease_until = "inflight", self.now + LEASE_S

    @rule(limit=st.integers(1, 3))
    def claim_files(self, limit: int) -> None:
        due = [i for i in self.live("file", "pending") if self.items[i].due_at <= self.now]
        expected = sorted(due, key=lambda i: (self.items[i].due_at, i))[:limit]
        got = self.ob.claim_files(limit, LEASE_S)
        assert [f.id for f in got] == expected
        for f in got:
            item = self.items[f.id]
            assert (f.path, f.size, f.mtime_ns, f.attempts) == (
                item.path,
                item.size,
                item.mtime_ns,
                item.attempts,
            )
            item.state, item.lease_until, item.changed = "inflight", self.now + LEASE_S, False
            item.claimed_stat = (f.size, f.mtime_ns)

    def _ack(self, fid: int) -> None:
        item = self.items[fid]
        if item.kind == "file" and item.changed:
            item.state, item.changed, item.attempts = "pending", False, 0
            item.due_at, item.lease_until = self.now, None
        else:
            del self.items[fid]

    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        ids = self.some_ids(data, prefer="inflight")
        self.ob.ack(ids)
        for i in ids:
            if i in self.items:
                self._ack(i)

    @precondition(lambda self: self.live("file", "inflight"))
    @rule(data=st.data())
    def ack_file_keep(self, data: st.DataObject) -> None:
        fid = data.draw(st.sampled_from(self.live("file", "inflight")))
        item = self.items[fid]
        self.ob.ack_file_keep(fid, item.path, *item.claimed_stat)
        self.synced[item.path] = item.claimed_stat
        self._ack(fid)

    @rule(data=st.data(), delay=st.sampled_from([0.0, 5.0, 50.0]))
    def nack(self, data: st.DataObject, delay: float) -> None:
        ids = self.some_ids(data, prefer="inflight")
        self.ob.nack(ids, f"error {self.serial}", self.now + delay)
        for i in ids:
            item = self.items.get(i)
            if item is not None and item.state != "failed":
                item.state, item.attempts, item.due_at = (
                    "pending",
                    item.attempts + 1,
                    self.now + delay,
                )
                item.lease_until, item.changed = None, False

    @rule(data=st.data())
    def dead_letter(self, data: st.DataObject) -> None:
        ids = self.some_ids(data, prefer="inflight")
        self.ob.dead_letter(ids, f"reason {self.serial}")
        for i in ids:
            item = self.items.get(i)
            if item is not None and item.state != "failed":
                item.state, item.attempts, item.failed_at = "failed", item.attempts + 1, self.now
                item.reason, item.lease_until, item.changed = f"reason {self.serial}", None, False

    @rule(data=st.data(), everything=st.booleans())
    def retry_failed(self, data: st.DataObject, everything: bool) -> None:
        ids = None if everything else self.some_ids(data, prefer="failed")
        targets = self.live("reading", "failed") + self.live("file", "failed")
        if ids is not None:
            targets = [i for i in targets if i in ids]
        assert self.ob.retry_failed(ids) == len(targets)
        for i in targets:
            item = self.items[i]
            item.state, item.attempts, item.failed_at = "pending", 0, None
            # A reading is fresh again, due since it was enqueued; a file is due now.
            item.due_at = item.enqueued_at if item.kind == "reading" else self.now

    @rule(data=st.data(), everything=st.booleans(), age=st.sampled_from([None, 0.0, 20.0]))
    def purge_failed(self, data: st.DataObject, everything: bool, age: float | None) -> None:
        ids = None if everything else self.some_ids(data, prefer="failed")
        older_than = None if age is None else self.now - age
        targets = [
            i
            for i in self.live("reading", "failed") + self.live("file", "failed")
            if (ids is None or i in ids)
            and (older_than is None or self.items[i].failed_at < older_than)
        ]
        assert self.ob.purge_failed(ids, older_than) == len(targets)
        for i in targets:
            del self.items[i]

    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        ids = self.some_ids(data)
        assert self.ob.drop(ids) == len([i for i in ids if i in self.items])
        for i in ids:
            self.items.pop(i, None)

    def _release(self, everything: bool) -> int:
        released = 0
        for item in self.items.values():
            if item.state == "inflight" and (everything or item.lease_until <= self.now):
                item.state, item.lease_until = "pending", None
                if item.kind == "reading":
                    item.due_at = item.enqueued_at if item.attempts == 0 else self.now
                released += 1
        return released

    @rule(seconds=st.sampled_from([1.0, 10.0, 31.0]))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds

    @rule()
    def release_expired(self) -> None:
        expected = self._release(everything=False)
        assert self.ob.release_expired() == expected

    @rule()
    def restart(self) -> None:
        # The daemon's start: a new connection, every lease released.
        self.ob.close()
        self.ob = Outbox(self.dir, clock=lambda: self.now)
        expected = self._release(everything=True)
        assert self.ob.release_all_inflight() == expected

    # -- invariants --

    @invariant()
    def counts_match(self) -> None:
        c = self.ob.counts()
        for kind in ("reading", "file"):
            for state in ("pending", "inflight", "failed"):
                n = len(self.live(kind, state))
                assert getattr(c, f"{kind}s_{state}") == n, (kind, state)
        for state in ("pending", "inflight", "failed"):
            nbytes = sum(it.nbytes for it in self.items.values() if it.state == state)
            assert getattr(c, f"{state}_bytes") == nbytes, state
        undelivered = [it.enqueued_at for it in self.items.values() if it.state != "failed"]
        expected_age = self.now - min(undelivered) if undelivered else None
        assert c.oldest_pending_age_s == expected_age

    @invariant()
    def next_due_matches(self) -> None:
        due = [it.due_at for it in self.items.values() if it.state == "pending"]
        assert self.ob.next_due_at() == (min(due) if due else None)

    @invariant()
    def files_and_dead_letters_match(self) -> None:
        assert self.ob.live_file_rows() == [
            LiveFile(i, self.items[i].path, self.items[i].size, self.items[i].mtime_ns, s)
            for i in self.live("file")
            for s in [self.items[i].state]
        ]
        assert sorted((f.id, f.attempts, f.reason) for f in self.ob.list_failed()) == [
            (i, self.items[i].attempts, self.items[i].reason)
            for i in sorted(self.live("reading", "failed") + self.live("file", "failed"))
        ]
        assert self.ob.synced_stats() == self.synced


OutboxMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_outbox_model = OutboxMachine.TestCase
