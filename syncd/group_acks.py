"""Acknowledgements of concurrent uploads committed together, with the uploaded files
closed just before (see :class:`GroupAcks`)."""

from __future__ import annotations

import asyncio
import functools

from syncd.outbox import AsyncOutbox
from syncd.upload_sources import Close, Outcome, close_files, close_more

# Uploaded files up to this size are deleted on the event loop, many at a time: tens of
# microseconds each, even once written back (here: 3 us for a 4 KiB file still in the
# page cache, 60 us once written back; 270 us for 1 MiB). Larger ones go to a thread.
INLINE_DELETE_BYTES = 64 * 1024

# Acknowledgements gather this long before they are committed together: one transaction
# per ack costs the outbox thread more than a small file's whole upload. The uploader
# frees an upload's slot before its ack, so nothing waits on this but the row.
ACK_GATHER_S = 0.02


class GroupAcks:
    """Acknowledgements of concurrent uploads share one outbox transaction (group
    commit): an ack joins the next flush and returns once that flush is committed. Files
    to close join it too and are deleted just before the commit, so a crash in between
    leaves a row whose file is gone (dropped at the next claim), never a file whose row
    is gone (which would upload twice); files kept on disk are remembered as synced in
    the commit. Small files are closed on the event loop, which costs less than waking a
    thread (see ``INLINE_DELETE_BYTES``); large ones, whose blocks take a while to free,
    on the outbox's thread in the same trip as the commit. A flush waits
    ``ACK_GATHER_S`` for company: each trip to that thread wakes it and the event loop,
    which costs a small file's upload more than its own ack."""

    def __init__(self, outbox: AsyncOutbox) -> None:
        self._outbox = outbox
        self._ids: list[int] = []
        self._closes: list[Close] = []
        # One future per waiter, so that a waiter cancelled leaves the flush alone.
        self._waiters: list[asyncio.Future[dict[int, Outcome]]] = []
        self._wanted = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def ack(self, ids: list[int]) -> None:
        """Ack ``ids`` (readings) in the next flush."""
        self._ids.extend(ids)
        await self._next_flush()

    async def close_and_ack(self, close: Close) -> Outcome:
        """Delete (or keep) the uploaded file and ack its row, returning None; or, if the
        file changed meanwhile, neither, returning its new stat; or, if it could not be
        deleted, the error, leaving its row to the caller."""
        self._closes.append(close)
        return (await self._next_flush()).get(close.id)

    def _next_flush(self) -> asyncio.Future[dict[int, Outcome]]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        waiter = self._loop.create_future()
        self._waiters.append(waiter)
        self._wanted.set()
        return waiter

    async def run(self) -> None:
        """Flush until cancelled (the uploader runs it beside its dispatcher)."""
        while True:
            await self._wanted.wait()
            await asyncio.sleep(ACK_GATHER_S)
            self._wanted.clear()
            ids, closes, waiters = self._ids, self._closes, self._waiters
            self._ids, self._closes, self._waiters = [], [], []
            if not waiters:
                continue
            small = [c for c in closes if c.size <= INLINE_DELETE_BYTES]
            large = [c for c in closes if c.size > INLINE_DELETE_BYTES]
            try:
                closed, kept, outcomes = close_files(small)
                outcomes = await self._outbox.ack_after(
                    functools.partial(close_more, (ids + closed, kept, outcomes), large)
                )
            except Exception as exc:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(exc)
            else:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(outcomes)
