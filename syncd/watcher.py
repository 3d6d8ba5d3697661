"""The watcher: finds files to upload under the sync folders and queues them in the outbox.

It owns the watchdog observer and its bridge into asyncio, the startup reconcile against
the outbox, the periodic rescan, and the timers of the stability rules: an arbitrary file
waits until unmodified for ``sync.file_quiet_period_s``; a ``.capture`` file goes at once
when it appears under its final name (renamed from ``.prog``); a ``.prog`` file is
recovered only when no process holds it open and it is older than
``sync.prog_recover_age_s``. What counts as a candidate is decided by :mod:`syncd.scan`.
The watcher only writes to the outbox; it never talks to the uploader.

Events are hints and scans are the truth: inotify drops events when its queue overflows
or its watch limit is reached, trees moved in give no close events, network file systems
give none at all. So a full scan runs at start and every ``sync.scan_interval_s``. A scan
stats every file but touches the outbox only for what is new or changed, thanks to an
in-memory record of what was queued (path -> size, mtime). When nothing is pending the
watcher sleeps: no polling, no timers but the rescan's.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from watchdog.events import (
    DirDeletedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

from syncd.errors import SyncdError
from syncd.outbox import FileItem
from syncd.scan import (
    CAPTURE,
    PROG,
    Found,
    Layout,
    Problem,
    WalkResult,
    eligible_at,
    file_id,
    inside,
    kind_of,
    open_error,
    open_prog_files,
    printable,
    probe,
    walk,
)

if TYPE_CHECKING:
    from watchdog.observers.api import BaseObserver, ObservedWatch

    from syncd.config import Config
    from syncd.outbox_async import AsyncOutbox

log = logging.getLogger("syncd.watcher")

# What an event says about a path. GONE: deleted or moved away. FRESH: created in place,
# maybe still being written. SETTLED: closed after writing, or moved in under its final
# name. LOST: a sync folder itself was deleted (its watch died with it).
GONE, FRESH, SETTLED, LOST = 0, 1, 2, 3

# Only these reach us: no IN_MODIFY/IN_ATTRIB/IN_OPEN, so a writer appending to a file
# all day costs nothing; the quiet-period timer re-stats instead.
_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileMovedEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
]

# A burst of events (a tree copied in, a capture writer rotating files) is handled as
# one batch after this pause.
_COALESCE_S = 0.05
_ENQUEUE_CHUNK = 1000
_SUMMARY_PATHS = 5


@dataclass
class WatcherStats:
    """Counters of the work done, for logs and for tests of the idle cost."""

    scans: int = 0  # full scans completed (walk, then queueing what it found)
    stats: int = 0  # stat calls, in walks and single-path checks
    events: int = 0  # file-system events received from the observer
    checks: int = 0  # batches of single paths checked (events, timers)
    enqueued: int = 0  # files queued
    proc_sweeps: int = 0  # looks through /proc for holders of .prog files


@dataclass(frozen=True)
class ScanReport:
    """What :meth:`Watcher.scan_once` did and what is still waiting.

    ``waiting`` counts files inside their quiet period (orphaned ``.prog`` files are not
    counted: they wait minutes by design); ``next_due`` is the clock time when the first
    of them becomes eligible. True while files are waiting.
    """

    enqueued: int
    waiting: int
    next_due: float | None

    def __bool__(self) -> bool:
        return self.waiting > 0


@dataclass(slots=True)
class _Pending:
    kind: str
    size: int
    mtime_ns: int
    since: float  # clock time this size and mtime were first seen
    due: float
    settled: bool


class Watcher:
    """Watches ``cfg.sync_paths`` and queues eligible files in ``outbox``.

    ``clock`` gives wall time, compared with file modification times (tests shift it
    instead of sleeping). ``observe=False`` runs without the watchdog observer: files are
    found by the start scan and the periodic rescans only (for file systems without
    inotify, such as NFS, and for tests of the rescan). ``on_enqueue`` is called after
    files were queued.
    """

    def __init__(
        self,
        cfg: Config,
        outbox: AsyncOutbox,
        *,
        clock: Callable[[], float] = time.time,
        observe: bool = True,
        on_enqueue: Callable[[], object] | None = None,
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.on_enqueue = on_enqueue
        self.stats = WatcherStats()
        self._clock = clock
        self._observe = observe
        self._layout = Layout.from_config(cfg)
        self._capture_root = self._layout.roots[0]
        # What was queued (or found queued or synced at start): path -> (size, mtime_ns).
        self._recorded: dict[str, tuple[int, int]] = {}
        self._pending: dict[str, _Pending] = {}
        self._heap: list[tuple[float, str]] = []  # (due, path); stale entries skipped
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self._dirty: dict[str, int] = {}  # path -> GONE | FRESH | SETTLED, from events
        self._wake = asyncio.Event()
        self._rescan_requested = False
        self._lock = asyncio.Lock()  # one scan or check at a time
        self._running = False
        self._reconciled = False
        self._warned: set[str] = set()
        self._root_notes: dict[str, str] = {}
        self._synced_at_start: list[str] = []
        self._observer: BaseObserver | None = None
        self._bridge: _Bridge | None = None
        self._watches: dict[str, ObservedWatch] = {}
        # Set once the start scan of :meth:`run` is done (the daemon then reports ready).
        self.started = asyncio.Event()

    # --- public -----------------------------------------------------------------------

    def apply(self, cfg: Config) -> None:
        """Use a reloaded configuration's ``sync`` rules (quiet period, rescan interval,
        ...) from now on; the sync folders stay as they were until a restart."""
        self.cfg = cfg

    async def run(self) -> None:
        """Scan, then watch and rescan until cancelled; stops the observer on the way out."""
        loop = asyncio.get_running_loop()
        self._running = True
        try:
            if self._observe:
                self._bridge = _Bridge(loop, self._receive, self._layout)
                try:
                    self._observer = await asyncio.to_thread(_start_observer)
                except OSError as exc:  # e.g. the per-user limit of inotify instances
                    log.warning(
                        "cannot watch for changes (%s); new files are found by the rescan "
                        "every %g s",
                        exc.strerror or exc,
                        self.cfg.sync.scan_interval_s,
                    )
            # The observer is in place before the first walk, so nothing created meanwhile
            # falls between the two.
            async with self._lock:
                await self._guarded(self._scan())
                self._arm()
            self.started.set()
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._pump())
                tasks.create_task(self._ticker())
        finally:
            self._running = False
            self._cancel_timer()
            await self._stop_observer()

    async def scan_once(self, wait_quiet: bool = False) -> ScanReport:
        """Reconcile (the first time) and queue everything eligible now.

        With ``wait_quiet``, also wait for the files inside their quiet period and queue
        them as they become eligible; a file that keeps changing keeps this waiting (bound
        it with ``asyncio.timeout``).
        """
        before = self.stats.enqueued
        async with self._lock:
            await self._scan()
        while wait_quiet:
            due = self._next_quiet_due()
            if due is None:
                break
            await asyncio.sleep(max(0.0, due - self._clock()))
            async with self._lock:
                await self._check(self._take_due())
        due = self._next_quiet_due()
        waiting = sum(1 for p in self._pending.values() if p.kind != PROG)
        return ScanReport(self.stats.enqueued - before, waiting, due)

    def forget(self, path: str) -> None:
        """``path`` was uploaded: forget it, unless it stays on disk (kept after upload),
        where the record spares rescans from queueing it again."""
        self._pending.pop(path, None)
        if self.cfg.sync.delete_after_upload or kind_of(os.path.basename(path)) == PROG:
            self._recorded.pop(path, None)

    # --- the event side -------------------------------------------------------------------

    def _receive(self, batch: list[tuple[str, int]]) -> None:
        """Events handed over by the bridge, on the event loop."""
        self.stats.events += len(batch)
        for path, state in batch:
            if state == LOST:
                self._rescan_requested = True
                continue
            if state == FRESH and kind_of(os.path.basename(path)) == PROG:
                continue  # a capture writer starting a file; its close event tells more
            old = self._dirty.get(path)
            if old is None or state == GONE or old == GONE:
                self._dirty[path] = state
            else:
                self._dirty[path] = max(old, state)
        self._wake.set()

    async def _pump(self) -> None:
        """Handle events, expired timers and rescan requests, one batch at a time."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(_COALESCE_S)
            self._wake.clear()
            async with self._lock:
                if self._rescan_requested:
                    self._rescan_requested = False
                    await self._guarded(self._scan())
                items = self._take_dirty()
                for path, settled in self._take_due().items():
                    items[path] = items.get(path, False) or settled
                await self._guarded(self._check(items))
                self._arm()

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except SyncdError as exc:
            # The outbox refused (e.g. the disk is full); nothing it did not take is
            # recorded, so the next rescan offers it again.
            log.warning("cannot queue files: %s; trying again at the next rescan", exc)

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.sync.scan_interval_s)
            self._rescan_requested = True
            self._wake.set()

    def _take_dirty(self) -> dict[str, bool]:
        dirty, self._dirty = self._dirty, {}
        items: dict[str, bool] = {}
        for path, state in dirty.items():
            if state == GONE:
                self._pending.pop(path, None)
                self._recorded.pop(path, None)
            else:
                items[path] = state == SETTLED
        return items

    def _take_due(self) -> dict[str, bool]:
        now = self._clock()
        items: dict[str, bool] = {}
        while self._heap and self._heap[0][0] <= now:
            due, path = heapq.heappop(self._heap)
            pending = self._pending.get(path)
            if pending is not None and pending.due == due:
                items[path] = pending.settled
        return items

    # --- timers ---------------------------------------------------------------------------

    def _arm(self) -> None:
        """One loop timer for the earliest pending file; none when nothing is pending."""
        heap = self._heap
        while heap:
            pending = self._pending.get(heap[0][1])
            if pending is not None and pending.due == heap[0][0]:
                break
            heapq.heappop(heap)
        if not heap or not self._running:
            self._cancel_timer()
            return
        due = heap[0][0]
        if self._timer is not None and self._timer_due == due:
            return
        self._cancel_timer()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(max(0.0, due - self._clock()), self._on_timer)
        self._timer_due = due

    def _on_timer(self) -> None:
        self._timer = self._timer_due = None
        self._wake.set()

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._timer_due = None

    def _next_quiet_due(self) -> float | None:
        dues = [p.due for p in self._pending.values() if p.kind != PROG]
        return min(dues) if dues else None

    # --- deciding ---------------------------------------------------------------------------

    def _consider(self, found: Found, settled: bool, now: float) -> bool:
        """True when ``found`` is eligible now; otherwise it waits (or is known already)."""
        path, key = found.path, (found.size, found.mtime_ns)
        if self._recorded.get(path) == key:
            self._pending.pop(path, None)
            return False
        kind = found.candidate.kind
        prev = self._pending.get(path)
        since = prev.since if prev is not None and (prev.size, prev.mtime_ns) == key else now
        if kind == CAPTURE and settled:
            self._pending.pop(path, None)
            return True
        sync = self.cfg.sync
        period = sync.prog_recover_age_s if kind == PROG else sync.file_quiet_period_s
        due = eligible_at(found.mtime_ns, since, period)
        if now >= due:
            self._pending.pop(path, None)
            return True
        if prev is None or prev.due != due:
            heapq.heappush(self._heap, (due, path))
        self._pending[path] = _Pending(kind, found.size, found.mtime_ns, since, due, settled)
        return False

    async def _check(self, items: dict[str, bool]) -> None:
        """Stat single paths (from events or expired timers) and act on what they are."""
        if not items:
            return
        paths = list(items)
        layout = self._layout
        results = await asyncio.to_thread(lambda: [probe(layout, p) for p in paths])
        self.stats.checks += 1
        self.stats.stats += len(paths)
        now = self._clock()
        ready = []
        for path, result in zip(paths, results, strict=True):
            if isinstance(result, Found):
                if self._consider(result, items[path], now):
                    ready.append(result)
                continue
            self._pending.pop(path, None)  # vanished, emptied or skipped
            if isinstance(result, Problem):
                self._warn(result.path, result.message)
        await self._admit(ready)

    async def _admit(self, ready: list[Found]) -> int:
        """Final checks (readable; for a .prog, held by nobody), then queue."""
        if not ready:
            return 0
        sweep = any(f.candidate.kind == PROG for f in ready)
        ok, problems, held = await asyncio.to_thread(_vet, ready, sweep)
        self.stats.proc_sweeps += sweep
        for problem in problems:
            self._warn(problem.path, problem.message)
        for f in held:
            log.debug("%s: old but still open in a process; leaving it", printable(f.path))
        for start in range(0, len(ok), _ENQUEUE_CHUNK):
            chunk = ok[start : start + _ENQUEUE_CHUNK]
            items = [
                FileItem(f.path, f.candidate.kind, f.size, f.mtime_ns, f.candidate.meta)
                for f in chunk
            ]
            await self.outbox.enqueue_files(items)
            for f in chunk:
                self._recorded[f.path] = (f.size, f.mtime_ns)
                self._warned.discard(f.path)
                log.debug("queued %s (%s, %d bytes)", f.path, f.candidate.kind, f.size)
            if self.on_enqueue is not None:
                self.on_enqueue()  # uploads start while the next chunks are queued
        self.stats.enqueued += len(ok)
        return len(ok)

    def _warn(self, path: str, message: str, outcome: str = "skipped") -> None:
        """One warning per path, however often scans meet it."""
        if path not in self._warned:
            self._warned.add(path)
            log.warning("%s: %s; %s", printable(path), message, outcome)

    # --- scanning ---------------------------------------------------------------------------

    async def _scan(self) -> None:
        """Check the sync folders exist (and are watched), reconcile once, walk them all."""
        layout, present, notes = await asyncio.to_thread(self._prepare_roots)
        self._layout = layout
        self._note_roots(notes, present)
        if self._observer is not None:
            await self._sync_watches(present)
        first = not self._reconciled
        if first:
            await self._reconcile()
            self._reconciled = True
        known = self._recorded
        recorded = list(known)
        result, vanished = await asyncio.to_thread(_walk_all, layout, present, known, recorded)
        self.stats.stats += result.stats
        for problem in result.problems:
            self._warn(problem.path, problem.message)
        for path in vanished:
            self._recorded.pop(path, None)
        now = self._clock()
        ready = []
        for found in result.found:
            prev = self._pending.get(found.path)
            settled = prev.settled if prev is not None else True
            if self._consider(found, settled, now):
                ready.append(found)
        await self._admit(ready)
        if first and result.complete:
            await self._forget_vanished_synced(result.seen)
        self.stats.scans += 1
        log.debug(
            "scanned %d folders: %d new or changed files, %d waiting",
            result.dirs,
            len(result.found),
            len(self._pending),
        )

    def _prepare_roots(self) -> tuple[Layout, list[str], dict[str, str]]:
        """Which sync folders exist; the capture dir is created when missing (blocking)."""
        notes: dict[str, str] = {}
        present = []
        for root in self._layout.roots:
            if os.path.isdir(root):
                present.append(root)
            elif os.path.lexists(root):
                notes[root] = "is not a folder; skipped"
            elif root == self._capture_root:
                try:
                    os.makedirs(root, exist_ok=True)
                except OSError as exc:
                    notes[root] = f"does not exist and cannot be created: {exc.strerror}"
                else:
                    notes[root] = "created"
                    present.append(root)
            else:
                notes[root] = "does not exist; looking again at every rescan"
        return self._layout.resolved(), present, notes

    def _note_roots(self, notes: dict[str, str], present: list[str]) -> None:
        for root, note in notes.items():
            if note == "created":
                log.info("capture dir %s did not exist; created it", root)
            elif self._root_notes.get(root) != note:
                self._root_notes[root] = note
                log.warning("sync folder %s %s", root, note)
        for root in present:
            if root in self._root_notes and root not in notes:
                del self._root_notes[root]
                log.info("sync folder %s is back", root)

    async def _reconcile(self) -> None:
        """Load what the outbox holds; drop rows whose file vanished."""
        rows = await self.outbox.live_file_rows()
        gone = set(await asyncio.to_thread(_vanished, [r.path for r in rows]))
        dropped = [r for r in rows if r.path in gone]
        if dropped:
            await self.outbox.drop([r.id for r in dropped])
            names = ", ".join(printable(r.path) for r in dropped[:_SUMMARY_PATHS])
            more = len(dropped) - _SUMMARY_PATHS
            log.warning(
                "dropped %d queued files that no longer exist: %s%s",
                len(dropped),
                names,
                f" and {more} more" if more > 0 else "",
            )
        synced = await self.outbox.synced_stats()
        self._synced_at_start = list(synced)
        self._recorded.update(synced)
        for row in rows:
            if row.path not in gone:
                self._recorded[row.path] = (row.size, row.mtime_ns)

    async def _forget_vanished_synced(self, seen: set[str]) -> None:
        """Forget kept-after-upload files that were deleted since, so the table does not
        grow forever; a file whose whole folder is missing (an unmounted disk) stays."""
        candidates = [p for p in self._synced_at_start if p not in seen]
        self._synced_at_start = []
        if not candidates:
            return
        layout = self._layout
        gone = await asyncio.to_thread(_deleted_in_place, layout, candidates)
        if gone:
            await self.outbox.forget_synced(gone)
            for path in gone:
                self._recorded.pop(path, None)
            log.info("forgot %d uploaded files that were deleted since", len(gone))

    # --- the observer ---------------------------------------------------------------------

    async def _sync_watches(self, present: Sequence[str]) -> None:
        """Watch each present sync folder (again, if its watch died); unwatch missing ones."""
        observer, bridge = self._observer, self._bridge
        assert observer is not None and bridge is not None
        layout = self._layout
        bridge.set_layout(layout)
        alive = {e.watch for e in list(observer.emitters) if e.is_alive()}
        for root, real in zip(layout.roots, layout.real_roots, strict=True):
            watch = self._watches.get(root)
            if watch is not None and (root not in present or watch not in alive):
                del self._watches[root]
                await asyncio.to_thread(_unschedule, observer, watch)
            if root in present and root not in self._watches:
                try:
                    # Blocking: adds an inotify watch to every folder below.
                    self._watches[root] = await asyncio.to_thread(
                        observer.schedule, bridge, real, recursive=True, event_filter=_EVENTS
                    )
                except OSError as exc:
                    self._warn(
                        root,
                        f"cannot watch for changes ({exc.strerror or exc})",
                        f"new files are found by the rescan every "
                        f"{self.cfg.sync.scan_interval_s:g} s",
                    )

    async def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        self._watches.clear()
        if observer is not None:
            await asyncio.to_thread(_stop, observer)


class _Bridge(FileSystemEventHandler):
    """Runs on watchdog's thread: turns events into ``(path, GONE|FRESH|SETTLED|LOST)``
    and hands them to the event loop in batches, one wake-up per burst. No file-system or
    database access here: string work only."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[tuple[str, int]]], None],
        layout: Layout,
    ) -> None:
        super().__init__()
        self._loop = loop
        self._deliver = deliver
        self._lock = threading.Lock()
        self._batch: list[tuple[str, int]] = []
        self._scheduled = False
        self.set_layout(layout)

    def set_layout(self, layout: Layout) -> None:
        """Where events point (watches are on resolved paths) and what to ignore."""
        # Replaced whole, so the watchdog thread reads either the old or the new value.
        self._view = (
            tuple(
                (real, root)
                for root, real in zip(layout.roots, layout.real_roots, strict=False)
                if real != root
            ),
            frozenset(layout.roots),
            layout.excluded,
        )

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        src = os.fsdecode(event.src_path)
        if event.is_directory:
            if kind == "deleted":
                self._put(src, LOST)
        elif kind == "moved":
            dest = os.fsdecode(event.dest_path)
            if src:
                self._put(src, GONE)
            if dest:
                self._put(dest, SETTLED)
        elif kind == "closed":
            self._put(src, SETTLED)
        elif kind == "created":
            self._put(src, FRESH)
        elif kind == "deleted":
            self._put(src, GONE)

    def _put(self, path: str, state: int) -> None:
        prefixes, roots, excluded = self._view
        for real, root in prefixes:
            if inside(path, real):
                path = root + path[len(real) :]
                break
        if state == LOST:
            if path not in roots:
                return  # a folder below a root: its files' own events tell
        elif os.path.basename(path).startswith(".") or any(inside(path, e) for e in excluded):
            return
        with self._lock:
            self._batch.append((path, state))
            if self._scheduled:
                return
            self._scheduled = True
        with contextlib.suppress(RuntimeError):  # the loop closed: we are shutting down
            self._loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
            self._scheduled = False
        self._deliver(batch)


# --- blocking work (worker threads) -----------------------------------------------------------


def _start_observer() -> BaseObserver:
    if sys.platform.startswith("linux"):
        from watchdog.observers.inotify import InotifyObserver

        # Full events: a file moved in from outside the tree arrives as a move (complete,
        # under its final name), not as a creation (maybe still being written).
        observer: BaseObserver = InotifyObserver(generate_full_events=True)
    else:
        from watchdog.observers import Observer

        observer = Observer()
    observer.start()
    return observer


def _stop(observer: BaseObserver) -> None:
    observer.stop()
    observer.join()


def _unschedule(observer: BaseObserver, watch: ObservedWatch) -> None:
    with contextlib.suppress(KeyError):  # already gone with its folder
        observer.unschedule(watch)


def _walk_all(
    layout: Layout,
    roots: Sequence[str],
    known: dict[str, tuple[int, int]],
    recorded: list[str],
) -> tuple[WalkResult, list[str]]:
    """Walk every present sync folder; also list recorded paths no longer there."""
    total = WalkResult()
    for root in roots:
        result = walk(layout, root, known)
        total.found += result.found
        total.seen |= result.seen
        total.problems += result.problems
        total.dirs += result.dirs
        total.stats += result.stats
        total.complete = total.complete and result.complete
    walked = set(roots)
    vanished = []
    if total.complete:
        vanished = [p for p in recorded if p not in total.seen and layout.root_for(p) in walked]
    return total, vanished


def _vanished(paths: Sequence[str]) -> list[str]:
    gone = []
    for path in paths:
        try:
            os.stat(path)
        except FileNotFoundError:
            gone.append(path)
        except OSError:
            pass  # there, but not for us to look at: keep its row
    return gone


def _deleted_in_place(layout: Layout, paths: Sequence[str]) -> list[str]:
    """Paths whose file is gone while its folder is still there (and not an empty
    sync folder, which is what an unmounted disk looks like)."""
    gone = []
    empty_roots = {r for r in layout.roots if _is_empty_dir(r)}
    for path in paths:
        folder = os.path.dirname(path)
        if folder in empty_roots or not os.path.isdir(folder) or os.path.lexists(path):
            continue
        gone.append(path)
    return gone


def _is_empty_dir(path: str) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def _vet(ready: list[Found], sweep: bool) -> tuple[list[Found], list[Problem], list[Found]]:
    """Split files about to be queued into (ok, unreadable, .prog still held open)."""
    held_ids = open_prog_files() if sweep else None
    ok: list[Found] = []
    problems: list[Problem] = []
    held: list[Found] = []
    for found in ready:
        if found.candidate.kind == PROG and held_ids and file_id(found.path) in held_ids:
            held.append(found)
            continue
        error = open_error(found.path)
        if error is not None:
            problems.append(Problem(found.path, error))
        else:
            ok.append(found)
    return ok, problems, held
