"""``syncd query``: what a sink's store holds, for a person at a terminal.

Reads the store's index directly (no sink needs to run; one is built from the sidecars if
the store has none yet) through the same query functions the sink's DataService uses,
prints a table or JSON lines, and with ``--download`` copies binary payloads into a
folder, with a progress line on stderr when it is a terminal. ``cli.py`` parses the
arguments; these functions take plain values and streams, so tests drive them directly.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from google.protobuf import json_format, struct_pb2

from syncd.errors import SyncdError
from syncd.gen.app.data.v1 import data_pb2
from syncd.logs import human_bytes
from syncd.mapping import with_dot
from syncd.sink_index import INDEX_NAME, SinkIndex
from syncd.sink_index_types import BinaryRow, ItemFilter, TabularRow, datetime_ns
from syncd.sink_store import file_basename

_PAGE = 1000
_CHUNK = 1024 * 1024
_PROGRESS_EVERY_S = 0.1
_MAX_CELL = 60


@dataclass(frozen=True)
class QueryArgs:
    """``syncd query``'s options as plain values (``limit`` 0: everything)."""

    store: Path
    kind: str = "binary"
    component_name: str = ""
    component_type: str = ""
    method: str = ""
    part_id: str = ""
    mime_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    start: str | None = None
    end: str | None = None
    limit: int = 50
    oldest_first: bool = False


def parse_time(text: str, flag: str) -> int:
    """An ISO 8601 time as ns since the epoch; without a zone it is UTC (as in Viam's SDK)."""
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SyncdError(
            f"{flag}: {text!r} is not an ISO 8601 time (e.g. 2026-12-03T16:20Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return datetime_ns(when)


def item_filter(args: QueryArgs) -> ItemFilter:
    return ItemFilter(
        component_name=args.component_name,
        component_type=args.component_type,
        method=args.method,
        part_id=args.part_id,
        mime_types=args.mime_types,
        tags=args.tags,
        start_ns=parse_time(args.start, "--start") if args.start else None,
        end_ns=parse_time(args.end, "--end") if args.end else None,
    )


def open_index(store: Path) -> SinkIndex:
    """The store's index, built first if the store has none (a message on stderr then)."""
    if not store.is_dir():
        raise SyncdError(f"--store: {str(store)!r} is not a folder")
    if not (store / INDEX_NAME).exists():
        print(f"syncd: indexing {store} (once)...", file=sys.stderr)
    index = SinkIndex(store)
    try:
        index.open(reconcile=False)
    except (OSError, sqlite3.Error) as exc:
        index.close()
        raise SyncdError(f"cannot open the index of {store}: {exc}") from exc
    return index


def rows(index: SinkIndex, args: QueryArgs, flt: ItemFilter) -> Iterator[BinaryRow | TabularRow]:
    """The rows ``flt`` matches, newest first (or oldest first), at most ``args.limit`` (0: all)."""
    page_of = index.tabular_page if args.kind == "tabular" else index.binary_page
    left = args.limit or None
    last = ""
    while left is None or left > 0:
        size = _PAGE if left is None else min(left, _PAGE)
        page = page_of(flt, limit=size, last=last, ascending=args.oldest_first)
        if not page.rows:
            return
        yield from page.rows
        last = page.last
        if left is not None:
            left -= len(page.rows)


# --- printing ------------------------------------------------------------------------------


def _time(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    return (
        datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{rest // 1000:06d}Z"
    )


def _data(row: TabularRow) -> Any:
    return json_format.MessageToDict(struct_pb2.Struct.FromString(row.data))


def _labels(row: BinaryRow) -> list[str]:
    if not row.annotations:
        return []
    return [box.label for box in data_pb2.Annotations.FromString(row.annotations).bboxes]


def as_json(row: BinaryRow | TabularRow) -> dict[str, Any]:
    """One row as a JSON object (what ``--json`` prints, one per line)."""
    meta = row.meta
    out: dict[str, Any] = {}
    if isinstance(row, BinaryRow):
        out |= {"id": row.id, "kind": row.kind}
    else:
        out |= {"upload_id": row.upload_id, "index": row.index}
    out |= {
        "time_requested": _time(row.time_requested_ns),
        "time_received": _time(row.time_received_ns),
        "part_id": meta.part_id,
        "component_type": meta.component_type,
        "component_name": meta.component_name,
        "method_name": meta.method_name,
        "mime_type": meta.mime_type,
        "tags": list(meta.tags),
    }
    if isinstance(row, BinaryRow):
        out |= {
            "file_name": row.file_name,
            "file_ext": with_dot(row.file_ext),
            "size_bytes": row.size_bytes,
            "dataset_ids": list(row.dataset_ids),
            "bbox_labels": _labels(row),
            "path": str(row.path),
        }
    else:
        out["data"] = _data(row)
    return out


def _cell(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_CELL else text[: _MAX_CELL - 1] + "…"


def _table_row(row: BinaryRow | TabularRow) -> list[str]:
    meta = row.meta
    component = "/".join(p for p in (meta.component_type, meta.component_name) if p) or "-"
    common = [_time(row.time_requested_ns), component, meta.method_name or "-"]
    if isinstance(row, TabularRow):
        data = json.dumps(_data(row), separators=(",", ":"))
        return [*common, ",".join(meta.tags) or "-", _cell(data)]
    name = file_basename(row.file_name) or "-"
    return [
        *common,
        row.id,
        meta.mime_type or "-",
        human_bytes(row.size_bytes),
        _cell(",".join(meta.tags)) or "-",
        _cell(name),
    ]


_HEADERS = {
    "binary": ["TIME (UTC)", "COMPONENT", "METHOD", "ID", "MIME TYPE", "SIZE", "TAGS", "FILE"],
    "tabular": ["TIME (UTC)", "COMPONENT", "METHOD", "TAGS", "DATA"],
}


def print_rows(
    found: Sequence[BinaryRow | TabularRow], kind: str, as_lines: bool, out: IO[str]
) -> None:
    """A table with a header (or one JSON object per line), then nothing else."""
    if as_lines:
        for row in found:
            out.write(json.dumps(as_json(row)) + "\n")
        return
    table = [_HEADERS[kind], *(_table_row(row) for row in found)]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    for line in table:
        cells = [cell.ljust(width) for cell, width in zip(line, widths, strict=True)]
        out.write("  ".join(cells).rstrip() + "\n")


# --- downloading ---------------------------------------------------------------------------


def download_name(row: BinaryRow) -> str:
    """``<id><ext>`` for a reading, ``<id>_<file name>`` for an uploaded file."""
    base = file_basename(row.file_name)
    if row.kind == "file" and base:
        name = f"{row.id}_{base}"
        ext = with_dot(row.file_ext)
        return name if not ext or name.endswith(ext) else name + ext
    return row.id + with_dot(row.file_ext)


class Progress:
    """One self-rewriting stderr line; silent unless stderr is a terminal."""

    def __init__(self, total_files: int, total_bytes: int, stream: IO[str]) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.stream = stream
        self.enabled = stream.isatty()
        self.files = 0
        self.bytes = 0
        self._shown = 0.0

    def advance(self, nbytes: int = 0, files: int = 0) -> None:
        self.bytes += nbytes
        self.files += files
        now = time.monotonic()
        if self.enabled and (now - self._shown >= _PROGRESS_EVERY_S or files):
            self._shown = now
            percent = 100 * self.bytes // self.total_bytes if self.total_bytes else 100
            self.stream.write(
                f"\rdownloading {self.files}/{self.total_files} files, "
                f"{human_bytes(self.bytes)} of {human_bytes(self.total_bytes)} ({percent}%)\x1b[K"
            )
            self.stream.flush()

    def done(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def download(found: Sequence[BinaryRow], folder: Path, progress_to: IO[str]) -> tuple[int, int]:
    """Copy each row's payload to ``folder``; returns (files, bytes).

    Each file is written under a hidden temp name and renamed into place, so a file that is
    there is whole. Stored files that vanished meanwhile are skipped with a message.
    """
    folder.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(found), sum(row.size_bytes for row in found), progress_to)
    files = copied = 0
    try:
        for row in found:
            try:
                src = open(row.path, "rb")  # noqa: SIM115
            except FileNotFoundError:
                print(f"syncd: {row.path} is gone; skipped", file=sys.stderr)
                continue
            target = folder / download_name(row)
            temp = target.with_name(f".{target.name}.part")
            try:
                with src, open(temp, "wb") as dst:
                    src.seek(row.payload_offset)
                    left = row.size_bytes
                    while left:
                        chunk = src.read(min(_CHUNK, left))
                        if not chunk:
                            raise SyncdError(f"{row.path} ends before its payload does")
                        dst.write(chunk)
                        left -= len(chunk)
                        progress.advance(len(chunk))
                os.replace(temp, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temp.unlink()
            files += 1
            copied += row.size_bytes
            progress.advance(files=1)
    finally:
        progress.done()
    return files, copied


def run_query(
    args: QueryArgs,
    *,
    as_lines: bool = False,
    download_to: Path | None = None,
    out: IO[str] | None = None,
    err: IO[str] | None = None,
) -> int:
    """``syncd query``: print the matches, download them if asked; returns the exit code.

    ``out`` and ``err`` default to the process's stdout and stderr.
    """
    out = out or sys.stdout
    err = err or sys.stderr
    if download_to is not None and args.kind != "binary":
        raise SyncdError("--download: only binary data can be downloaded")
    flt = item_filter(args)
    index = open_index(args.store)
    try:
        found = list(rows(index, args, flt))
        print_rows(found, args.kind, as_lines, out)
        if download_to is not None:
            binary = [row for row in found if isinstance(row, BinaryRow)]
            files, nbytes = download(binary, download_to, err)
            print(
                f"syncd: downloaded {files} file(s), {human_bytes(nbytes)}, into {download_to}",
                file=err,
            )
    finally:
        index.close()
    return 0
