"""The watcher against real files, a real watchdog observer and the real SQLite outbox."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import glob
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from syncd.config import Config, SyncConfig
from syncd.outbox import FileItem, LiveFile
from syncd.outbox_async import AsyncOutbox
from syncd.watcher import Watcher

HOUR = 3600.0


def config(
    tmp_path: Path,
    *,
    state_in_capture: bool = False,
    extra: tuple[Path, ...] = (),
    **sync: float | bool,
) -> Config:
    capture = tmp_path / "capture"
    state = capture / "state" if state_in_capture else tmp_path / "state"
    options: dict = {
        "file_quiet_period_s": 0.3,
        "scan_interval_s": HOUR,
        "prog_recover_age_s": 60.0,
    }
    options.update(sync)
    return Config(
        part_id="test",
        capture_dir=capture,
        state_dir=state,
        additional_sync_paths=extra,
        sync=SyncConfig(**options),
    )


def write(path: Path | bytes, data: bytes, age_s: float = 0.0) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    if age_s:
        then = time.time() - age_s
        os.utime(path, (then, then))


async def live(outbox: AsyncOutbox) -> dict[str, LiveFile]:
    return {row.path: row for row in await outbox.live_file_rows()}


async def until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def opened(cfg: Config) -> AsyncIterator[AsyncOutbox]:
    outbox = await AsyncOutbox.open(cfg.state_dir)
    try:
        yield outbox
    finally:
        await outbox.close()


@contextlib.asynccontextmanager
async def running(watcher: Watcher) -> AsyncIterator[Watcher]:
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: watcher.stats.scans >= 1 or task.done())
        if task.done():
            task.result()
        yield watcher
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def warnings_about(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.name == "syncd.watcher" and r.levelno == logging.WARNING and text in r.getMessage()
    )


# --- startup scan and reconcile (no observer needed) ---------------------------------------


async def test_startup_scan_reconciles_and_applies_the_rules(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="syncd.watcher")
    cfg = config(tmp_path, state_in_capture=True, file_quiet_period_s=30.0)
    cap = cfg.capture_dir
    write(cap / "old.bin", b"o" * 10, age_s=HOUR)
    write(cap / "fresh.bin", b"f" * 5)
    write(cap / "arm" / "pose" / "Get" / "1.capture", b"c" * 7)
    write(cap / "arm" / "pose" / "Get" / "2.prog", b"p" * 3)
    write(cap / "tag=red" / "dataset=d1" / "tag=blue" / "img.jpg", b"i" * 4, age_s=HOUR)
    write(cap / "failed" / "bad.capture", b"b", age_s=HOUR)
    write(cap / ".hidden.txt", b"h", age_s=HOUR)
    write(cap / ".tmp-123", b"t", age_s=HOUR)
    write(cap / "sub" / ".swp" / "x.txt", b"s", age_s=HOUR)
    write(cap / "empty.txt", b"", age_s=HOUR)
    old = os.stat(cap / "old.bin")
    async with opened(cfg) as outbox:
        gone = str(cap / "gone.bin")
        await outbox.enqueue_files(
            [
                FileItem(gone, "file", 4, 1),
                FileItem(str(cap / "old.bin"), "file", old.st_size, old.st_mtime_ns),
            ]
        )
        watcher = Watcher(cfg, outbox)
        report = await watcher.scan_once()

        rows = await live(outbox)
        capture = str(cap / "arm" / "pose" / "Get" / "1.capture")
        img = str(cap / "tag=red" / "dataset=d1" / "tag=blue" / "img.jpg")
        # Nothing from the state dir (the outbox itself lives there), failed/ or dotfiles.
        assert set(rows) == {str(cap / "old.bin"), capture, img}
        assert report.enqueued == 2  # old.bin was queued already
        assert report.waiting == 1 and report  # fresh.bin; the young .prog does not count
        fresh_mtime = os.stat(cap / "fresh.bin").st_mtime_ns / 1e9
        assert report.next_due == pytest.approx(fresh_mtime + 30.0)
        assert warnings_about(caplog, "dropped 1 queued files that no longer exist") == 1
        assert gone in caplog.text
        claimed = {c.path: c for c in await outbox.claim_files(10, lease_s=60)}
        assert claimed[capture].kind == "capture" and claimed[capture].size == 7
        assert claimed[img].meta == {"tags": ["red", "blue"], "dataset_ids": ["d1"]}
        assert claimed[img].kind == "file"

        # A second scan finds nothing new and does not touch the outbox.
        again = await watcher.scan_once()
        assert again.enqueued == 0 and again.waiting == 1

        # Later: the empty file grew; a clock an hour ahead makes every file old.
        write(cap / "empty.txt", b"now with content")
        later = Watcher(cfg, outbox, clock=lambda: time.time() + HOUR)
        report = await later.scan_once()
        rows = await live(outbox)
        assert report.enqueued == 3 and not report
        assert str(cap / "empty.txt") in rows and str(cap / "fresh.bin") in rows
        prog = str(cap / "arm" / "pose" / "Get" / "2.prog")
        claimed = {c.path: c for c in await outbox.claim_files(10, lease_s=60)}
        assert claimed[prog].kind == "prog"  # old enough and held by nobody
        assert later.stats.proc_sweeps == 1


async def test_scan_once_can_wait_for_the_quiet_period(tmp_path):
    cfg = config(tmp_path, file_quiet_period_s=0.3)
    write(cfg.capture_dir / "a.txt", b"abc")
    async with opened(cfg) as outbox:
        started = time.monotonic()
        report = await Watcher(cfg, outbox).scan_once(wait_quiet=True)
        assert report.enqueued == 1 and report.waiting == 0 and report.next_due is None
        assert time.monotonic() - started < 2.0
        assert str(cfg.capture_dir / "a.txt") in await live(outbox)


async def test_symlinks_are_followed_without_looping(tmp_path, caplog):
    cfg = config(tmp_path)
    cap, outside = cfg.capture_dir, tmp_path / "outside"
    write(cap / "a" / "real.txt", b"real!", age_s=HOUR)
    os.symlink("..", cap / "a" / "loop")  # back to the root
    os.makedirs(cap / "b")
    os.symlink(".", cap / "b" / "self")
    write(outside / "ext" / "o.txt", b"outside", age_s=HOUR)
    os.symlink("o.txt", outside / "ext" / "again")  # a file link inside the linked folder
    os.symlink("..", outside / "ext" / "up")  # a loop outside the tree
    os.symlink(outside / "ext", cap / "ext")  # a folder outside: walked
    write(outside / "target.txt", b"123456789", age_s=HOUR)
    os.symlink(outside / "target.txt", cap / "link.txt")
    os.symlink(tmp_path / "nowhere", cap / "broken")
    os.symlink("ping", cap / "pong")
    os.symlink("pong", cap / "ping")
    async with opened(cfg) as outbox:
        watcher = Watcher(cfg, outbox)
        async with asyncio.timeout(10):
            await watcher.scan_once()
            await watcher.scan_once()
        rows = await live(outbox)
        assert set(rows) == {
            str(cap / "a" / "real.txt"),
            str(cap / "ext" / "o.txt"),
            str(cap / "ext" / "again"),
            str(cap / "link.txt"),
            # "up" leads to outside/, which holds target.txt: outside the tree, walked once.
            str(cap / "ext" / "up" / "target.txt"),
        }
        assert rows[str(cap / "link.txt")].size == 9  # the target's size
    assert warnings_about(caplog, "broken symlink") == 1
    assert warnings_about(caplog, "cannot follow the symlink") == 2  # ping and pong


def _write_only_sysfs_file() -> str | None:
    for path in [*sorted(glob.glob("/sys/bus/*/drivers_probe")), "/sys/bus/pci/rescan"]:
        try:
            os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
        except PermissionError:
            return path
        except OSError:
            continue
    return None


async def test_unreadable_and_non_utf8_names_are_logged_once_and_skipped(tmp_path, caplog):
    # No quiet period: a sysfs file's mtime is the moment it was first looked up, which
    # may be this very test.
    cfg = config(tmp_path, file_quiet_period_s=0.0)
    cap = cfg.capture_dir
    write(cap / "fine.txt", b"ok", age_s=HOUR)
    bad_name = os.path.join(os.fsencode(cap), b"bad\xffname.txt")
    write(bad_name, b"bytes", age_s=HOUR)
    write(os.path.join(os.fsencode(cap), b"dir\xfe", b"inner.txt"), b"bytes", age_s=HOUR)
    if os.geteuid() == 0:
        # Root reads any file whatever its mode bits; a write-only sysfs attribute
        # refuses reads even to root.
        sysfs = _write_only_sysfs_file()
        if sysfs is None:
            pytest.skip("running as root and no write-only sysfs file to stand in")
        os.symlink(sysfs, cap / "secret.bin")
    else:
        write(cap / "secret.bin", b"secret", age_s=HOUR)
        os.chmod(cap / "secret.bin", 0)
    async with opened(cfg) as outbox:
        watcher = Watcher(cfg, outbox)
        await watcher.scan_once()
        await watcher.scan_once()
        assert set(await live(outbox)) == {str(cap / "fine.txt")}
    assert warnings_about(caplog, "bad\\xffname.txt: the name is not valid UTF-8") == 1
    assert warnings_about(caplog, "dir\\xfe: the folder name is not valid UTF-8") == 1
    assert warnings_about(caplog, "secret.bin: cannot be read") == 1


async def test_missing_folders_are_created_or_retried(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="syncd.watcher")
    extra = tmp_path / "extra"
    cfg = config(tmp_path, extra=(extra,))
    assert not cfg.capture_dir.exists()
    async with opened(cfg) as outbox:
        watcher = Watcher(cfg, outbox)
        await watcher.scan_once()
        await watcher.scan_once()
        assert cfg.capture_dir.is_dir()
        assert caplog.text.count("did not exist; created it") == 1
        assert warnings_about(caplog, f"{extra} does not exist") == 1
        write(extra / "late.txt", b"late", age_s=HOUR)
        report = await watcher.scan_once()
        assert report.enqueued == 1 and str(extra / "late.txt") in await live(outbox)
        assert f"sync folder {extra} is back" in caplog.text


async def test_forget_keeps_the_record_of_files_kept_on_disk(tmp_path):
    for delete_after_upload, offered_again in ((True, 1), (False, 0)):
        cfg = config(tmp_path / str(delete_after_upload), delete_after_upload=delete_after_upload)
        write(cfg.capture_dir / "f.txt", b"data", age_s=HOUR)
        async with opened(cfg) as outbox:
            watcher = Watcher(cfg, outbox)
            assert (await watcher.scan_once()).enqueued == 1
            watcher.forget(str(cfg.capture_dir / "f.txt"))
            assert (await watcher.scan_once()).enqueued == offered_again


async def test_start_forgets_kept_files_deleted_since_but_not_unmounted_ones(tmp_path):
    cfg = config(tmp_path, delete_after_upload=False)
    cap = cfg.capture_dir
    write(cap / "a" / "deleted.txt", b"gone", age_s=HOUR)
    write(cap / "a" / "kept.txt", b"kept", age_s=HOUR)
    write(cap / "b" / "unmounted.txt", b"away", age_s=HOUR)
    async with opened(cfg) as outbox:
        await Watcher(cfg, outbox).scan_once()
        for c in await outbox.claim_files(10, lease_s=60):
            await outbox.ack_file_keep(c.id, c.path, c.size, c.mtime_ns)
        os.remove(cap / "a" / "deleted.txt")
        shutil.rmtree(cap / "b")  # as if its disk were not mounted
        assert (await Watcher(cfg, outbox).scan_once()).enqueued == 0
        assert await outbox.synced_paths() == {
            str(cap / "a" / "kept.txt"),
            str(cap / "b" / "unmounted.txt"),
        }


async def test_nested_sync_folder_owns_its_files(tmp_path):
    inner = tmp_path / "capture" / "tag=outer" / "inner"
    cfg = config(tmp_path, extra=(inner,))
    write(inner / "tag=z" / "f.txt", b"nested", age_s=HOUR)
    async with opened(cfg) as outbox:
        report = await Watcher(cfg, outbox).scan_once()
        assert report.enqueued == 1
        (claimed,) = await outbox.claim_files(10, lease_s=60)
        assert claimed.path == str(inner / "tag=z" / "f.txt")
        assert claimed.meta == {"tags": ["z"]}


# --- with the observer ----------------------------------------------------------------------


async def test_capture_renamed_from_prog_is_queued_at_once(tmp_path, caplog):
    cfg = config(tmp_path, file_quiet_period_s=30.0)  # a capture does not wait for it
    folder = cfg.capture_dir / "arm" / "a" / "Get"
    os.makedirs(folder)
    async with opened(cfg) as outbox, running(Watcher(cfg, outbox)) as watcher:
        write(folder / "1.prog", b"reading" * 10)
        started = time.monotonic()
        os.rename(folder / "1.prog", folder / "1.capture")
        await until(lambda: watcher.stats.enqueued == 1, timeout=3)
        assert time.monotonic() - started < 1.5
        (claimed,) = await outbox.claim_files(10, lease_s=60)
        assert claimed.path == str(folder / "1.capture") and claimed.kind == "capture"
        assert claimed.size == 70
    # The .prog that vanished between its event and its stat is no warning.
    assert warnings_about(caplog, "") == 0


async def test_capture_written_in_place_waits_for_its_close(tmp_path):
    cfg = config(tmp_path, file_quiet_period_s=30.0)
    path = cfg.capture_dir / "direct.capture"
    os.makedirs(cfg.capture_dir)
    async with opened(cfg) as outbox, running(Watcher(cfg, outbox)) as watcher:
        with open(path, "wb") as f:
            f.write(b"head")
            f.flush()
            await asyncio.sleep(0.3)  # created, not yet complete
            assert await live(outbox) == {}
            f.write(b"tail")
        await until(lambda: watcher.stats.enqueued == 1, timeout=3)
        assert (await live(outbox))[str(path)].size == 8


async def test_a_deleted_capture_dir_is_recreated_and_watched_again(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="syncd.watcher")
    cfg = config(tmp_path)
    os.makedirs(cfg.capture_dir)
    async with opened(cfg) as outbox, running(Watcher(cfg, outbox)) as watcher:
        shutil.rmtree(cfg.capture_dir)
        await until(lambda: cfg.capture_dir.is_dir(), timeout=3)
        assert watcher.stats.scans == 2
        await asyncio.sleep(0.1)  # let the recreation's own events pass
        write(cfg.capture_dir / "1.prog", b"data")
        os.rename(cfg.capture_dir / "1.prog", cfg.capture_dir / "1.capture")
        await until(lambda: watcher.stats.enqueued == 1, timeout=3)
        assert watcher.stats.scans == 2  # found by its event, not by a rescan
    assert "did not exist; created it" in caplog.text


async def test_prog_held_open_is_left_alone_until_its_writer_dies(tmp_path):
    cfg = config(tmp_path, prog_recover_age_s=60.0)
    prog = cfg.capture_dir / "arm" / "a" / "Get" / "1.prog"
    os.makedirs(prog.parent)
    code = (
        "import sys, time\n"
        "f = open(sys.argv[1], 'ab'); f.write(b'partial'); f.flush()\n"
        "print('ready', flush=True); time.sleep(60)"
    )
    with subprocess.Popen(
        [sys.executable, "-c", code, str(prog)], stdout=subprocess.PIPE
    ) as writer:
        try:
            assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
            then = time.time() - HOUR
            os.utime(prog, (then, then))
            async with opened(cfg) as outbox, running(Watcher(cfg, outbox)) as watcher:
                assert watcher.stats.proc_sweeps == 1  # old enough, so the start scan looked
                await asyncio.sleep(0.3)
                assert await live(outbox) == {}
                writer.kill()
                writer.wait()
                # Its close event brings the orphan back for a look.
                await until(lambda: watcher.stats.enqueued == 1, timeout=5)
                (claimed,) = await outbox.claim_files(10, lease_s=60)
                assert claimed.path == str(prog) and claimed.kind == "prog"
                assert claimed.size == 7
        finally:
            writer.kill()


async def test_arbitrary_file_waits_until_quiet(tmp_path):
    quiet = 0.4
    cfg = config(tmp_path, file_quiet_period_s=quiet)
    tagged = cfg.capture_dir / "tag=x" / "dataset=d1" / "photo.jpg"
    growing = cfg.capture_dir / "log.txt"
    os.makedirs(tagged.parent)
    async with opened(cfg) as outbox, running(Watcher(cfg, outbox)) as watcher:
        write(tagged, b"jpeg")
        for _ in range(4):  # pieces with pauses shorter than the quiet period
            with open(growing, "ab") as f:
                f.write(b"x" * 100)
            await asyncio.sleep(quiet / 3)
            assert str(growing) not in await live(outbox)
        last_write = time.monotonic() - quiet / 3
        await until(lambda: watcher.stats.enqueued == 2, timeout=3)
        assert time.monotonic() - last_write >= quiet - 0.05
        rows = await live(outbox)
        st = os.stat(growing)
        assert (rows[str(growing)].size, rows[str(growing)].mtime_ns) == (400, st.st_mtime_ns)
        claimed = {c.path: c for c in await outbox.claim_files(10, lease_s=60)}
        assert claimed[str(tagged)].meta == {"tags": ["x"], "dataset_ids": ["d1"]}
        assert watcher.stats.scans == 1  # events and timers did it, not rescans


async def test_rescan_finds_what_the_observer_missed(tmp_path):
    cfg = config(tmp_path, scan_interval_s=0.3)
    async with opened(cfg) as outbox, running(Watcher(cfg, outbox, observe=False)) as watcher:
        write(cfg.capture_dir / "missed.capture", b"capture")
        await until(lambda: watcher.stats.enqueued == 1, timeout=3)
        assert watcher.stats.events == 0 and watcher.stats.scans >= 2
        assert str(cfg.capture_dir / "missed.capture") in await live(outbox)


async def test_idle_watcher_does_no_work(tmp_path):
    n = 2000
    cfg = config(tmp_path, delete_after_upload=False)
    for i in range(n):
        write(cfg.capture_dir / f"d{i:04}" / "f.bin", b"synced", age_s=HOUR)
    async with opened(cfg) as outbox:
        # Some of it was uploaded and kept on disk before this start.
        first = Watcher(cfg, outbox)
        assert (await first.scan_once()).enqueued == n
        for claimed in await outbox.claim_files(200, lease_s=60):
            await outbox.ack_file_keep(claimed.id, claimed.path, claimed.size, claimed.mtime_ns)

        async with running(Watcher(cfg, outbox)) as watcher:
            assert watcher.stats.enqueued == 0  # all known: queued or synced
            assert watcher.stats.stats >= n
            before = dataclasses.astuple(watcher.stats)
            await asyncio.sleep(2.0)
            assert dataclasses.astuple(watcher.stats) == before
            # A rescan stats everything again but queues nothing.
            report = await watcher.scan_once()
            assert report.enqueued == 0 and watcher.stats.scans == 2
