"""The outbox for the daemon's event loop: the synchronous core on its own thread.

:class:`AsyncOutbox` owns one :class:`~syncd.outbox.Outbox` and one worker thread; every
method runs the core's method of the same name on that thread, so the SQL exists once and
the event loop never blocks on SQLite or its fsyncs. This is aiosqlite's model (one
connection, one thread, calls queued to it) without reaching into aiosqlite's private API.

A call whose awaiting task is cancelled still completes on the thread: a claim made that
way is recovered when its lease expires (``release_expired``).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from syncd.outbox import (
    ClaimedFile,
    ClaimedReading,
    FailedItem,
    FileItem,
    KeptFile,
    LiveFile,
    Outbox,
    OutboxCounts,
    Reading,
)

T = TypeVar("T")


class AsyncOutbox:
    """The outbox with ``await``-able methods; open with ``await AsyncOutbox.open(dir)``."""

    def __init__(self, core: Outbox, executor: ThreadPoolExecutor):
        self._core = core
        self._executor = executor

    @classmethod
    async def open(cls, state_dir: str | Path, **kwargs: Any) -> AsyncOutbox:
        """Open (creating or migrating) the outbox; ``kwargs`` go to :class:`Outbox`."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncd-outbox")
        loop = asyncio.get_running_loop()
        try:
            core = await loop.run_in_executor(
                executor, functools.partial(Outbox, state_dir, **kwargs)
            )
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(core, executor)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    @property
    def path(self) -> Path:
        """The database file."""
        return self._core.path

    @property
    def sync(self) -> Outbox:
        """The synchronous core, for code already running off the event loop."""
        return self._core

    async def close(self) -> None:
        """Finish queued calls, close the database and stop the thread."""
        await self._run(self._core.close)
        self._executor.shutdown(wait=True)

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def enqueue_files(self, items: Sequence[FileItem], now: float | None = None) -> int:
        """See :meth:`Outbox.enqueue_files`."""
        return await self._run(self._core.enqueue_files, items, now)

    async def enqueue_readings(
        self, items: Sequence[Reading], now: float | None = None
    ) -> list[int]:
        """See :meth:`Outbox.enqueue_readings`."""
        return await self._run(self._core.enqueue_readings, items, now)

    async def claim_files(
        self,
        limit: int,
        lease_s: float,
        now: float | None = None,
        max_bytes: int | None = None,
    ) -> list[ClaimedFile]:
        """See :meth:`Outbox.claim_files`."""
        return await self._run(self._core.claim_files, limit, lease_s, now, max_bytes)

    async def claim_readings(
        self, max_count: int, max_bytes: int, lease_s: float, now: float | None = None
    ) -> list[ClaimedReading]:
        """See :meth:`Outbox.claim_readings`."""
        return await self._run(self._core.claim_readings, max_count, max_bytes, lease_s, now)

    async def ack(self, ids: Sequence[int], now: float | None = None) -> None:
        """See :meth:`Outbox.ack`."""
        await self._run(self._core.ack, ids, now)

    async def ack_after(self, work: Callable[[], tuple[Sequence[int], Sequence[KeptFile], T]]) -> T:
        """Run ``work`` on the outbox's thread, then ack the ids and kept files it returns
        (see :meth:`Outbox.ack`): one trip to the thread for what must happen just before
        an ack (deleting uploaded files). Returns what ``work`` returned beside them."""

        def work_then_ack() -> T:
            ids, kept, result = work()
            self._core.ack(ids, kept=kept)
            return result

        return await self._run(work_then_ack)

    async def ack_file_keep(
        self, id: int, path: str, size: int, mtime_ns: int, now: float | None = None
    ) -> None:
        """See :meth:`Outbox.ack_file_keep`."""
        await self._run(self._core.ack_file_keep, id, path, size, mtime_ns, now)

    async def nack(self, ids: Sequence[int], error: str, next_attempt_at: float) -> None:
        """See :meth:`Outbox.nack`."""
        await self._run(self._core.nack, ids, error, next_attempt_at)

    async def dead_letter(self, ids: Sequence[int], reason: str, now: float | None = None) -> None:
        """See :meth:`Outbox.dead_letter`."""
        await self._run(self._core.dead_letter, ids, reason, now)

    async def release_expired(self, now: float | None = None) -> int:
        """See :meth:`Outbox.release_expired`."""
        return await self._run(self._core.release_expired, now)

    async def release_all_inflight(self) -> int:
        """See :meth:`Outbox.release_all_inflight`."""
        return await self._run(self._core.release_all_inflight)

    async def list_failed(self) -> list[FailedItem]:
        """See :meth:`Outbox.list_failed`."""
        return await self._run(self._core.list_failed)

    async def retry_failed(self, ids: Sequence[int] | None = None, now: float | None = None) -> int:
        """See :meth:`Outbox.retry_failed`."""
        return await self._run(self._core.retry_failed, ids, now)

    async def purge_failed(
        self, ids: Sequence[int] | None = None, older_than: float | None = None
    ) -> int:
        """See :meth:`Outbox.purge_failed`."""
        return await self._run(self._core.purge_failed, ids, older_than)

    async def is_synced(self, path: str, size: int, mtime_ns: int) -> bool:
        """See :meth:`Outbox.is_synced`."""
        return await self._run(self._core.is_synced, path, size, mtime_ns)

    async def synced_paths(self) -> set[str]:
        """See :meth:`Outbox.synced_paths`."""
        return await self._run(self._core.synced_paths)

    async def synced_stats(self) -> dict[str, tuple[int, int]]:
        """See :meth:`Outbox.synced_stats`."""
        return await self._run(self._core.synced_stats)

    async def forget_synced(self, paths: Iterable[str]) -> int:
        """See :meth:`Outbox.forget_synced`."""
        return await self._run(self._core.forget_synced, list(paths))

    async def live_file_rows(self) -> list[LiveFile]:
        """See :meth:`Outbox.live_file_rows`."""
        return await self._run(self._core.live_file_rows)

    async def drop(self, ids: Sequence[int]) -> int:
        """See :meth:`Outbox.drop`."""
        return await self._run(self._core.drop, ids)

    async def counts(self, now: float | None = None) -> OutboxCounts:
        """See :meth:`Outbox.counts`."""
        return await self._run(self._core.counts, now)

    async def next_due_at(self) -> float | None:
        """See :meth:`Outbox.next_due_at`."""
        return await self._run(self._core.next_due_at)

    async def data_version(self) -> int:
        """See :meth:`Outbox.data_version`."""
        return await self._run(self._core.data_version)

    async def checkpoint(self) -> None:
        """See :meth:`Outbox.checkpoint`."""
        await self._run(self._core.checkpoint)
