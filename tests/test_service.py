"""`syncd run` as a service: sd_notify, SIGTERM with uploads in flight, SIGHUP reload,
`syncd pause`/`resume`, sync windows, and the systemd unit. Real daemon subprocesses
against a real server on loopback."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from daemon_proc import (
    DaemonProcess,
    NotifySocket,
    old_file,
    syncd,
    syncd_status,
    write_config,
)
from recording_server import RecordingServer

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "syncd.service"


async def wait_for(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


def names(server: RecordingServer) -> list[str]:
    return sorted(Path(u.metadata.file_name).name for u in server.uploads)


async def test_sd_notify_ready_status_watchdog_stopping(tmp_path):
    notify = NotifySocket(tmp_path / "n.sock")
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port)
        for i in range(2):
            old_file(tmp_path / "capture" / f"early{i}.txt", b"x" * 1000)
        env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "600000"}
        # Paused from the start, so the pending count at READY is known.
        assert (await syncd("pause", "-c", str(config)))[0] == 0
        async with DaemonProcess(config, env=env) as daemon:
            await daemon.start()
            ready = await notify.expect("READY=1")
            assert "STATUS=2 pending (2.0 KiB)" in ready and "paused" in ready
            for _ in range(3):  # every WATCHDOG_USEC/2 = 0.3 s, from the event loop
                await notify.expect("WATCHDOG=1", timeout=2)
            assert (await syncd("resume", "-c", str(config)))[0] == 0
            status = await notify.expect("STATUS=", timeout=3)  # refreshed on resume
            assert "paused" not in status
            await wait_for(lambda: len(server.uploads) == 2)
            daemon.signal(signal.SIGTERM)
            await notify.expect("STOPPING=1", timeout=5)
            assert await daemon.stop() == 0
    notify.close()
    watchdogs = sum("WATCHDOG=1" in m for m in notify.messages)
    assert watchdogs >= 3


async def test_sigterm_lets_a_slow_upload_finish_within_the_grace(tmp_path):
    async with RecordingServer() as server:
        server.delay_s = 1.5  # the server takes its time to acknowledge
        config = write_config(tmp_path, server.port)
        source = old_file(tmp_path / "capture" / "slow.bin", os.urandom(200_000))
        async with DaemonProcess(config) as daemon:
            await daemon.start()
            await wait_for(lambda: server.calls == 1)  # in flight now
            assert await daemon.stop() == 0
    assert names(server) == ["slow.bin"]
    assert not source.exists()
    assert "stopped; 0 items pending" in daemon.log


async def test_sigterm_leaves_a_long_upload_for_the_next_start(tmp_path):
    payload = os.urandom(8_000_000)
    async with RecordingServer() as server:
        # 1 MB/s: the 8 MB upload outlasts the 5 s grace.
        config = write_config(tmp_path, server.port, sync={"max_bytes_per_s": 1_000_000})
        source = old_file(tmp_path / "capture" / "big.bin", payload)
        async with DaemonProcess(config) as daemon:
            await daemon.start()
            await daemon.wait_log("watching")
            async with asyncio.timeout(10):
                while (await syncd_status(config))["inflight"] != 1:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(0.5)
            assert await daemon.stop() == 0
        assert "left for the next start" in daemon.log
        assert server.uploads == [] and source.exists()
        # The next start sends it whole, once.
        config = write_config(tmp_path, server.port)
        async with DaemonProcess(config) as again:
            await again.start("--once", "--timeout", "20")
            assert await again.wait(timeout=30) == 0
    assert [u.payload == payload for u in server.uploads] == [True]
    assert not source.exists()


async def test_pause_holds_uploads_while_capture_goes_on(tmp_path):
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port)
        async with DaemonProcess(config) as daemon:
            await daemon.start()
            await daemon.wait_log("watching")
            code, out = await syncd("pause", "-c", str(config), "field", "test")
            assert code == 0 and "paused" in out
            await daemon.wait_log("paused by `syncd pause` (field test)")
            for i in range(3):
                (tmp_path / "capture" / f"while-paused-{i}.txt").write_text(f"{i}\n")
            async with asyncio.timeout(10):  # queued, not uploaded
                while (await syncd_status(config))["pending"] != 3:
                    await asyncio.sleep(0.1)
            status = await syncd_status(config)
            assert status["paused"] is True
            code, text = await syncd("status", "-c", str(config))
            assert "uploads:  paused since" in text and "(field test)" in text
            await asyncio.sleep(1.0)
            assert server.uploads == []
            assert (await syncd("resume", "-c", str(config)))[0] == 0
            await wait_for(lambda: len(server.uploads) == 3)
            await daemon.wait_log("resumed: uploads go on")
            assert await daemon.stop() == 0
    assert names(server) == [f"while-paused-{i}.txt" for i in range(3)]
    log = daemon.log
    assert log.count("paused by `syncd pause`") == 1 and log.count("resumed:") == 1
    assert (await syncd_status(config))["paused"] is False


def closed_window() -> str:
    """A sync window that opens in two hours (so it is closed now, in local time)."""
    start = datetime.now() + timedelta(hours=2)
    end = start + timedelta(hours=1)
    return f"{start:%H:%M}-{end:%H:%M}"


async def test_sighup_reloads_what_can_change_and_keeps_a_broken_config_out(tmp_path):
    async with RecordingServer() as server:
        window = closed_window()
        sections = {"sync": {"windows": [window], "tags": ["before"]}}
        config = write_config(tmp_path, server.port, **sections)
        old_file(tmp_path / "capture" / "one.txt", b"one\n")
        async with DaemonProcess(config) as daemon:
            await daemon.start()
            await daemon.wait_log(f"outside the sync windows ({window})")
            await asyncio.sleep(0.5)
            assert server.uploads == []  # held back by the window
            # Open the window, change the tags and the log level live; part_id and
            # cloud.call_timeout_s need a restart.
            write_config(
                tmp_path,
                server.port,
                sync={"tags": ["after"]},
                log={"level": "debug"},
                top={"part_id": "another-part"},
                cloud={"call_timeout_s": 5},
            )
            daemon.signal(signal.SIGHUP)
            await daemon.wait_log("applied sync.tags, sync.windows, log.level")
            await daemon.wait_log("part_id, cloud.call_timeout_s changed; takes effect at the next")
            await wait_for(lambda: len(server.uploads) == 1)
            (upload,) = server.uploads
            assert list(upload.metadata.tags) == ["after"]
            assert upload.metadata.part_id == "part-ops"  # not switched while running
            await daemon.wait_log("uploaded ")  # a debug line: the new level is live
            # A broken config: every problem on its own line, the running one kept.
            write_config(
                tmp_path, server.port, sync={"tags": ["after"], "concurrency": 0, "quiet": 1}
            )
            daemon.signal(signal.SIGHUP)
            log = await daemon.wait_log("keeping the running configuration")
            problems = [
                line for line in log.splitlines() if "reload: " in line and ": sync." in line
            ]
            assert len(problems) == 2, log
            assert any("sync.concurrency" in p for p in problems)
            assert any("sync.quiet" in p and "unknown key" in p for p in problems)
            (tmp_path / "capture" / "two.txt").write_text("two\n")
            await wait_for(lambda: len(server.uploads) == 2)
            assert list(server.uploads[1].metadata.tags) == ["after"]
            assert await daemon.stop() == 0


def _mdwe_supported() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return sys.platform == "linux" and libc.prctl(66, 0, 0, 0, 0) >= 0  # PR_GET_MDWE


MDWE_EXEC = """
import ctypes, os, sys
if ctypes.CDLL(None).prctl(65, 1, 0, 0, 0) != 0:  # PR_SET_MDWE, REFUSE_EXEC_GAIN
    sys.exit("prctl failed")
os.execv(sys.executable, [sys.executable, "-m", "syncd", *sys.argv[1:]])
"""


@pytest.mark.skipif(not _mdwe_supported(), reason="the kernel has no PR_SET_MDWE")
def test_runs_under_memory_deny_write_execute(tmp_path):
    """The unit sets MemoryDenyWriteExecute=yes: syncd (CPython, protobuf, grpclib,
    watchdog's inotify through ctypes, SQLite) must work without W+X memory. The kernel's
    PR_SET_MDWE applies the same rule to a process and everything it executes."""
    config = write_config(tmp_path, None)
    old_file(tmp_path / "capture" / "a.txt", b"under mdwe\n")
    result = subprocess.run(
        [sys.executable, "-c", MDWE_EXEC, "run", "-c", str(config), "--once", "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "all synced: 1 files" in result.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_passes_systemd_analyze_verify(tmp_path):
    text = UNIT.read_text()
    for key in ("Type=notify", "WatchdogSec=", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert key in text
    # verify insists that ExecStart= exists: point it at this checkout's syncd.
    unit = tmp_path / "syncd.service"
    unit.write_text(
        text.replace("/usr/local/bin/syncd", str(Path(sys.executable).parent / "syncd"))
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "syncd.service" not in result.stderr, result.stderr


def test_status_shows_the_sync_windows(tmp_path):
    window = closed_window()
    config = write_config(tmp_path, None, sync={"windows": [window]})
    result = subprocess.run(
        [sys.executable, "-m", "syncd", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert f"windows:  {window} (closed now)" in result.stdout
    assert (
        json.loads(
            subprocess.run(
                [sys.executable, "-m", "syncd", "status", "-c", str(config), "--json"],
                capture_output=True,
                check=True,
            ).stdout
        )["paused"]
        is False
    )


class PeakServer(RecordingServer):
    """Records how many uploads it held at once."""

    def __init__(self) -> None:
        super().__init__()
        self.active = self.peak = 0

    async def _admit(self, stream, upload) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            await super()._admit(stream, upload)
        finally:
            self.active -= 1


async def test_sighup_changes_concurrency_both_ways(tmp_path, caplog):
    """In process, so the server sees the daemon's uploads as they overlap."""
    from syncd.config import load_config
    from syncd.daemon import run_daemon
    from syncd.linkctl import set_paused

    async def reload(concurrency: int, times: int) -> None:
        write_config(tmp_path, server.port, sync={"concurrency": concurrency})
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: caplog.text.count("applied sync.concurrency") == times)

    async def batch(prefix: str, n: int) -> None:
        before = len(server.uploads)
        for i in range(n):
            old_file(tmp_path / "capture" / f"{prefix}{i}.txt", b"x")
        set_paused(cfg.state_dir, False)
        await wait_for(lambda: len(server.uploads) == before + n)

    caplog.set_level("INFO", logger="syncd")
    async with PeakServer() as server:
        server.delay_s = 0.3
        cfg = load_config(write_config(tmp_path, server.port, sync={"concurrency": 1}))
        set_paused(cfg.state_dir, True)
        run = asyncio.create_task(run_daemon(cfg))
        try:
            await wait_for(lambda: "watching" in caplog.text)
            await reload(4, 1)
            await batch("wide", 8)
            assert server.peak == 4
            set_paused(cfg.state_dir, True)
            await wait_for(lambda: caplog.text.count("paused by `syncd pause`") == 2)
            await reload(2, 2)
            server.peak = 0
            await batch("narrow", 6)
            assert server.peak == 2
        finally:
            os.kill(os.getpid(), signal.SIGTERM)
            assert await run == 0
