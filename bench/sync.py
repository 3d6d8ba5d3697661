"""End-to-end upload throughput of `syncd run --once` beside a raw ceiling.

Three workloads, each pushed to the same local server (bench/null_server.py, its own
process, discarding what it gets):
- tabular: readings in Viam capture files (1000 per file), readings/s;
- big file: one arbitrary file (512 MiB by default), MB/s and the daemon's peak RSS;
- small files: 4 KiB arbitrary files, files/s.
Each is measured three ways: syncd (a subprocess: watcher, outbox, uploader, deletes);
the ceiling, a bare grpclib client pushing the same requests from memory, with the same
concurrency, and no files, outbox or retries; and a loop making one upload call per item.
Medians of --repeat runs. ``--latency-ms N`` makes the server answer each call N ms
late, as across a real link; loopback alone has no round trip for concurrency to hide.
Usage: python bench/sync.py [--quick] [--repeat N] [--latency-ms N] [--only WORKLOAD]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from google.protobuf import struct_pb2
from grpclib.client import Channel
from grpclib.encoding.proto import ProtoCodec

from syncd.capture_file import CaptureWriter, capture_path
from syncd.config import SyncConfig
from syncd.gen.app.datasync.v1 import data_sync_grpc
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.mapping import timestamp_from_ns

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = SyncConfig().concurrency  # syncd's default, for syncd and the ceiling
CHUNK = 64 * 1024
PER_FILE = 1000


def imu_reading(i: int) -> ds.SensorData:
    data = struct_pb2.Struct()
    data.update(
        {
            "readings": {
                "linear_acceleration": {"x": 0.01 * i, "y": -9.81, "z": 0.2},
                "angular_velocity": {"x": 0.001, "y": 0.002 * i, "z": -0.003},
            }
        }
    )
    t = 1_700_000_000_000_000_000 + i * 1_000_000
    metadata = ds.SensorMetadata(
        time_requested=timestamp_from_ns(t), time_received=timestamp_from_ns(t + 500_000)
    )
    return ds.SensorData(metadata=metadata, struct=data)


def header(name: str) -> ds.DataCaptureMetadata:
    return ds.DataCaptureMetadata(
        component_type="rdk:component:movement_sensor",
        component_name=name,
        method_name="Readings",
        type=ds.DATA_TYPE_TABULAR_SENSOR,
        file_extension=".dat",
    )


def upload_metadata() -> ds.UploadMetadata:
    h = header("imu")
    return ds.UploadMetadata(
        part_id="bench",
        component_type=h.component_type,
        component_name=h.component_name,
        method_name=h.method_name,
        type=h.type,
        file_extension=h.file_extension,
    )


# --- syncd as a subprocess ----------------------------------------------------------------


STARTUP_S = 0.0  # measured once per benchmark run: see startup_seconds()


def startup_seconds(port: int, scratch: Path) -> float:
    """How long `syncd run --once` takes with nothing to do (start, scan, stop): the
    daemon's figures below leave it out, since a daemon starts once and then runs."""
    work = scratch / "empty"
    shutil.rmtree(work, ignore_errors=True)
    (work / "capture").mkdir(parents=True)
    times = []
    for _ in range(3):
        shutil.rmtree(work / "state", ignore_errors=True)
        times.append(run_syncd(work, port, subtract_startup=False)[0])
    return statistics.median(times)


def run_syncd(work: Path, port: int, subtract_startup: bool = True) -> tuple[float, float]:
    """Run `syncd run --once` on ``work``; return (seconds less the start-up time, peak
    RSS in MB)."""
    config = work / "syncd.yaml"
    config.write_text(
        f"part_id: bench\ncapture_dir: {work / 'capture'}\nstate_dir: {work / 'state'}\n"
        f"cloud:\n  address: 127.0.0.1:{port}\n  tls: false\n"
        f"sync:\n  concurrency: {CONCURRENCY}\n  file_quiet_period_s: 0\n  chunk_bytes: {CHUNK}\n"
        "log:\n  level: warning\n"
    )
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "syncd", "run", "--once", "-c", str(config)])
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit("syncd run --once failed")
    left = [p for p in (work / "capture").rglob("*") if p.is_file()]
    if left:
        raise SystemExit(f"syncd left {len(left)} files behind")
    return elapsed - (STARTUP_S if subtract_startup else 0.0), usage.ru_maxrss / 1024


# --- the raw ceiling and the one-call-per-item loop ---------------------------------------


class PassthroughCodec(ProtoCodec):
    """The protobuf codec, except that bytes go as they are: the ceiling sends requests
    serialized beforehand, so that it measures the calls alone."""

    def encode(self, message, message_type) -> bytes:  # type: ignore[override]
        if isinstance(message, (bytes, bytearray)):
            return bytes(message)
        return super().encode(message, message_type)


async def push_unary(port: int, requests: list[bytes], concurrency: int) -> float:
    channel = Channel("127.0.0.1", port, codec=PassthroughCodec())
    stub = data_sync_grpc.DataSyncServiceStub(channel)
    queue = list(reversed(requests))
    started = time.perf_counter()

    async def worker() -> None:
        while queue:
            await stub.DataCaptureUpload(queue.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    channel.close()
    return elapsed


async def push_files(
    port: int, sizes: list[int], concurrency: int, chunk: bytes, paths: list[Path] | None = None
) -> float:
    """FileUploads of the given sizes, from memory (or from ``paths``, read whole)."""
    channel = Channel("127.0.0.1", port)
    stub = data_sync_grpc.DataSyncServiceStub(channel)
    jobs = list(enumerate(sizes))
    started = time.perf_counter()

    async def one(index: int, size: int) -> None:
        md = ds.UploadMetadata(part_id="bench", type=ds.DATA_TYPE_FILE, file_name=f"/f{index}")
        async with stub.FileUpload.open() as stream:
            await stream.send_message(ds.FileUploadRequest(metadata=md))
            if paths is not None:
                data = paths[index].read_bytes()
                await stream.send_message(
                    ds.FileUploadRequest(file_contents=ds.FileData(data=data))
                )
                paths[index].unlink()
            else:
                sent = 0
                while sent < size:
                    part = chunk[: size - sent]
                    await stream.send_message(
                        ds.FileUploadRequest(file_contents=ds.FileData(data=part))
                    )
                    sent += len(part)
            await stream.end()
            await stream.recv_message()

    async def worker() -> None:
        while jobs:
            await one(*jobs.pop())

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    channel.close()
    return elapsed


# --- workloads ------------------------------------------------------------------------------


def tabular(port: int, readings: int, scratch: Path) -> dict[str, float]:
    work = scratch / "tabular"
    shutil.rmtree(work, ignore_errors=True)
    files = readings // PER_FILE
    all_readings = [imu_reading(i) for i in range(PER_FILE)]
    for f in range(files):
        h = header("imu")
        dt_ns = 1_700_000_000_000_000_000 + f * 1_000_000_000
        from datetime import UTC, datetime

        dt = datetime.fromtimestamp(dt_ns / 1e9, UTC)
        with CaptureWriter(capture_path(work / "capture", h, dt), h) as writer:
            for reading in all_readings:
                writer.write(reading)
    syncd_s, rss = run_syncd(work, port)
    md = upload_metadata()
    request = ds.DataCaptureUploadRequest(
        metadata=md, sensor_contents=all_readings
    ).SerializeToString()
    ceiling_s = asyncio.run(push_unary(port, [request] * files, CONCURRENCY))
    single = [
        ds.DataCaptureUploadRequest(metadata=md, sensor_contents=[r]).SerializeToString()
        for r in all_readings
    ]
    loop_s = asyncio.run(push_unary(port, single, 1)) * (readings / len(single))
    return {
        "syncd": readings / syncd_s,
        "ceiling": readings / ceiling_s,
        "loop": readings / loop_s,
        "rss": rss,
    }


def big_file(port: int, mib: int, scratch: Path) -> dict[str, float]:
    work = scratch / "big"
    shutil.rmtree(work, ignore_errors=True)
    (work / "capture").mkdir(parents=True)
    size = mib * 1024 * 1024
    block = os.urandom(CHUNK)
    with open(work / "capture" / "big.bag", "wb") as f:
        for _ in range(size // CHUNK):
            f.write(block)
    past = time.time() - 60
    os.utime(work / "capture" / "big.bag", (past, past))
    syncd_s, rss = run_syncd(work, port)
    ceiling_s = asyncio.run(push_files(port, [size], 1, block))
    mb = size / 1e6
    return {"syncd": mb / syncd_s, "ceiling": mb / ceiling_s, "loop": mb / ceiling_s, "rss": rss}


def small_files(port: int, count: int, scratch: Path) -> dict[str, float]:
    work = scratch / "small"
    shutil.rmtree(work, ignore_errors=True)
    capture = work / "capture"
    payload = os.urandom(4096)

    def make() -> list[Path]:
        paths = []
        for i in range(count):
            folder = capture / f"d{i % 20}"
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"f{i}.log"
            path.write_bytes(payload)
            paths.append(path)
        past = time.time() - 60
        for path in paths:
            os.utime(path, (past, past))
        return paths

    make()
    syncd_s, rss = run_syncd(work, port)
    ceiling_s = asyncio.run(push_files(port, [4096] * count, CONCURRENCY, payload))
    paths = make()
    loop_s = asyncio.run(push_files(port, [4096] * count, 1, payload, paths=paths))
    return {
        "syncd": count / syncd_s,
        "ceiling": count / ceiling_s,
        "loop": count / loop_s,
        "rss": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="server answer delay")
    parser.add_argument(
        "--only", choices=("tabular", "big", "small"), help="run one workload, not all three"
    )
    args = parser.parse_args()
    sizes = (20_000, 64, 300) if args.quick else (1_000_000, 512, 2000)
    repeat = 1 if args.quick else args.repeat
    server = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "bench" / "null_server.py"),
            "--latency-ms",
            str(args.latency_ms),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        port = int(server.stdout.readline().split()[1])
        scratch = Path(
            tempfile.mkdtemp(prefix="syncd-bench-", dir=os.environ.get("BENCH_DIR", "/var/tmp"))
        )
        global STARTUP_S
        STARTUP_S = startup_seconds(port, scratch)
        workloads = [
            (
                "tabular",
                "tabular readings/s",
                lambda: tabular(port, sizes[0], scratch),
                "0.7x ceiling",
            ),
            (
                "big",
                f"big file {sizes[1]} MiB, MB/s",
                lambda: big_file(port, sizes[1], scratch),
                "0.75x ceiling, RSS < 100 MB",
            ),
            (
                "small",
                "small 4 KiB files/s",
                lambda: small_files(port, sizes[2], scratch),
                "1.5x loop",
            ),
        ]
        workloads = [w[1:] for w in workloads if args.only in (None, w[0])]
        print(
            f"server latency {args.latency_ms:g} ms, concurrency {CONCURRENCY}, medians of "
            f"{repeat}; syncd figures leave out its start-up ({STARTUP_S:.2f} s, measured)"
        )
        print(
            f"{'workload':32} {'syncd':>10} {'ceiling':>10} {'1-call loop':>12} {'syncd/ceil':>10} {'syncd/loop':>10} {'peak RSS':>9}  target"
        )
        for name, run, target in workloads:
            runs = [run() for _ in range(repeat)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(
                f"{name:32} {med['syncd']:10.1f} {med['ceiling']:10.1f} {med['loop']:12.1f} "
                f"{med['syncd'] / med['ceiling']:10.2f} {med['syncd'] / med['loop']:10.2f} {med['rss']:7.0f}MB  {target}",
                flush=True,
            )
        shutil.rmtree(scratch, ignore_errors=True)
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
