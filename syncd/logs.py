"""Log output for people: journald priority prefixes under systemd, timestamps on a
terminal, or JSON lines; repeated identical warnings are rate-limited; sizes and ages
written the way people read them."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import TextIO

# syslog priorities that journald reads from a "<N>" line prefix.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}


def under_journald(stream: TextIO = sys.stderr) -> bool:
    """True when stderr is connected to the journal (systemd sets JOURNAL_STREAM)."""
    value = os.environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class JournalFormatter(logging.Formatter):
    """``<N>message``: journald adds the time and maps N to the entry's priority."""

    def format(self, record: logging.LogRecord) -> str:
        level = _PRIORITY.get(record.levelno, 6)
        return f"<{level}>{super().format(record)}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


class RepeatFilter(logging.Filter):
    """Lets the first of identical warnings through, then at most one per ``window_s``,
    saying how many were held back in between.

    Lines about many items with one cause (say, every upload refused for the same reason)
    are grouped by a ``repeat_key`` passed in ``extra``: then they count as identical
    whatever their level and whichever item they name.
    """

    def __init__(self, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._window = window_s
        self._clock = clock
        self._seen: dict[tuple[str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        group = getattr(record, "repeat_key", None)
        if group is None and record.levelno < logging.WARNING:
            return True
        key = (record.name, str(group) if group is not None else record.getMessage())
        now = self._clock()
        last, held = self._seen.get(key, (None, 0))
        if last is not None and now - last < self._window:
            self._seen[key] = (last, held + 1)
            return False
        if len(self._seen) > 1000:  # bounded: forget old keys
            self._seen.clear()
        self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.getMessage()} (and {held} more like it)"
            record.args = ()
        return True


def setup_logging(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure the root logger once for the whole process."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "journal" if under_journald(stream) else "text"
    handler = logging.StreamHandler(stream)
    if fmt == "journal":
        handler.setFormatter(JournalFormatter("%(message)s"))
    elif fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
        )
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries speak at debug level only when we do.
    for noisy in ("grpclib", "hpack", "h2", "watchdog", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_age(seconds: float) -> str:
    """3725 -> '1h 2m 5s'."""
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{v}{u}" for v, u in ((days, "d"), (hours, "h"), (minutes, "m")) if v]
    return " ".join([*parts, f"{s}s"])
