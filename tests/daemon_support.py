"""Helpers for the reliability tests: configs, a `syncd run` subprocess, its memory, waits."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from chaos_harness import ROOT, SYNCD, Proc, free_port, wait_listening

__all__ = [
    "ROOT",
    "SYNCD",
    "Proc",
    "free_port",
    "rss_bytes",
    "sha256",
    "status",
    "wait_for",
    "wait_listening",
    "write_config",
]


def write_config(
    tmp: Path,
    port: int | str,
    *,
    capture: Path | None = None,
    state: Path | None = None,
    cloud: dict | None = None,
    log_level: str = "info",
    name: str = "syncd.yaml",
    **sync: object,
) -> Path:
    """A daemon config uploading to 127.0.0.1:``port`` in plaintext, fast retries."""
    capture = capture or tmp / "capture"
    state = state or tmp / "state"
    capture.mkdir(parents=True, exist_ok=True)
    options = {
        "file_quiet_period_s": 0.2,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
        "scan_interval_s": 1,
        **sync,
    }
    cloud_options = {"address": f"127.0.0.1:{port}", "tls": False, **(cloud or {})}
    lines = [
        "part_id: part-r",
        f"capture_dir: {capture}",
        f"state_dir: {state}",
        "cloud:",
        *(f"  {k}: {_yaml(v)}" for k, v in cloud_options.items()),
        "sync:",
        *(f"  {k}: {_yaml(v)}" for k, v in options.items()),
        "log:",
        f"  level: {log_level}",
        "  format: text",
    ]
    path = tmp / name
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)
    return path


def _yaml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a YAML string: "[::1]:443" stays one
    return str(value)


def rss_bytes(pid: int) -> int:
    """Resident memory of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def status(config: Path) -> dict:
    """`syncd status --json` of a config's outbox."""
    out = subprocess.run(
        [*SYNCD, "status", "-c", str(config), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


async def wait_for(
    predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` (sync) until true; AssertionError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)
