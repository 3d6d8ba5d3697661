"""Link controls: the token bucket and the throttle a reload reconfigures, sync windows in
local time, the pause switch, and the bandwidth cap end to end."""

from __future__ import annotations

import os
import time
from datetime import datetime

import pytest
from daemon_proc import old_file, write_config
from recording_server import RecordingServer

from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.linkctl import (
    Throttle,
    TokenBucket,
    in_windows,
    is_paused,
    pause_note,
    seconds_until_open,
    set_paused,
)


def test_token_bucket_makes_callers_wait_off_their_debt():
    now = [0.0]
    bucket = TokenBucket(1000, burst=100, clock=lambda: now[0])
    assert bucket.debt_after(100) == 0  # the burst
    assert bucket.debt_after(500) == pytest.approx(0.5)
    now[0] = 0.5
    assert bucket.debt_after(0) == 0  # paid off
    now[0] = 100.0
    assert bucket.debt_after(100) == 0 and bucket.debt_after(1) > 0  # burst is a ceiling


def test_throttle_is_reconfigured_live():
    throttle = Throttle(0)
    assert throttle.bucket is None
    throttle.configure(1000)
    bucket = throttle.bucket
    assert bucket is not None and bucket.rate == 1000
    throttle.configure(1000)
    assert throttle.bucket is bucket  # unchanged cap: the same bucket, debt and all
    throttle.configure(0)
    assert throttle.bucket is None


def at(hhmm: str) -> datetime:
    return datetime(2026, 5, 1, int(hhmm[:2]), int(hhmm[3:]))


@pytest.mark.parametrize(
    ("now", "inside"),
    [("23:00", True), ("05:59", True), ("06:00", False), ("12:00", False), ("22:00", True)],
)
def test_a_window_may_wrap_past_midnight(now, inside):
    assert in_windows(("22:00-06:00",), at(now)) is inside


def test_windows_and_when_the_next_opens():
    windows = ("01:00-02:00", "13:30-14:00")
    assert in_windows((), at("12:00"))  # no windows: always
    assert in_windows(("00:00-00:00",), at("12:00"))  # the whole day
    assert seconds_until_open(windows, at("12:00")) == 90 * 60
    assert seconds_until_open(windows, at("13:45")) == 0
    assert seconds_until_open(windows, at("14:00")) == 11 * 3600  # tomorrow 01:00


def test_pause_switch_lives_in_the_state_dir(tmp_path):
    assert not is_paused(tmp_path) and pause_note(tmp_path) is None
    set_paused(tmp_path, True, "metered link")
    assert is_paused(tmp_path) and pause_note(tmp_path).endswith(" metered link")
    set_paused(tmp_path, False)
    set_paused(tmp_path, False)  # idempotent
    assert not is_paused(tmp_path)


async def test_bandwidth_cap_holds_an_upload_to_its_rate(tmp_path):
    rate, size = 400_000, 1_200_000
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, sync={"max_bytes_per_s": rate})
        old_file(tmp_path / "capture" / "big.bin", os.urandom(size))
        started = time.monotonic()
        assert await run_daemon(load_config(config), once=True, timeout=30) == 0
        elapsed = time.monotonic() - started
    assert len(server.uploads[0].payload) == size
    # 3 s at the cap, less the bucket's initial burst (a tenth of a second's worth).
    assert 2.6 < elapsed < 5.0
