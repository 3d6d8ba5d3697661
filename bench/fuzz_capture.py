"""Coverage-guided fuzzing of the capture-file reader with atheris, for long runs outside CI.

atheris is not a project dependency: ``pip install atheris`` (wheels exist for CPython
3.11 on x86-64 Linux), then

    python bench/fuzz_capture.py [libFuzzer flags, e.g. -max_total_time=600] [CORPUS_DIR]

Without a corpus directory it starts from a few valid capture files in a temporary one.
Each input's first byte picks the large-reading threshold (so tiny readings take the
scanning path too); the rest is written to a file and read. The checks are those of
tests/test_capture_file_fuzz.py: only CaptureFileError may escape, and only for the header;
bytes read plus bytes dropped add up to the file; the scanner agrees with protobuf on every
SensorData message protobuf parses; the framing-only paths (``iter_raw`` and
``iter_delimited_batches``, which tabular uploads are built from) account for every byte;
and no input makes the reader allocate more than 256 KiB plus 8 bytes per input byte,
whatever its length prefixes claim (tracemalloc; it slows the run about threefold:
SYNCD_FUZZ_TRACEMALLOC=0 turns it off, and libFuzzer's -rss_limit_mb still catches
runaway memory then).
"""

from __future__ import annotations

import os
import sys
import tempfile
import tracemalloc
from datetime import UTC, datetime

import atheris

with atheris.instrument_imports():
    from google.protobuf.message import DecodeError

    from syncd.capture_file import (
        CaptureReader,
        CaptureWriter,
        encode_uvarint,
        scan_sensor_data,
    )
    from syncd.errors import CaptureFileError
    from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

THRESHOLDS = (0, 16, 256, 1_000_000)
SCRATCH = os.path.join(tempfile.mkdtemp(prefix="capture-fuzz-"), "input.capture")
TRACE = os.environ.get("SYNCD_FUZZ_TRACEMALLOC", "1") != "0"


def check_scanner(message: bytes) -> None:
    try:
        parsed = ds.SensorData.FromString(message)
    except DecodeError:
        return
    layout = scan_sensor_data(lambda pos, n: message[pos : pos + n], len(message))
    assert ds.SensorMetadata.FromString(layout.metadata) == parsed.metadata
    if parsed.WhichOneof("data") == "binary":
        assert layout.binary_pos is not None
        assert (
            message[layout.binary_pos : layout.binary_pos + layout.binary_length] == parsed.binary
        )
    else:
        assert layout.binary_pos is None


def test_one_input(data: bytes) -> None:
    if not data:
        return
    threshold, content = THRESHOLDS[data[0] % len(THRESHOLDS)], data[1:]
    with open(SCRATCH, "wb") as f:
        f.write(content)
    if not TRACE:
        read(content, threshold)
        return
    tracemalloc.start()
    try:
        read(content, threshold)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024 + 8 * len(content), f"{peak} bytes allocated"


def read(content: bytes, threshold: int) -> None:
    try:
        reader = CaptureReader(SCRATCH, large_reading_bytes=threshold, buffer_size=4096)
    except CaptureFileError:
        return
    with reader:
        records = list(reader)
        end = records[-1].end if records else reader.readings_offset
        assert end + reader.dropped_bytes == reader.size
        assert (reader.tail_error is None) == (reader.dropped_bytes == 0)
        for record in records:
            if record.is_streamed:
                assert sum(map(len, record.iter_binary(7))) == record.binary_length
            check_scanner(content[record.offset : record.end])
        raws = list(reader.iter_raw())
        assert sum(map(len, raws)) + reader.dropped_bytes <= reader.size
        batches = list(reader.iter_delimited_batches(2, 64))
        framed = sum(len(view) for batch in batches for view in batch)
        assert framed + reader.dropped_bytes == reader.size - reader.readings_offset


def seed_corpus() -> str:
    """A directory holding a few valid capture files, each with a threshold byte in front."""
    corpus = tempfile.mkdtemp(prefix="capture-corpus-")
    metadata = ds.SensorMetadata()
    metadata.time_requested.FromDatetime(datetime(2025, 1, 1, tzinfo=UTC))
    tabular = ds.SensorData(metadata=metadata)
    tabular.struct.update({"readings": {"x": 1.5, "ok": True, "list": [None, "a"]}})
    files = {
        "tabular": (ds.DATA_TYPE_TABULAR_SENSOR, [tabular, tabular]),
        "binary": (
            ds.DATA_TYPE_BINARY_SENSOR,
            [ds.SensorData(metadata=metadata, binary=b"\xff" * 40)],
        ),
    }
    for name, (data_type, readings) in files.items():
        path = os.path.join(corpus, name + ".capture")
        header = ds.DataCaptureMetadata(
            component_type="rdk:component:sensor",
            component_name=name,
            method_name="Readings",
            type=data_type,
        )
        with CaptureWriter(path, header) as writer:
            for reading in readings:
                writer.write(reading)
        with open(path, "rb") as f:
            content = f.read()
        os.remove(path)
        for i in range(len(THRESHOLDS)):
            with open(os.path.join(corpus, f"{name}-{i}"), "wb") as f:
                f.write(bytes([i]) + content)
    with open(os.path.join(corpus, "forged"), "wb") as f:
        f.write(b"\x00" + encode_uvarint(4) + b"\x0a\x02ab" + encode_uvarint(2**60))
    return corpus


def warm_up() -> None:
    """Read one valid file of each kind untraced: protobuf builds lazy state on first
    use, which the first traced input must not be blamed for."""
    corpus = seed_corpus()
    for name in sorted(os.listdir(corpus)):
        with open(os.path.join(corpus, name), "rb") as f:
            data = f.read()
        with open(SCRATCH, "wb") as f:
            f.write(data[1:])
        read(data[1:], THRESHOLDS[data[0] % len(THRESHOLDS)])


def main() -> None:
    warm_up()
    argv = list(sys.argv)
    if not any(not arg.startswith("-") for arg in argv[1:]):
        argv.append(seed_corpus())
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
