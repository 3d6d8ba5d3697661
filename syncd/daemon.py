"""The daemon: wires watcher → outbox → uploader, handles signals and the run modes.

Only this module knows all the parts. ``syncd run`` runs until SIGTERM/SIGINT;
``syncd run --once`` reconciles, uploads everything eligible and exits.

While running, one control task does all the periodic work, sleeping in between: the
pause switch and sync windows (each second), sd_notify STATUS and WATCHDOG pings, the
summary log line, the disk guard and the purge of old dead letters. SIGHUP reloads the
config file: what can change live is handed to the parts, the rest waits for a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

from syncd import __version__
from syncd.cloud import CloudClient
from syncd.config import Config, load_config
from syncd.disk_guard import DAY_S, DiskGuard
from syncd.errors import ConfigError
from syncd.linkctl import Throttle, in_windows, is_paused, pause_note, seconds_until_open
from syncd.logs import human_age, human_bytes, setup_logging
from syncd.outbox import AsyncOutbox, OutboxCounts
from syncd.outbox_repair import repair_outbox
from syncd.systemd import Notifier
from syncd.uploader import Uploader
from syncd.watcher import Watcher

log = logging.getLogger("syncd")

# In-flight uploads get this long to finish after SIGTERM; the rest resume next start.
STOP_GRACE_S = 5.0
# The control task's beat: how soon `syncd pause`/`resume` and window edges take effect.
CONTROL_TICK_S = 1.0
# sd_notify STATUS= (and the metrics' queue gauges) refresh this often.
STATUS_INTERVAL_S = 10.0
# Config keys a reload cannot apply: they take effect at the next start.
RESTART_KEYS = ("part_id", "capture_dir", "state_dir", "additional_sync_paths", "cloud", "metrics")


@contextlib.asynccontextmanager
async def _transport(cfg: Config) -> AsyncIterator[tuple[CloudClient, str]]:
    """A client for the configured server, starting the embedded receiver if asked."""
    if not cfg.cloud.embedded:
        client = CloudClient(
            cfg.cloud.host,
            cfg.cloud.port,
            tls=cfg.cloud.tls,
            ca_file=cfg.cloud.ca_file,
            api_key_id=cfg.cloud.api_key_id,
            api_key=cfg.cloud.api_key,
            call_timeout_s=cfg.cloud.call_timeout_s,
            connect_timeout_s=cfg.cloud.connect_timeout_s,
        )
        try:
            yield client, cfg.cloud.address
        finally:
            await client.close()
        return
    from syncd.sink import Sink

    async with Sink(cfg.received_dir, host="127.0.0.1", port=0) as sink:
        client = CloudClient(
            "127.0.0.1", sink.port, tls=False, call_timeout_s=cfg.cloud.call_timeout_s
        )
        try:
            yield client, f"embedded receiver at 127.0.0.1:{sink.port}"
        finally:
            await client.close()


async def run_daemon(
    cfg: Config,
    *,
    once: bool = False,
    timeout: float | None = None,
    statvfs: Callable[[str], Any] = os.statvfs,
) -> int:
    """Run until stopped (0), or with ``once`` until nothing retryable is left (0) or
    ``timeout`` seconds passed (1). ``statvfs`` measures the capture filesystem for the
    disk guard. ``--once`` ignores the pause switch and the sync windows: it is asked
    for explicitly."""
    log.info("syncd %s starting (%s)", __version__, "once" if once else "daemon")
    for line in cfg.summary_lines():
        log.info("  %s", line)
    # A damaged outbox is set aside and rebuilt rather than stopping every start.
    await asyncio.to_thread(repair_outbox, cfg.state_dir)
    outbox = await AsyncOutbox.open(cfg.state_dir, durable=False)
    try:
        released = await outbox.release_all_inflight()
        if released:
            log.info("resuming %d uploads interrupted by the last stop", released)
        async with _transport(cfg) as (client, target):
            metrics = None
            if cfg.metrics.listen and not once:
                from syncd.metrics import Metrics  # prometheus-client loads only if asked

                metrics = Metrics()
            throttle = Throttle(cfg.sync.max_bytes_per_s)
            watcher = Watcher(cfg, outbox)
            uploader = Uploader(
                cfg,
                outbox,
                client,
                target=target,
                on_file_done=watcher.forget,
                throttle=throttle,
                events=metrics,
            )
            watcher.on_enqueue = uploader.wake
            if once:
                return await _run_once(watcher, uploader, outbox, timeout)
            service = _Service(cfg, outbox, watcher, uploader, throttle, metrics, statvfs)
            return await service.run()
    finally:
        await outbox.close()


class _Service:
    """``syncd run`` without ``--once``: the parts, the signals and the control task."""

    def __init__(
        self,
        cfg: Config,
        outbox: AsyncOutbox,
        watcher: Watcher,
        uploader: Uploader,
        throttle: Throttle,
        metrics: Any,
        statvfs: Callable[[str], Any],
    ) -> None:
        self.cfg = cfg
        self.outbox = outbox
        self.watcher = watcher
        self.uploader = uploader
        self.throttle = throttle
        self.metrics = metrics
        self.guard = DiskGuard(cfg, outbox, statvfs=statvfs)
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self._kick = asyncio.Event()  # wakes the control task early (SIGHUP)
        self._reload = False
        self._switch_paused = False  # `syncd pause`
        self._window_open = True
        self._last = _Totals.of(uploader)  # at the last summary line
        self._last_failed = 0

    # --- lifecycle ----------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._request_reload)
        try:
            if self.metrics is not None and self.cfg.metrics.listen:
                self._serve_metrics(self.cfg.metrics.listen)
            async with asyncio.TaskGroup() as tasks:
                watch_task = tasks.create_task(self.watcher.run())
                upload_task = tasks.create_task(self.uploader.run())
                periodic = [tasks.create_task(self._control())]
                if self.notifier.watchdog_interval_s is not None:
                    interval = self.notifier.watchdog_interval_s
                    periodic.append(tasks.create_task(self._watchdog(interval)))
                log.info("watching %s", ", ".join(str(p) for p in self.cfg.sync_paths))
                await self._stop.wait()
                self.notifier.stopping()
                log.info("stopping: finishing uploads in flight (up to %.0f s)", STOP_GRACE_S)
                for task in periodic:
                    task.cancel()
                watch_task.cancel()
                self.uploader.pause(True)
                deadline = time.monotonic() + STOP_GRACE_S
                while self.uploader.busy and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)
                if self.uploader.busy:
                    log.info("uploads still in flight are left for the next start")
                upload_task.cancel()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            if self.metrics is not None:
                await asyncio.to_thread(self.metrics.close)
            self.notifier.close()
        counts = await self.outbox.counts()
        log.info("stopped; %d items pending", counts.pending + counts.inflight)
        return 0

    def _serve_metrics(self, listen: str) -> None:
        try:
            host, port = self.metrics.serve(listen)
        except OSError as exc:  # syncing matters more than metrics: go on without
            log.error("metrics: cannot listen on %s: %s", listen, exc.strerror or exc)
        else:
            log.info("metrics at http://%s:%d/metrics", host, port)

    def _request_reload(self) -> None:
        self._reload = True
        self._kick.set()

    # --- the control task ---------------------------------------------------------------

    async def _watchdog(self, interval: float) -> None:
        """WATCHDOG=1 from the event loop: only a stuck loop stops it (and gets restarted).
        Its own task, so slow outbox work in the control task never delays a ping."""
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    async def _control(self) -> None:
        """All periodic work, sleeping until the next of it is due."""
        now = time.monotonic()
        due = {"status": now, "disk": now, "purge": now}
        due["summary"] = now + self.cfg.log.summary_interval_s
        ready = False
        while True:
            if self._reload:
                self._reload = False
                await self._guarded("reload", self._apply_reload())
            now = time.monotonic()
            if self._check_switches():
                due["status"] = now  # say so at once
            if not ready and self.watcher.started.is_set():
                ready = True
                counts = await self.outbox.counts()
                self.notifier.ready(self._status_text(counts))
                due["status"] = now + STATUS_INTERVAL_S
            if now >= due["status"]:
                await self._guarded("status", self._refresh_status(ready))
                due["status"] = now + STATUS_INTERVAL_S
            interval = self.cfg.log.summary_interval_s
            if interval > 0 and now >= due["summary"]:
                await self._guarded("summary", self._summary(interval))
                due["summary"] = now + interval
            elif interval <= 0:
                due["summary"] = now + DAY_S
            if now >= due["disk"]:
                await self._guarded("disk guard", self._check_disk())
                due["disk"] = now + self.cfg.disk.check_interval_s
            if now >= due["purge"]:
                await self._guarded("purge of old dead letters", self.guard.purge_failed())
                due["purge"] = now + DAY_S
            # Until ready, look often, so READY=1 is prompt; then once per tick.
            tick = CONTROL_TICK_S if ready else 0.05
            sleep = max(0.0, min(now + tick, *due.values()) - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(sleep):
                    await self._kick.wait()
            self._kick.clear()

    async def _guarded(self, what: str, work: Any) -> None:
        """One periodic job; a failure is logged and never stops the control task."""
        try:
            await work
        except Exception:
            log.exception("%s failed; trying again later", what)

    def _check_switches(self) -> bool:
        """The pause switch and the sync windows: hold uploads back or let them go.
        True when either changed."""
        before = (self._switch_paused, self._window_open)
        switch = is_paused(self.cfg.state_dir)
        if switch != self._switch_paused:
            self._switch_paused = switch
            if switch:
                note = pause_note(self.cfg.state_dir) or ""
                why = note.partition(" ")[2]
                log.info(
                    "paused by `syncd pause`%s: uploads wait; capture and queueing go on",
                    f" ({why})" if why else "",
                )
            else:
                log.info("resumed: uploads go on")
        windows = self.cfg.sync.windows
        now = datetime.now()
        open_now = in_windows(windows, now)
        if open_now != self._window_open:
            self._window_open = open_now
            if open_now:
                span = ", ".join(windows) or "no windows set any more"
                log.info("sync window open (%s): uploads go on", span)
            else:
                log.info(
                    "outside the sync windows (%s): uploads wait %s for the next one",
                    ", ".join(windows),
                    human_age(seconds_until_open(windows, now)),
                )
        self.uploader.pause(self._paused)
        return (self._switch_paused, self._window_open) != before

    @property
    def _paused(self) -> bool:
        return self._switch_paused or not self._window_open

    async def _refresh_status(self, ready: bool) -> None:
        counts = await self.outbox.counts()
        if ready:
            self.notifier.status(self._status_text(counts))
        if self.metrics is not None:
            from syncd.metrics import Snapshot

            self.metrics.update(
                Snapshot(
                    counts,
                    retries=self.uploader.stats.retries,
                    paused=self._paused,
                    connected=self.uploader.connectivity.up,
                )
            )

    def _status_text(self, counts: OutboxCounts) -> str:
        waiting = counts.pending + counts.inflight
        if waiting:
            text = (
                f"{waiting} pending ({human_bytes(counts.pending_bytes + counts.inflight_bytes)})"
            )
            if counts.oldest_pending_age_s is not None:
                text += f", oldest {human_age(counts.oldest_pending_age_s)}"
        else:
            text = "all synced"
        if self._switch_paused:
            text += "; paused"
        elif not self._window_open:
            text += "; outside the sync windows"
        if not self.uploader.connectivity.up:
            text += "; offline"
        if counts.failed:
            text += f"; {counts.failed} failed"
        return text

    async def _summary(self, interval: float) -> None:
        """One line of what happened since the last one; none when idle and all synced."""
        totals = _Totals.of(self.uploader)
        counts = await self.outbox.counts()
        delta = totals.minus(self._last)
        waiting = counts.pending + counts.inflight
        if not delta.any and not waiting and counts.failed == self._last_failed:
            return
        self._last, self._last_failed = totals, counts.failed
        parts = [
            f"synced {delta.items} items ({human_bytes(delta.bytes)}) in {human_age(interval)}"
        ]
        if waiting:
            age = counts.oldest_pending_age_s
            oldest = f", oldest {human_age(age)}" if age is not None else ""
            parts.append(f"{waiting} pending ({human_bytes(counts.pending_bytes)}){oldest}")
        else:
            parts.append("nothing pending")
        parts.append(
            f"{delta.retries} retried, {delta.dead_letters} dead letters"
            f" ({counts.failed} in `syncd failed list`)"
        )
        if self._paused:
            parts.append("paused" if self._switch_paused else "outside the sync windows")
        log.info("summary: %s", "; ".join(parts))

    async def _check_disk(self) -> None:
        report = await self.guard.check()
        if report is not None and self.metrics is not None:
            self.metrics.thinned(report.files, report.bytes_freed)

    # --- SIGHUP -------------------------------------------------------------------------

    async def _apply_reload(self) -> None:
        old = self.cfg
        if old.source is None:
            log.warning("reload: no config file to read again; nothing changed")
            return
        try:
            new = await asyncio.to_thread(load_config, old.source)
        except ConfigError as exc:
            for problem in exc.problems:
                log.error("reload: %s", problem)
            log.error("reload: %s has problems; keeping the running configuration", old.source)
            return
        for warning in new.warnings:
            log.warning("%s", warning)
        changed = config_changes(old, new)
        later = [k for k in changed if k.split(".")[0] in RESTART_KEYS]
        live = [k for k in changed if k not in later]
        # What needs a restart stays as it runs now; everything else is handed over.
        cfg = dataclasses.replace(new, **{k: getattr(old, k) for k in RESTART_KEYS})
        if (cfg.log.level, cfg.log.format) != (old.log.level, old.log.format):
            setup_logging(cfg.log.level, cfg.log.format)
        self.cfg = cfg
        self.uploader.apply(cfg)
        self.watcher.apply(cfg)
        self.guard.apply(cfg)
        self.throttle.configure(cfg.sync.max_bytes_per_s)
        self._check_switches()
        if live:
            log.info("reloaded %s: applied %s", old.source, ", ".join(live))
        if later:
            log.warning(
                "reloaded %s: %s changed; takes effect at the next start (systemctl restart syncd)",
                old.source,
                ", ".join(later),
            )
        if not changed:
            log.info("reloaded %s: no changes", old.source)


@dataclasses.dataclass(frozen=True)
class _Totals:
    """The uploader's running totals at one moment."""

    items: int
    bytes: int
    retries: int
    dead_letters: int

    @classmethod
    def of(cls, uploader: Uploader) -> _Totals:
        st = uploader.stats
        return cls(st.files + st.readings, st.bytes, st.retries, st.dead_letters)

    def minus(self, other: _Totals) -> _Totals:
        return _Totals(
            self.items - other.items,
            self.bytes - other.bytes,
            self.retries - other.retries,
            self.dead_letters - other.dead_letters,
        )

    @property
    def any(self) -> bool:
        return any((self.items, self.bytes, self.retries, self.dead_letters))


def config_changes(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two configs (values not shown:
    some are secrets)."""
    changed = []
    for f in dataclasses.fields(old):
        if not f.compare:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if dataclasses.is_dataclass(a):
            changed += config_changes(a, b, f"{prefix}{f.name}.")
        elif a != b:
            changed.append(f"{prefix}{f.name}")
    return changed


async def _run_once(
    watcher: Watcher, uploader: Uploader, outbox: AsyncOutbox, timeout: float | None
) -> int:
    upload_task = asyncio.create_task(uploader.run())
    try:
        async with asyncio.timeout(timeout):
            # One reconcile, waiting out the quiet period of files still being written.
            await watcher.scan_once(wait_quiet=True)
            uploader.wake()
            while True:
                await uploader.wait_idle()
                counts = await outbox.counts()
                if counts.pending + counts.inflight == 0 and not uploader.busy:
                    break
                await asyncio.sleep(0.1)  # retries waiting out their backoff
    except TimeoutError:
        counts = await outbox.counts()
        left = counts.pending + counts.inflight  # an upload stuck in flight is not done
        log.warning("gave up after %.0f s: %d items still pending", timeout, left)
        return 1
    finally:
        upload_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await upload_task
    log.info(
        "all synced: %d files and %d readings uploaded, %d failed",
        uploader.stats.files,
        uploader.stats.readings,
        counts.failed,
    )
    return 0
