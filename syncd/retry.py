"""Retry policy: which failures are retried, how long to wait, and the shared
connectivity gate that pauses every worker while the server is unreachable.

Pure apart from the gate's sleeping; the clock and randomness are injectable.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import ssl
import time
from collections.abc import Callable

import h2.exceptions
from grpclib.const import Status
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

log = logging.getLogger("syncd.uploader")


class Verdict(enum.Enum):
    RETRY = "retry"  # this item failed; try it again after its own backoff
    OFFLINE = "offline"  # the server is unreachable; pause everyone, blame no item
    FATAL = "fatal"  # the server refused this item for good: dead letter


_RETRY_STATUSES = {
    Status.DEADLINE_EXCEEDED,
    Status.RESOURCE_EXHAUSTED,
    Status.ABORTED,
    Status.INTERNAL,
    Status.UNKNOWN,
    Status.CANCELLED,
    # Still refused after one re-authentication: a key or permission problem that an
    # operator can fix; keep the data and keep trying slowly rather than drop it.
    Status.UNAUTHENTICATED,
    Status.PERMISSION_DENIED,
}


def classify(exc: BaseException) -> Verdict:
    """Sort an upload failure into one of the three retry classes."""
    if isinstance(exc, GRPCError):
        if exc.status is Status.UNAVAILABLE:
            return Verdict.OFFLINE
        return Verdict.RETRY if exc.status in _RETRY_STATUSES else Verdict.FATAL
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Verdict.OFFLINE  # misconfigured trust is global, not this item's fault
    if isinstance(exc, (OSError, TimeoutError, StreamTerminatedError, ProtocolError)):
        return Verdict.OFFLINE
    if isinstance(exc, h2.exceptions.H2Error):
        return Verdict.OFFLINE
    return Verdict.FATAL


def describe(exc: BaseException) -> str:
    """One line for logs and dead letters: the gRPC status and the server's message."""
    if isinstance(exc, GRPCError):
        return f"{exc.status.name}: {exc.message or 'no message'}"
    if isinstance(exc, TimeoutError):
        return "no answer from the server (deadline exceeded)"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def backoff_delay(
    attempts: int, initial: float, maximum: float, rand: Callable[[], float] = random.random
) -> float:
    """Exponential backoff with jitter: between half and all of initial * 2**attempts."""
    ceiling = min(maximum, initial * (2 ** min(attempts, 32)))
    return ceiling * (0.5 + 0.5 * rand())


class Connectivity:
    """One shared backoff while the server is unreachable, logged once each way."""

    def __init__(
        self,
        initial_s: float,
        maximum_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._initial = initial_s
        self._maximum = maximum_s
        self._clock = clock
        self._rand = rand
        self._failures = 0
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._changed = asyncio.Event()

    @property
    def up(self) -> bool:
        return self._down_since is None

    def seconds_until_retry(self) -> float:
        return max(0.0, self._retry_at - self._clock()) if not self.up else 0.0

    async def wait(self) -> None:
        """Return when uploads may be attempted (at once while the link is up)."""
        while (delay := self.seconds_until_retry()) > 0:
            self._changed.clear()
            try:
                async with asyncio.timeout(delay):
                    await self._changed.wait()
            except TimeoutError:
                pass

    def failed(self, reason: str, target: str) -> None:
        now = self._clock()
        delay = backoff_delay(self._failures, self._initial, self._maximum, self._rand)
        self._failures += 1
        self._retry_at = now + delay
        if self._down_since is None:
            self._down_since = now
            log.warning("connectivity lost to %s: %s; retrying in %.0f s", target, reason, delay)
        else:
            log.debug("still offline (%s); next try in %.0f s", reason, delay)

    def succeeded(self, target: str) -> None:
        if self._down_since is not None:
            log.info(
                "connectivity back to %s after %.0f s offline",
                target,
                self._clock() - self._down_since,
            )
            self._down_since = None
            self._changed.set()
        self._failures = 0
        self._retry_at = 0.0
