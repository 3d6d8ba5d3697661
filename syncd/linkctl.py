"""Operator controls over the link: a bandwidth cap shared by all uploads, sync time
windows, and the pause switch that `syncd pause` / `syncd resume` flip.

Capture and queueing never stop; these only hold uploads back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

PAUSE_FILE = "paused"


class TokenBucket:
    """Caps the average rate at ``rate`` bytes/s, allowing bursts of ``burst`` bytes.

    ``spend(n)`` takes the bytes now and sleeps off any debt, so concurrent uploads share
    the cap fairly in arrival order and a big request is never split.
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.burst = burst if burst is not None else max(rate / 10, 16 * 1024)
        self._clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def debt_after(self, nbytes: int) -> float:
        """Take ``nbytes``; return how long the caller must wait to stay under the cap."""
        self._refill()
        self._tokens -= nbytes
        return -self._tokens / self.rate if self._tokens < 0 else 0.0

    async def spend(self, nbytes: int) -> None:
        delay = self.debt_after(nbytes)
        if delay > 0:
            await asyncio.sleep(delay)


class Throttle:
    """The uploader's ``throttle`` hook: a :class:`TokenBucket` that a config reload can
    replace or remove (``rate`` 0: no cap) while uploads are running."""

    def __init__(self, rate: float = 0) -> None:
        self.bucket: TokenBucket | None = None
        self.configure(rate)

    def configure(self, rate: float) -> None:
        """Cap uploads at ``rate`` bytes/s from now on; 0 lifts the cap."""
        current = self.bucket.rate if self.bucket is not None else 0
        if rate != current:
            self.bucket = TokenBucket(rate) if rate > 0 else None

    async def __call__(self, nbytes: int) -> None:
        bucket = self.bucket
        if bucket is not None:
            await bucket.spend(nbytes)


def parse_window(text: str) -> tuple[int, int]:
    """ "22:00-06:00" → (start, end) in minutes after midnight; may wrap past midnight."""
    start, end = text.split("-")
    h1, m1 = (int(x) for x in start.split(":"))
    h2, m2 = (int(x) for x in end.split(":"))
    return h1 * 60 + m1, h2 * 60 + m2


def in_windows(windows: tuple[str, ...], now: datetime) -> bool:
    """True when ``now`` (local time) falls in any window; no windows means always."""
    if not windows:
        return True
    minute = now.hour * 60 + now.minute
    for start, end in map(parse_window, windows):
        if start == end:
            return True  # "00:00-00:00": the whole day
        if (start < end and start <= minute < end) or (
            start > end and (minute >= start or minute < end)
        ):
            return True
    return False


def seconds_until_open(windows: tuple[str, ...], now: datetime) -> float:
    """Seconds until the next window opens (0 when one is open now)."""
    if in_windows(windows, now):
        return 0.0
    base = now.replace(second=0, microsecond=0)
    starts = []
    for start, _ in map(parse_window, windows):
        candidate = base.replace(hour=start // 60, minute=start % 60)
        if candidate <= now:
            candidate += timedelta(days=1)
        starts.append(candidate)
    return (min(starts) - now).total_seconds()


def pause_path(state_dir: Path) -> Path:
    return Path(state_dir) / PAUSE_FILE


def set_paused(state_dir: Path, paused: bool, reason: str = "") -> None:
    """Persist the pause switch in the state dir, where the daemon picks it up live."""
    path = pause_path(state_dir)
    if paused:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"{datetime.now().astimezone().isoformat(timespec='seconds')} {reason}".strip() + "\n"
        )
    else:
        path.unlink(missing_ok=True)


def is_paused(state_dir: Path) -> bool:
    return pause_path(state_dir).exists()


def pause_note(state_dir: Path) -> str | None:
    """When and why uploads were paused ("<time> <reason>"), or None when they are not."""
    try:
        return pause_path(state_dir).read_text(errors="replace").strip() or "paused"
    except FileNotFoundError:
        return None
    except OSError:
        return "paused" if is_paused(state_dir) else None
