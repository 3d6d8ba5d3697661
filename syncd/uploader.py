"""Draining the outbox: claiming work, building requests, retrying, acknowledging.

One dispatcher claims work from the outbox while a slot is free (``sync.concurrency``)
and runs each unit in its own task; an item waiting out its backoff sits in the outbox,
holding no slot. Failures are sorted by :func:`syncd.retry.classify`: retried later with
the schedule kept in the outbox, paused for everyone behind the connectivity gate, or
turned into dead letters with the server's reason.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, TypeVar

from grpclib.exceptions import GRPCError
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from syncd import mapping
from syncd.capture_file import CaptureReader, ReadingRecord
from syncd.cloud import UploadTransport
from syncd.config import Config
from syncd.errors import CaptureFileError, EmptyCaptureFileError, OutboxError, SourceError
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.group_acks import GroupAcks
from syncd.logs import human_bytes
from syncd.outbox import AsyncOutbox, ClaimedFile, ClaimedReading, FileItem
from syncd.retry import Connectivity, Verdict, backoff_delay, classify, describe
from syncd.upload_sources import Close, Source, local_io, open_source, remove_file

log = logging.getLogger("syncd.uploader")
T = TypeVar("T")

# Claims are held by this process only (the daemon releases them all at start), so the
# lease is a backstop for a wedged task, long enough for a slow big upload.
LEASE_S = 6 * 3600.0
# Files claimed per outbox transaction (the ones not started yet wait in memory): many
# small ones share a transaction, but no more bytes than this, so that readings (claimed
# in turn with files) do not wait behind a long queue of large files.
FILES_PER_CLAIM = 64
FILES_PER_CLAIM_BYTES = 16 * 1024 * 1024
# Room left in a request for its metadata when batching readings by bytes.
METADATA_ALLOWANCE = 64 * 1024
# How often to look for readings that other processes (robot programs) enqueued.
OTHER_WRITERS_POLL_S = 0.5
# Bytes read from disk per trip to a worker thread when streaming a file.
READ_BLOCK_BYTES = 1024 * 1024
# Files up to this size are read and deleted on the event loop: that costs less than a
# trip to a worker thread, which on a busy loop waits for the GIL (milliseconds). Here,
# reading 1 MiB from the page cache takes 0.07 ms, and deleting it once written back to
# ext4 about 1 ms.
INLINE_BYTES = 1024 * 1024
# In-call retries of transient errors: the first wait, its jitter, the longest wait.
CALL_RETRY_FIRST_S = 0.2
CALL_RETRY_JITTER_S = 0.2
CALL_RETRY_MAX_S = 2.0
# Uploads running longer than this report their progress.
PROGRESS_LOG_S = 30.0
# While the outbox refuses writes (its disk is full), the dispatcher retries this often.
OUTBOX_RETRY_MAX_S = 30.0


@dataclass
class Stats:
    """Running totals, read by the daemon's summary line and metrics."""

    files: int = 0
    readings: int = 0
    bytes: int = 0
    retries: int = 0
    dead_letters: int = 0

    def count_file(self, nbytes: int) -> None:
        self.files += 1
        self.bytes += nbytes

    def count_readings(self, n: int, nbytes: int) -> None:
        self.readings += n
        self.bytes += nbytes


class UploadEvents(Protocol):
    """Hears what happened to each upload, e.g. for metrics."""

    def uploaded(self, kind: str, items: int, nbytes: int, seconds: float) -> None:
        """An upload was acknowledged; ``kind`` is file, tabular or binary."""

    def failed(self, code: str) -> None:
        """An upload failed; ``code`` is the gRPC status name or the error's class."""


class _Slot:
    """One of the ``sync.concurrency`` upload slots, held by one unit of work and given
    back once the server has acknowledged it: deleting the source and recording the ack
    are local bookkeeping, which need not hold up the next upload."""

    def __init__(self, free: Callable[[], None]) -> None:
        self._free: Callable[[], None] | None = free

    def release(self) -> None:
        """Give the slot back (once; later calls do nothing)."""
        if self._free is not None:
            free, self._free = self._free, None
            free()


class Uploader:
    """Uploads everything the outbox holds through ``transport``, until cancelled.

    ``on_file_done(path)`` is called after a source file was uploaded and removed (or
    kept, with ``delete_after_upload: false``), so the watcher can forget it; not for a
    file that could not be deleted, which stays on disk remembered as synced.
    ``throttle(nbytes)`` is awaited before bytes go out, for a bandwidth cap; ``clock`` gives wall time (the outbox's schedule);
    ``events`` hears of every acknowledged and every failed upload.
    """

    def __init__(
        self,
        cfg: Config,
        outbox: AsyncOutbox,
        transport: UploadTransport,
        *,
        target: str = "server",
        clock: Callable[[], float] = time.time,
        on_file_done: Callable[[str], None] | None = None,
        throttle: Callable[[int], object] | None = None,
        events: UploadEvents | None = None,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.transport = transport
        self.target = target
        self.clock = clock
        self.stats = Stats()
        self.connectivity = Connectivity(cfg.sync.retry_initial_s, min(cfg.sync.retry_max_s, 60.0))
        self._on_file_done = on_file_done or (lambda path: None)
        self._throttle = throttle
        self._events = events
        self._slots = asyncio.Semaphore(cfg.sync.concurrency)
        self._surplus = 0  # slots to retire after sync.concurrency was lowered
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()  # nothing in flight and nothing due: see wait_idle
        self._files_first = True
        self._claimed_files: deque[ClaimedFile] = deque()
        self._acks = GroupAcks(outbox)
        self._active = 0
        self._paused = False
        self._unrecorded: list[int] = []  # claimed ids whose outcome the outbox refused
        self._outbox_retry_s = 0.0

    # --- scheduling ------------------------------------------------------------------

    def wake(self) -> None:
        """New work may be due (the watcher enqueued something)."""
        self._idle.clear()
        self._wake.set()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight and the outbox had nothing due at the last
        look (items waiting out a backoff may remain)."""
        await self._idle.wait()

    @property
    def busy(self) -> bool:
        return self._active > 0

    def pause(self, paused: bool) -> None:
        """Stop taking new work (in-flight uploads finish), or start again."""
        self._paused = paused
        if not paused:
            self.wake()

    def apply(self, cfg: Config) -> None:
        """Use a reloaded configuration (its ``sync`` section) from the next upload on."""
        change = cfg.sync.concurrency - self.cfg.sync.concurrency
        self.cfg = cfg
        if change > 0:
            kept = min(change, self._surplus)
            self._surplus -= kept
            for _ in range(change - kept):
                self._slots.release()
        else:
            self._surplus -= change
        self.wake()

    async def run(self) -> None:
        """Dispatch work until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._watch_other_writers())
            tasks.create_task(self._acks.run())
            while True:
                await self.connectivity.wait()
                await self._slots.acquire()
                if self._surplus > 0:  # sync.concurrency was lowered: retire this slot
                    self._surplus -= 1
                    continue
                # From here on a wake() is kept for _sleep_until_due, also one that comes
                # while the outbox is being asked.
                self._wake.clear()
                try:
                    if self._unrecorded:
                        await self._put_back_unrecorded()
                    work = None if self._paused else await self._claim()
                except OutboxError as exc:  # e.g. its disk is full: wait, never die of it
                    self._slots.release()
                    await self._outbox_failed(exc)
                    continue
                self._outbox_retry_s = 0.0
                if work is None:
                    self._slots.release()
                    if self._active == 0:
                        self._idle.set()
                    await self._sleep_until_due()
                    continue
                self._idle.clear()
                self._active += 1
                tasks.create_task(self._run_unit(work))

    async def _claim(self) -> ClaimedFile | list[ClaimedReading] | None:
        if self._claimed_files:
            return self._claimed_files.popleft()
        self._files_first = not self._files_first  # alternate, so neither kind starves
        for files in (self._files_first, not self._files_first):
            if files:
                # Several at once: one transaction for a handful of small files.
                claimed = await self.outbox.claim_files(
                    FILES_PER_CLAIM, LEASE_S, now=self.clock(), max_bytes=FILES_PER_CLAIM_BYTES
                )
                if claimed:
                    self._claimed_files.extend(claimed[1:])
                    return claimed[0]
            else:
                readings = await self.outbox.claim_readings(
                    self.cfg.sync.batch_max_readings,
                    self.cfg.sync.max_request_bytes - METADATA_ALLOWANCE,
                    LEASE_S,
                    now=self.clock(),
                )
                if readings:
                    return readings
        return None

    async def _sleep_until_due(self) -> None:
        due = None if self._paused else await self.outbox.next_due_at()
        timeout = None if due is None else max(0.0, due - self.clock()) + 0.01
        try:
            async with asyncio.timeout(timeout):
                await self._wake.wait()
        except TimeoutError:
            pass

    async def _watch_other_writers(self) -> None:
        """Wake up when another process (a robot program) committed to the outbox."""
        seen = await self.outbox.data_version()
        while True:
            await asyncio.sleep(OTHER_WRITERS_POLL_S)
            version = await self.outbox.data_version()
            if version != seen:
                seen = version
                self.wake()

    # --- one unit of work ------------------------------------------------------------

    async def _put_back_unrecorded(self) -> None:
        """Make the units whose outcome could not be written due again (an upload that did
        go through goes once more: at least once)."""
        ids, self._unrecorded = self._unrecorded, []
        try:
            await self.outbox.nack(ids, "the outbox could not record this upload", self.clock())
        except OutboxError:
            self._unrecorded = ids + self._unrecorded
            raise
        log.info("the outbox takes writes again; %d items go again", len(ids))

    async def _outbox_failed(self, exc: OutboxError) -> None:
        self._outbox_retry_s = min(OUTBOX_RETRY_MAX_S, max(1.0, 2 * self._outbox_retry_s))
        log.error(
            "cannot write the outbox: %s; uploads wait and try again in %.0f s",
            exc,
            self._outbox_retry_s,
            extra={"repeat_key": "outbox write failed"},
        )
        await asyncio.sleep(self._outbox_retry_s)

    async def _run_unit(self, work: ClaimedFile | list[ClaimedReading]) -> None:
        ids = [r.id for r in work] if isinstance(work, list) else [work.id]
        slot = _Slot(self._free_slot)
        try:
            if isinstance(work, list):
                await self._guard(
                    self._upload_readings(work, slot),
                    [r.id for r in work],
                    work[0].attempts,
                    _stream_name(work[0]),
                )
            else:
                await self._guard(
                    self._upload_file(work, slot), [work.id], work.attempts, work.path
                )
        except OutboxError as exc:
            # Its outcome could not be written (the outbox's disk is full, say): the rows
            # stay claimed until the dispatcher can put them back.
            self._unrecorded += ids
            log.error(
                "cannot record the upload of %d items in the outbox: %s",
                len(ids),
                exc,
                extra={"repeat_key": "outbox write failed"},
            )
        finally:
            self._active -= 1
            slot.release()
            self.wake()

    def _free_slot(self) -> None:
        if self._surplus > 0:  # sync.concurrency was lowered: retire this slot
            self._surplus -= 1
        else:
            self._slots.release()

    async def _guard(self, upload, ids: list[int], attempts: int, source: str) -> None:
        """Run one upload and file its outcome; nothing escapes except cancellation."""
        try:
            await upload
            self.connectivity.succeeded(self.target)
        except (asyncio.CancelledError, OutboxError):
            raise  # an outbox that refuses writes is no upload failure: see _run_unit
        except CaptureFileError as exc:
            self._failed(exc)
            await self._dead_letter(ids, source, str(exc))
        except Exception as exc:
            self._failed(exc)
            verdict = classify(exc)
            reason = describe(exc)
            now = self.clock()
            if isinstance(exc, SourceError):
                verdict = Verdict.RETRY
            elif verdict is Verdict.FATAL and not isinstance(exc, GRPCError):
                # Our own bug, not the server's verdict: keep the data and say so loudly.
                log.exception("internal error while uploading %s; will retry", source)
                verdict = Verdict.RETRY
            if verdict is Verdict.OFFLINE:
                self.connectivity.failed(reason, self.target)
                await self.outbox.nack(ids, reason, now)
            elif verdict is Verdict.RETRY:
                self.connectivity.succeeded(self.target)
                delay = backoff_delay(
                    attempts, self.cfg.sync.retry_initial_s, self.cfg.sync.retry_max_s
                )
                self.stats.retries += 1
                # Rate-limited per reason, not repeated per item (see logs.RepeatFilter).
                log.info(
                    "upload of %s failed (%s); retrying in %.0f s",
                    source,
                    reason,
                    delay,
                    extra={"repeat_key": f"retry: {reason}"},
                )
                await self.outbox.nack(ids, reason, now + delay)
            else:
                self.connectivity.succeeded(self.target)
                await self._dead_letter(ids, source, reason)

    async def _dead_letter(self, ids: list[int], source: str, reason: str) -> None:
        self.stats.dead_letters += len(ids)
        log.warning(
            "dead letter: %s: %s (see `syncd failed list`)",
            source,
            reason,
            extra={"repeat_key": f"dead letter: {reason}"},
        )
        await self.outbox.dead_letter(ids, reason)

    async def _call(self, make_call: Callable[[], object]):
        """One upload call, with quick in-call retries for transient server errors:
        after 0.2 s, then twice as long each time up to 2 s, plus jitter. The first
        attempt goes out directly: most calls succeed, and tenacity's loop costs as much
        as a small file's own bookkeeping."""
        attempts = self.cfg.sync.call_attempts
        try:
            return await make_call()  # type: ignore[misc]
        except Exception as exc:
            if attempts <= 1 or classify(exc) is not Verdict.RETRY:
                raise
        await asyncio.sleep(CALL_RETRY_FIRST_S + random.uniform(0, CALL_RETRY_JITTER_S))
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts - 1),
            wait=wait_exponential_jitter(
                multiplier=2 * CALL_RETRY_FIRST_S,
                max=CALL_RETRY_MAX_S,
                jitter=CALL_RETRY_JITTER_S,
            ),
            retry=retry_if_exception(lambda e: classify(e) is Verdict.RETRY),
            reraise=True,
        ):
            with attempt:
                return await make_call()  # type: ignore[misc]

    def _failed(self, exc: BaseException) -> None:
        if self._events is not None:
            code = exc.status.name if isinstance(exc, GRPCError) else type(exc).__name__
            self._events.failed(code)

    def _uploaded(self, kind: str, items: int, nbytes: int, started: float) -> None:
        if self._events is not None:
            self._events.uploaded(kind, items, nbytes, time.monotonic() - started)

    async def _spend(self, nbytes: int) -> None:
        if self._throttle is not None:
            await self._throttle(nbytes)  # type: ignore[misc]

    # --- readings pushed by robot programs --------------------------------------------

    async def _upload_readings(self, readings: list[ClaimedReading], slot: _Slot) -> None:
        first = readings[0]
        stream = mapping.Stream(
            component_type=first.component_type,
            component_name=first.component_name,
            method_name=first.method_name,
            data_type=ds.DATA_TYPE_TABULAR_SENSOR
            if first.kind == "tabular"
            else ds.DATA_TYPE_BINARY_SENSOR,
            tags=tuple(first.tags),
            file_extension=first.file_extension,
            mime_type=first.mime_type,
        )
        md = mapping.upload_metadata(self.cfg.part_id, stream, self.cfg.sync.tags)
        if first.kind == "tabular":
            contents, good = [], []
            for r in readings:
                try:
                    contents.append(
                        mapping.tabular_reading(r.payload, r.time_requested_ns, r.time_received_ns)
                    )
                    good.append(r)
                except (ValueError, TypeError, AttributeError) as exc:
                    # A damaged payload (SQLite checksums no content; a salvaged outbox)
                    # can never go: set it aside rather than hold back its whole stream.
                    reason = f"the stored reading is not a JSON object ({exc})"
                    await self._dead_letter([r.id], _stream_name(r), reason)
            if not good:
                return
            readings = good
            request = ds.DataCaptureUploadRequest(metadata=md, sensor_contents=contents)
            size = request.ByteSize()
            started = time.monotonic()
            await self._spend(size)
            await self._call(lambda: self.transport.data_capture_upload(request))
            slot.release()
            await self._acks.ack([r.id for r in readings])
            self.stats.count_readings(len(readings), size)
            self._uploaded("tabular", len(readings), size, started)
            return
        for reading in readings:  # binary: one reading per request, as Viam's clients do
            sensor = mapping.binary_reading(
                reading.payload, reading.time_requested_ns, reading.time_received_ns
            )
            started = time.monotonic()
            await self._send_binary(md, sensor, reading.payload)
            await self._acks.ack([reading.id])
            self.stats.count_readings(1, len(reading.payload))
            self._uploaded("binary", 1, len(reading.payload), started)

    async def _send_binary(
        self, md: ds.UploadMetadata, sensor: ds.SensorData, payload: bytes
    ) -> None:
        """One binary reading: unary up to 1,000,000 bytes, streamed above (as Viam does)."""
        md = mapping.for_binary_reading(md, sensor.metadata)
        await self._spend(len(payload))
        if len(payload) <= mapping.MAX_UNARY_BINARY_BYTES:
            request = ds.DataCaptureUploadRequest(metadata=md, sensor_contents=[sensor])
            await self._call(lambda: self.transport.data_capture_upload(request))
            return
        header = ds.DataCaptureUploadMetadata(upload_metadata=md, sensor_metadata=sensor.metadata)
        chunk = self.cfg.sync.chunk_bytes

        async def chunks() -> AsyncIterator[bytes | memoryview]:
            view = memoryview(payload)
            for start in range(0, len(view), chunk):
                yield view[start : start + chunk]

        await self._call(lambda: self.transport.streaming_upload(header, chunks))

    # --- files -------------------------------------------------------------------------

    async def _upload_file(self, item: ClaimedFile, slot: _Slot) -> None:
        try:
            source = await _blocking_io(
                item.size <= INLINE_BYTES,
                open_source,
                item.path,
                item.kind,
                self.cfg.sync.chunk_bytes,
            )
        except FileNotFoundError:
            # Removed by another program, or uploaded and deleted by syncd just before it
            # stopped (the ack had not reached the outbox): either way nothing to send.
            log.warning("%s is gone from disk; dropping it from the queue", item.path)
            await self.outbox.drop([item.id])
            self._on_file_done(item.path)
            return
        except EmptyCaptureFileError:
            if item.kind != "prog":
                raise
            # An orphan whose writer died before writing anything (or before it reached
            # the disk, in a power cut): no reading to recover, no byte to keep. One cut
            # short stays, a dead letter: it may not be a capture file at all.
            log.info("%s: an orphaned .prog file with nothing in it; removing it", item.path)
            remove_file(item.path)  # empty: its unlink costs nothing worth a thread
            await self.outbox.drop([item.id])
            self._on_file_done(item.path)
            return
        try:
            st = source.st
            if (st.st_size, st.st_mtime_ns) != (item.size, item.mtime_ns):
                await self._requeue_changed(item, st)
                return
            started = time.monotonic()
            if item.kind == "file":
                nbytes = await self._upload_arbitrary(item, source)
            else:
                nbytes = await self._upload_capture(item, source)
        finally:
            if source.reader is not None:
                source.reader.close()
        slot.release()
        await self._finish_file(item, source.sidecar, nbytes, time.monotonic() - started)

    async def _requeue_changed(self, item: ClaimedFile, st: os.stat_result) -> None:
        """The file is not what was queued: queue it again as it is now."""
        log.info("%s changed since it was queued; queueing it again", item.path)
        await self.outbox.nack(
            [item.id], "changed on disk", self.clock() + self.cfg.sync.file_quiet_period_s
        )
        await self.outbox.enqueue_files(
            [FileItem(item.path, item.kind, st.st_size, st.st_mtime_ns, dict(item.meta))]
        )

    async def _finish_file(
        self, item: ClaimedFile, sidecar: bool, nbytes: int, elapsed: float
    ) -> None:
        keep = not self.cfg.sync.delete_after_upload and item.kind != "prog"
        close = Close(item.id, item.path, item.size, item.mtime_ns, sidecar, keep)
        outcome = await self._acks.close_and_ack(close)
        undeletable = False
        if isinstance(outcome, OSError):
            # Uploaded, and the server has it: keep the file, remembered as synced, so
            # it neither blocks the queue nor goes again (unless it changes).
            log.warning(
                "uploaded %s but cannot delete it (%s); it stays on disk and goes "
                "again only if it changes",
                item.path,
                outcome.strerror or outcome,
                extra={"repeat_key": f"cannot delete: {outcome.strerror}"},
            )
            await self.outbox.ack_file_keep(item.id, item.path, item.size, item.mtime_ns)
            outcome, undeletable = None, True
        if outcome is not None:
            # Never acknowledge new content as uploaded: send it again.
            await self._requeue_changed(item, outcome)
            return
        self.stats.count_file(nbytes if item.kind == "file" else 0)
        if item.kind == "file":
            self._uploaded("file", 1, nbytes, time.monotonic() - elapsed)
        if not undeletable:
            self._on_file_done(item.path)
        if item.kind == "file":
            # Arbitrary files (logs, bags, videos) are few and an operator looks for them;
            # capture files come every few seconds and show in the summary instead.
            if log.isEnabledFor(logging.INFO):
                rate = nbytes / elapsed / 1e6 if elapsed > 0 else 0.0
                log.info("uploaded %s (%s, %.1f MB/s)", item.path, human_bytes(nbytes), rate)
        else:
            log.debug("uploaded %s (%s)", item.path, human_bytes(item.size))

    def _file_chunks(
        self, path: str, size: int, offset: int = 0
    ) -> Callable[[], AsyncIterator[bytes | memoryview]]:
        """A re-startable reader of ``size`` bytes of ``path`` from ``offset``, in chunks,
        reporting progress of long uploads."""
        chunk = self.cfg.sync.chunk_bytes
        # Disk reads happen off the event loop, a block of several chunks per hop.
        block = max(chunk, READ_BLOCK_BYTES // chunk * chunk)

        async def chunks() -> AsyncIterator[bytes | memoryview]:
            started = last_log = time.monotonic()
            sent = 0
            try:
                f = await asyncio.to_thread(open, path, "rb", buffering=0)
            except OSError as exc:
                raise SourceError(f"{path}: cannot read: {exc.strerror}") from None
            try:
                while sent < size:
                    want = min(block, size - sent)
                    try:
                        data = await asyncio.to_thread(os.pread, f.fileno(), want, offset + sent)
                    except OSError as exc:
                        raise SourceError(f"{path}: read failed: {exc.strerror}") from None
                    if len(data) < want:
                        raise SourceError(f"{path}: shrank while being uploaded")
                    view = memoryview(data)
                    for start in range(0, len(data), chunk):
                        piece = view[start : start + chunk]
                        await self._spend(len(piece))
                        yield piece
                    sent += len(data)
                    now = time.monotonic()
                    if now - last_log >= PROGRESS_LOG_S:
                        last_log = now
                        log.info(
                            "uploading %s: %.0f%% (%d of %d bytes, %.1f MB/s)",
                            path,
                            100 * sent / size,
                            sent,
                            size,
                            sent / (now - started) / 1e6,
                        )
            finally:
                f.close()

        return chunks

    async def _upload_arbitrary(self, item: ClaimedFile, source: Source) -> int:
        meta = item.meta
        hop_tags = mapping.merge_tags(self.cfg.sync.tags, meta.get("tags", ()))
        md = mapping.file_metadata(
            item.path,
            source.st,
            self.cfg.part_id,
            tags=hop_tags,
            dataset_ids=meta.get("dataset_ids", ()),
        )
        if source.origin is not None:
            md = mapping.as_forwarded(md, source.origin, hop_tags)
        if source.content is not None:  # read whole already: no more trips to the disk
            content = source.content

            async def chunks() -> AsyncIterator[bytes]:
                await self._spend(len(content))
                yield content

        else:
            chunks = self._file_chunks(item.path, item.size)
        await self._call(lambda: self.transport.file_upload(md, chunks))
        return item.size

    async def _upload_capture(self, item: ClaimedFile, source: Source) -> int:
        """Upload a capture file's readings: tabular in batches, binary one by one."""
        reader = source.reader
        assert reader is not None
        header = reader.header
        hop_tags = mapping.merge_tags(self.cfg.sync.tags, item.meta.get("tags", ()))
        md = mapping.header_metadata(
            header, self.cfg.part_id, hop_tags, item.meta.get("dataset_ids", ())
        )
        if source.origin is not None:
            md = mapping.as_forwarded(md, source.origin, hop_tags)
        if header.type == ds.DATA_TYPE_BINARY_SENSOR:
            nbytes = await self._upload_binary_records(md, iter(reader), reader.size)
        else:
            nbytes = await self._upload_tabular_records(md, reader, item.path)
        if reader.tail_error:
            log.warning(
                "%s: uploaded the readings before a damaged tail; dropped %d bytes: %s",
                item.path,
                reader.dropped_bytes,
                reader.tail_error,
            )
        return nbytes

    async def _upload_tabular_records(
        self, md: ds.UploadMetadata, reader: CaptureReader, path: str
    ) -> int:
        """Readings go out as read from the file, framed into requests without being
        parsed and serialised again (the server validates them)."""
        md_bytes = md.SerializeToString()
        batches = reader.iter_delimited_batches(
            self.cfg.sync.batch_max_readings,
            self.cfg.sync.max_request_bytes - mapping.field_size(len(md_bytes)),
        )
        requests = _Requests(batches, md_bytes, path)
        inline = reader.size <= INLINE_BYTES
        total = 0
        while (got := await _blocking_io(inline, requests.next)) is not None:
            request, count = got
            started = time.monotonic()
            await self._spend(len(request))
            await self._call(lambda request=request: self.transport.data_capture_upload(request))
            total += len(request)
            self.stats.count_readings(count, len(request))
            self._uploaded("tabular", count, len(request), started)
        return total

    async def _upload_binary_records(
        self, md: ds.UploadMetadata, records: Iterator[ReadingRecord], file_size: int
    ) -> int:
        inline = file_size <= INLINE_BYTES
        total = 0
        while True:
            record = await _blocking_io(inline, _next_record, records)
            if record is None:
                break
            if record.data_field != "binary":
                raise CaptureFileError("a binary capture file holds tabular readings")
            started = time.monotonic()
            if record.is_streamed:
                reading_md = mapping.for_binary_reading(md, record.metadata)
                header = ds.DataCaptureUploadMetadata(
                    upload_metadata=reading_md, sensor_metadata=record.metadata
                )
                chunks = self._file_chunks(record.path, record.binary_length, record.binary_offset)
                await self._call(
                    lambda header=header, chunks=chunks: self.transport.streaming_upload(
                        header, chunks
                    )
                )
                nbytes = record.binary_length
            else:
                sensor = record.sensor_data
                await self._send_binary(md, sensor, sensor.binary)
                nbytes = len(sensor.binary)
            total += nbytes
            self.stats.count_readings(1, nbytes)
            self._uploaded("binary", 1, nbytes, started)
        return total


class _Requests:
    """A capture file's serialized DataCaptureUploadRequests, one batch of readings at a
    time: a request in flight is all that is held of the file (besides its reader's
    block), so memory stays near ``concurrency`` x ``max_request_bytes``."""

    def __init__(self, batches: Iterator[list[bytes]], metadata: bytes, path: str) -> None:
        self._batches = batches
        self._metadata = metadata
        self._path = path

    def next(self) -> tuple[bytes, int] | None:
        """(request, readings in it), or None when done."""
        with local_io(self._path):
            batch = next(self._batches, None)
        if batch is None:
            return None
        return mapping.encode_request(self._metadata, batch), len(batch)


async def _blocking_io(inline: bool, fn: Callable[..., T], *args) -> T:
    """``fn(*args)`` on the event loop when ``inline`` (cheap enough), else in a thread."""
    if inline:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


def _next_record(records: Iterator[ReadingRecord]) -> ReadingRecord | None:
    try:
        return next(records, None)
    except OSError as exc:
        raise SourceError(f"cannot read a capture file: {exc.strerror or exc}") from None


def _stream_name(reading: ClaimedReading) -> str:
    return f"{reading.component_type}/{reading.component_name}/{reading.method_name}"
