"""Reading and writing Viam capture files.

This module owns the on-disk capture format. A capture file is a sequence of uvarint
length-prefixed protobuf messages (the "delimited" format): one ``DataCaptureMetadata``
header, then one ``SensorData`` per reading. A file being written ends in ``.prog`` and is
renamed to ``.capture`` when complete; its name is an RFC 3339 timestamp with ':' replaced
by '_', under ``<capture_dir>/<component_type>/<component_name>/<method>/``.

Public API:

- ``read_header(path)``: the header of a capture file.
- ``CaptureReader(path)``: streams the readings as ``ReadingRecord``s without loading the
  file; after iteration ``dropped_bytes`` and ``tail_error`` report a truncated or corrupt
  tail. A large binary reading is not loaded: its record holds the payload's place in the
  file and ``ReadingRecord.iter_binary`` reads it in chunks.
- ``CaptureWriter(path, header)``: writes ``.prog``, fsyncs and renames it to ``.capture``.
- ``capture_file_name(dt)``, ``capture_path(capture_dir, header, dt)``: Viam's file layout.
- ``is_binary_header(header)``, ``is_tabular_header(header)``: which upload path a file takes.
- ``encode_uvarint``, ``decode_uvarint``, ``scan_sensor_data``: pure wire-format helpers.

A missing or corrupt header raises ``CaptureFileError`` naming the file; ``OSError`` (the
file vanished, permissions) propagates unchanged so callers can tell the two apart.
"""

from __future__ import annotations

import bisect
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from google.protobuf.message import DecodeError

from syncd.errors import CaptureFileError, EmptyCaptureFileError
from syncd.fsutil import fsync_dir
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds

__all__ = [
    "CAPTURE_SUFFIX",
    "LARGE_READING_BYTES",
    "PROG_SUFFIX",
    "CaptureReader",
    "CaptureWriter",
    "ReadingRecord",
    "SensorDataLayout",
    "capture_file_name",
    "capture_path",
    "decode_uvarint",
    "encode_uvarint",
    "is_binary_header",
    "is_tabular_header",
    "read_header",
    "scan_sensor_data",
]

PROG_SUFFIX = ".prog"
CAPTURE_SUFFIX = ".capture"

# Readings above this size are scanned instead of parsed, so a big binary payload is never
# loaded; it matches the size above which Viam streams a binary reading in 64 KiB chunks.
LARGE_READING_BYTES = 1_000_000
MAX_VARINT_BYTES = 10
# A header is a handful of short strings; anything bigger is a corrupt length prefix.
MAX_HEADER_BYTES = 1 << 20
# SensorMetadata is two timestamps and a few annotations (the same cap as Viam's reader).
MAX_SENSOR_METADATA_BYTES = 1 << 20
# A reader reads the file in blocks of this size and holds one (a reading bigger than
# that is read whole): per file being uploaded, beside the request in flight.
BLOCK_BYTES = 256 * 1024

_U64_MAX = (1 << 64) - 1
_MAX_FIELD_NUMBER = (1 << 29) - 1
_MAX_GROUP_DEPTH = 100
_FIELD_HEAD_BYTES = 2 * MAX_VARINT_BYTES  # a tag and a length varint
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = range(6)


# --- pure wire-format helpers -------------------------------------------------------------


def encode_uvarint(value: int) -> bytes:
    """Encode an unsigned 64-bit integer as a protobuf base-128 varint."""
    if not 0 <= value <= _U64_MAX:
        raise ValueError(f"uvarint out of range: {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int] | None:
    """Decode the uvarint at ``buf[pos:]``; return ``(value, position after it)``.

    Returns None when ``buf`` ends before the varint does (more bytes are needed). Raises
    ValueError when it runs past 10 bytes or exceeds 64 bits.
    """
    end = len(buf)
    if pos < end and buf[pos] < 0x80:
        return buf[pos], pos + 1
    result = 0
    shift = 0
    i = pos
    while i < end:
        byte = buf[i]
        result |= (byte & 0x7F) << shift
        i += 1
        if byte < 0x80:
            if result > _U64_MAX:
                raise ValueError("varint exceeds 64 bits")
            return result, i
        if i - pos >= MAX_VARINT_BYTES:
            raise ValueError(f"varint longer than {MAX_VARINT_BYTES} bytes")
        shift += 7
    return None


@dataclass(frozen=True, slots=True)
class SensorDataLayout:
    """Where the parts of one serialized SensorData lie, relative to its first byte.

    ``metadata`` is the serialized SensorMetadata (every occurrence joined, as protobuf
    merges them). ``binary_pos`` is None when the ``data`` oneof does not end up as
    ``binary`` (a struct reading, or no data).
    """

    metadata: bytes
    binary_pos: int | None
    binary_length: int


def scan_sensor_data(
    read_at: Callable[[int, int], bytes],
    length: int,
    *,
    max_metadata_bytes: int = MAX_SENSOR_METADATA_BYTES,
) -> SensorDataLayout:
    """Walk the top-level fields of a serialized SensorData without reading its payload.

    ``read_at(pos, n)`` returns ``n`` bytes of the message starting at ``pos`` (fewer only
    where the message ends); it is only asked for field heads and the metadata. Applies
    protobuf's rules: the last member of the ``data`` oneof wins, unknown fields and groups
    are skipped. Raises ValueError when the wire format is corrupt.
    """
    pos = 0
    metadata: list[bytes] = []
    metadata_size = 0
    binary_pos: int | None = None
    binary_length = 0
    groups: list[int] = []  # open group field numbers; fields inside groups are unknown
    while pos < length:
        head = read_at(pos, min(_FIELD_HEAD_BYTES, length - pos))
        decoded = decode_uvarint(head)
        if decoded is None:
            raise ValueError(f"field tag at byte {pos} is cut off")
        tag, i = decoded
        number, wire = tag >> 3, tag & 7
        if not 1 <= number <= _MAX_FIELD_NUMBER:
            raise ValueError(f"invalid field number {number} at byte {pos}")
        if wire == _LEN:
            decoded = decode_uvarint(head, i)
            if decoded is None:
                raise ValueError(f"length of field {number} at byte {pos} is cut off")
            size, i = decoded
            start = pos + i
            if size > length - start:
                raise ValueError(
                    f"field {number} at byte {pos} says {size} bytes, {length - start} remain"
                )
            pos = start + size
            if groups:
                continue
            if number == 1:
                metadata_size += size
                if metadata_size > max_metadata_bytes:
                    raise ValueError(
                        f"metadata of {metadata_size} bytes exceeds {max_metadata_bytes} bytes"
                    )
                chunk = read_at(start, size)
                if len(chunk) != size:
                    raise ValueError(f"metadata at byte {start} is cut off")
                metadata.append(chunk)
            elif number == 2:
                binary_pos, binary_length = None, 0
            elif number == 3:
                binary_pos, binary_length = start, size
        elif wire == _VARINT:
            # Skipped, not decoded: protobuf ignores overflow bits in a varint value.
            end = i
            while end < len(head) and end - i < MAX_VARINT_BYTES and head[end] >= 0x80:
                end += 1
            if end >= len(head) or end - i >= MAX_VARINT_BYTES:
                raise ValueError(f"varint of field {number} at byte {pos} is cut off or too long")
            pos += end + 1
        elif wire in (_I64, _I32):
            pos += i + (8 if wire == _I64 else 4)
            if pos > length:
                raise ValueError(f"fixed-width field {number} is cut off at the message end")
        elif wire == _SGROUP:
            groups.append(number)
            if len(groups) > _MAX_GROUP_DEPTH:
                raise ValueError(f"groups nested deeper than {_MAX_GROUP_DEPTH}")
            pos += i
        elif wire == _EGROUP:
            if not groups or groups.pop() != number:
                raise ValueError(f"unmatched end of group {number} at byte {pos}")
            pos += i
        else:
            raise ValueError(f"invalid wire type {wire} at byte {pos}")
    if groups:
        raise ValueError(f"group {groups[-1]} is not closed")
    return SensorDataLayout(b"".join(metadata), binary_pos, binary_length)


def is_binary_header(header: ds.DataCaptureMetadata) -> bool:
    """True when the file holds binary readings (DATA_TYPE_BINARY_SENSOR)."""
    return header.type == ds.DATA_TYPE_BINARY_SENSOR


def is_tabular_header(header: ds.DataCaptureMetadata) -> bool:
    """True when the file holds tabular (Struct) readings (DATA_TYPE_TABULAR_SENSOR)."""
    return header.type == ds.DATA_TYPE_TABULAR_SENSOR


# --- naming -------------------------------------------------------------------------------


def capture_file_name(dt: datetime | None = None) -> str:
    """The ``.capture`` file name for a capture started at ``dt`` (default: now, UTC).

    RFC 3339 with a fixed six-digit fraction (as Viam writes it; fixed width keeps names in
    time order when sorted) and ':' replaced by '_'. ``dt`` must be timezone-aware.
    """
    if dt is None:
        dt = datetime.now(UTC)
    offset = dt.utcoffset()
    if offset is None:
        raise ValueError(f"capture file time must be timezone-aware, got {dt!r}")
    minutes = int(offset.total_seconds()) // 60
    if minutes == 0:
        zone = "Z"
    else:
        sign = "-" if minutes < 0 else "+"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    stamp = (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
        f"{dt.second:02d}.{dt.microsecond:06d}{zone}"
    )
    return stamp.replace(":", "_") + CAPTURE_SUFFIX


def capture_path(
    capture_dir: str | os.PathLike[str],
    header: ds.DataCaptureMetadata,
    dt: datetime | None = None,
) -> Path:
    """``<capture_dir>/<component_type>/<component_name>/<method>/<capture_file_name(dt)>``.

    ':' in the three names becomes '_' as in Viam's layout; a name that is empty or would
    leave its directory ('/', '..') is a ValueError.
    """
    parts = []
    for field in ("component_type", "component_name", "method_name"):
        value = getattr(header, field)
        if value in ("", ".", "..") or "/" in value or "\0" in value:
            raise ValueError(f"header {field} {value!r} cannot name a capture directory")
        parts.append(value.replace(":", "_"))
    return Path(capture_dir, *parts, capture_file_name(dt))


# --- reading ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReadingRecord:
    """One reading of a capture file.

    ``offset``/``length`` locate the serialized SensorData (just past its length prefix).
    A small reading carries ``sensor_data`` and its serialized bytes ``raw`` (to build
    requests without serialising again). A large binary reading carries only ``metadata``
    and ``binary_offset``/``binary_length``, the payload's place in the file; read it with
    ``iter_binary``. ``metadata`` is set for both.
    """

    path: str
    index: int
    offset: int
    length: int
    metadata: ds.SensorMetadata
    sensor_data: ds.SensorData | None = None
    raw: bytes | None = None
    binary_offset: int | None = None
    binary_length: int | None = None

    @property
    def end(self) -> int:
        """File offset just past this reading, where the next one's prefix starts."""
        return self.offset + self.length

    @property
    def is_streamed(self) -> bool:
        """True for a large binary reading whose payload was left in the file."""
        return self.binary_offset is not None

    @property
    def data_field(self) -> str | None:
        """The member of SensorData's ``data`` oneof that is set: "struct", "binary" or None."""
        if self.sensor_data is None:
            return "binary"
        return self.sensor_data.WhichOneof("data")

    def iter_binary(self, chunk_size: int = 65536) -> Iterator[bytes]:
        """Yield the binary payload in chunks of at most ``chunk_size`` bytes.

        A large reading is read from the file (opened anew, so this works after the reader
        is closed); CaptureFileError if the file no longer holds the payload.
        """
        if chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        if self.binary_offset is None or self.binary_length is None:
            if self.data_field != "binary":
                raise ValueError(f"reading {self.index} of {self.path} has no binary payload")
            assert self.sensor_data is not None
            payload = self.sensor_data.binary
            for start in range(0, len(payload), chunk_size):
                yield payload[start : start + chunk_size]
            return
        with open(self.path, "rb") as f:
            f.seek(self.binary_offset)
            remaining = self.binary_length
            while remaining:
                chunk = f.read(min(chunk_size, remaining))
                if not chunk:
                    raise CaptureFileError(
                        f"{self.path}: file ends inside the binary payload of reading "
                        f"{self.index} ({self.binary_length} bytes at byte {self.binary_offset})"
                    )
                remaining -= len(chunk)
                yield chunk


def _take(batch: list[bytes]) -> list[bytes]:
    """The items of ``batch``, which is left empty: a generator that yields this holds
    nothing of what it yielded while it waits to be resumed."""
    taken = batch[:]
    batch.clear()
    return taken


def _frame_ends(data: bytes, i: int, most: int) -> list[int]:
    """Where each of the next ``most`` readings in ``data`` from ``i`` ends, as long as
    their length prefix has one or two bytes and they lie wholly in ``data``; anything
    else (a longer prefix, the block's edge, a zero length) stops it, for the caller's
    slow path to read and check. The loop the speed of tabular uploads rests on."""
    ends: list[int] = []
    append = ends.append
    try:
        for _ in range(most):
            n = data[i]
            if n >= 0x80:
                second = data[i + 1]
                if second >= 0x80:
                    break
                n = (n & 0x7F) | (second << 7)
                i += 2 + n
            else:
                i += 1 + n
            if not n:
                break
            append(i)
    except IndexError:  # the block ends inside a prefix
        pass
    if ends and ends[-1] > len(data):  # the last reading runs past the block
        ends.pop()
    return ends


class _Corrupt(Exception):
    """Framing or parsing failure at a known file position (internal)."""


class _Blocks:
    """Positional reads through one block buffer, never past ``limit`` (the size at open).

    Positional (pread) so that scanning a large reading and reading the next one need no
    seeks, and small readings cost a slice of the block rather than a system call each.
    """

    def __init__(self, fd: int, limit: int, block: int):
        self._fd, self._limit, self._block = fd, limit, block
        self._start = 0
        self._buf = b""

    def window(self, pos: int, n: int) -> tuple[bytes, int]:
        """A buffer and an index in it where the file's bytes from ``pos`` begin; at least
        ``n`` of them unless the file ends first."""
        lo = pos - self._start
        if lo < 0 or lo + n > len(self._buf):
            size = min(max(n, self._block), self._limit - pos)
            self._buf = os.pread(self._fd, size, pos) if size > 0 else b""
            self._start, lo = pos, 0
        return self._buf, lo

    def read(self, pos: int, n: int) -> bytes:
        """The file's bytes ``pos`` to ``pos + n`` (fewer if the file ends first)."""
        if n > self._block:
            return os.pread(self._fd, max(0, min(n, self._limit - pos)), pos)
        buf, lo = self.window(pos, n)
        return buf[lo : lo + n]


class CaptureReader:
    """Streaming reader of one capture file; use as a context manager.

    Opening reads the header (``header``; CaptureFileError if missing or corrupt).
    Iterating yields one ``ReadingRecord`` per reading, reading the file in blocks of
    ``buffer_size`` bytes, so memory per reading is bounded by that reading's size; a
    reading larger than ``large_reading_bytes`` whose data is binary is not loaded at all.
    The file's size is taken at open: bytes appended later are not read.

    A truncated or corrupt tail ends the iteration quietly; afterwards ``tail_error``
    says why (None for a clean file) and ``dropped_bytes`` how many bytes were not read.
    Each iteration starts again at the first reading.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        large_reading_bytes: int = LARGE_READING_BYTES,
        buffer_size: int = BLOCK_BYTES,
    ):
        self.path = os.fspath(path)
        self.large_reading_bytes = large_reading_bytes
        self.dropped_bytes = 0
        self.tail_error: str | None = None
        self._file = open(self.path, "rb", buffering=0)  # noqa: SIM115
        try:
            self.size = os.fstat(self._file.fileno()).st_size
            self._blocks = _Blocks(self._file.fileno(), self.size, buffer_size)
            self.header, self.readings_offset = self._read_header()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> CaptureReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _read_header(self) -> tuple[ds.DataCaptureMetadata, int]:
        def fail(reason: str, error: type[CaptureFileError] = CaptureFileError) -> CaptureFileError:
            return error(f"{self.path}: not a readable capture file: {reason}")

        if self.size == 0:
            raise fail("the file is empty (no header)", EmptyCaptureFileError)
        try:
            length, start = self._read_prefix(0)
        except _Corrupt as e:
            raise fail(f"header {e}") from None
        remain = self.size - start
        if length == 0:
            raise fail("the header is empty (zero length prefix)")
        if length > MAX_HEADER_BYTES:
            raise fail(
                f"header length prefix says {length} bytes, over the {MAX_HEADER_BYTES} limit"
            )
        if length > remain:
            raise fail(f"header length prefix says {length} bytes, {remain} remain")
        raw = self._blocks.read(start, length)
        if len(raw) != length:
            raise fail("the file shrank while its header was read")
        try:
            header = ds.DataCaptureMetadata.FromString(raw)
        except DecodeError:
            raise fail("the header is not a valid DataCaptureMetadata message") from None
        return header, start + length

    def _read_prefix(self, pos: int) -> tuple[int, int]:
        """Decode the length prefix at ``pos``; return (length, message start)."""
        buf, lo = self._blocks.window(pos, MAX_VARINT_BYTES)
        try:
            decoded = decode_uvarint(buf, lo)
        except ValueError as e:
            raise _Corrupt(f"corrupt length prefix at byte {pos}: {e}") from None
        if decoded is None:
            raise _Corrupt(
                f"truncated length prefix at byte {pos}: the file ends {len(buf) - lo} bytes into it"
            )
        length, end = decoded
        return length, pos + end - lo

    def __iter__(self) -> Iterator[ReadingRecord]:
        self.dropped_bytes = 0
        self.tail_error = None
        pos = self.readings_offset
        index = 0
        while pos < self.size:
            try:
                record = self._read_record(index, pos)
            except _Corrupt as e:
                self.dropped_bytes = self.size - pos
                self.tail_error = str(e)
                return
            yield record
            pos = record.end
            index += 1

    def iter_raw(self) -> Iterator[bytes]:
        """Each reading's serialized SensorData, framed but not parsed.

        Damage is seen only in the framing (a truncated or zero-filled tail); afterwards
        ``tail_error`` and ``dropped_bytes`` report it as for iteration.
        """
        self.dropped_bytes = 0
        self.tail_error = None
        pos = self.readings_offset
        while pos < self.size:
            try:
                length, start = self._frame(pos)
                raw = self._blocks.read(start, length)
                if len(raw) != length:
                    raise _Corrupt(f"truncated reading at byte {pos}: the file shrank while read")
            except _Corrupt as e:
                self.dropped_bytes = self.size - pos
                self.tail_error = str(e)
                return
            yield raw
            pos = start + length

    def iter_delimited_batches(self, max_count: int, max_bytes: int) -> Iterator[list[bytes]]:
        """The readings as the file frames them (length prefix and message), in batches of
        at most ``max_count`` whose sizes plus one byte each stay within ``max_bytes`` (a
        reading bigger than that comes alone): a tabular upload request is its metadata
        and then a field tag before each of these, so readings go out unparsed.

        Framing only, as :meth:`iter_raw`, with the same tail report; a tight loop over
        large blocks, since this runs once per reading at the speed of the link.
        """
        self.dropped_bytes = 0
        self.tail_error = None
        size = self.size
        data, base = b"", self.readings_offset  # a block of the file, starting at ``base``
        pos = base
        batch: list[bytes] = []
        room = max_bytes  # what the batch may still take: each reading costs 1 + its frame
        while pos < size:
            i = pos - base
            ends = _frame_ends(data, i, max_count - len(batch))
            fit = len(ends)
            if fit and fit + ends[-1] - i > room:  # the byte limit cuts in: how many fit
                fit = bisect.bisect_right(
                    range(1, fit + 1), room, key=lambda k: k + ends[k - 1] - i
                )
                if not fit and not batch:
                    fit = 1  # a reading bigger than the limit goes alone
            if fit:
                # Copies: cheaper than views for pieces this small (under 16 KiB).
                batch += [data[a:b] for a, b in zip([i, *ends[: fit - 1]], ends[:fit], strict=True)]
                room -= fit + ends[fit - 1] - i
                pos = base + ends[fit - 1]
            if batch and (len(batch) >= max_count or fit < len(ends) or room <= 0):
                yield _take(batch)
                room = max_bytes
                continue
            if pos >= size:
                break
            # The slow path, one reading: a long prefix, the block's edge, or damage
            # (reported exactly). The reader's block moves to it if it lies past the end.
            try:
                length, start = self._frame(pos)
                want = start + length - pos
                data, lo = self._blocks.window(pos, want)
                if len(data) - lo < want:
                    raise _Corrupt(f"truncated reading at byte {pos}: the file shrank while read")
            except _Corrupt as e:
                self.dropped_bytes = size - pos
                self.tail_error = str(e)
                break
            base = pos - lo
            if want >= room and batch:
                yield _take(batch)
                room = max_bytes
            # A reading that is the whole block goes as it is; a smaller one is copied, so
            # that a batch holds no block alive once it is read past.
            batch.append(data if want == len(data) else data[lo : lo + want])
            room -= 1 + want
            pos += want
        if batch:
            yield _take(batch)

    def _frame(self, pos: int) -> tuple[int, int]:
        """The length and start of the reading whose prefix is at ``pos``, checked against
        the file's size."""
        length, start = self._read_prefix(pos)
        remain = self.size - start
        if length > remain:
            raise _Corrupt(
                f"truncated reading at byte {pos}: length prefix says {length} bytes, "
                f"{remain} remain"
            )
        if length == 0:
            # Never written (a reading always has metadata): the mark of a zero-filled tail.
            raise _Corrupt(f"empty reading at byte {pos}: zero length prefix")
        return length, start

    def _read_record(self, index: int, pos: int) -> ReadingRecord:
        length, start = self._frame(pos)
        if length > self.large_reading_bytes:
            record = self._scan_large(index, pos, start, length)
            if record is not None:
                return record
        raw = self._blocks.read(start, length)
        if len(raw) != length:
            raise _Corrupt(f"truncated reading at byte {pos}: the file shrank while read")
        try:
            sensor_data = ds.SensorData.FromString(raw)
        except DecodeError:
            raise _Corrupt(
                f"corrupt reading at byte {pos}: {length} bytes that are not a SensorData message"
            ) from None
        return ReadingRecord(
            self.path, index, start, length, sensor_data.metadata, sensor_data, raw
        )

    def _scan_large(self, index: int, pos: int, start: int, length: int) -> ReadingRecord | None:
        """The record of a large binary reading, or None if its data is not binary."""
        try:
            layout = scan_sensor_data(lambda at, n: self._blocks.read(start + at, n), length)
            if layout.binary_pos is None:
                return None
            metadata = ds.SensorMetadata.FromString(layout.metadata)
        except (ValueError, DecodeError) as e:
            reason = str(e) if isinstance(e, ValueError) else "metadata is not a SensorMetadata"
            raise _Corrupt(f"corrupt reading at byte {pos} ({length} bytes): {reason}") from None
        return ReadingRecord(
            self.path,
            index,
            start,
            length,
            metadata,
            binary_offset=start + layout.binary_pos,
            binary_length=layout.binary_length,
        )


def read_header(path: str | os.PathLike[str]) -> ds.DataCaptureMetadata:
    """The DataCaptureMetadata header of a capture file (CaptureFileError if unreadable)."""
    with CaptureReader(path, buffer_size=4096) as reader:
        return reader.header


# --- writing ------------------------------------------------------------------------------


class CaptureWriter:
    """Writes one capture file; use as a context manager.

    ``path`` is the completed file's path (ending in ``.capture``, or ``.prog``). Readings
    go to the ``.prog`` file, created exclusively with its parent directories; ``close``
    fsyncs it, renames it to ``.capture`` and fsyncs the directory, so a ``.capture`` file
    is always complete. Leaving the ``with`` block closes it, also on an exception: every
    reading written before it is whole, and readers drop a cut-off last one.
    """

    def __init__(self, path: str | os.PathLike[str], header: ds.DataCaptureMetadata):
        path = os.fspath(path)
        for suffix in (CAPTURE_SUFFIX, PROG_SUFFIX):
            if path.endswith(suffix):
                stem = path[: -len(suffix)]
                break
        else:
            raise ValueError(f"capture file path must end in {CAPTURE_SUFFIX}: {path}")
        self.prog_path = stem + PROG_SUFFIX
        self.final_path = stem + CAPTURE_SUFFIX
        data = header.SerializeToString()
        if not data:
            raise ValueError("refusing to write an empty header: readers reject it as corrupt")
        if os.path.exists(self.final_path):
            raise FileExistsError(f"capture file already exists: {self.final_path}")
        os.makedirs(os.path.dirname(self.prog_path) or ".", exist_ok=True)
        self._file = open(self.prog_path, "xb")  # noqa: SIM115
        self._closed = False
        self.bytes_written = 0
        self.readings_written = 0
        self._write_message(data)

    @property
    def path(self) -> str:
        """The file's current path: ``.prog`` while open, ``.capture`` once closed."""
        return self.final_path if self._closed else self.prog_path

    def write(self, reading: ds.SensorData) -> int:
        """Append one reading; return the bytes it took (prefix included)."""
        if self._closed:
            raise ValueError(f"write to closed capture file {self.final_path}")
        data = reading.SerializeToString()
        if not data:
            raise ValueError("refusing to write an empty SensorData: readers reject it")
        written = self._write_message(data)
        self.readings_written += 1
        return written

    def _write_message(self, data: bytes) -> int:
        prefix = encode_uvarint(len(data))
        self._file.write(prefix)
        self._file.write(data)
        written = len(prefix) + len(data)
        self.bytes_written += written
        return written

    def flush(self) -> None:
        """Hand buffered readings to the operating system (no fsync)."""
        self._file.flush()

    def close(self) -> None:
        """Fsync, rename ``.prog`` to ``.capture`` and fsync the directory; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()
        os.rename(self.prog_path, self.final_path)
        fsync_dir(os.path.dirname(self.final_path) or ".")

    def __enter__(self) -> CaptureWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
