"""A disk whose power can be cut: an ext4 filesystem on a loop device, for the power-cut test.

A power cut loses what the filesystem had not yet written to its disk: dirty pages in the
page cache, and writes whose fsync had not returned. To take the disk's state at such a
moment, the filesystem's image lives on a second, outer ext4 filesystem (also on a loop
device). Freezing the outer filesystem stops the inner disk's writes where they are; a
copy of the image taken meanwhile is what the disk would hold after the power went, and
mounting the copy replays the journal as a reboot does. The copy is then mounted where
the first was, and the programs start again on it.

Needs root, util-linux (losetup, mount, fsfreeze) and e2fsprogs (mkfs.ext4);
:func:`unavailable` says why not when they cannot be used here.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

TOOLS = ("losetup", "mount", "umount", "fsfreeze", "mkfs.ext4")


def _run(*args: str | Path) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, args))}: {result.stderr.strip()}")
    return result.stdout.strip()


def unavailable() -> str | None:
    """Why this machine cannot host a power-cut disk, or None if it can."""
    if os.geteuid() != 0:
        return "needs root (loop devices and mounts)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    if not Path("/dev/loop-control").exists():
        return "no loop devices (/dev/loop-control)"
    return None


class PowerCutDisk:
    """``root`` is a mounted ext4 filesystem whose power :meth:`cut` cuts."""

    def __init__(self, workdir: Path, size_mib: int = 256) -> None:
        self._work = workdir
        self._size = size_mib * 1024 * 1024
        self._outer_image = workdir / "outer.img"
        self._outer = workdir / "outer"
        self.root = workdir / "disk"
        self._mounts: list[tuple[str, Path]] = []  # (loop device, mount point), outer first
        self.cuts = 0

    def __enter__(self) -> PowerCutDisk:
        return self.open()

    def open(self) -> PowerCutDisk:
        """Make and mount both filesystems; RuntimeError (with the tool's message) when
        this machine does not let us."""
        try:
            self._outer.mkdir(parents=True)
            self.root.mkdir(parents=True)
            # Room for the inner image and a copy of it.
            self._mount_new(self._outer_image, self._outer, 3 * self._size)
            self._mount_new(self._outer / "disk0.img", self.root, self._size)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mount_new(self, image: Path, at: Path, size: int) -> None:
        with open(image, "wb") as f:
            f.truncate(size)
        _run("mkfs.ext4", "-q", "-F", image)
        self._mount(image, at)

    def _mount(self, image: Path, at: Path) -> None:
        loop = _run("losetup", "--find", "--show", image)
        try:
            _run("mount", loop, at)
        except BaseException:
            self._detach(loop)
            raise
        self._mounts.append((loop, at))

    def cut(self, stop_programs: Callable[[], None]) -> None:
        """Cut the power now: the disk keeps only what had reached it. Then, once
        ``stop_programs()`` has stopped every program that used the disk, put that
        state back under ``root``, as a reboot would."""
        lost = self._outer / f"disk{self.cuts}.img"
        self.cuts += 1
        rebooted = self._outer / f"disk{self.cuts}.img"
        snapshot = self._work / f"cut{self.cuts}.img"
        _run("fsfreeze", "--freeze", self._outer)
        try:
            _run("cp", "--sparse=always", lost, snapshot)
        finally:
            _run("fsfreeze", "--unfreeze", self._outer)
        stop_programs()
        self._unmount_last()
        lost.unlink()
        _run("cp", "--sparse=always", snapshot, rebooted)  # on the outer disk, to cut again
        snapshot.unlink()
        self._mount(rebooted, self.root)

    def _unmount_last(self) -> None:
        loop, at = self._mounts.pop()
        for attempt in range(50):
            result = subprocess.run(["umount", str(at)], capture_output=True, text=True)
            if result.returncode == 0 or "not mounted" in result.stderr:
                break
            if attempt == 49:
                subprocess.run(["umount", "--lazy", str(at)], capture_output=True)
            time.sleep(0.1)  # a process that just died may hold it a moment longer
        self._detach(loop)

    @staticmethod
    def _detach(loop: str) -> None:
        subprocess.run(["losetup", "--detach", loop], capture_output=True)

    def close(self) -> None:
        """Unmount and detach everything, the inner disk first; never raises."""
        with contextlib.suppress(Exception):
            subprocess.run(["fsfreeze", "--unfreeze", str(self._outer)], capture_output=True)
            while self._mounts:
                self._unmount_last()
