"""Fuzzing the sink store's reader (``iter_store``/``load_item``), the second capture-file
reader in the project: the sink's query index and a forwarding syncd read stores that
people copy files into by hand.

Whatever bytes a stored file holds: only the errors ``iter_store`` skips with a warning
escape ``load_item`` (never MemoryError or anything else), and a forged length prefix
never makes it allocate more than the file's size.
"""

from __future__ import annotations

import tracemalloc

from capture_gen import binary_header, binary_reading, sample_tabular, tabular_header
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from syncd.capture_file import encode_uvarint
from syncd.sink_store_items import CorruptStoreFile, iter_store, load_item

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
SKIPPED = (OSError, ValueError, DecodeError, CorruptStoreFile)  # what iter_store skips


def delimited(*messages: bytes) -> bytes:
    return b"".join(encode_uvarint(len(m)) + m for m in messages)


TAB_HEADER = tabular_header().SerializeToString()
BIN_HEADER = binary_header().SerializeToString()
VALID = [
    delimited(TAB_HEADER, *(r.SerializeToString() for r in sample_tabular(3))),
    delimited(BIN_HEADER, binary_reading(b"\x01" * 300).SerializeToString()),
]


def read_all(path) -> None:
    """Everything a consumer of the store does with one item."""
    try:
        item = load_item(path)
        if item.kind == "binary":
            item.read_bytes()
        elif item.kind == "tabular":
            item.sensor_data()
        if item.kind != "file":
            item.header()
    except SKIPPED:
        pass


def peak_of(path) -> int:
    read_all(path)  # once untraced: protobuf builds its lazy state on first use
    tracemalloc.start()
    try:
        read_all(path)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_forged_header_length_allocates_little(tmp_path):
    path = tmp_path / ("2026-01-01T00_00_00.000000Z_" + "0" * 32 + ".capture")
    for claim in (2**34, 2**62, 2**64 - 1):
        path.write_bytes(encode_uvarint(claim) + b"abc")
        assert peak_of(path) < 256 * 1024
        assert list(iter_store(tmp_path)) == []


@FUZZ
@given(
    base=st.sampled_from(VALID),
    cut=st.one_of(st.none(), st.integers(min_value=0)),  # None: the whole file
    claims=st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=3),
    tail=st.binary(max_size=64),
)
def test_forged_length_prefixes_in_stored_files(tmp_path, base, cut, claims, tail):
    kept = base if cut is None else base[: cut % (len(base) + 1)]
    data = kept + b"".join(encode_uvarint(c) for c in claims) + tail
    path = tmp_path / "x.capture"
    path.write_bytes(data)
    assert peak_of(path) < 256 * 1024 + 8 * len(data)


@FUZZ
@given(
    data=st.one_of(
        st.binary(max_size=2048),
        st.builds(lambda b, tail: b + tail, st.sampled_from(VALID), st.binary(max_size=256)),
    )
)
def test_random_stored_files_never_crash_the_reader(tmp_path, data):
    path = tmp_path / "y.capture"
    path.write_bytes(data)
    read_all(path)
    # a sidecar of garbage next to it: still only the skipped errors
    sidecar = tmp_path / ".y.capture.meta.json"
    sidecar.write_bytes(data[:200])
    try:
        read_all(path)
    finally:
        sidecar.unlink(missing_ok=True)
