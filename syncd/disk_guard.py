"""The disk guard: keeps the filesystem holding ``capture_dir`` under
``disk.max_used_fraction`` by deleting capture files, and purges old dead letters.

What it may delete, in this order, and nothing else:
1. ``.capture`` files below ``capture_dir`` that were already uploaded and kept on disk
   (``sync.delete_after_upload: false``), oldest first: no data is lost.
2. ``.capture`` files below ``capture_dir`` queued for upload and not in flight, oldest
   first, either every Nth of them (``disk.strategy: every_nth``, Viam's rule) or all in
   order (``oldest_first``), until the filesystem is under the limit. Their readings are
   lost, so each batch is logged as a warning with counts and bytes.

Never: ``.prog`` files (a writer may hold them), readings that exist only in the outbox
(robot programs trusted it with them), arbitrary files (a user put them there on purpose,
and syncd cannot know what they are worth), files in ``additional_sync_paths`` (another
filesystem, maybe), or a file being uploaded. Each deleted file's outbox row goes too.

The filesystem's size comes from an injectable ``statvfs``-like callable, so tests run
against a small fake filesystem.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from syncd.config import Config
from syncd.logs import human_bytes
from syncd.outbox_async import AsyncOutbox

log = logging.getLogger("syncd.disk")

CAPTURE_SUFFIX = ".capture"
DAY_S = 86400.0


@dataclass(frozen=True)
class DiskUsage:
    """Size and space available to unprivileged users, in bytes."""

    total: int
    available: int

    @property
    def used(self) -> int:
        """Bytes not available to us (blocks reserved for root count as used)."""
        return self.total - self.available

    @property
    def used_fraction(self) -> float:
        return self.used / self.total if self.total else 0.0


def disk_usage(statvfs: Callable[[str], Any], path: str) -> DiskUsage:
    """The usage of the filesystem holding ``path`` (blocking)."""
    st = statvfs(path)
    return DiskUsage(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


@dataclass(frozen=True)
class ThinReport:
    """What one check deleted: already-uploaded copies and queued files (data lost)."""

    uploaded_files: int
    queued_files: int
    bytes_freed: int
    used_before: float
    used_after: float

    @property
    def files(self) -> int:
        return self.uploaded_files + self.queued_files


@dataclass(frozen=True)
class _Candidate:
    path: str
    size: int
    mtime_ns: int
    row_id: int | None  # None: an uploaded file kept on disk (no outbox row to drop)


class DiskGuard:
    """Checks the capture filesystem with :meth:`check` and purges dead letters with
    :meth:`purge_failed`; the daemon calls both on its own timers."""

    def __init__(
        self,
        cfg: Config,
        outbox: AsyncOutbox,
        *,
        statvfs: Callable[[str], Any] = os.statvfs,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self._statvfs = statvfs
        self._clock = clock
        self._root = os.path.join(os.path.abspath(cfg.capture_dir), "")
        self._stuck = False  # over the limit with nothing left to delete (logged once)
        self._unreadable = False

    def apply(self, cfg: Config) -> None:
        """Use reloaded ``disk`` and ``failed`` settings."""
        self.cfg = cfg

    async def usage(self) -> DiskUsage | None:
        """The capture filesystem's usage, or None (with one warning) when unreadable."""
        try:
            usage = await asyncio.to_thread(disk_usage, self._statvfs, str(self.cfg.capture_dir))
        except FileNotFoundError:
            return None  # not created yet: the watcher makes it, the next check measures
        except OSError as exc:
            if not self._unreadable:
                self._unreadable = True
                log.warning(
                    "disk guard: cannot read the size of %s: %s",
                    self.cfg.capture_dir,
                    exc.strerror or exc,
                )
            return None
        self._unreadable = False
        return usage

    async def check(self) -> ThinReport | None:
        """Delete capture files while the filesystem is over the limit; None when it
        is not (or nothing could be deleted)."""
        limit = self.cfg.disk.max_used_fraction
        usage = await self.usage()
        if usage is None or usage.used_fraction <= limit:
            if self._stuck and usage is not None:
                log.info("disk guard: %s is under the limit again", self.cfg.capture_dir)
            self._stuck = False
            return None
        # Bytes to free to get under the limit; each deletion is counted against it.
        excess = usage.used - int(limit * usage.total)
        uploaded = await self._uploaded_copies()
        gone, freed = await asyncio.to_thread(_delete, uploaded, excess)
        if gone:
            await self.outbox.forget_synced([c.path for c in gone])
        queued_gone: list[_Candidate] = []
        if freed < excess:
            queued = self._thin_order(await self._queued_captures())
            queued_gone, more = await asyncio.to_thread(_delete, queued, excess - freed)
            freed += more
            if queued_gone:
                await self.outbox.drop([c.row_id for c in queued_gone if c.row_id is not None])
        after = (usage.used - freed) / usage.total
        report = ThinReport(len(gone), len(queued_gone), freed, usage.used_fraction, after)
        self._log(report, limit)
        return report if report.files else None

    def _log(self, report: ThinReport, limit: float) -> None:
        where = self.cfg.capture_dir
        if report.uploaded_files:
            log.warning(
                "disk guard: %s is %.0f%% full (limit %.0f%%): deleted %d capture files "
                "already uploaded and kept on disk",
                where,
                100 * report.used_before,
                100 * limit,
                report.uploaded_files,
            )
        if report.queued_files:
            rule = (
                f"every {self.cfg.disk.thin_every_nth}th of the oldest"
                if self.cfg.disk.strategy == "every_nth"
                else "the oldest"
            )
            log.warning(
                "disk guard: %s is %.0f%% full (limit %.0f%%): deleted %d capture files "
                "waiting for upload (%s); their readings are lost",
                where,
                100 * report.used_before,
                100 * limit,
                report.queued_files,
                rule,
            )
        if report.files:
            log.warning(
                "disk guard: freed %s; now about %.0f%% full",
                human_bytes(report.bytes_freed),
                100 * report.used_after,
            )
        if report.used_after > limit:
            if not self._stuck:
                self._stuck = True
                log.warning(
                    "disk guard: %s is still %.0f%% full and no capture file is left that "
                    "syncd may delete; something else fills this disk",
                    where,
                    100 * report.used_after,
                )
        else:
            self._stuck = False

    async def _uploaded_copies(self) -> list[_Candidate]:
        synced = await self.outbox.synced_stats()
        found = [
            _Candidate(path, size, mtime_ns, None)
            for path, (size, mtime_ns) in synced.items()
            if self._eligible(path)
        ]
        found.sort(key=lambda c: (c.mtime_ns, c.path))
        return found

    async def _queued_captures(self) -> list[_Candidate]:
        rows = await self.outbox.live_file_rows()
        found = [
            _Candidate(r.path, r.size, r.mtime_ns, r.id)
            for r in rows
            if r.state == "pending" and self._eligible(r.path)
        ]
        found.sort(key=lambda c: (c.mtime_ns, c.row_id))
        return found

    def _eligible(self, path: str) -> bool:
        return path.endswith(CAPTURE_SUFFIX) and path.startswith(self._root)

    def _thin_order(self, oldest_first: list[_Candidate]) -> list[_Candidate]:
        """Deletion order: every Nth of the oldest (1st, N+1th, ...), or all in order."""
        if self.cfg.disk.strategy == "oldest_first":
            return oldest_first
        return oldest_first[:: self.cfg.disk.thin_every_nth]

    async def purge_failed(self) -> int:
        """Delete dead letters older than ``failed.max_age_days`` (0: keep them all)."""
        days = self.cfg.failed.max_age_days
        if days <= 0:
            return 0
        purged = await self.outbox.purge_failed(None, older_than=self._clock() - days * DAY_S)
        if purged:
            log.info("purged %d dead letters older than %g days", purged, days)
        return purged


def _delete(candidates: Sequence[_Candidate], excess: int) -> tuple[list[_Candidate], int]:
    """Delete in order until ``excess`` bytes are freed (blocking); a file that changed
    since it was recorded (not what the outbox knows) is left alone."""
    gone: list[_Candidate] = []
    freed = 0
    for c in candidates:
        if freed >= excess:
            break
        try:
            st = os.stat(c.path)
            if (st.st_size, st.st_mtime_ns) != (c.size, c.mtime_ns):
                continue
            os.unlink(c.path)
        except FileNotFoundError:
            gone.append(c)  # already gone: its row goes anyway
            continue
        except OSError as exc:
            log.warning("disk guard: cannot delete %s: %s", c.path, exc.strerror or exc)
            continue
        gone.append(c)
        freed += st.st_blocks * 512 if st.st_blocks else st.st_size
    return gone, freed
