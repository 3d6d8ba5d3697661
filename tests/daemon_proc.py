"""Running `python -m syncd run` as a real subprocess in tests: its config, a fake
NOTIFY_SOCKET that records sd_notify messages, and its log. Test support only."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

PART = "part-ops"


def write_config(tmp_path: Path, port: int | None, **sections: dict[str, Any]) -> Path:
    """A config for a server on 127.0.0.1:``port`` (None: the embedded receiver);
    ``sections`` maps a section name (sync, log, disk, ...) to its keys."""
    sync = {"file_quiet_period_s": 0.2, "retry_initial_s": 0.05, "retry_max_s": 0.5}
    sync.update(sections.pop("sync", {}))
    top = {
        "part_id": PART,
        "capture_dir": str(tmp_path / "capture"),
        "state_dir": str(tmp_path / "state"),
        **sections.pop("top", {}),
    }
    cloud = {"address": "embedded"} if port is None else {"address": f"127.0.0.1:{port}"}
    if port is not None:
        cloud["tls"] = False
    cloud.update(sections.pop("cloud", {}))
    doc = {**top, "cloud": cloud, "sync": sync, **sections}
    path = tmp_path / "syncd.yaml"
    path.write_text(json.dumps(doc, indent=1) + "\n")  # JSON is YAML
    (tmp_path / "capture").mkdir(exist_ok=True)
    return path


def old_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and date it a minute back (past any quiet period)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    past = time.time() - 60
    os.utime(path, (past, past))
    return path


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.messages: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)

    async def expect(self, field: str, timeout: float = 10.0) -> str:
        """Wait for a message holding a line starting with ``field``; returns it."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                message = (await loop.sock_recv(self._sock, 4096)).decode()
                self.messages.append(message)
                if any(line.startswith(field) for line in message.splitlines()):
                    return message

    def close(self) -> None:
        self._sock.close()


class DaemonProcess:
    """`python -m syncd run -c CONFIG` with its stderr in a file."""

    def __init__(self, config: Path, *, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = config.parent / f"daemon-{time.monotonic_ns()}.log"
        self._env = {**os.environ, **(env or {})}
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, *args: str) -> DaemonProcess:
        with open(self.log_path, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "syncd",
                "run",
                "-c",
                str(self.config),
                *args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=self._env,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_log(self, text: str, timeout: float = 10.0, count: int = 1) -> str:
        """Wait until ``text`` appears ``count`` times in the log; returns the log."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log
            if log.count(text) >= count:
                return log
            assert self.proc is not None
            if self.proc.returncode is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not in the daemon's log:\n{log}")
            await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, then its exit code."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def wait(self, timeout: float = 20.0) -> int:
        """Its exit code, once it exits by itself (killed after ``timeout``)."""
        assert self.proc is not None
        try:
            async with asyncio.timeout(timeout):
                return await self.proc.wait()
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"the daemon did not stop:\n{self.log}") from None

    async def __aenter__(self) -> DaemonProcess:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def syncd_status(config: Path) -> dict[str, Any]:
    """`syncd status --json`, from another process, as the operator would run it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        "status",
        "-c",
        str(config),
        "--json",
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    return json.loads(out)


async def syncd(*args: str) -> tuple[int, str]:
    """Any `syncd` subcommand; returns its exit code and its output (stdout + stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncd",
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()
