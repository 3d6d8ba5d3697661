"""syncd's uploader against a server built from Viam's own SDK stubs (another process)."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
from pathlib import Path

from capture_gen import T0, binary_reading, sample_tabular, tabular_header, write_capture
from google.protobuf.json_format import ParseDict
from test_sync_e2e import PART, sync_once, write_config

from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

HERE = Path(__file__).resolve().parent


async def test_uploads_decode_identically_in_viams_sdk(tmp_path, viam_python):
    record = tmp_path / "received.jsonl"
    server = await asyncio.create_subprocess_exec(
        viam_python,
        str(HERE / "viam_sdk_server.py"),
        str(record),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(server.stdout.readline(), 60)
        port = int(line.split()[1])
        config = write_config(tmp_path, port)
        capture = tmp_path / "capture"
        readings = sample_tabular(20)
        write_capture(capture, tabular_header(), readings)
        big = binary_reading(os.urandom(1_200_000), T0)
        write_capture(
            capture,
            tabular_header(name="cam", type=ds.DATA_TYPE_BINARY_SENSOR, file_extension=".png"),
            [big],
        )
        (capture / "log.txt").write_bytes(b"line\n" * 1000)
        past = os.path.getmtime(capture / "log.txt") - 5
        os.utime(capture / "log.txt", (past, past))
        assert await sync_once(config) == 0
    finally:
        server.send_signal(signal.SIGTERM)
        await server.wait()
    entries = [json.loads(line) for line in record.read_text().splitlines()]
    by_rpc = {e["rpc"]: e for e in entries}
    assert len(entries) == 3, entries

    request = ParseDict(by_rpc["DataCaptureUpload"]["request"], ds.DataCaptureUploadRequest())
    assert request.metadata.part_id == PART
    assert request.metadata.type == ds.DATA_TYPE_TABULAR_SENSOR
    assert list(request.sensor_contents) == readings

    streamed = by_rpc["StreamingDataCaptureUpload"]
    header = ParseDict(streamed["metadata"], ds.DataCaptureUploadMetadata())
    assert header.upload_metadata.component_name == "cam"
    assert header.upload_metadata.file_extension == ".png"
    assert header.sensor_metadata == big.metadata
    assert base64.b64decode(streamed["data"]) == big.binary

    upload = by_rpc["FileUpload"]
    metadata = ParseDict(upload["metadata"], ds.UploadMetadata())
    assert metadata.file_name == str(capture / "log.txt")
    assert metadata.type == ds.DATA_TYPE_FILE and metadata.file_extension == ".txt"
    assert base64.b64decode(upload["data"]) == b"line\n" * 1000
    assert sys.executable != viam_python
