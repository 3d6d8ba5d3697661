"""Outages and bad links: the receiver down for a long stretch, frozen, hanging on one item,
cutting streams half-way, slow; and files that change while they are being uploaded.

Each test ends with everything delivered, checked by content. The daemon runs in a
subprocess where its memory or a real receiver process matters, in-process otherwise
(against tests/recording_server.py, whose ``on_message`` hook holds, slows or breaks calls).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import time
from pathlib import Path

import pytest
from capture_gen import (
    T0,
    binary_header,
    binary_reading,
    sample_tabular,
    tabular_header,
    write_capture,
)
from daemon_support import (
    Proc,
    free_port,
    rss_bytes,
    sha256,
    status,
    wait_for,
    wait_listening,
    write_config,
)
from recording_server import RecordingServer, Upload, cut

from syncd.config import load_config
from syncd.daemon import run_daemon
from syncd.outbox import Outbox, Reading
from syncd.sink_store_items import iter_store

MiB = 1024 * 1024


def old(path: Path, seconds: float = 5.0) -> None:
    """Back-date a file so it is past its quiet period at once."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def write_file(path: Path, data: bytes) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name("." + path.name + ".tmp")
    temp.write_bytes(data)
    os.rename(temp, path)
    return data


def stored_summary(store: Path) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """What a sink stored: (file name, sha256) counts, binary payload sha256 counts, and
    tabular reading counts by their ``id`` or ``label`` value."""
    files: dict[str, int] = {}
    binaries: dict[str, int] = {}
    tabular: dict[str, int] = {}
    for item in iter_store(store):
        if item.kind == "file":
            key = f"{item.upload_metadata.file_name}:{sha256(item.read_bytes())}"
            files[key] = files.get(key, 0) + 1
        elif item.kind == "binary":
            key = sha256(item.read_bytes())
            binaries[key] = binaries.get(key, 0) + 1
        else:
            for reading in item.sensor_data():
                values = dict(reading.struct)
                if "readings" in values:
                    values = dict(values["readings"])
                key = str(values.get("id", values.get("label")))
                tabular[key] = tabular.get(key, 0) + 1
    return files, binaries, tabular


class Workload:
    """Files, capture files and outbox readings, remembered by content."""

    def __init__(self, tmp: Path, seed: int = 1) -> None:
        self.capture = tmp / "capture"
        self.state = tmp / "state"
        self.rng = random.Random(seed)
        self.files: set[str] = set()  # "path:sha"
        self.binaries: set[str] = set()
        self.tabular: set[str] = set()
        self.bytes = 0
        self.n = 0

    def file(self, size: int, folder: str = "files") -> Path:
        self.n += 1
        path = self.capture / folder / f"f{self.n:04d}.bin"
        data = write_file(path, f"{self.n}:".encode() + self.rng.randbytes(size))
        old(path)
        self.files.add(f"{path}:{sha256(data)}")
        self.bytes += len(data)
        return path

    def binary_capture(self, sizes: list[int]) -> None:
        self.n += 1
        payloads = [f"{self.n}.{i}:".encode() + self.rng.randbytes(s) for i, s in enumerate(sizes)]
        readings = [binary_reading(p, T0) for p in payloads]
        write_capture(self.capture, binary_header(name=f"cam{self.n}"), readings)
        self.binaries |= {sha256(p) for p in payloads}
        self.bytes += sum(sizes)

    def tabular_capture(self, count: int) -> str:
        """A tabular capture file; returns its component name."""
        self.n += 1
        readings = sample_tabular(count)
        for i, r in enumerate(readings):
            r.struct["readings"]["label"] = f"t{self.n}-{i}"
        write_capture(self.capture, tabular_header(name=f"imu{self.n}"), readings)
        self.tabular |= {f"t{self.n}-{i}" for i in range(count)}
        return f"imu{self.n}"

    def readings(self, ob: Outbox, tabular: int, binary_sizes: list[int]) -> None:
        self.n += 1
        batch = [
            Reading.tabular("rdk:component:sensor", "api", "Readings", {"id": f"r{self.n}-{i}"})
            for i in range(tabular)
        ]
        self.tabular |= {f"r{self.n}-{i}" for i in range(tabular)}
        for i, size in enumerate(binary_sizes):
            payload = f"b{self.n}-{i}:".encode() + self.rng.randbytes(size)
            batch.append(
                Reading.binary(
                    "rdk:component:camera", "apicam", "ReadImage", payload, file_extension=".jpeg"
                )
            )
            self.binaries.add(sha256(payload))
            self.bytes += len(payload)
        ob.enqueue_readings(batch)

    def missing_in(self, store: Path) -> list[str]:
        files, binaries, tabular = stored_summary(store)
        missing = [f"file {k}" for k in self.files if k not in files]
        missing += [f"binary {k}" for k in self.binaries if k not in binaries]
        missing += [f"reading {k}" for k in self.tabular if k not in tabular]
        return missing


def wait_log(path: Path, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s:\n{path.read_text()[-3000:]}")


def drained(config: Path) -> bool:
    counts = status(config)
    return counts["pending"] + counts["inflight"] == 0


# --- the receiver down for a long stretch ------------------------------------------------


async def test_long_outage_grows_the_outbox_not_the_daemon(tmp_path):
    """The receiver is down while ~80 MB of files and readings come in: the outbox holds
    them, the daemon's memory stays flat; once the receiver is back, all of it arrives."""
    port = free_port()
    config = write_config(tmp_path, port, concurrency=4)
    work = Workload(tmp_path)
    log = tmp_path / "daemon.log"
    daemon = Proc(["run", "-c", str(config)], log)
    sink = None
    try:
        wait_log(log, "watching")
        ob = Outbox(work.state)
        rss: list[int] = []
        try:
            for _ in range(8):
                for _ in range(3):
                    work.file(MiB + work.rng.randrange(MiB))
                work.binary_capture([1_300_000, 1_200_000, 20_000])
                work.tabular_capture(200)
                work.readings(ob, 300, [300_000] * 10)
                await asyncio.sleep(0.3)
                rss.append(rss_bytes(daemon.proc.pid))
        finally:
            ob.close()
        for _ in range(6):  # a few more connectivity retries with everything queued
            await asyncio.sleep(0.3)
            rss.append(rss_bytes(daemon.proc.pid))
        assert daemon.alive(), log.read_text()[-3000:]
        counts = status(config)
        queued = counts["pending"] + counts["inflight"]
        assert counts["files_pending"] + counts["files_inflight"] == 8 * 5
        assert queued > 8 * 5 and counts["pending_bytes"] + counts["inflight_bytes"] > 70e6
        assert work.bytes > 75e6
        baseline = rss[1]
        growth = max(rss) - baseline
        print(
            f"RSS {baseline / 1e6:.0f} MB -> peak {max(rss) / 1e6:.0f} MB; {work.bytes / 1e6:.0f} MB queued"
        )
        assert growth < 25e6, (
            f"daemon RSS grew {growth / 1e6:.0f} MB: {[r // 1_000_000 for r in rss]}"
        )

        sink = Proc(
            [
                "sink",
                "--listen",
                f"127.0.0.1:{port}",
                "--store",
                str(tmp_path / "store"),
                "--min-free-bytes",
                "0",
            ],
            tmp_path / "sink.log",
        )
        wait_listening(port, sink.proc)
        await wait_for(lambda: drained(config), 120, "the outbox to drain", interval=0.5)
        assert work.missing_in(tmp_path / "store") == []
        assert "connectivity back" in log.read_text()
        assert [p for p in work.capture.rglob("*") if p.is_file()] == []
    finally:
        assert daemon.terminate() == 0
        if sink is not None:
            sink.terminate()


# --- a receiver that accepts and never answers ------------------------------------------


async def test_frozen_receiver_deadlines_fire_then_everything_flows(tmp_path):
    """The receiver process is frozen (SIGSTOP): the kernel still accepts connections and
    takes bytes, nobody answers. Calls end at their deadline (cloud.call_timeout_s) and
    the daemon keeps trying; once the receiver thaws, everything arrives."""
    port = free_port()
    store = tmp_path / "store"
    config = write_config(tmp_path, port, concurrency=2, cloud={"call_timeout_s": 0.5})
    work = Workload(tmp_path)
    sink = Proc(
        ["sink", "--listen", f"127.0.0.1:{port}", "--store", str(store), "--min-free-bytes", "0"],
        tmp_path / "sink.log",
    )
    log = tmp_path / "daemon.log"
    daemon = None
    frozen = False
    try:
        wait_listening(port, sink.proc)
        daemon = Proc(["run", "-c", str(config)], log)
        for _ in range(3):
            work.file(200_000)
        work.tabular_capture(50)
        await wait_for(
            lambda: drained(config) and not work.missing_in(store), 60, "the first items"
        )

        os.kill(sink.proc.pid, signal.SIGSTOP)
        frozen = True
        work.file(5 * MiB)
        for _ in range(4):
            work.file(100_000)
        work.binary_capture([1_500_000, 5000])
        work.tabular_capture(120)
        ob = Outbox(work.state)
        try:
            work.readings(ob, 100, [2000, 1_100_000])
        finally:
            ob.close()
        wait_log(log, "deadline exceeded", timeout=20)
        await asyncio.sleep(1)
        assert daemon.alive()
        assert status(config)["pending"] > 0
        os.kill(sink.proc.pid, signal.SIGCONT)
        frozen = False
        await wait_for(
            lambda: drained(config), 90, "the outbox to drain after the thaw", interval=0.3
        )
        assert work.missing_in(store) == []
    finally:
        if frozen:
            os.kill(sink.proc.pid, signal.SIGCONT)
        if daemon is not None:
            assert daemon.terminate() == 0
        sink.terminate()


async def test_a_call_that_never_returns_holds_no_worker(tmp_path, caplog):
    """One upload hangs for ever on the server side. With a single worker, its deadline
    frees the worker and every other item still goes; the hung one goes once the server
    answers it."""
    hold = asyncio.Event()
    async with RecordingServer() as server:

        async def on_message(upload: Upload, index: int, stream) -> None:
            if upload.metadata.file_name.endswith("stuck.bin"):
                await hold.wait()

        server.on_message = on_message
        config = write_config(tmp_path, server.port, concurrency=1, cloud={"call_timeout_s": 0.4})
        work = Workload(tmp_path)
        stuck = write_file(work.capture / "stuck.bin", b"stuck" * 1000)
        old(work.capture / "stuck.bin")
        for _ in range(5):
            work.file(50_000)
        imu = work.tabular_capture(30)
        with Outbox(work.state) as ob:
            work.readings(ob, 20, [3000])
        assert await run_daemon(load_config(config), once=True, timeout=6) == 1
        # the hung upload is in flight, and still counts as not delivered
        assert "gave up after 6 s: 1 items still pending" in caplog.text
        names = {Path(u.metadata.file_name).name for u in server.uploads if u.rpc == "FileUpload"}
        assert "stuck.bin" not in names
        assert len(names) == 5
        assert (
            sum(len(u.readings) for u in server.uploads if u.metadata.component_name == imu) == 30
        )
        assert any(u.metadata.component_name == "api" for u in server.uploads)
        hold.set()
        assert await run_daemon(load_config(config), once=True, timeout=30) == 0
    stuck_uploads = [u for u in server.uploads if u.metadata.file_name.endswith("stuck.bin")]
    assert [u.payload for u in stuck_uploads] == [stuck]


# --- streams broken half-way -----------------------------------------------------------


@pytest.mark.parametrize("how", ["cut", "raise"])
async def test_streams_broken_half_way_go_again_whole(tmp_path, how):
    """The receiver drops the connection (or fails the call) in the middle of streamed
    uploads: they are sent again from the start, and only whole uploads are recorded."""
    breaks = {"left": 6}
    async with RecordingServer() as server:

        async def on_message(upload: Upload, index: int, stream) -> None:
            if upload.rpc != "DataCaptureUpload" and index == 3 and breaks["left"] > 0:
                breaks["left"] -= 1
                if how == "cut":
                    cut(stream)
                    await asyncio.sleep(5)  # the handler is cancelled meanwhile
                raise RuntimeError("receiver fell over half-way")

        server.on_message = on_message
        config = write_config(tmp_path, server.port, concurrency=3, chunk_bytes=65536)
        work = Workload(tmp_path)
        originals = {}
        for _ in range(4):
            path = work.file(2 * MiB)
            originals[str(path)] = path.read_bytes()
        work.binary_capture([1_500_000])
        with Outbox(work.state) as ob:
            work.readings(ob, 10, [1_200_000])
        assert await run_daemon(load_config(config), once=True, timeout=60) == 0
    assert breaks["left"] == 0
    files = [u for u in server.uploads if u.rpc == "FileUpload"]
    assert {u.metadata.file_name for u in files} == set(originals)
    for upload in files:
        assert upload.payload == originals[upload.metadata.file_name]
    streamed = {sha256(u.payload) for u in server.uploads if u.rpc == "StreamingDataCaptureUpload"}
    assert work.binaries <= streamed | {
        sha256(r.binary) for u in server.uploads if u.rpc == "DataCaptureUpload" for r in u.readings
    }
    assert [p for p in work.capture.rglob("*") if p.is_file()] == []


# --- a slow receiver ---------------------------------------------------------------------


async def test_slow_receiver_gets_big_uploads_through(tmp_path):
    """A receiver taking ~1 MB/s: a 5 MB file takes twice the call deadline and more,
    yet the server keeps taking bytes, so no step goes without progress for that long:
    it goes through, once. (The deadline must exceed the time the server needs to take
    half its flow-control window, 2 MB here: that is how often its updates come.)"""
    async with RecordingServer() as server:

        async def on_message(upload: Upload, index: int, stream) -> None:
            await asyncio.sleep(0.06 if upload.rpc != "DataCaptureUpload" else 0.3)

        server.on_message = on_message
        config = write_config(
            tmp_path, server.port, concurrency=2, chunk_bytes=65536, cloud={"call_timeout_s": 2.5}
        )
        work = Workload(tmp_path)
        big = work.file(5 * MiB)
        work.file(100_000)
        work.tabular_capture(20)
        started = time.monotonic()
        assert await run_daemon(load_config(config), once=True, timeout=60) == 0
        elapsed = time.monotonic() - started
    files = [u for u in server.uploads if u.rpc == "FileUpload"]
    assert sorted(u.metadata.file_name for u in files) == sorted(
        p.split(":")[0] for p in work.files
    )
    (upload,) = [u for u in files if u.metadata.file_name == str(big)]
    assert f"{big}:{sha256(upload.payload)}" in work.files
    assert elapsed > 4.0  # the big file alone needs ~5 s at this pace


class SlowLink:
    """A TCP proxy that carries client-to-server bytes at ``rate`` bytes/s."""

    def __init__(self, target_port: int, rate: float) -> None:
        self.target_port = target_port
        self.rate = rate
        self.server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    async def __aenter__(self) -> SlowLink:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, rate: float | None
        ) -> None:
            try:
                while data := await src.read(16384):
                    if rate:
                        await asyncio.sleep(len(data) / rate)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        tasks = [
            asyncio.create_task(pump(reader, up_writer, self.rate)),
            asyncio.create_task(pump(up_reader, writer, None)),
        ]
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)


async def test_slow_link_gets_big_uploads_through(tmp_path):
    """The link itself is slow (a 1 MB/s proxy): kernel and HTTP/2 buffers hold seconds of
    data, and an upload still completes within deadlines shorter than it takes. The
    deadline respects the documented floor: longer than the receiver takes to accept half
    an HTTP/2 window (2 MB at 1 MB/s), the longest a healthy call can show no progress."""
    async with RecordingServer() as server, SlowLink(server.port, 1_000_000) as link:
        config = write_config(tmp_path, link.port, concurrency=2, cloud={"call_timeout_s": 2.5})
        work = Workload(tmp_path)
        big = work.file(3 * MiB)
        work.tabular_capture(20)
        with Outbox(work.state) as ob:
            work.readings(ob, 10, [1_100_000])
        assert await run_daemon(load_config(config), once=True, timeout=90) == 0
    files = [u for u in server.uploads if u.rpc == "FileUpload"]
    assert [u.metadata.file_name for u in files] == [str(big)]
    assert f"{big}:{sha256(files[0].payload)}" in work.files


# --- files that change while being uploaded ----------------------------------------------


def _mutations(path: Path, original: bytes):
    """What happens to the file while its upload is held: name -> (action, final bytes)."""
    rng = random.Random(5)
    grown = original + rng.randbytes(len(original) // 12)
    rewritten = bytes(b ^ 0xFF for b in original[:4096]) + original[4096:]
    shrunk = original[: len(original) // 6]
    replaced = rng.randbytes(len(original) // 2)

    def grow() -> None:
        with open(path, "ab") as f:
            f.write(grown[len(original) :])

    def rewrite() -> None:
        with open(path, "r+b") as f:
            f.write(rewritten[:4096])

    def shrink() -> None:
        with open(path, "r+b") as f:
            f.truncate(len(shrunk))

    def replace() -> None:
        path.unlink()
        path.write_bytes(replaced)

    def vanish() -> None:
        path.unlink()

    return {
        "grow": (grow, grown),
        "rewrite": (rewrite, rewritten),
        "shrink": (shrink, shrunk),
        "replace": (replace, replaced),
        "vanish": (vanish, None),
    }


@pytest.mark.parametrize("size", [12 * MiB, 20_000], ids=["12MB", "20kB"])
@pytest.mark.parametrize("change", ["grow", "rewrite", "shrink", "replace", "vanish"])
async def test_file_changed_during_its_upload_is_never_acked_as_old(tmp_path, change, size):
    """The receiver holds an upload after its first message while the file changes: a
    12 MB file is then mid-read (more than HTTP/2's 4 MB window is still to come); a
    small one was read whole before it went. The old content is never taken as
    delivered: the new content goes up, and only then is the file deleted. A big file
    deleted mid-upload is read whole through its open descriptor: that upload stands."""
    rng = random.Random(3)
    capture = tmp_path / "capture"
    path = capture / "data" / "log.bin"
    original = write_file(path, rng.randbytes(size))
    old(path)
    action, final = _mutations(path, original)[change]
    done = {"changed": False}
    small = size <= 65536
    async with RecordingServer() as server:

        async def on_message(upload: Upload, index: int, stream) -> None:
            if index == (0 if small else 1) and not done["changed"]:
                done["changed"] = True
                action()
                await asyncio.sleep(0.2)

        server.on_message = on_message
        config = write_config(tmp_path, server.port, file_quiet_period_s=0.0, chunk_bytes=65536)
        assert await run_daemon(load_config(config), once=True, timeout=60) == 0
    assert done["changed"]
    payloads = [u.payload for u in server.uploads]
    # whole versions only: never a mix of old and new, never a cut-off read
    assert all(p in (original, final) for p in payloads), [len(p) for p in payloads]
    expected = {
        # read whole before the change was seen: sent again as it is now
        "grow": [original, final],
        "rewrite": [original, final],
        "replace": [original, final],
        # the read came up short: that attempt never completed, the new content went
        # (a small file was read whole first: sent, then seen changed, sent again)
        "shrink": [original, final] if small else [final],
        # read whole through the open descriptor: what it held, once
        "vanish": [original],
    }[change]
    assert payloads == expected, [len(p) for p in payloads]
    assert not path.exists()
    with Outbox(tmp_path / "state") as ob:
        counts = ob.counts()
    assert counts.pending + counts.inflight + counts.failed == 0


def test_hashes_are_what_the_helpers_say():
    assert sha256(b"x") == hashlib.sha256(b"x").hexdigest()


# --- a receiver that never completes the TCP handshake ---------------------------------


async def test_connect_timeout_bounds_a_connection_that_never_opens():
    """A listener whose backlog is full drops SYNs: connecting hangs as it does towards
    an address that swallows packets. cloud.connect_timeout_s ends the attempt, not the
    much longer call_timeout_s (the setting used to be read and then ignored)."""
    import socket

    from syncd.cloud import CloudClient
    from syncd.config import parse_config
    from syncd.daemon import _transport
    from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue; later handshakes never finish
            s = socket.socket()
            s.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                s.connect(("127.0.0.1", port))
            fillers.append(s)
        await asyncio.sleep(0.2)
        cfg = parse_config(
            f"part_id: p\ncloud:\n  address: 127.0.0.1:{port}\n  tls: false\n"
            "  connect_timeout_s: 0.5\n  call_timeout_s: 30\n"
        )
        request = ds.DataCaptureUploadRequest(metadata=ds.UploadMetadata(part_id="p"))
        async with _transport(cfg) as (client, _):
            assert isinstance(client, CloudClient)
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(client.data_capture_upload(request), 20)
            assert time.monotonic() - started < 3
    finally:
        for s in fillers:
            s.close()
        listener.close()
