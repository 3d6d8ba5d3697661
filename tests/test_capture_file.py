"""Capture files: the wire helpers, naming, writing, and reading good and damaged files."""

from __future__ import annotations

import hashlib
import itertools
import os
import tracemalloc
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from capture_gen import (
    T0,
    binary_header,
    binary_reading,
    hand_delimited,
    hand_header,
    hand_len,
    hand_sensor_data,
    hand_sensor_metadata,
    hand_tag,
    hand_varint,
    sample_tabular,
    struct_pb,
    tabular_header,
    tabular_reading,
    write_capture,
)

from syncd import capture_file as cf
from syncd.capture_file import (
    CaptureReader,
    CaptureWriter,
    capture_file_name,
    capture_path,
    decode_uvarint,
    encode_uvarint,
    read_header,
    scan_sensor_data,
)
from syncd.errors import CaptureFileError
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

MiB = 1 << 20


def read_all(path: Path, **kwargs) -> tuple[list[cf.ReadingRecord], CaptureReader]:
    with CaptureReader(path, **kwargs) as reader:
        return list(reader), reader


def message_reader(message: bytes):
    return lambda pos, n: message[pos : pos + n]


# --- uvarint --------------------------------------------------------------------------------

VARINTS = [
    (0, "00"),
    (1, "01"),
    (127, "7f"),
    (128, "8001"),
    (300, "ac02"),
    (16384, "808001"),
    (2**32, "8080808010"),
    (2**64 - 1, "ffffffffffffffffff01"),
]


@pytest.mark.parametrize(("value", "encoded"), VARINTS)
def test_uvarint_known_encodings(value, encoded):
    assert encode_uvarint(value).hex() == encoded
    assert decode_uvarint(bytes.fromhex(encoded)) == (value, len(encoded) // 2)
    assert decode_uvarint(b"\xaa" + bytes.fromhex(encoded) + b"\xbb", 1) == (
        value,
        1 + len(encoded) // 2,
    )


@pytest.mark.parametrize("value", [-1, 2**64])
def test_encode_uvarint_rejects_out_of_range(value):
    with pytest.raises(ValueError, match="out of range"):
        encode_uvarint(value)


@pytest.mark.parametrize("data", [b"", b"\x80", b"\xff\xff", b"\xff" * 9])
def test_decode_uvarint_needs_more_bytes(data):
    assert decode_uvarint(data) is None


def test_decode_uvarint_rejects_overlong_and_overflow():
    with pytest.raises(ValueError, match="longer than 10 bytes"):
        decode_uvarint(b"\x80" * 10 + b"\x00")
    with pytest.raises(ValueError, match="exceeds 64 bits"):
        decode_uvarint(b"\xff" * 9 + b"\x02")
    # Non-minimal but within 10 bytes is still a valid encoding.
    assert decode_uvarint(b"\x80" * 9 + b"\x00") == (0, 10)


# --- scanning a SensorData without its payload ----------------------------------------------

META = hand_sensor_metadata(T0, T0 + timedelta(seconds=1))


def test_scan_finds_metadata_and_payload():
    payload = bytes(range(256)) * 4
    message = hand_len(1, META) + hand_len(3, payload)
    layout = scan_sensor_data(message_reader(message), len(message))
    assert layout.metadata == META
    assert message[layout.binary_pos : layout.binary_pos + layout.binary_length] == payload


def test_scan_never_asks_for_the_payload():
    payload = b"\x5a" * 3 * MiB
    message = hand_len(3, payload) + hand_len(1, META)  # metadata after the payload
    asked = []

    def read_at(pos, n):
        asked.append((pos, n))
        return message[pos : pos + n]

    layout = scan_sensor_data(read_at, len(message))
    assert layout.metadata == META
    assert layout.binary_length == len(payload)
    assert sum(n for _, n in asked) < 100


def test_scan_follows_protobuf_oneof_and_merge_rules():
    meta_a = hand_len(1, hand_varint(1, 5))  # time_requested.seconds = 5
    meta_b = hand_len(2, hand_varint(1, 7))  # time_received.seconds = 7
    struct = hand_len(2, b"")
    binary = hand_len(3, b"abc")
    # A later struct replaces the binary member of the oneof.
    assert scan_sensor_data(message_reader(binary + struct), 7).binary_pos is None
    # A later binary replaces the struct; repeated metadata is merged.
    message = hand_len(1, meta_a) + struct + hand_len(1, meta_b) + binary
    layout = scan_sensor_data(message_reader(message), len(message))
    assert message[layout.binary_pos : layout.binary_pos + 3] == b"abc"
    parsed = ds.SensorMetadata.FromString(layout.metadata)
    assert parsed == ds.SensorData.FromString(message).metadata
    assert (parsed.time_requested.seconds, parsed.time_received.seconds) == (5, 7)


def test_scan_skips_unknown_fields_and_groups():
    unknown = (
        hand_varint(9, 2**63)
        + hand_tag(10, 1)
        + b"\x00" * 8
        + hand_tag(11, 5)
        + b"\x00" * 4
        + hand_len(12, b"zz")
        + hand_tag(13, 3)  # a group holding a binary-numbered field: not the payload
        + hand_len(3, b"in-group")
        + hand_tag(13, 4)
        + hand_varint(3, 1)  # field 3 with the wrong wire type is an unknown field
    )
    message = hand_len(3, b"payload") + unknown
    layout = scan_sensor_data(message_reader(message), len(message))
    assert message[layout.binary_pos : layout.binary_pos + layout.binary_length] == b"payload"
    assert ds.SensorData.FromString(message).binary == b"payload"


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (b"\x00\x01", "invalid field number 0"),
        (b"\x0f", "invalid wire type 7"),
        (b"\x1a\x05abc", "says 5 bytes, 3 remain"),
        (b"\x1a", "length of field 3 at byte 0 is cut off"),
        (b"\x80", "tag at byte 0 is cut off"),
        (b"\x08\xff", "varint of field 1 at byte 0 is cut off"),
        (b"\x08" + b"\xff" * 10 + b"\x01", "cut off or too long"),
        (b"\x09\x00\x00", "fixed-width field 1 is cut off"),
        (b"\x23", "group 4 is not closed"),
        (b"\x24", "unmatched end of group 4"),
        (b"\x23\x2c", "unmatched end of group 5"),
        (b"\x0b" * 101, "nested deeper than 100"),
    ],
)
def test_scan_rejects_corrupt_wire_format(message, reason):
    with pytest.raises(ValueError, match=reason):
        scan_sensor_data(message_reader(message), len(message))


def test_scan_caps_metadata():
    message = hand_len(1, META) + hand_len(3, b"x")
    with pytest.raises(ValueError, match=r"metadata of \d+ bytes exceeds 8 bytes"):
        scan_sensor_data(message_reader(message), len(message), max_metadata_bytes=8)


# --- naming ---------------------------------------------------------------------------------


def test_capture_file_name_is_rfc3339_with_underscores():
    assert capture_file_name(T0) == "2025-03-14T15_09_26.535897Z.capture"
    east = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2)))
    assert capture_file_name(east) == "2024-01-02T03_04_05.000000+02_00.capture"
    west = datetime(999, 12, 31, 23, 59, 59, 1, tzinfo=timezone(-timedelta(hours=5, minutes=30)))
    assert capture_file_name(west) == "0999-12-31T23_59_59.000001-05_30.capture"


def test_capture_file_name_defaults_to_now_utc():
    before = datetime.now(UTC)
    name = capture_file_name()
    after = datetime.now(UTC)
    stamp = datetime.fromisoformat(name.removesuffix(".capture").replace("_", ":"))
    assert before <= stamp <= after


def test_capture_file_names_sort_in_time_order():
    times = [T0 + timedelta(microseconds=us) for us in (0, 1, 10, 100_000, 999_999, 1_000_000)]
    names = [capture_file_name(t) for t in times]
    assert sorted(names) == names


def test_capture_file_name_rejects_naive_time():
    with pytest.raises(ValueError, match="timezone-aware"):
        capture_file_name(datetime(2025, 1, 1))


def test_capture_path_follows_viam_layout(tmp_path):
    header = binary_header(name="remote:cam")
    assert capture_path(tmp_path, header, T0) == (
        tmp_path / "rdk_component_camera" / "remote_cam" / "ReadImage" / capture_file_name(T0)
    )


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "a\0b"])
def test_capture_path_rejects_names_that_leave_the_directory(tmp_path, name):
    with pytest.raises(ValueError, match="component_name"):
        capture_path(tmp_path, binary_header(name=name), T0)


def test_header_kind_helpers():
    assert cf.is_binary_header(binary_header()) and not cf.is_tabular_header(binary_header())
    assert cf.is_tabular_header(tabular_header()) and not cf.is_binary_header(tabular_header())
    unspecified = ds.DataCaptureMetadata(component_name="x")
    assert not cf.is_binary_header(unspecified) and not cf.is_tabular_header(unspecified)


# --- round trips ----------------------------------------------------------------------------


def test_tabular_round_trip(tmp_path):
    header = tabular_header()
    readings = sample_tabular(50)
    path = write_capture(tmp_path, header, readings)
    assert path.name.endswith(".capture") and path.parent.name == "Readings"
    assert read_header(path) == header

    records, reader = read_all(path)
    assert reader.header == header
    assert [r.sensor_data for r in records] == readings
    assert [r.raw for r in records] == [r.SerializeToString() for r in readings]
    assert [r.index for r in records] == list(range(50))
    assert records[0].offset > reader.readings_offset
    assert all(a.end < b.offset for a, b in itertools.pairwise(records))
    assert records[-1].end == reader.size == path.stat().st_size
    assert all(r.data_field == "struct" and not r.is_streamed for r in records)
    assert records[3].metadata.time_requested.ToDatetime(UTC) == T0 + timedelta(milliseconds=3)
    assert records[0].sensor_data.struct["readings"]["nested"]["list"][3]["deep"] is True
    assert (reader.tail_error, reader.dropped_bytes) == (None, 0)


def test_small_binary_round_trip_and_chunks(tmp_path):
    payloads = [b"", b"\x00", os.urandom(70_000), os.urandom(999_000)]
    path = write_capture(tmp_path, binary_header(), [binary_reading(p) for p in payloads])
    records, reader = read_all(path)
    assert reader.tail_error is None
    for record, payload in zip(records, payloads, strict=True):
        assert not record.is_streamed and record.data_field == "binary"
        assert record.sensor_data.binary == payload
        chunks = list(record.iter_binary(65536))
        assert b"".join(chunks) == payload
        assert all(len(c) == 65536 for c in chunks[:-1])


def test_large_binary_reading_is_streamed_from_the_file(tmp_path):
    big = os.urandom(5 * MiB + 3)
    readings = [
        binary_reading(b"small-before"),
        binary_reading(big, T0 + timedelta(seconds=1)),
        binary_reading(b"small-after", T0 + timedelta(seconds=2)),
    ]
    path = write_capture(tmp_path, binary_header(), readings)

    tracemalloc.start()
    try:
        records, reader = read_all(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MiB, "scanning the large reading must not load its payload"
    assert reader.tail_error is None and len(records) == 3

    large = records[1]
    assert large.is_streamed and large.sensor_data is None and large.raw is None
    assert large.data_field == "binary"
    assert large.metadata == readings[1].metadata
    assert large.binary_length == len(big)
    with open(path, "rb") as f:
        f.seek(large.binary_offset)
        assert f.read(16) == big[:16]

    tracemalloc.start()
    try:
        sizes = []
        digest = hashlib.sha256()
        for chunk in large.iter_binary(65536):
            digest.update(chunk)
            sizes.append(len(chunk))
        _, chunk_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.digest() == hashlib.sha256(big).digest()
    assert sum(sizes) == len(big) and max(sizes) == 65536 and len(sizes) == -(-len(big) // 65536)
    assert chunk_peak < MiB
    assert [r.sensor_data.binary for r in (records[0], records[2])] == [
        b"small-before",
        b"small-after",
    ]


def test_large_reading_with_metadata_after_payload(tmp_path):
    payload = os.urandom(2 * MiB)
    message = hand_len(3, payload) + hand_len(1, META)
    path = tmp_path / "late-meta.capture"
    path.write_bytes(hand_delimited(hand_header("t", "n", "m", 1), message))
    (record,), reader = read_all(path)
    assert reader.tail_error is None
    assert record.is_streamed
    assert record.metadata == ds.SensorMetadata.FromString(META)
    assert b"".join(record.iter_binary(1 << 20)) == payload


def test_large_tabular_reading_is_parsed_whole(tmp_path):
    readings = sample_tabular(3)
    path = write_capture(tmp_path, tabular_header(), readings)
    records, reader = read_all(path, large_reading_bytes=10)  # every reading is "large"
    assert reader.tail_error is None
    assert [r.sensor_data for r in records] == readings
    assert not any(r.is_streamed for r in records)


def test_header_only_file_has_no_readings(tmp_path):
    path = write_capture(tmp_path, tabular_header(), [])
    records, reader = read_all(path)
    assert records == []
    assert (reader.tail_error, reader.dropped_bytes) == (None, 0)
    assert reader.readings_offset == reader.size


def test_iterating_again_starts_over(tmp_path):
    path = write_capture(tmp_path, tabular_header(), sample_tabular(4))
    with CaptureReader(path) as reader:
        first = next(iter(reader))
        assert [r.index for r in reader] == [0, 1, 2, 3]
        assert next(iter(reader)).sensor_data == first.sensor_data


# --- files encoded by hand from the spec ----------------------------------------------------

RDK_READINGS = {
    "temperature": 21.5,
    "count": 3,
    "ok": True,
    "off": False,
    "zero": 0,
    "name": "north",
    "missing": None,
    "position": {"x": 1.25, "y": -2, "tags": ["a", 1, None, {"deep": "er"}]},
}


def test_reader_reads_hand_encoded_tabular_file(tmp_path):
    times = [
        (T0 + timedelta(seconds=i), T0 + timedelta(seconds=i, milliseconds=7)) for i in range(3)
    ]
    body = [hand_sensor_data(req, rec, struct={"readings": RDK_READINGS}) for req, rec in times]
    header = hand_header(
        "rdk:component:movement_sensor", "gps", "Position", 2, ".dat", ["yard", "run:7"], "text/x"
    )
    path = tmp_path / "hand.capture"
    path.write_bytes(hand_delimited(header, *body))

    records, reader = read_all(path)
    assert reader.header == ds.DataCaptureMetadata(
        component_type="rdk:component:movement_sensor",
        component_name="gps",
        method_name="Position",
        type=ds.DATA_TYPE_TABULAR_SENSOR,
        file_extension=".dat",
        tags=["yard", "run:7"],
        mime_type="text/x",
    )
    assert reader.tail_error is None and len(records) == 3
    for record, (requested, received) in zip(records, times, strict=True):
        assert record.metadata.time_requested.ToDatetime(UTC) == requested
        assert record.metadata.time_received.ToDatetime(UTC) == received
        assert record.sensor_data.struct == struct_pb({"readings": RDK_READINGS})
        assert record.raw == body[record.index]


def test_reader_reads_hand_encoded_binary_file(tmp_path):
    payloads = [b"\xff\xd8jpeg", os.urandom(1_500_000)]
    body = [hand_sensor_data(T0, T0, binary=p) for p in payloads]
    path = tmp_path / "hand-binary.capture"
    path.write_bytes(
        hand_delimited(hand_header("rdk:component:camera", "c", "ReadImage", 1, ".jpeg"), *body)
    )
    records, reader = read_all(path)
    assert cf.is_binary_header(reader.header) and reader.tail_error is None
    assert records[0].sensor_data.binary == payloads[0] and not records[0].is_streamed
    assert records[1].is_streamed and b"".join(records[1].iter_binary()) == payloads[1]
    assert records[1].metadata.time_requested.ToDatetime(UTC) == T0


def test_writer_output_matches_hand_encoding_byte_for_byte(tmp_path):
    # Single-key maps only: protobuf does not fix the order of several map entries.
    values = {"v": {"list": [1.5, "s", True, None, {"k": -3}]}}
    received = T0 + timedelta(milliseconds=4)
    header = tabular_header(tags=["a", "b"])
    path = write_capture(tmp_path, header, [tabular_reading(values, T0, received)])
    expected = hand_delimited(
        hand_header("rdk:component:sensor", "imu", "Readings", 2, ".dat", ["a", "b"]),
        hand_sensor_data(T0, received, struct={"readings": values}),
    )
    assert path.read_bytes() == expected

    path = write_capture(tmp_path, binary_header(), [binary_reading(b"\x01\x02", T0, received)])
    assert path.read_bytes() == hand_delimited(
        hand_header("rdk:component:camera", "cam", "ReadImage", 1, ".jpeg"),
        hand_sensor_data(T0, received, binary=b"\x01\x02"),
    )


# --- damaged files --------------------------------------------------------------------------


def small_file(tmp_path: Path, count: int = 3, payload_size: int = 200) -> tuple[Path, list]:
    readings = [
        binary_reading(bytes([i]) * payload_size, T0 + timedelta(seconds=i)) for i in range(count)
    ]
    return write_capture(tmp_path, binary_header(), readings), readings


def test_truncated_inside_a_length_prefix(tmp_path):
    path, readings = small_file(tmp_path)
    records, _ = read_all(path)
    cut = records[2].offset - 1  # the prefix of a 200+ byte reading is two bytes long
    path.write_bytes(path.read_bytes()[:cut])
    kept, reader = read_all(path)
    assert [r.sensor_data for r in kept] == readings[:2]
    prefix_at = records[1].end
    assert reader.tail_error == (
        f"truncated length prefix at byte {prefix_at}: the file ends 1 bytes into it"
    )
    assert reader.dropped_bytes == 1


def test_truncated_inside_a_message(tmp_path):
    path, readings = small_file(tmp_path)
    records, _ = read_all(path)
    cut = records[2].offset + 37
    path.write_bytes(path.read_bytes()[:cut])
    kept, reader = read_all(path)
    assert [r.sensor_data for r in kept] == readings[:2]
    prefix_at = records[1].end
    assert reader.tail_error == (
        f"truncated reading at byte {prefix_at}: length prefix says {records[2].length} bytes, "
        "37 remain"
    )
    assert reader.dropped_bytes == cut - prefix_at


def test_truncation_at_every_byte(tmp_path):
    path, _ = small_file(tmp_path, count=3, payload_size=20)
    data = path.read_bytes()
    records, full = read_all(path)
    boundaries = {full.readings_offset} | {r.end for r in records}
    for cut in range(len(data) + 1):
        path.write_bytes(data[:cut])
        if cut < full.readings_offset:
            with pytest.raises(CaptureFileError, match=str(path)):
                CaptureReader(path)
            continue
        kept, reader = read_all(path)
        assert [r.sensor_data for r in kept] == [r.sensor_data for r in records if r.end <= cut]
        assert (reader.tail_error is None) == (cut in boundaries), cut
        assert (kept[-1].end if kept else reader.readings_offset) + reader.dropped_bytes == cut


def test_raw_framing_agrees_with_parsing_at_every_cut(tmp_path):
    path, _ = small_file(tmp_path, count=3, payload_size=20)
    data = path.read_bytes()
    _, full = read_all(path)
    for cut in range(full.readings_offset, len(data) + 1):
        path.write_bytes(data[:cut])
        kept, parsed = read_all(path)
        expected = [data[r.offset - len(cf.encode_uvarint(r.length)) : r.end] for r in kept]
        with CaptureReader(path) as reader:
            assert list(reader.iter_raw()) == [r.raw for r in kept], cut
            report = (reader.tail_error, reader.dropped_bytes)
            assert report == (parsed.tail_error, parsed.dropped_bytes)
            batches = list(reader.iter_delimited_batches(2, 1 << 20))
            assert [bytes(piece) for b in batches for piece in b] == expected, cut
            assert all(len(b) <= 2 for b in batches)
            assert (reader.tail_error, reader.dropped_bytes) == report


@pytest.mark.parametrize("payload_size", [20, 300, 70_000])
def test_delimited_batches_respect_the_byte_limit(tmp_path, payload_size):
    path, readings = small_file(tmp_path, count=40, payload_size=payload_size)
    limit = 3 * (payload_size + 100)
    with CaptureReader(path) as reader:
        batches = list(reader.iter_delimited_batches(1000, limit))
        assert reader.tail_error is None
    assert sum(len(b) for b in batches) == len(readings)
    assert all(sum(1 + len(piece) for piece in b) <= limit for b in batches)
    pieces = [bytes(piece) for b in batches for piece in b]
    assert [
        ds.SensorData.FromString(p[len(p) - r.ByteSize() :])
        for p, r in zip(pieces, readings, strict=True)
    ] == readings


@pytest.mark.parametrize("payload_size", [300, 70_000, 400_000])
def test_delimited_batches_hold_nothing_beyond_each_batch(tmp_path, payload_size):
    # What a batch holds stays in memory while its request is in flight, once per upload
    # slot: no piece may keep a larger block of the file alive, and the reader, waiting
    # for the next call, holds one block at most (not the batch it gave).
    path, readings = small_file(tmp_path, count=30, payload_size=payload_size)
    with CaptureReader(path) as reader:
        batches = reader.iter_delimited_batches(1000, 3 * (payload_size + 100))
        got = 0
        for batch in batches:
            got += len(batch)
            assert all(isinstance(p, bytes) or len(p.obj) == len(p) for p in batch)
            held = {
                id(x): x
                for v in batches.gi_frame.f_locals.values()
                for x in (v if isinstance(v, list) else [v])
                if isinstance(x, bytes | memoryview)
            }
            largest = max(len(p) for p in batch)
            assert sum(len(x) for x in held.values()) <= max(cf.BLOCK_BYTES, largest)
    assert got == len(readings)


def test_zero_filled_tail_is_dropped(tmp_path):
    path, readings = small_file(tmp_path)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\x00" * 4096)
    kept, reader = read_all(path)
    assert [r.sensor_data for r in kept] == readings
    assert reader.tail_error == f"empty reading at byte {size}: zero length prefix"
    assert reader.dropped_bytes == 4096


def test_corrupt_reading_keeps_those_before(tmp_path):
    path, readings = small_file(tmp_path)
    records, _ = read_all(path)
    data = bytearray(path.read_bytes())
    data[records[1].offset] = 0x0F  # wire type 7 does not exist
    path.write_bytes(bytes(data))
    kept, reader = read_all(path)
    assert [r.sensor_data for r in kept] == readings[:1]
    assert reader.tail_error == (
        f"corrupt reading at byte {records[0].end}: {records[1].length} bytes that are not a "
        "SensorData message"
    )
    assert reader.dropped_bytes == path.stat().st_size - records[0].end


def test_corrupt_large_reading_reports_why(tmp_path):
    message = hand_len(1, META) + hand_len(3, b"\x00" * 3000) + b"\x0f"
    path = tmp_path / "bad-large.capture"
    path.write_bytes(hand_delimited(hand_header("t", "n", "m", 1), message))
    records, reader = read_all(path, large_reading_bytes=1000)
    assert records == []
    assert reader.tail_error.startswith("corrupt reading at byte")
    assert reader.tail_error.endswith(
        f"({len(message)} bytes): invalid wire type 7 at byte {len(message) - 1}"
    )


def test_overlong_length_prefix(tmp_path):
    path, _ = small_file(tmp_path, count=1)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(b"\xff" * 12)
    kept, reader = read_all(path)
    assert len(kept) == 1
    assert reader.tail_error == f"corrupt length prefix at byte {size}: varint longer than 10 bytes"


def test_forged_huge_length_prefix_allocates_nothing_big(tmp_path):
    path, _ = small_file(tmp_path, count=1)
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(encode_uvarint(2**60) + b"tiny")
    tracemalloc.start()
    try:
        kept, reader = read_all(path, buffer_size=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == 1
    assert reader.tail_error == (
        f"truncated reading at byte {size}: length prefix says {2**60} bytes, 4 remain"
    )
    assert peak < 256 * 1024


def test_forged_prefix_on_a_large_file_does_not_load_the_file(tmp_path):
    # A prefix that fits in the file but claims far more than the threshold is scanned,
    # and a payload-sized junk field is skipped by offset, not read.
    path = tmp_path / "junk.capture"
    with open(path, "wb") as f:
        f.write(hand_delimited(hand_header("t", "n", "m", 1)))
        f.write(encode_uvarint(64 * MiB) + hand_tag(3, 2) + encode_uvarint(64 * MiB - 5))
        f.truncate(f.tell() + 64 * MiB - 5)
    tracemalloc.start()
    try:
        kept, reader = read_all(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == 1 and kept[0].binary_length == 64 * MiB - 5
    assert reader.tail_error is None
    assert peak < MiB


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "the file is empty"),
        (b"this is not a capture file\n", "header length prefix says 116 bytes, 26 remain"),
        (b"\x00rest", "the header is empty"),
        (b"\x80", "header truncated length prefix at byte 0"),
        (b"\xff" * 11, "header corrupt length prefix at byte 0: varint longer than 10 bytes"),
        (encode_uvarint(2**63) + b"x", f"header length prefix says {2**63} bytes, over the"),
        (b"\x03\x0a\x05a", "the header is not a valid DataCaptureMetadata message"),
        (b"\x02\x0a\x01", "the header is not a valid DataCaptureMetadata message"),
        (b"\x03\x0a\x01\xff", "the header is not a valid DataCaptureMetadata message"),  # not UTF-8
    ],
)
def test_unreadable_header_is_a_capture_file_error(tmp_path, content, reason):
    path = tmp_path / "bad.capture"
    path.write_bytes(content)
    for open_it in (CaptureReader, read_header):
        with pytest.raises(CaptureFileError) as caught:
            open_it(path)
        assert str(caught.value).startswith(f"{path}: not a readable capture file: ")
        assert reason in str(caught.value)


def test_missing_file_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        CaptureReader(tmp_path / "gone.capture")


def test_bytes_appended_after_open_are_not_read(tmp_path):
    path, _ = small_file(tmp_path, count=2)
    with CaptureReader(path) as reader, open(path, "ab") as f:
        f.write(hand_delimited(binary_reading(b"later").SerializeToString()))
        f.flush()
        assert len(list(reader)) == 2 and reader.tail_error is None


def test_file_shrinking_while_read_is_a_tail_error(tmp_path):
    path, readings = small_file(tmp_path, count=3)
    records, _ = read_all(path)
    with CaptureReader(path, buffer_size=64) as reader:
        os.truncate(path, records[1].offset + 5)
        kept = list(reader)
    assert [r.sensor_data for r in kept] == readings[:1]
    assert "truncated" in reader.tail_error


def test_iter_binary_reports_a_file_cut_since(tmp_path):
    path = write_capture(tmp_path, binary_header(), [binary_reading(os.urandom(2 * MiB))])
    (record,), _ = read_all(path)
    os.truncate(path, record.binary_offset + MiB)
    with pytest.raises(CaptureFileError, match="file ends inside the binary payload of reading 0"):
        b"".join(record.iter_binary())


def test_iter_binary_needs_a_binary_reading(tmp_path):
    path = write_capture(tmp_path, tabular_header(), sample_tabular(1))
    (record,), _ = read_all(path)
    with pytest.raises(ValueError, match="has no binary payload"):
        list(record.iter_binary())
    with pytest.raises(ValueError, match="chunk_size"):
        list(record.iter_binary(0))


# --- writing --------------------------------------------------------------------------------


def test_writer_writes_prog_then_renames_with_fsyncs(tmp_path, monkeypatch):
    events = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(
        os,
        "rename",
        lambda a, b: (events.append(("rename", Path(a).name, Path(b).name)), real_rename(a, b))[1],
    )
    final = capture_path(tmp_path, tabular_header(), T0)
    with CaptureWriter(final, tabular_header()) as writer:
        assert writer.path == writer.prog_path == str(final.with_name(final.name[:-8] + ".prog"))
        assert writer.final_path == str(final)
        assert os.path.exists(writer.prog_path) and not final.exists()
        for reading in sample_tabular(3):
            writer.write(reading)
        writer.flush()
        # An unfinished .prog is already readable: orphan recovery depends on it.
        assert len(read_all(Path(writer.prog_path))[0]) == 3
    assert writer.path == str(final) and final.exists() and not os.path.exists(writer.prog_path)
    assert writer.bytes_written == final.stat().st_size and writer.readings_written == 3
    stem = final.name[: -len(".capture")]
    assert events == ["fsync", ("rename", stem + ".prog", stem + ".capture"), "fsync"]
    writer.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        writer.write(sample_tabular(1)[0])


def test_writer_finalizes_on_exception(tmp_path):
    final = capture_path(tmp_path, tabular_header(), T0)
    with pytest.raises(RuntimeError), CaptureWriter(final, tabular_header()) as writer:
        writer.write(sample_tabular(1)[0])
        raise RuntimeError("sensor failed")
    assert [r.index for r in read_all(final)[0]] == [0]


def test_writer_accepts_prog_path_and_returns_sizes(tmp_path):
    with CaptureWriter(tmp_path / "a.prog", tabular_header()) as writer:
        size = writer.write(binary_reading(b"x" * 300))
    assert size == 2 + binary_reading(b"x" * 300).ByteSize()
    assert (tmp_path / "a.capture").exists()


def test_writer_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"must end in \.capture"):
        CaptureWriter(tmp_path / "a.bin", tabular_header())
    with pytest.raises(ValueError, match="empty header"):
        CaptureWriter(tmp_path / "a.capture", ds.DataCaptureMetadata())
    with CaptureWriter(tmp_path / "a.capture", tabular_header()) as writer:
        with pytest.raises(ValueError, match="empty SensorData"):
            writer.write(ds.SensorData())
        with pytest.raises(FileExistsError):
            CaptureWriter(tmp_path / "a.capture", tabular_header())  # its .prog exists
    with pytest.raises(FileExistsError, match="already exists"):
        CaptureWriter(tmp_path / "a.capture", tabular_header())
