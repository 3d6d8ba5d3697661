"""Log output as an operator sees it: journald priority prefixes under systemd, timestamps
on a terminal, JSON lines; repeated lines rate-limited; the periodic summary line."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import subprocess
import sys

from daemon_proc import DaemonProcess, old_file, write_config
from recording_server import RecordingServer

from syncd.logs import RepeatFilter

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d")


def run_once_with_stderr_file(config, tmp_path, journal_stream=None) -> list[str]:
    """`syncd run --once` with stderr in a file, as systemd connects it to the journal."""
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(err, "wb") as f:
        if journal_stream is not None:
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = journal_stream.format(dev=st.st_dev, ino=st.st_ino)
        result = subprocess.run(
            [sys.executable, "-m", "syncd", "run", "-c", str(config), "--once"],
            stderr=f,
            stdout=subprocess.DEVNULL,
            env=env,
            timeout=60,
        )
    assert result.returncode == 0, err.read_text()
    return err.read_text().splitlines()


def test_under_journald_lines_carry_priorities_and_no_timestamps(tmp_path):
    config = write_config(tmp_path, None)
    old_file(tmp_path / "capture" / "a.txt", b"a\n")
    lines = run_once_with_stderr_file(config, tmp_path, "{dev}:{ino}")
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert not any(TIMESTAMP.search(line) for line in lines)
    assert any(line.startswith("<6>syncd ") and "starting" in line for line in lines)
    assert any(line.startswith("<6>all synced: 1 files") for line in lines)


def test_elsewhere_lines_carry_timestamps_and_levels(tmp_path):
    config = write_config(tmp_path, None)
    # JOURNAL_STREAM inherited from a parent but not naming our stderr: not the journal.
    lines = run_once_with_stderr_file(config, tmp_path, "1:1")
    assert lines and all(TIMESTAMP.match(line) for line in lines), lines
    assert any(" INFO " in line and "starting" in line for line in lines)
    assert not any(line.startswith("<") for line in lines)


def test_json_lines(tmp_path):
    config = write_config(tmp_path, None, log={"format": "json"})
    old_file(tmp_path / "capture" / "a.txt", b"a\n")
    lines = run_once_with_stderr_file(config, tmp_path, "{dev}:{ino}")  # json wins
    entries = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(entries[0])
    assert any(e["message"].startswith("all synced: 1 files") for e in entries)
    assert {e["level"] for e in entries} <= {"debug", "info", "warning", "error"}


def test_repeat_filter_holds_back_identical_lines_and_counts_them():
    now = [0.0]
    flt = RepeatFilter(window_s=60, clock=lambda: now[0])

    def record(msg, level=logging.WARNING, key=None):
        rec = logging.LogRecord("syncd.x", level, __file__, 1, msg, (), None)
        if key is not None:
            rec.repeat_key = key
        return rec

    assert flt.filter(record("disk full"))
    assert not any(flt.filter(record("disk full")) for _ in range(5))
    assert flt.filter(record("another problem"))  # a different line passes
    assert flt.filter(record("info lines pass", logging.INFO))
    assert flt.filter(record("info lines pass", logging.INFO))
    now[0] = 61
    again = record("disk full")
    assert flt.filter(again) and again.getMessage() == "disk full (and 5 more like it)"
    # Lines about different items with one cause are grouped by their repeat_key.
    assert flt.filter(record("upload of a failed", logging.INFO, key="retry: X"))
    assert not flt.filter(record("upload of b failed", logging.INFO, key="retry: X"))
    assert flt.filter(record("upload of c failed", logging.INFO, key="retry: Y"))


async def test_many_items_with_one_problem_log_one_line_each(tmp_path):
    """Ten uploads refused for the same reason and an outage seen by all of them give
    one line each, not one per item."""
    async with RecordingServer() as server:
        server.unavailable = 5
        server.reject = lambda upload: "quota exceeded for this part"
        config = write_config(tmp_path, server.port)
        for i in range(10):
            old_file(tmp_path / "capture" / f"f{i}.txt", b"data\n")
        async with DaemonProcess(config) as daemon:
            await daemon.start("--once", "--timeout", "30")
            assert await daemon.wait(timeout=40) == 0
    log = daemon.log
    assert server.calls == 15
    assert log.count("dead letter:") == 1, log
    assert "quota exceeded for this part" in log
    assert log.count("connectivity lost") == 1 and log.count("connectivity back") == 1
    assert "10 failed" in log


async def test_summary_line_only_when_something_happened(tmp_path):
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, log={"summary_interval_s": 0.3})
        async with DaemonProcess(config) as daemon:
            await daemon.start()
            await daemon.wait_log("watching")
            await asyncio.sleep(1.0)
            assert "summary:" not in daemon.log  # idle and all synced: quiet
            old_file(tmp_path / "capture" / "a.txt", b"x" * 1500)
            log = await daemon.wait_log("summary: synced 1 items (1.5 KiB)")
            await asyncio.sleep(1.0)
            assert await daemon.stop() == 0
    summaries = [line for line in daemon.log.splitlines() if "summary:" in line]
    assert len(summaries) == 1, log
    assert "nothing pending" in summaries[0] and "0 dead letters" in summaries[0]
