"""A damaged outbox.db at start: detected, set aside, rebuilt, and the daemon runs on.

Damage of several kinds is done to a real outbox holding readings and file rows: the file
overwritten with garbage, its header smashed, pages in the middle overwritten, the file cut
short. Then `syncd run --once`: it must log a loud error, move the database aside as
``outbox.db.corrupt-<time>``, upload the files still on disk (the start scan finds them
again), upload the readings it could salvage, and say how many readings were lost.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import subprocess

import pytest
from capture_gen import sample_tabular, tabular_header, write_capture
from daemon_support import ROOT, SYNCD, write_config
from recording_server import RecordingServer

from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.errors import OutboxError
from syncd.outbox import FileItem, Outbox
from syncd.outbox_repair import damage_of, repair_outbox

READINGS = 400


def fill_outbox(tmp_path) -> tuple[set[str], list]:
    """An outbox with READINGS tabular readings (ids r0..), two binary ones, and rows for
    two capture files that are on disk; returns the reading ids and the file paths."""
    capture = tmp_path / "capture"
    files = [
        write_capture(capture, tabular_header(name=f"imu{i}"), sample_tabular(5)) for i in range(2)
    ]
    ids = {f"r{i}" for i in range(READINGS)}
    with Outbox(tmp_path / "state") as ob, ob.batch():
        for i in range(READINGS):
            # padding spreads the readings over many pages
            ob.add_tabular(
                "rdk:component:sensor", "api", "Readings", {"id": f"r{i}", "pad": "x" * 300}
            )
        ob.add_binary(
            "rdk:component:camera", "cam", "ReadImage", b"\xff" * 5000, file_extension=".jpeg"
        )
    with Outbox(tmp_path / "state") as ob:
        st = [os.stat(f) for f in files]
        ob.enqueue_files(
            [
                FileItem(str(f), "capture", s.st_size, s.st_mtime_ns)
                for f, s in zip(files, st, strict=True)
            ]
        )
        ob.checkpoint()
    return ids, files


def damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    page = 4096
    rng = random.Random(11)
    if how == "garbage":
        data = bytearray(rng.randbytes(len(data)))
    elif how == "header":
        data[:100] = rng.randbytes(100)
    elif how == "pages":
        # overwrite two pages in the middle: table b-tree pages of the readings
        for n in (len(data) // page // 2, len(data) // page // 2 + 3):
            data[n * page : (n + 1) * page] = rng.randbytes(page)
    elif how == "truncated":
        data = data[: len(data) * 6 // 10]
    path.write_bytes(bytes(data))
    for suffix in ("-wal", "-shm"):
        (path.parent / (path.name + suffix)).unlink(missing_ok=True)


def uploaded_reading_ids(server: RecordingServer) -> list[str]:
    return [
        dict(r.struct)["id"]
        for u in server.uploads
        if u.metadata.component_name == "api"
        for r in u.readings
    ]


@pytest.mark.parametrize("how", ["garbage", "header", "pages", "truncated"])
async def test_damaged_outbox_is_set_aside_and_the_daemon_runs_on(tmp_path, how, caplog):
    ids, files = fill_outbox(tmp_path)
    db = tmp_path / "state" / "outbox.db"
    damage(db, how)
    assert damage_of(db) is not None
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, file_quiet_period_s=0)
        with caplog.at_level(logging.INFO):
            assert await run_daemon(load_config(config), once=True, timeout=60) == 0
    moved = list((tmp_path / "state").glob("outbox.db.corrupt-*"))
    assert [p.name for p in moved if not p.name.endswith(("-wal", "-shm"))], moved
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("is damaged" in e and "moved it to" in e for e in errors), errors
    # the files were found again and uploaded, then deleted
    names = {u.metadata.component_name for u in server.uploads}
    assert {"imu0", "imu1"} <= names
    assert not any(f.exists() for f in files)
    # readings: every one salvaged went up, once; the log says how many were lost
    got = uploaded_reading_ids(server)
    assert len(got) == len(set(got)) and set(got) <= ids
    report = " ".join(errors + [r.getMessage() for r in caplog.records])
    if how in ("pages", "truncated"):
        # readable rows before and after the damage are salvaged
        assert READINGS // 3 < len(got) < READINGS, len(got)
    lost = (
        READINGS
        + 1
        - len(got)
        - sum(1 for u in server.uploads if u.metadata.component_name == "cam")
    )
    if lost:
        assert "lost" in report
    # the fresh outbox is healthy and drained; a salvaged row whose payload was
    # half-overwritten can only be a dead letter
    assert damage_of(db) is None
    with Outbox(tmp_path / "state") as ob:
        counts = ob.counts()
        failed = ob.list_failed()
    assert counts.pending + counts.inflight == 0
    assert all("not a JSON object" in f.reason for f in failed), failed


def test_salvage_counts_what_the_damaged_outbox_held(tmp_path):
    ids, _ = fill_outbox(tmp_path)
    db = tmp_path / "state" / "outbox.db"
    damage(db, "pages")
    repair = repair_outbox(tmp_path / "state")
    assert repair is not None
    assert repair.moved_to.exists() and not db.with_name("outbox.db-wal").exists()
    assert repair.known == READINGS + 1
    # two pages of ~12 readings each are gone; everything around them is read
    assert READINGS * 0.9 < repair.salvaged < READINGS + 1
    with Outbox(tmp_path / "state") as ob:
        claimed = ob.claim_readings(10_000, 1 << 30, 60)
    payloads = [json.loads(c.payload)["id"] for c in claimed if c.kind == "tabular"]
    assert len(payloads) == len(set(payloads)) and set(payloads) <= ids


def test_healthy_busy_or_newer_outboxes_are_left_alone(tmp_path):
    state = tmp_path / "state"
    assert repair_outbox(state) is None  # none yet
    with Outbox(state) as ob:
        ob.add_tabular("t", "n", "m", {"a": 1})
    assert repair_outbox(state) is None
    conn = sqlite3.connect(state / "outbox.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    assert repair_outbox(state) is None  # a newer schema is not damage
    with pytest.raises(OutboxError, match="newer than this syncd"):
        Outbox(state)
    assert list(state.glob("*.corrupt-*")) == []


def test_cli_run_with_a_garbage_outbox_logs_and_goes_on(tmp_path):
    """The whole command: a damaged outbox costs one loud error line, not the daemon."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.db").write_bytes(random.Random(2).randbytes(64 * 1024))
    (tmp_path / "capture").mkdir()
    config = write_config(tmp_path, 1, cloud={"address": "embedded"})
    write_capture(tmp_path / "capture", tabular_header(), sample_tabular(3))
    result = subprocess.run(
        [*SYNCD, "run", "-c", str(config), "--once", "--timeout", "60"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ERROR" in result.stderr and "is damaged" in result.stderr
    assert "Traceback" not in result.stderr
    assert "all synced: 1 files" in result.stderr


async def test_a_reading_damaged_in_place_is_a_dead_letter_not_a_blocked_stream(tmp_path):
    """SQLite checksums no content: a flipped byte in a stored payload passes quick_check
    (and a salvaged row can be half-readable). That reading can never go; it becomes a
    dead letter, and the readings batched with it go on. It used to fail the whole batch
    as an "internal error" again and again, holding back its stream for ever."""
    state = tmp_path / "state"
    with Outbox(state) as ob:
        ids = [
            ob.add_tabular("rdk:component:sensor", "api", "Readings", {"id": f"r{i}"})
            for i in range(5)
        ]
    conn = sqlite3.connect(state / "outbox.db")
    conn.execute("UPDATE readings SET payload = ? WHERE id = ?", (b'{"id": "r2"', ids[2]))
    conn.commit()
    conn.close()
    assert damage_of(state / "outbox.db") is None  # nothing SQLite can see
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port)
        assert await run_daemon(load_config(config), once=True, timeout=30) == 0
    assert sorted(uploaded_reading_ids(server)) == ["r0", "r1", "r3", "r4"]
    with Outbox(state) as ob:
        (dead,) = ob.list_failed()
    assert dead.id == ids[2] and "not a JSON object" in dead.reason


def test_an_outbox_that_cannot_be_opened_is_an_error_not_damage(tmp_path):
    """Not every failure to open is damage: that is reported as before, one line, and
    nothing is moved aside. (The start check used to let SQLite's error escape as a
    traceback.)"""
    state = tmp_path / "state"
    (state / "outbox.db").mkdir(parents=True)  # opening it fails, and it is not damaged
    (tmp_path / "capture").mkdir()
    config = write_config(tmp_path, 1, cloud={"address": "embedded"})
    result = subprocess.run(
        [*SYNCD, "run", "-c", str(config), "--once", "--timeout", "10"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot open" in result.stderr.strip().splitlines()[-1]
    assert list(state.glob("*.corrupt-*")) == []
