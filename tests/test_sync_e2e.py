"""End to end: capture dir and readings → daemon → a real DataSyncService on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import time
from pathlib import Path

import pytest
from capture_gen import (
    T0,
    binary_header,
    binary_reading,
    sample_tabular,
    tabular_header,
    tabular_reading,
    write_capture,
)
from recording_server import RecordingServer, Upload

from syncd.capture_file import capture_path
from syncd.cloud import CloudClient
from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.outbox import AsyncOutbox, FileItem, Outbox
from syncd.uploader import Uploader

PART = "part-123"


def write_config(tmp_path: Path, port: int, **sync: object) -> Path:
    options = {
        "file_quiet_period_s": 0.2,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
        "tags": ["cfgtag"],
        **sync,
    }
    lines = [
        f"part_id: {PART}",
        f"capture_dir: {tmp_path / 'capture'}",
        f"state_dir: {tmp_path / 'state'}",
        "cloud:",
        f"  address: 127.0.0.1:{port}",
        "  tls: false",
        "sync:",
    ]
    for key, value in options.items():
        rendered = "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else value
        lines.append(f"  {key}: {rendered}")
    path = tmp_path / "syncd.yaml"
    path.write_text("\n".join(lines) + "\n")
    (tmp_path / "capture").mkdir(exist_ok=True)
    return path


async def sync_once(config: Path, timeout: float = 60) -> int:
    return await run_daemon(load_config(config), once=True, timeout=timeout)


def by_rpc(uploads: list[Upload], rpc: str) -> list[Upload]:
    return [u for u in uploads if u.rpc == rpc]


async def test_everything_arrives_with_exact_bytes_and_metadata(tmp_path):
    rng = random.Random(7)
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port)
        capture = tmp_path / "capture"
        tabular = sample_tabular(50)
        tabular_file = write_capture(capture, tabular_header(), tabular)
        small = [binary_reading(rng.randbytes(3000), T0), binary_reading(rng.randbytes(10), T0)]
        small_file = write_capture(capture, binary_header(), small)
        big = [binary_reading(rng.randbytes(1_500_000), T0)]
        big_file = write_capture(capture, binary_header(name="cam2"), big)
        notes = capture / "notes.txt"
        notes.write_bytes(b"hello robot\n")
        video = capture / "videos" / "run.mp4"
        video.parent.mkdir()
        video.write_bytes(rng.randbytes(20 * 1024 * 1024))
        tagged = capture / "tag=x" / "dataset=d1" / "log.txt"
        tagged.parent.mkdir(parents=True)
        tagged.write_bytes(b"tagged\n")
        # A .prog file whose writer is still at work: never touched.
        prog_path = capture_path(capture, tabular_header(name="live"), T0).with_suffix(".prog")
        prog_path.parent.mkdir(parents=True, exist_ok=True)
        prog_path.write_bytes(b"\x05partial")
        live_writer = open(prog_path, "ab")  # noqa: SIM115
        with Outbox(tmp_path / "state") as ob:
            for i in range(3):
                ob.add_tabular(
                    "rdk:component:sensor", "api", "Readings", {"i": i}, time_requested=100.0 + i
                )
            ob.add_binary(
                "rdk:component:camera", "apicam", "ReadImage", b"jpg", file_extension="jpeg"
            )
            big_reading = rng.randbytes(2_000_000)
            ob.add_binary(
                "rdk:component:camera", "apicam", "ReadImage", big_reading, file_extension=".jpeg"
            )
        old = os.path.getmtime(notes) - 5
        for path in (notes, video, tagged):
            os.utime(path, (old, old))

        assert await sync_once(config) == 0
        live_writer.close()

    uploads = server.uploads
    # Tabular capture file: every reading, in order, with the header's metadata.
    imu = [u for u in uploads if u.metadata.component_name == "imu"]
    assert [r for u in imu for r in u.readings] == tabular
    md = imu[0].metadata
    assert (md.part_id, md.component_type, md.method_name) == (
        PART,
        "rdk:component:sensor",
        "Readings",
    )
    assert md.type == ds.DATA_TYPE_TABULAR_SENSOR
    assert list(md.tags) == ["yard", "cfgtag"] and md.file_extension == ".dat"
    # Small binary readings: one unary request each; big: streamed in chunks.
    cam = [u for u in uploads if u.metadata.component_name == "cam"]
    assert [u.rpc for u in cam] == ["DataCaptureUpload"] * 2
    assert [u.readings for u in cam] == [[small[0]], [small[1]]]
    (cam2,) = [u for u in uploads if u.metadata.component_name == "cam2"]
    assert cam2.rpc == "StreamingDataCaptureUpload" and cam2.chunks > 1
    assert cam2.payload == big[0].binary and cam2.sensor_metadata == big[0].metadata
    assert cam2.metadata.file_extension == ".jpeg" and cam2.metadata.part_id == PART
    # Arbitrary files: FileUpload with the absolute path, extension, times, folder tags.
    files = {u.metadata.file_name: u for u in by_rpc(uploads, "FileUpload")}
    assert set(files) == {str(notes), str(video), str(tagged)}
    assert files[str(notes)].payload == b"hello robot\n"
    assert files[str(video)].metadata.file_extension == ".mp4"
    assert len(files[str(video)].payload) == 20 * 1024 * 1024
    assert files[str(video)].metadata.file_modify_time.seconds == int(old)
    assert list(files[str(tagged)].metadata.tags) == ["cfgtag", "x"]
    assert list(files[str(tagged)].metadata.dataset_ids) == ["d1"]
    assert all(u.metadata.type == ds.DATA_TYPE_FILE for u in files.values())
    # Readings from the API.
    api = [u for u in uploads if u.metadata.component_name == "api"]
    assert len(api) == 1 and [dict(r.struct) for r in api[0].readings] == [
        {"i": i} for i in range(3)
    ]
    assert [r.metadata.time_requested.seconds for r in api[0].readings] == [100, 101, 102]
    apicam = [u for u in uploads if u.metadata.component_name == "apicam"]
    assert sorted(u.rpc for u in apicam) == ["DataCaptureUpload", "StreamingDataCaptureUpload"]
    streamed = next(u for u in apicam if u.rpc == "StreamingDataCaptureUpload")
    assert streamed.payload == big_reading and streamed.metadata.file_extension == ".jpeg"
    # Exactly once, and the sources are gone, except the .prog being written.
    assert len(uploads) == len(imu) + 2 + 1 + 3 + 1 + 2
    for path in (tabular_file, small_file, big_file, notes, video, tagged):
        assert not path.exists(), path
    assert prog_path.read_bytes() == b"\x05partial"


async def test_tabular_requests_stay_under_the_byte_limit(tmp_path):
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, max_request_bytes=65536, chunk_bytes=16384)
        readings = sample_tabular(3000)
        write_capture(tmp_path / "capture", tabular_header(), readings)
        assert await sync_once(config) == 0
    assert len(server.uploads) > 3
    for upload in server.uploads:
        request = ds.DataCaptureUploadRequest(
            metadata=upload.metadata, sensor_contents=upload.readings
        )
        assert request.ByteSize() <= 65536
    assert [r for u in server.uploads for r in u.readings] == readings


async def test_tabular_uploads_in_flight_hold_about_their_requests(tmp_path, syncd_cmd):
    # Memory grows with sync.concurrency by one request per tabular upload in flight,
    # not by copies of it or blocks of its file read ahead: 16 uploads of 512 KiB
    # requests of large readings once grew the daemon by 30 MB, now by 6. The bound
    # allows each request in flight one and a half times as much again: the readings it
    # is built from, and its reader's block.
    limit = 512 * 1024

    async def peak_rss_of_once(config: Path) -> int:
        command = [*syncd_cmd, "run", "--once", "-c", str(config)]
        pid = os.posix_spawn(command[0], command, os.environ)
        _, status, usage = await asyncio.to_thread(os.wait4, pid, 0)  # its own peak RSS
        assert os.waitstatus_to_exitcode(status) == 0
        return usage.ru_maxrss * 1024

    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, concurrency=16, max_request_bytes=limit)
        idle = await peak_rss_of_once(config)
        big = "x" * 3000
        for i in range(24):
            readings = [tabular_reading({"v": big, "i": n}) for n in range(400)]
            write_capture(tmp_path / "capture", tabular_header(f"s{i}"), readings)
        loaded = await peak_rss_of_once(config)
    assert sum(len(u.readings) for u in server.uploads) == 24 * 400
    assert not list((tmp_path / "capture").rglob("*.capture"))
    assert loaded - idle < 16 * limit * 2.5, f"{(loaded - idle) / 1e6:.0f} MB more than idle"


async def test_small_chunks_written_together_stay_separate_messages(tmp_path):
    # Messages are written to the connection together, up to 64 KiB at a time; the
    # server must still see each chunk as its own message, in order.
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, chunk_bytes=1024)
        content = os.urandom(150_001)
        (tmp_path / "capture" / "odd.bin").write_bytes(content)
        (tmp_path / "capture" / "tiny.txt").write_bytes(b"x")
        assert await sync_once(config) == 0
    files = {Path(u.metadata.file_name).name: u for u in server.uploads}
    assert files["odd.bin"].payload == content
    assert files["odd.bin"].chunks == -(-len(content) // 1024)
    assert files["tiny.txt"].payload == b"x" and files["tiny.txt"].chunks == 1


async def test_unavailable_server_gets_everything_once(tmp_path):
    async with RecordingServer() as server:
        server.unavailable = 6
        config = write_config(tmp_path, server.port)
        for i in range(5):
            write_capture(tmp_path / "capture", tabular_header(name=f"s{i}"), sample_tabular(3))
        assert await sync_once(config) == 0
    names = sorted(u.metadata.component_name for u in server.uploads)
    assert names == [f"s{i}" for i in range(5)]
    assert server.calls == 5 + 6


async def test_rejected_item_becomes_a_dead_letter(tmp_path, capsys):
    from syncd.cli import main

    async with RecordingServer() as server:
        server.reject = lambda u: (
            "file too strange" if u.metadata.file_name.endswith("bad.txt") else None
        )
        config = write_config(tmp_path, server.port)
        capture = tmp_path / "capture"
        for name in ("a.txt", "bad.txt", "c.txt"):
            (capture / name).write_text(name)
        assert await sync_once(config) == 0
    assert sorted(Path(u.metadata.file_name).name for u in server.uploads) == ["a.txt", "c.txt"]
    assert (capture / "bad.txt").exists()
    capsys.readouterr()
    assert main(["status", "-c", str(config), "--json"]) == 0
    import json

    status = json.loads(capsys.readouterr().out)
    assert status["failed"] == 1 and status["pending"] == 0
    assert main(["failed", "list", "-c", str(config)]) == 0
    listing = capsys.readouterr().out
    assert "bad.txt" in listing and "file too strange" in listing


async def test_keeping_files_uploads_them_once(tmp_path):
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, delete_after_upload="false")
        capture = tmp_path / "capture"
        (capture / "keep.txt").write_text("keep me")
        big = os.urandom(200_000)  # closed on another thread than small files
        (capture / "big.bin").write_bytes(big)
        assert await sync_once(config) == 0
        assert await sync_once(config) == 0
    assert sorted(Path(u.metadata.file_name).name for u in server.uploads) == [
        "big.bin",
        "keep.txt",
    ]
    assert (capture / "keep.txt").read_text() == "keep me"
    assert (capture / "big.bin").read_bytes() == big


async def test_once_times_out_when_the_server_is_gone(tmp_path):
    async with RecordingServer() as server:
        port = server.port
    config = write_config(tmp_path, port)
    write_capture(tmp_path / "capture", tabular_header(), sample_tabular(2))
    assert await sync_once(config, timeout=1.5) == 1


async def test_orphaned_prog_file_is_recovered(tmp_path):
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, prog_recover_age_s=1)
        capture = tmp_path / "capture"
        readings = sample_tabular(4)
        done = write_capture(capture, tabular_header(name="crashed"), readings)
        # The writer "crashed": its file was never renamed, and its tail is torn.
        prog = done.with_suffix(".prog")
        done.rename(prog)
        with open(prog, "ab") as f:
            f.write(b"\x40torn")
        past = os.path.getmtime(prog) - 60
        os.utime(prog, (past, past))
        assert await sync_once(config) == 0
    (upload,) = server.uploads
    assert upload.readings == readings
    assert not prog.exists()


async def test_an_empty_orphaned_prog_file_is_removed(tmp_path):
    """A writer that died (or lost power) before anything of its file reached the disk
    leaves an empty .prog: nothing to recover, nothing to keep. A .prog or a .capture
    whose header is cut short stays, a dead letter: it may not be a capture file at all
    (a program's own .prog file), and syncd deletes no byte it could not send."""
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port, prog_recover_age_s=1)
        folder = tmp_path / "capture" / "rdk_component_sensor" / "imu" / "Readings"
        folder.mkdir(parents=True)
        empty, headless, cut = folder / "a.prog", folder / "b.prog", folder / "c.capture"
        empty.touch()
        headless.write_bytes(b"\x40\x0a\x03ab")  # the header's prefix says 64 bytes
        cut.write_bytes(b"\x40\x0a\x03ab")
        past = time.time() - 60
        for path in (empty, headless, cut):
            os.utime(path, (past, past))
        assert await sync_once(config) == 0
        assert await sync_once(config) == 0
        with Outbox(tmp_path / "state") as outbox:
            counts = outbox.counts()
    assert server.uploads == []
    assert not empty.exists() and headless.exists() and cut.exists()
    assert (counts.pending, counts.inflight, counts.failed) == (0, 0, 2)


@pytest.mark.parametrize("limit", [1])
def test_write_config_helper_is_sane(tmp_path, limit):
    cfg = load_config(write_config(tmp_path, 1234, concurrency=limit))
    assert cfg.sync.concurrency == limit and cfg.cloud.port == 1234


@contextlib.contextmanager
def undeletable(folder: Path):
    """Files in ``folder`` can be read but not deleted: a read-only bind mount as root
    (who may delete anything else), no write permission otherwise."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    for step in (["mount", "--bind", folder, folder], ["mount", "-o", "remount,bind,ro", folder]):
        result = subprocess.run(step, capture_output=True, text=True)
        if result.returncode != 0:
            subprocess.run(["umount", "-l", folder], check=False)
            pytest.skip(f"cannot make a read-only bind mount here: {result.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", folder], check=False)


async def test_a_file_that_cannot_be_deleted_is_kept_and_not_sent_again(tmp_path, caplog):
    async with RecordingServer() as server:
        config = write_config(tmp_path, server.port)
        capture = tmp_path / "capture"
        stuck = capture / "readonly"
        stuck.mkdir()
        (stuck / "stuck.txt").write_text("stays")
        (capture / "free.txt").write_text("goes")
        with undeletable(stuck):
            assert await sync_once(config) == 0
            assert await sync_once(config) == 0
            assert (stuck / "stuck.txt").read_text() == "stays"
    names = sorted(Path(u.metadata.file_name).name for u in server.uploads)
    assert names == ["free.txt", "stuck.txt"]
    assert not (capture / "free.txt").exists()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if "cannot delete" in w] == [
        f"uploaded {stuck / 'stuck.txt'} but cannot delete it "
        f"({'Read-only file system' if os.geteuid() == 0 else 'Permission denied'}); "
        "it stays on disk and goes again only if it changes"
    ]
    assert not [w for w in warnings if "connectivity" in w]


class _LateWorkOutbox(AsyncOutbox):
    """An outbox whose first look at what is due next sees nothing, while a file is
    queued (and the uploader woken) before that answer is back."""

    late: FileItem
    uploader: Uploader

    async def next_due_at(self) -> float | None:
        due = await super().next_due_at()
        if not hasattr(self, "queued"):
            self.queued = True
            await self.enqueue_files([self.late])
            self.uploader.wake()
        return due


async def test_work_queued_while_the_uploader_looks_for_it_is_not_missed(tmp_path):
    async with RecordingServer() as server:
        cfg = load_config(write_config(tmp_path, server.port))
        late = tmp_path / "capture" / "late.txt"
        late.write_text("late")
        st = late.stat()
        outbox = await _LateWorkOutbox.open(cfg.state_dir)
        client = CloudClient("127.0.0.1", server.port, tls=False)
        outbox.late = FileItem(str(late), "file", st.st_size, st.st_mtime_ns)
        outbox.uploader = uploader = Uploader(cfg, outbox, client)
        running = asyncio.create_task(uploader.run())
        try:
            async with asyncio.timeout(10):
                await uploader.wait_idle()
                while not server.uploads:
                    await asyncio.sleep(0.05)
        finally:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running
            await client.close()
            await outbox.close()
    assert [Path(u.metadata.file_name).name for u in server.uploads] == ["late.txt"]
