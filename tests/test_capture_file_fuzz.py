"""Fuzzing the capture-file reader.

Random files and damaged valid files never raise anything but CaptureFileError (and that
only for the header); every reading before the damage is read back unchanged; the bytes
read plus the bytes reported dropped always add up to the file; allocations stay small
whatever a length prefix claims. The SensorData scanner agrees with protobuf on every
message protobuf accepts.
"""

from __future__ import annotations

import tracemalloc
from datetime import UTC, datetime, timedelta

import pytest
from capture_gen import binary_header, binary_reading, tabular_header, tabular_reading
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from syncd.capture_file import (
    CaptureReader,
    ReadingRecord,
    decode_uvarint,
    encode_uvarint,
    scan_sensor_data,
)
from syncd.errors import CaptureFileError
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

FUZZ = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Small thresholds send tiny readings down the scanning path too.
THRESHOLDS = st.sampled_from([0, 8, 64, 1_000_000])


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / "f.capture"


def delimited(*messages: bytes) -> bytes:
    return b"".join(encode_uvarint(len(m)) + m for m in messages)


def read_checked(path, **kwargs) -> tuple[CaptureReader | None, list[ReadingRecord]]:
    """Read a file, allowing CaptureFileError only; check the reader's accounting."""
    try:
        reader = CaptureReader(path, **kwargs)
    except CaptureFileError as e:
        assert str(e).startswith(f"{path}: not a readable capture file: ")
        return None, []
    with reader:
        records = list(reader)
    end = records[-1].end if records else reader.readings_offset
    assert end + reader.dropped_bytes == reader.size
    assert (reader.tail_error is None) == (reader.dropped_bytes == 0)
    for record in records:
        if record.is_streamed:
            assert sum(len(c) for c in record.iter_binary(7)) == record.binary_length
        else:
            assert (
                record.sensor_data.SerializeToString()
                == ds.SensorData.FromString(record.raw).SerializeToString()
            )
    return reader, records


# --- readings to damage ---------------------------------------------------------------------

times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
scalars = st.one_of(
    st.none(), st.booleans(), st.floats(allow_nan=False), st.text(max_size=6), st.integers(-99, 99)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
tabular = st.builds(
    tabular_reading, st.dictionaries(st.text(max_size=5), values, max_size=4), times
)
binary = st.builds(binary_reading, st.binary(max_size=300), times)
readings = st.one_of(tabular, binary)


@st.composite
def capture_bytes(draw) -> tuple[bytes, ds.DataCaptureMetadata, list[ds.SensorData]]:
    header = draw(st.sampled_from([tabular_header(), binary_header(name="c:1", tags=["t"])]))
    body = draw(st.lists(readings, max_size=6))
    data = delimited(header.SerializeToString(), *(r.SerializeToString() for r in body))
    return data, header, body


mutations = st.lists(
    st.tuples(
        st.sampled_from(["flip", "insert", "delete", "truncate"]),
        st.integers(min_value=0),
        st.integers(1, 255),
    ),
    min_size=1,
    max_size=4,
)


def mutate(data: bytes, ops) -> tuple[bytes, int]:
    """Apply the damage; return the result and the first offset it may have changed."""
    out = bytearray(data)
    first = len(out)
    for op, where, byte in ops:
        pos = where % (len(out) + 1)
        if op == "flip" and pos < len(out):
            out[pos] ^= byte
        elif op == "insert":
            out.insert(pos, byte)
        elif op == "delete" and pos < len(out):
            del out[pos]
        elif op == "truncate":
            del out[pos:]
        else:
            continue
        first = min(first, pos)
    return bytes(out), first


# --- properties -----------------------------------------------------------------------------


@FUZZ
@given(data=st.binary(max_size=4096), large=THRESHOLDS)
def test_random_bytes(scratch, data, large):
    scratch.write_bytes(data)
    read_checked(scratch, large_reading_bytes=large)


@FUZZ
@given(body=st.binary(max_size=4096), large=THRESHOLDS)
def test_valid_header_then_random_bytes(scratch, body, large):
    scratch.write_bytes(delimited(tabular_header().SerializeToString()) + body)
    reader, _ = read_checked(scratch, large_reading_bytes=large)
    assert reader is not None


@FUZZ
@given(file=capture_bytes(), ops=mutations, large=THRESHOLDS)
def test_damaged_file_keeps_every_reading_before_the_damage(scratch, file, ops, large):
    data, header, body = file
    damaged, first_change = mutate(data, ops)
    scratch.write_bytes(damaged)
    reader, records = read_checked(scratch, large_reading_bytes=large)

    header_end = len(delimited(header.SerializeToString()))
    if first_change < header_end:
        return  # the header itself may be gone: CaptureFileError or a different header
    assert reader is not None and reader.header == header
    pos = header_end
    for index, original in enumerate(body):
        raw = original.SerializeToString()
        pos += len(encode_uvarint(len(raw))) + len(raw)
        if pos > first_change:
            break
        record = records[index]
        if record.is_streamed:
            assert record.metadata == original.metadata
            assert b"".join(record.iter_binary(100)) == original.binary
        else:
            assert record.raw == raw and record.sensor_data == original
    if damaged == data:
        assert reader.tail_error is None and len(records) == len(body)


@FUZZ
@given(file=capture_bytes(), cut=st.integers(min_value=0))
def test_truncated_file_reports_a_tail_unless_cut_between_readings(scratch, file, cut):
    data, header, body = file
    header_end = len(delimited(header.SerializeToString()))
    cut = header_end + cut % (len(data) - header_end + 1)
    scratch.write_bytes(data[:cut])
    reader, records = read_checked(scratch)
    boundaries, pos = {header_end}, header_end
    for reading in body:
        pos += len(delimited(reading.SerializeToString()))
        boundaries.add(pos)
    kept = max(i for i, b in enumerate(sorted(boundaries)) if b <= cut)
    assert [r.sensor_data for r in records] == body[:kept]
    assert (reader.tail_error is None) == (cut in boundaries)


@settings(max_examples=60, deadline=None)
@given(
    file=capture_bytes(),
    claims=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=3),
    tail=st.binary(max_size=64),
)
def test_forged_length_prefixes_allocate_little(scratch, file, claims, tail):
    data, _, _ = file
    scratch.write_bytes(data + b"".join(encode_uvarint(c) for c in claims) + tail)
    tracemalloc.start()
    try:
        for large in (0, 1_000_000):
            read_checked(scratch, large_reading_bytes=large, buffer_size=4096)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024 + 8 * len(data)


def read_everything(path, large: int) -> None:
    """Every way the daemon reads a capture file: records (with payloads), raw frames, and
    the delimited batches tabular uploads are built from."""
    read_checked(path, large_reading_bytes=large, buffer_size=4096)
    try:
        reader = CaptureReader(path, large_reading_bytes=large, buffer_size=4096)
    except CaptureFileError:
        return
    with reader:
        raws = list(reader.iter_raw())
        assert sum(map(len, raws)) + reader.dropped_bytes <= reader.size
        for max_count, max_bytes in ((1000, 2 * 1024 * 1024), (2, 64)):
            batches = list(reader.iter_delimited_batches(max_count, max_bytes))
            framed = sum(len(view) for batch in batches for view in batch)
            assert framed + reader.dropped_bytes == reader.size - reader.readings_offset


def peak_allocation(read) -> int:
    tracemalloc.start()
    try:
        read()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@settings(max_examples=60, deadline=None)
@given(
    claim=st.integers(0, 2**64 - 1),
    tail=st.binary(max_size=64),
    large=THRESHOLDS,
)
def test_forged_header_prefix_allocates_little(scratch, claim, tail, large):
    scratch.write_bytes(encode_uvarint(claim) + tail)
    read_everything(scratch, 0)  # once untraced: protobuf builds lazy state on first use
    assert peak_allocation(lambda: read_everything(scratch, large)) < 256 * 1024


@settings(max_examples=60, deadline=None)
@given(
    file=capture_bytes(),
    claims=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=3),
    tail=st.binary(max_size=64),
)
def test_forged_prefixes_allocate_little_on_the_raw_path_too(scratch, file, claims, tail):
    data, _, _ = file
    scratch.write_bytes(data + b"".join(encode_uvarint(c) for c in claims) + tail)
    read_everything(scratch, 0)
    for large in (0, 1_000_000):
        peak = peak_allocation(lambda large=large: read_everything(scratch, large))
        assert peak < 256 * 1024 + 8 * len(data)


@settings(max_examples=60, deadline=None)
@given(
    field=st.sampled_from([1, 2, 3]),  # metadata, struct, binary
    claim=st.integers(0, 2**64 - 1),
    body=st.binary(max_size=200),
    large=THRESHOLDS,
)
def test_forged_lengths_inside_a_reading_allocate_little(scratch, field, claim, body, large):
    # a frame whose own length is right, holding a field whose length prefix lies
    reading = encode_uvarint(field << 3 | 2) + encode_uvarint(claim) + body
    data = delimited(binary_header().SerializeToString(), reading)
    scratch.write_bytes(data)
    read_everything(scratch, 0)
    peak = peak_allocation(lambda: read_everything(scratch, large))
    assert peak < 256 * 1024 + 8 * len(data)


# --- the pure helpers -----------------------------------------------------------------------


@given(st.integers(0, 2**64 - 1))
def test_uvarint_round_trip(value):
    encoded = encode_uvarint(value)
    assert decode_uvarint(encoded) == (value, len(encoded))
    assert decode_uvarint(encoded[:-1]) is None


@given(st.binary(max_size=16))
def test_decode_uvarint_on_any_bytes(data):
    try:
        decoded = decode_uvarint(data)
    except ValueError:
        return
    if decoded is not None:
        value, end = decoded
        assert 1 <= end <= 10 and value < 2**64
        assert len(encode_uvarint(value)) <= end


def scan_or_none(message: bytes):
    try:
        return scan_sensor_data(lambda pos, n: message[pos : pos + n], len(message))
    except ValueError:
        return None


def agrees_with_protobuf(message: bytes) -> None:
    """Whenever protobuf parses a SensorData, the scanner finds the same metadata and payload."""
    try:
        parsed = ds.SensorData.FromString(message)
    except DecodeError:
        return
    layout = scan_or_none(message)
    assert layout is not None, message.hex()
    assert ds.SensorMetadata.FromString(layout.metadata) == parsed.metadata
    if parsed.WhichOneof("data") == "binary":
        assert layout.binary_pos is not None
        assert (
            message[layout.binary_pos : layout.binary_pos + layout.binary_length] == parsed.binary
        )
    else:
        assert layout.binary_pos is None


@FUZZ
@given(st.binary(max_size=200))
def test_scanner_agrees_with_protobuf_on_random_bytes(message):
    agrees_with_protobuf(message)


@FUZZ
@given(parts=st.lists(readings, min_size=1, max_size=3), ops=mutations)
def test_scanner_agrees_with_protobuf_on_damaged_readings(parts, ops):
    # Concatenated messages merge: metadata twice, struct and binary in either order.
    message = b"".join(p.SerializeToString() for p in parts)
    agrees_with_protobuf(message)
    damaged, _ = mutate(message, ops)
    assume(damaged != message)
    agrees_with_protobuf(damaged)


@FUZZ
@given(
    fields=st.lists(
        st.tuples(st.integers(1, 40), st.sampled_from([0, 1, 2, 5]), st.binary(max_size=12)),
        max_size=8,
    ),
    groups=st.lists(st.integers(1, 5), max_size=3),
)
def test_scanner_agrees_with_protobuf_on_unknown_fields_and_groups(fields, groups):
    # Well-formed fields of any number and wire type, optionally wrapped in groups.
    body = b""
    for number, wire, payload in fields:
        tag = encode_uvarint(number << 3 | wire)
        if wire == 0:
            body += tag + encode_uvarint(int.from_bytes(payload[:8], "little"))
        elif wire == 1:
            body += tag + payload.ljust(8, b"\0")[:8]
        elif wire == 5:
            body += tag + payload.ljust(4, b"\0")[:4]
        else:
            body += tag + encode_uvarint(len(payload)) + payload
    for number in groups:
        body = encode_uvarint(number << 3 | 3) + body + encode_uvarint(number << 3 | 4)
    meta = binary_reading(b"", datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=1))
    agrees_with_protobuf(body)
    agrees_with_protobuf(meta.SerializeToString() + body)
