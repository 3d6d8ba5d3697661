"""Capture-file read throughput and memory.

Writes three capture files with CaptureWriter: ~200 MB of large binary readings (streamed
by offset), ~200 MB of sub-megabyte binary readings (parsed whole) and ~1M tabular
readings shaped like RDK's. Each is then read in a fresh process, so its peak RSS is the
reader's own, the way the uploader reads: every reading, and every binary payload in 64 KiB
chunks. Two ceilings: reading the same file in 1 MiB blocks with no parsing, and parsing
every reading of the file already in memory with no I/O, records or checks.

    python bench/capture_read.py [--dir DIR] [--binary-mb 200] [--tabular 1000000] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncd.capture_file import CaptureReader, CaptureWriter, decode_uvarint
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

MB = 1_000_000
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _metadata(i: int) -> ds.SensorMetadata:
    metadata = ds.SensorMetadata()
    metadata.time_requested.FromDatetime(T0 + timedelta(milliseconds=i))
    metadata.time_received.FromDatetime(T0 + timedelta(milliseconds=i, microseconds=800))
    return metadata


def write_binary(path: Path, total_bytes: int, reading_bytes: int) -> int:
    header = ds.DataCaptureMetadata(
        component_type="rdk:component:camera",
        component_name="cam",
        method_name="ReadImage",
        type=ds.DATA_TYPE_BINARY_SENSOR,
        file_extension=".jpeg",
    )
    block = os.urandom(reading_bytes)
    count = max(1, total_bytes // reading_bytes)
    with CaptureWriter(path, header) as writer:
        for i in range(count):
            writer.write(ds.SensorData(metadata=_metadata(i), binary=block))
    return count


def write_tabular(path: Path, count: int) -> int:
    header = ds.DataCaptureMetadata(
        component_type="rdk:component:movement_sensor",
        component_name="imu",
        method_name="LinearAcceleration",
        type=ds.DATA_TYPE_TABULAR_SENSOR,
        file_extension=".dat",
    )
    with CaptureWriter(path, header) as writer:
        for i in range(count):
            reading = ds.SensorData(metadata=_metadata(i))
            reading.struct.update(
                {"readings": {"x": i * 0.001, "y": -9.81, "z": 0.25 + i % 7, "frame": "imu"}}
            )
            writer.write(reading)
    return count


def read_ceiling(path: Path) -> float:
    """Seconds to read the file in 1 MiB blocks, parsing nothing."""
    start = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        while f.read(1 << 20):
            pass
    return time.perf_counter() - start


def parse_ceiling(path: Path) -> float:
    """Seconds to split the file, already in memory, and parse every reading: no I/O,
    no records, no checks. Run after the RSS figure is taken: it loads the whole file."""
    data = path.read_bytes()
    start = time.perf_counter()
    length, pos = decode_uvarint(data)
    pos += length
    parse = ds.SensorData.FromString
    while pos < len(data):
        length, pos = decode_uvarint(data, pos)
        parse(data[pos : pos + length])
        pos += length
    return time.perf_counter() - start


def read_file(path: Path) -> dict[str, float]:
    """Read every reading and payload as an uploader would; runs in its own process."""
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    readings = streamed = payload = 0
    with CaptureReader(path) as reader:
        for record in reader:
            readings += 1
            if record.is_streamed:
                streamed += 1
                for chunk in record.iter_binary(65536):
                    payload += len(chunk)
            elif record.data_field == "binary":
                payload += len(record.sensor_data.binary)
        assert reader.tail_error is None, reader.tail_error
    seconds = time.perf_counter() - start
    size = path.stat().st_size
    return {
        "readings": readings,
        "streamed": streamed,
        "payload_bytes": payload,
        "file_bytes": size,
        "seconds": seconds,
        "mb_per_s": size / MB / seconds,
        "readings_per_s": readings / seconds,
        "rss_start_mib": rss_before / 1024,
        "rss_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "read_ceiling_seconds": read_ceiling(path),
        "parse_ceiling_seconds": parse_ceiling(path),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, help="where to write the files (default: a temp dir)")
    parser.add_argument("--binary-mb", type=int, default=200)
    parser.add_argument("--tabular", type=int, default=1_000_000, help="tabular readings")
    parser.add_argument("--keep", action="store_true", help="keep the files")
    parser.add_argument("--read", type=Path, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    if args.read:
        print(json.dumps(read_file(args.read)))
        return

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="capture-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    cases = [
        (
            "binary 5 MiB readings (streamed)",
            "large.capture",
            write_binary,
            (args.binary_mb * MB, 5 << 20),
        ),
        (
            "binary 500 kB readings (parsed)",
            "small.capture",
            write_binary,
            (args.binary_mb * MB, 500_000),
        ),
        ("tabular readings", "tabular.capture", write_tabular, (args.tabular,)),
    ]
    try:
        for title, name, write, write_args in cases:
            path = workdir / name
            path.unlink(missing_ok=True)
            start = time.perf_counter()
            write(path, *write_args)
            write_seconds = time.perf_counter() - start
            out = subprocess.run(
                [sys.executable, __file__, "--read", str(path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out)
            print(
                f"{title}: {r['readings']:,} readings, {r['file_bytes'] / MB:.0f} MB "
                f"(written in {write_seconds:.1f} s)\n"
                f"  read {r['seconds']:.2f} s: {r['mb_per_s']:,.0f} MB/s, "
                f"{r['readings_per_s']:,.0f} readings/s; "
                f"ceilings: block reads {r['file_bytes'] / MB / r['read_ceiling_seconds']:,.0f} MB/s "
                f"(ratio {r['read_ceiling_seconds'] / r['seconds']:.2f}), in-memory parse "
                f"{r['readings'] / r['parse_ceiling_seconds']:,.0f} readings/s "
                f"(ratio {r['parse_ceiling_seconds'] / r['seconds']:.2f})\n"
                f"  peak RSS {r['rss_peak_mib']:.0f} MiB (after imports {r['rss_start_mib']:.0f} MiB)"
            )
    finally:
        if not args.keep and args.dir is None:
            shutil.rmtree(workdir)


if __name__ == "__main__":
    main()
