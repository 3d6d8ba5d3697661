"""The outbox's command-line side: ``syncd capture``, ``syncd status`` and ``syncd failed``.

``cli.py`` parses the arguments and calls these functions; they take plain values and
streams, so tests drive them without a terminal.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from syncd.errors import SyncdError
from syncd.logs import human_age, human_bytes
from syncd.outbox import FailedItem, Outbox, OutboxCounts, Reading, encode_tabular

# A slow producer's readings are durable within this long of being read.
MAX_DELAY_S = 0.1
BATCH_LINES = 1000


def capture_tabular(
    outbox: Outbox,
    lines: IO[bytes],
    errors: IO[str],
    *,
    component_type: str,
    component_name: str,
    method_name: str,
    tags: Sequence[str] = (),
    batch_lines: int = BATCH_LINES,
    max_delay_s: float = MAX_DELAY_S,
) -> tuple[int, int]:
    """Queue one tabular reading per JSON-object line of ``lines`` until EOF; both times
    of a reading are when its line was read.

    Commits every ``batch_lines`` readings, or ``max_delay_s`` after the first reading of a
    batch was read, whichever comes first; what was read is committed on an interrupt too.
    A bad line is reported on ``errors`` with its number and skipped. Returns (queued, bad).
    """
    inbox: queue.Queue[tuple[int, bytes, int] | None] = queue.Queue(maxsize=4 * batch_lines)
    threading.Thread(target=_read_lines, args=(lines, inbox), daemon=True).start()
    stream = ("tabular", component_type, component_name, method_name)
    tags = tuple(tags)
    batch: list[Reading] = []
    first_at = 0.0
    queued = bad = 0

    def commit() -> None:
        nonlocal batch, queued
        if batch:
            queued += len(outbox.enqueue_readings(batch))
            batch = []

    def take(lineno: int, raw: bytes, read_ns: int) -> None:
        nonlocal bad, first_at
        if not raw.strip():
            return
        try:
            payload = encode_tabular(_parse_object(raw))
        except ValueError as exc:
            bad += 1
            print(f"syncd: line {lineno}: {exc}", file=errors, flush=True)
            return
        if not batch:
            first_at = time.monotonic()
        batch.append(Reading(*stream, payload, read_ns, read_ns, tags))

    try:
        while True:
            timeout = None if not batch else max(0.0, first_at + max_delay_s - time.monotonic())
            try:
                item = inbox.get(timeout=timeout)
            except queue.Empty:
                commit()  # the producer is quiet: make what it sent durable now
                continue
            if item is None:
                break
            take(*item)
            if len(batch) >= batch_lines or (batch and time.monotonic() - first_at >= max_delay_s):
                commit()
    finally:
        # Interrupted (SIGINT, SIGTERM) or done: keep every line already read.
        # Only what is queued now: a fast producer must not keep an interrupt waiting.
        with contextlib.suppress(queue.Empty):
            for _ in range(inbox.qsize()):
                if (item := inbox.get_nowait()) is not None:
                    take(*item)
        commit()
    return queued, bad


def _read_lines(lines: IO[bytes], inbox: queue.Queue) -> None:
    # A thread, so a batch can be committed while the producer is quiet. It reads the file
    # descriptor itself: a thread blocked inside sys.stdin's buffered reader would abort
    # the interpreter's exit on SIGTERM.
    try:
        try:
            fd = lines.fileno()
        except (AttributeError, OSError, io.UnsupportedOperation):
            for lineno, raw in enumerate(lines, start=1):
                inbox.put((lineno, raw, time.time_ns()))
            return
        lineno, tail = 0, b""
        while chunk := os.read(fd, 1 << 16):
            read_ns = time.time_ns()
            *complete, tail = (tail + chunk).split(b"\n")
            for raw in complete:
                lineno += 1
                inbox.put((lineno, raw, read_ns))
        if tail:
            inbox.put((lineno + 1, tail, time.time_ns()))
    finally:
        inbox.put(None)


def _parse_object(raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise ValueError(f"not a JSON object (a {_json_type(value)})")
    return value


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a reading can hold")


def _json_type(value: Any) -> str:
    return {list: "list", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number"
    )


def capture_binary(
    outbox: Outbox,
    path: str,
    *,
    component_type: str,
    component_name: str,
    method_name: str,
    file_extension: str,
    mime_type: str = "",
    tags: Sequence[str] = (),
) -> int:
    """Queue the contents of the file at ``path`` (``-``: stdin) as one binary reading."""
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise SyncdError(f"cannot read {path}: {exc.strerror}") from None
    reading = Reading.binary(
        component_type,
        component_name,
        method_name,
        data,
        file_extension=file_extension,
        mime_type=mime_type,
        tags=tags,
    )
    return outbox.enqueue_readings([reading])[0]


@contextlib.contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """Turn SIGTERM into SystemExit for the block, so ``finally`` clauses commit."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --- status, failed --------------------------------------------------------------------


def status_lines(counts: OutboxCounts, path: Path) -> list[str]:
    """The human-readable ``syncd status``."""
    age = counts.oldest_pending_age_s
    lines = [
        f"outbox:   {path}",
        f"pending:  {counts.pending} ({counts.files_pending} files, "
        f"{counts.readings_pending} readings), {human_bytes(counts.pending_bytes)}",
        f"inflight: {counts.inflight} ({counts.files_inflight} files, "
        f"{counts.readings_inflight} readings), {human_bytes(counts.inflight_bytes)}",
        f"failed:   {counts.failed} ({counts.files_failed} files, "
        f"{counts.readings_failed} readings)"
        + ("; see: syncd failed list" if counts.failed else ""),
        f"oldest pending: {'none' if age is None else human_age(age)}",
    ]
    return lines


def failed_line(item: FailedItem) -> str:
    """One dead letter on one line: id, source, attempts, when, and the server's reason."""
    when = dt.datetime.fromtimestamp(item.failed_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    reason = " ".join(item.reason.split()) or "(no reason given)"
    return f"{item.id}\t{item.kind}\t{item.source}\tattempts={item.attempts}\t{when}\t{reason}"


def parse_ids(words: Sequence[str]) -> list[int] | None:
    """Ids from the command line; None for ``all``. ValueError on anything else."""
    if list(words) == ["all"]:
        return None
    ids = []
    for word in words:
        if not word.isdigit():
            raise ValueError(f"{word!r} is not an id (use the ids `syncd failed list` prints)")
        ids.append(int(word))
    return ids
