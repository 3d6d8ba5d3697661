"""The disk guard against a small fake filesystem: real files, the real outbox, a
``statvfs`` that counts the files present as the filesystem's used space."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from daemon_proc import write_config

from syncd.config import load_config
from syncd.disk_guard import DiskGuard
from syncd.outbox import AsyncOutbox, FileItem

BLOCK = 4096
FILE_BYTES = 10 * BLOCK  # whole blocks, so the fake's sums are exact


class FakeFilesystem:
    """A filesystem of ``total`` bytes holding just the files under ``root``."""

    def __init__(self, root: Path, total: int) -> None:
        self.root = root
        self.total = total
        self.calls = 0

    def used(self) -> int:
        used = 0
        for folder, _, files in os.walk(self.root):
            for name in files:
                used += os.stat(os.path.join(folder, name)).st_blocks * 512
        return used

    def fraction(self) -> float:
        return self.used() / self.total

    def __call__(self, path: str) -> SimpleNamespace:
        self.calls += 1
        assert Path(path) == self.root
        free = self.total - self.used()
        return SimpleNamespace(f_frsize=BLOCK, f_blocks=self.total // BLOCK, f_bavail=free // BLOCK)


def make_file(path: Path, age_s: float) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(os.urandom(FILE_BYTES))
    t = time.time() - age_s
    os.utime(path, (t, t))
    return path


def item(path: Path, kind: str = "capture") -> FileItem:
    st = path.stat()
    return FileItem(str(path), kind, st.st_size, st.st_mtime_ns)


@pytest.fixture
async def outbox(tmp_path):
    ob = await AsyncOutbox.open(tmp_path / "state")
    yield ob
    await ob.close()


async def robot(tmp_path, outbox, captures: int = 20) -> dict[str, object]:
    """A capture dir as a robot leaves it: ``captures`` queued capture files (index 0 the
    oldest, and in flight), a .prog being written, an arbitrary file, and a reading that
    lives only in the outbox."""
    capture = tmp_path / "capture"
    stream = capture / "rdk:component:camera" / "cam" / "ReadImage"
    files = [make_file(stream / f"{i:03d}.capture", age_s=1000 - i) for i in range(captures)]
    prog = make_file(stream / "999.prog", age_s=2000)
    user_file = make_file(capture / "notes" / "big.bin", age_s=5000)
    await outbox.enqueue_files([item(f) for f in files] + [item(user_file, "file")])
    (claimed,) = await outbox.claim_files(1, 3600)
    assert claimed.path == str(files[0])  # the oldest is being uploaded
    outbox.sync.add_binary("rdk:component:camera", "cam", "ReadImage", b"j" * 50_000)
    return {"files": files, "prog": prog, "user_file": user_file}


def guard_for(tmp_path, outbox, fs, failed=None, **disk) -> DiskGuard:
    cfg = load_config(write_config(tmp_path, None, disk=disk, failed=failed or {}))
    return DiskGuard(cfg, outbox, statvfs=fs)


async def pending_paths(outbox) -> set[str]:
    return {r.path for r in await outbox.live_file_rows()}


@pytest.mark.parametrize(
    ("strategy", "expected"), [("every_nth", [1, 6, 11]), ("oldest_first", [1, 2, 3])]
)
async def test_thins_queued_capture_files_until_under_the_limit(
    tmp_path, outbox, strategy, expected
):
    things = await robot(tmp_path, outbox)
    files = things["files"]
    fs = FakeFilesystem(tmp_path / "capture", total=0)
    used = fs.used()
    fs.total = int(used / 0.99)  # 99 % full: 2 files and a bit over 90 %
    guard = guard_for(tmp_path, outbox, fs, strategy=strategy, thin_every_nth=5)
    before = await pending_paths(outbox)

    report = await guard.check()

    assert report is not None and report.queued_files == 3 and report.uploaded_files == 0
    assert report.bytes_freed == 3 * FILE_BYTES
    gone = [i for i, f in enumerate(files) if not f.exists()]
    assert gone == expected
    assert fs.fraction() <= 0.9 and report.used_after <= 0.9
    # Their rows went with them; everything else is untouched.
    assert await pending_paths(outbox) == before - {str(files[i]) for i in expected}
    assert files[0].exists()  # in flight
    assert things["prog"].exists() and things["user_file"].exists()
    counts = await outbox.counts()
    assert counts.readings_pending == 1
    # Under the limit now: the next check does nothing.
    assert await guard.check() is None


async def test_uploaded_copies_kept_on_disk_go_first(tmp_path, outbox):
    things = await robot(tmp_path, outbox, captures=6)
    stream = things["files"][0].parent
    kept = [make_file(stream / f"kept{i}.capture", age_s=50) for i in range(3)]
    await outbox.enqueue_files([item(f) for f in kept])
    for claimed in await outbox.claim_files(10, 3600):
        if Path(claimed.path).name.startswith("kept"):
            await outbox.ack_file_keep(claimed.id, claimed.path, claimed.size, claimed.mtime_ns)
    await outbox.release_all_inflight()
    fs = FakeFilesystem(tmp_path / "capture", total=0)
    fs.total = int(fs.used() / 0.97)  # two files over 80 %
    guard = guard_for(tmp_path, outbox, fs, max_used_fraction=0.8)

    report = await guard.check()

    assert report is not None and (report.uploaded_files, report.queued_files) == (2, 0)
    assert [f.exists() for f in kept] == [False, False, True]
    assert all(f.exists() for f in things["files"])
    assert await outbox.synced_paths() == {str(kept[2])}


async def test_nothing_syncd_may_delete_is_said_once(tmp_path, outbox, caplog):
    capture = tmp_path / "capture"
    user_file = make_file(capture / "notes" / "big.bin", age_s=100)
    prog = make_file(capture / "a" / "b" / "c" / "1.prog", age_s=100)
    await outbox.enqueue_files([item(user_file, "file")])
    fs = FakeFilesystem(capture, total=int(2 * FILE_BYTES / 0.99))
    guard = guard_for(tmp_path, outbox, fs)
    with caplog.at_level(logging.INFO, logger="syncd.disk"):
        assert await guard.check() is None
        assert await guard.check() is None
    assert user_file.exists() and prog.exists()
    stuck = [r for r in caplog.records if "no capture file is left" in r.getMessage()]
    assert len(stuck) == 1 and stuck[0].levelno == logging.WARNING
    user_file.unlink()
    with caplog.at_level(logging.INFO, logger="syncd.disk"):
        assert await guard.check() is None
    assert "under the limit again" in caplog.text


async def test_old_dead_letters_are_purged(tmp_path, outbox):
    capture = tmp_path / "capture"
    a = make_file(capture / "a.txt", 10)
    b = make_file(capture / "b.txt", 10)
    await outbox.enqueue_files([item(a, "file"), item(b, "file")])
    first, second = await outbox.claim_files(2, 3600)
    now = time.time()
    await outbox.dead_letter([first.id], "refused long ago", now=now - 31 * 86400)
    await outbox.dead_letter([second.id], "refused today", now=now - 3600)
    fs = FakeFilesystem(capture, total=1 << 30)
    keep_all = guard_for(tmp_path, outbox, fs, failed={"max_age_days": 0})
    assert await keep_all.purge_failed() == 0
    assert len(await outbox.list_failed()) == 2
    guard = guard_for(tmp_path, outbox, fs)  # the default: 30 days
    assert await guard.purge_failed() == 1
    assert [f.reason for f in await outbox.list_failed()] == ["refused today"]
    assert a.exists()  # a dead letter's file stays on disk


async def test_unreadable_filesystem_is_a_warning_not_a_crash(tmp_path, outbox, caplog):
    def broken(path: str) -> SimpleNamespace:
        raise PermissionError(13, "Permission denied")

    guard = guard_for(tmp_path, outbox, broken)
    with caplog.at_level(logging.WARNING, logger="syncd.disk"):
        assert await guard.check() is None
        assert await guard.check() is None
    assert caplog.text.count("cannot read the size") == 1
