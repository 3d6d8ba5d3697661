"""ENOSPC: the outbox's disk full while readings and files are queued, and the receiver's
store full while uploads come in. Each: a clear error, nothing half-written, and
recovery once space returns. On small tmpfs mounts (skipped where mounting fails).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from daemon_support import (
    ROOT,
    SYNCD,
    Proc,
    free_port,
    sha256,
    status,
    wait_for,
    wait_listening,
    write_config,
)
from recording_server import RecordingServer

from syncd.outbox import Outbox
from syncd.sink_store_items import iter_store

MiB = 1024 * 1024


@contextlib.contextmanager
def tmpfs(where: Path, size: str):
    where.mkdir(parents=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a {size} tmpfs here: {result.stderr.strip() or result.returncode}"
        )
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(folder: Path, leave: int = 0) -> Path:
    """Take every free byte of ``folder``'s file system but ``leave``; returns the filler."""
    filler = folder / "filler"
    st = os.statvfs(folder)
    with open(filler, "wb", buffering=0) as f:
        if leave:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
            return filler
        for size in (65536, 4096, 1):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * size):
                    pass
    return filler


def said(log: Path, text: str, tmp: Path) -> bool:
    """Whether the log says ``text`` outside the test's own paths (which say "full")."""
    return text in log.read_text().replace(str(tmp), "<tmp>")


def quick_check(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("PRAGMA quick_check").fetchone()[0]
    finally:
        conn.close()


def capture(config: Path, lines: list[bytes], batch: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            *SYNCD,
            "capture",
            "tabular",
            "-c",
            str(config),
            "--component-type",
            "rdk:component:sensor",
            "--component-name",
            "imu",
            "--method",
            "Readings",
            "--batch",
            str(batch),
        ],
        input=b"".join(lines),
        capture_output=True,
        cwd=ROOT,
        timeout=120,
    )


def test_capture_into_a_full_outbox_fails_clearly_and_whole(tmp_path):
    with tmpfs(tmp_path / "small", "1m") as small:
        state = small / "state"
        config = write_config(tmp_path, 1, state=state)
        with Outbox(state):
            pass
        filler = fill(small)
        lines = [b'{"i": %d, "pad": "%s"}\n' % (i, b"x" * 200) for i in range(300)]
        result = capture(config, lines, batch=10)
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert str(state) in line and "no space left" in line.replace(str(tmp_path), ""), line
        filler.unlink()  # (even reading the outbox needs a little room: its -shm file)
        assert quick_check(state / "outbox.db") == "ok"
        with Outbox(state) as ob:
            assert ob.counts().readings_pending == 0

        # nearly full: some batches fit, then the disk fills in the middle of the run
        filler = fill(small, leave=96 * 1024)
        result = capture(config, lines * 10, batch=10)
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert "Traceback" not in err
        (line,) = err.strip().splitlines()
        assert "no space left" in line.replace(str(tmp_path), ""), line
        filler.unlink()
        assert quick_check(state / "outbox.db") == "ok"
        with Outbox(state) as ob:
            held = ob.counts().readings_pending
        assert 0 < held < 3000 and held % 10 == 0  # whole batches only

        result = capture(config, lines, batch=10)
        assert result.returncode == 0, result.stderr.decode()
        with Outbox(state) as ob:
            assert ob.counts().readings_pending == held + 300
        assert quick_check(state / "outbox.db") == "ok"


async def test_daemon_with_a_full_outbox_disk_waits_and_recovers(tmp_path):
    """The disk holding the outbox fills while uploads are in flight and files keep
    coming: outcomes it cannot record and files it cannot queue wait; it says so, stays
    up, and once space returns everything goes (an upload whose ack could not be written
    goes again). It used to die of the first refused ack."""
    gate = asyncio.Event()
    async with RecordingServer() as server:

        async def on_message(upload, index, stream) -> None:
            await gate.wait()

        server.on_message = on_message
        # big enough for the outbox's own WAL (it checkpoints at 4 MB) once space is back
        with tmpfs(tmp_path / "small", "16m") as small:
            state = small / "state"
            config = write_config(tmp_path, server.port, state=state, file_quiet_period_s=0)
            log = tmp_path / "daemon.log"
            files: dict[str, str] = {}

            def add_files(prefix: str, count: int) -> None:
                for i in range(count):
                    path = tmp_path / "capture" / prefix / f"some-longer-file-name-{i:05d}.txt"
                    path.parent.mkdir(exist_ok=True)
                    path.write_bytes(os.urandom(100))
                    files[str(path)] = sha256(path.read_bytes())

            add_files("early", 50)
            daemon = Proc(["run", "-c", str(config)], log)
            try:
                # uploads claimed and held by the receiver
                await wait_for(lambda: server.calls_started >= 4, 30, "uploads in flight")
                # an empty WAL file, so that every write needs new blocks; then none left
                conn = sqlite3.connect(state / "outbox.db")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
                filler = fill(small)
                gate.set()
                add_files("late", 300)  # rows enough to outgrow any WAL space left
                await wait_for(
                    lambda: (
                        said(log, "cannot record the upload", tmp_path)
                        and said(log, "cannot queue files", tmp_path)
                    ),
                    30,
                    "the outbox's disk-full messages",
                )
                assert said(log, "no space left", tmp_path)
                await asyncio.sleep(1)
                assert daemon.alive(), log.read_text()[-3000:]
                filler.unlink()
                await wait_for(
                    lambda: not any(Path(p).exists() for p in files), 60, "the files to go"
                )
                assert daemon.alive()
            finally:
                assert daemon.terminate() == 0, log.read_text()[-3000:]
            text = log.read_text()
            assert "Traceback" not in text, text[-3000:]
            assert "internal error" not in text
            assert quick_check(state / "outbox.db") == "ok"
    uploaded = {u.metadata.file_name: sha256(u.payload) for u in server.uploads}
    for path, digest in files.items():
        assert uploaded.get(path) == digest


def test_receiver_store_full_then_space_returns(tmp_path):
    """The receiver's disk fills: uploads are refused (RESOURCE_EXHAUSTED), retried, and
    go once there is room; the store never holds a partial file."""
    port = free_port()
    work = tmp_path / "robot"
    with tmpfs(tmp_path / "small", "6m") as small:
        store = small / "store"
        sink = Proc(
            [
                "sink",
                "--listen",
                f"127.0.0.1:{port}",
                "--store",
                str(store),
                "--min-free-bytes",
                "0",
            ],
            tmp_path / "sink.log",
        )
        daemon = None
        try:
            wait_listening(port, sink.proc)
            ballast = small / "ballast"
            ballast.write_bytes(b"\0" * (4 * MiB))
            config = write_config(work, port, file_quiet_period_s=0, concurrency=2, retry_max_s=0.3)
            sources = {}
            for i in range(3):
                path = work / "capture" / f"big{i}.bin"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(os.urandom(int(1.5 * MiB)))
                sources[str(path)] = sha256(path.read_bytes())
            daemon = Proc(["run", "-c", str(config)], work / "daemon.log")
            sink_log = tmp_path / "sink.log"
            asyncio.run(
                wait_for(
                    lambda: "store is full" in sink_log.read_text(),
                    30,
                    "the sink to refuse an upload",
                )
            )
            # what is in the store now is whole
            for item in iter_store(store):
                assert sha256(item.read_bytes()) == sources[item.upload_metadata.file_name]
            ballast.unlink()
            asyncio.run(wait_for(lambda: drained(config), 60, "the outbox to drain"))
        finally:
            if daemon is not None:
                assert daemon.terminate() == 0
            sink.terminate()
        stored = [(i.upload_metadata.file_name, sha256(i.read_bytes())) for i in iter_store(store)]
        assert sorted(stored) == sorted(sources.items())
        assert not list(store.rglob(".tmp-*"))


def drained(config: Path) -> bool:
    counts = status(config)
    return counts["pending"] + counts["inflight"] == 0
