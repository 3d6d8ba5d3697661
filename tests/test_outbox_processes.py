"""The outbox across real processes: writers at once (a robot program and the daemon),
several processes creating a new outbox together, and kill -9 after acknowledged enqueues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from syncd.outbox import Outbox
from syncd.outbox_schema import LATEST_VERSION

ROOT = Path(__file__).resolve().parent.parent

# Waits for the go file, so the processes really start writing together.
PRELUDE = """
import json, os, sys, time
from syncd.outbox import Outbox, Reading
state, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
    time.sleep(0.001)
"""

WRITER = (
    PRELUDE
    + """
name, n = sys.argv[3], int(sys.argv[4])
ob = Outbox(state)
i = 0
while i < n:
    if i % 50 == 0:  # a batch now and then, single commits otherwise
        batch = [Reading.tabular("t", name, "m", {"i": i + k}) for k in range(20)]
        ids = ob.enqueue_readings(batch)
        i += len(batch)
    else:
        ids = [ob.add_tabular("t", name, "m", {"i": i})]
        i += 1
    print(" ".join(map(str, ids)), flush=True)
ob.close()
"""
)

DRAINER = (
    PRELUDE
    + """
total, deadline = int(sys.argv[3]), time.monotonic() + 60
ob = Outbox(state)
acked = []
while len(acked) < total and time.monotonic() < deadline:
    claimed = ob.claim_readings(37, 1 << 20, 30)
    if not claimed:
        time.sleep(0.002)
        continue
    ob.ack([r.id for r in claimed])
    acked += [r.id for r in claimed]
print(json.dumps(acked))
"""
)


def spawn(code: str, *args: object) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )


def test_two_writers_and_a_drainer_at_once_never_see_a_locked_database(tmp_path):
    state, go = tmp_path / "state", tmp_path / "go"
    per_writer = 300
    procs = [spawn(WRITER, state, go, name, per_writer) for name in ("robot", "other")]
    drainer = spawn(DRAINER, state, go, 2 * per_writer)
    go.touch()
    written: list[int] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert err == ""
        written += [int(rid) for rid in out.split()]
    out, err = drainer.communicate(timeout=120)
    assert drainer.returncode == 0, err
    assert err == ""
    acked = json.loads(out)
    assert len(written) == 2 * per_writer == len(set(written))
    assert sorted(acked) == sorted(written)  # each delivered once, none lost
    with Outbox(state) as ob:
        counts = ob.counts()
        assert (counts.pending, counts.inflight, counts.failed, counts.pending_bytes) == (
            0,
            0,
            0,
            0,
        )


def test_processes_creating_a_new_outbox_together(tmp_path):
    state, go = tmp_path / "state", tmp_path / "go"
    code = PRELUDE + "print(Outbox(state).add_tabular('t', 'n', 'm', {}))"
    procs = [spawn(code, state, go) for _ in range(6)]
    time.sleep(0.2)
    go.touch()
    ids = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        ids.append(int(out))
    assert sorted(ids) == list(range(1, 7))
    with Outbox(state) as ob:
        assert ob._db.execute("PRAGMA user_version").fetchone()[0] == LATEST_VERSION
        assert ob.counts().readings_pending == 6


KILLED = (
    PRELUDE
    + """
ob = Outbox(state)
seq = 0
while True:
    if seq % 7 == 0:
        batch = [Reading.tabular("t", "n", "m", {"seq": seq + k}) for k in range(5)]
        pairs = zip(ob.enqueue_readings(batch), range(seq, seq + 5))
        seq += 5
    else:
        pairs = [(ob.add_tabular("t", "n", "m", {"seq": seq}), seq)]
        seq += 1
    # Printed only once the call returned: each line is an acknowledged reading.
    sys.stdout.write("".join(f"{rid} {s}\\n" for rid, s in pairs))
    sys.stdout.flush()
"""
)


def test_every_acknowledged_reading_survives_kill_9(tmp_path):
    state, go = tmp_path / "state", tmp_path / "go"
    go.touch()
    proc = spawn(KILLED, state, go)
    acknowledged: dict[int, int] = {}
    assert proc.stdout is not None
    while len(acknowledged) < 400:
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        rid, seq = map(int, line.split())
        acknowledged[rid] = seq
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    for line in rest.splitlines():  # each write is a few whole lines: atomic on a pipe
        rid, seq = map(int, line.split())
        acknowledged[rid] = seq

    with Outbox(state) as ob:
        stored: dict[int, int] = {}
        while claimed := ob.claim_readings(1000, 1 << 30, 30):
            stored.update((r.id, r.tabular_data()["seq"]) for r in claimed)
        # Every acknowledged reading is there with its own payload; at most the one call
        # cut short by the kill may have committed without being acknowledged.
        assert {rid: stored.get(rid) for rid in acknowledged} == acknowledged
        assert len(stored) - len(acknowledged) <= 5
        (counted,) = ob._db.execute("SELECT readings FROM counters").fetchone()
        assert counted == len(stored)
