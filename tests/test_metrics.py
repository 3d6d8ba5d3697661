"""The Prometheus endpoint of a running daemon: upload counters and latency, failures by
status code, queue gauges, disk-guard deletions; private registries side by side."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import urllib.request
from pathlib import Path

from capture_gen import T0, sample_tabular, tabular_header, write_capture
from daemon_proc import old_file, write_config
from prometheus_client.parser import text_string_to_metric_families
from recording_server import RecordingServer
from test_disk_guard import FakeFilesystem

from syncd import daemon
from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.linkctl import set_paused
from syncd.metrics import Metrics


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def scrape(port: int) -> dict[tuple[str, tuple], float]:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    text = await asyncio.to_thread(get)
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_of_a_running_daemon(tmp_path, monkeypatch):
    monkeypatch.setattr(daemon, "STATUS_INTERVAL_S", 0.2)  # gauges refresh quickly
    port = free_port()
    async with RecordingServer() as server:
        server.reject = lambda u: "bad" if u.metadata.file_name.endswith("bad.txt") else None
        config = write_config(
            tmp_path,
            server.port,
            metrics={"listen": f"127.0.0.1:{port}"},
            disk={"check_interval_s": 0.2, "strategy": "oldest_first"},
        )
        capture = tmp_path / "capture"
        # Ten capture files of 40 readings; uploads wait (paused) while the disk guard
        # sees a 95 % full filesystem.
        files = [
            write_capture(capture, tabular_header(), sample_tabular(40), T0.replace(second=i))
            for i in range(10)
        ]
        for i, path in enumerate(files):
            os.utime(path, (1e9 + i, 1e9 + i))
        cfg = load_config(config)
        set_paused(cfg.state_dir, True)
        fs = FakeFilesystem(capture, total=0)
        fs.total = int(fs.used() / 0.95)
        run = asyncio.create_task(run_daemon(cfg, statvfs=fs))
        try:
            async with asyncio.timeout(10):
                while not (await asyncio.to_thread(_listening, port)):
                    await asyncio.sleep(0.05)
                while sum(p.exists() for p in files) == 10:
                    await asyncio.sleep(0.05)
            deleted = [p for p in files if not p.exists()]
            assert deleted == files[: len(deleted)]  # the oldest
            m = await scrape(port)
            assert m[("syncd_paused", ())] == 1
            assert m[("syncd_disk_guard_deleted_files_total", ())] == len(deleted)
            fs.total = 10**9  # plenty of room from now on
            old_file(capture / "good.txt", b"g" * 3000)
            old_file(capture / "bad.txt", b"b")
            set_paused(cfg.state_dir, False)
            left = 10 - len(deleted)
            async with asyncio.timeout(10):
                while len(server.uploads) < left + 1:
                    await asyncio.sleep(0.05)
                while (m := await scrape(port))[("syncd_queue_items", (("state", "failed"),))] < 1:
                    await asyncio.sleep(0.1)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # the daemon's own handler stops it
            assert await run == 0
    assert m[("syncd_uploaded_items_total", (("kind", "tabular"),))] == 40 * left
    assert m[("syncd_uploaded_items_total", (("kind", "file"),))] == 1
    assert m[("syncd_uploaded_bytes_total", (("kind", "file"),))] == 3000
    assert m[("syncd_upload_seconds_count", (("kind", "file"),))] == 1
    assert m[("syncd_upload_seconds_count", (("kind", "tabular"),))] == left
    assert m[("syncd_upload_failures_total", (("code", "INVALID_ARGUMENT"),))] == 1
    assert m[("syncd_queue_items", (("state", "pending"),))] == 0
    assert m[("syncd_oldest_pending_age_seconds", ())] == 0
    assert m[("syncd_paused", ())] == 0 and m[("syncd_connected", ())] == 1
    assert not _listening(port)  # closed with the daemon
    assert Path(cfg.state_dir, "paused").exists() is False


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_registries_are_private():
    one, two = Metrics(), Metrics()
    one.uploaded("file", 1, 10, 0.5)
    two.failed("UNAVAILABLE")
    assert one.registry.get_sample_value("syncd_uploaded_items_total", {"kind": "file"}) == 1
    assert two.registry.get_sample_value("syncd_uploaded_items_total", {"kind": "file"}) is None
    assert two.registry.get_sample_value("syncd_upload_failures_total", {"code": "UNAVAILABLE"})
