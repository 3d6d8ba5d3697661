"""The daemon: wires watcher → outbox → uploader, handles signals and the run modes.

Only this module knows all the parts. ``syncd run`` runs until SIGTERM/SIGINT;
``syncd run --once`` reconciles, uploads everything eligible and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator

from syncd import __version__
from syncd.cloud import CloudClient
from syncd.config import Config
from syncd.outbox import AsyncOutbox
from syncd.uploader import Uploader
from syncd.watcher import Watcher

log = logging.getLogger("syncd")

# In-flight uploads get this long to finish after SIGTERM; the rest resume next start.
STOP_GRACE_S = 5.0


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


async def run_daemon(cfg: Config, *, once: bool = False, timeout: float | None = None) -> int:
    """Run until stopped (0), or with ``once`` until nothing retryable is left (0) or
    ``timeout`` seconds passed (1)."""
    log.info("syncd %s starting (%s)", __version__, "once" if once else "daemon")
    for line in cfg.summary_lines():
        log.info("  %s", line)
    outbox = await AsyncOutbox.open(cfg.state_dir)
    try:
        released = await outbox.release_all_inflight()
        if released:
            log.info("resuming %d uploads interrupted by the last stop", released)
        async with _transport(cfg) as (client, target):
            watcher = Watcher(cfg, outbox)
            uploader = Uploader(cfg, outbox, client, target=target, on_file_done=watcher.forget)
            watcher.on_enqueue = uploader.wake
            if once:
                return await _run_once(watcher, uploader, outbox, timeout)
            return await _run_forever(watcher, uploader, outbox)
    finally:
        await outbox.close()


async def _run_forever(watcher: Watcher, uploader: Uploader, outbox: AsyncOutbox) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            watch_task = tasks.create_task(watcher.run())
            upload_task = tasks.create_task(uploader.run())
            log.info("watching %s", ", ".join(str(p) for p in watcher.cfg.sync_paths))
            await stop.wait()
            log.info("stopping: finishing uploads in flight (up to %.0f s)", STOP_GRACE_S)
            watch_task.cancel()
            uploader.pause(True)
            deadline = time.monotonic() + STOP_GRACE_S
            while uploader.busy and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            upload_task.cancel()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    counts = await outbox.counts()
    log.info("stopped; %d items pending", counts.pending + counts.inflight)
    return 0


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
                counts = await outbox.counts()
                if counts.pending + counts.inflight == 0 and not uploader.busy:
                    break
                await asyncio.sleep(0.1)
    except TimeoutError:
        counts = await outbox.counts()
        log.warning("gave up after %.0f s: %d items still pending", timeout, counts.pending)
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
