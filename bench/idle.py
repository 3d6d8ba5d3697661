"""The idle cost of `syncd run`: CPU seconds per minute and peak RSS with nothing to do.

The robot's capture tree holds 10,000 capture files that were all uploaded already:
- keep (default): `sync.delete_after_upload: false`, so the files stay on disk and the
  outbox remembers each as synced (every rescan stats them all);
- deleted: the files are gone and only Viam's `<type>/<name>/<method>/` folders are left.
The daemon runs as a subprocess (with a DataSyncService from bench/null_server.py in its
own process, which receives nothing), a fake NOTIFY_SOCKET tells when it is ready, and
then CPU time (utime + stime from /proc/<pid>/stat) is measured over --seconds. Peak RSS
is VmHWM from /proc/<pid>/status. Targets: under 0.5 CPU-s per minute, under 60 MB.
Usage: python bench/idle.py [--mode keep|deleted] [--files 10000] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from syncd.outbox import FileItem, Outbox

ROOT = Path(__file__).resolve().parent.parent
STREAMS = [  # 20 streams, as a robot with a few cameras and sensors writes them
    (ctype, f"{name}{i}", method)
    for i in range(5)
    for ctype, name, method in (
        ("rdk:component:camera", "cam", "ReadImage"),
        ("rdk:component:movement_sensor", "imu", "Readings"),
        ("rdk:component:sensor", "env", "Readings"),
        ("rdk:component:arm", "arm", "JointPositions"),
    )
]
TICKS = os.sysconf("SC_CLK_TCK")


def build_tree(capture: Path, state: Path, files: int, keep: bool) -> None:
    """Capture files, recorded as uploaded (and kept) in the outbox, or the folders only."""
    per_stream = files // len(STREAMS)
    items = []
    for ctype, name, method in STREAMS:
        folder = capture / ctype / name / method
        folder.mkdir(parents=True, exist_ok=True)
        if not keep:
            continue
        for n in range(per_stream):
            path = folder / f"2026-05-01T10_{n // 60:02d}_{n % 60:02d}.000Z_{name}.capture"
            path.write_bytes(os.urandom(512))
            st = path.stat()
            items.append(FileItem(str(path), "capture", st.st_size, st.st_mtime_ns))
    with Outbox(state) as outbox:
        for start in range(0, len(items), 1000):
            outbox.enqueue_files(items[start : start + 1000])
        claimed = outbox.claim_files(len(items) + 1, 3600)
        for c in claimed:
            outbox.ack_file_keep(c.id, c.path, c.size, c.mtime_ns)
        counts = outbox.counts()
        assert counts.pending == counts.inflight == 0
        assert len(outbox.synced_paths()) == len(items)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def start_server() -> tuple[subprocess.Popen, int]:
    server = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "null_server.py")],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = server.stdout.readline()
    return server, int(line.split()[1])


def run(args: argparse.Namespace) -> dict[str, float]:
    keep = args.mode == "keep"
    with tempfile.TemporaryDirectory(prefix="syncd-idle-") as tmp:
        base = Path(tmp)
        capture, state = base / "capture", base / "state"
        build_tree(capture, state, args.files, keep)
        server, port = start_server()
        config = base / "syncd.yaml"
        config.write_text(
            json.dumps(
                {
                    "part_id": "bench",
                    "capture_dir": str(capture),
                    "state_dir": str(state),
                    "cloud": {"address": f"127.0.0.1:{port}", "tls": False},
                    "sync": {
                        "delete_after_upload": not keep,
                        "scan_interval_s": args.scan_interval,
                    },
                }
            )
        )
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(base / "notify"))
        notify.settimeout(120)
        env = {**os.environ, "NOTIFY_SOCKET": str(base / "notify"), "WATCHDOG_USEC": "60000000"}
        log = open(base / "daemon.log", "wb")  # noqa: SIM115
        started = time.monotonic()
        daemon = subprocess.Popen(
            [sys.executable, "-m", "syncd", "run", "-c", str(config)],
            stderr=log,
            env=env,
        )
        try:
            while b"READY=1" not in notify.recv(4096):
                pass
            ready_s = time.monotonic() - started
            startup_cpu = cpu_seconds(daemon.pid)
            time.sleep(args.seconds)
            idle_cpu = cpu_seconds(daemon.pid) - startup_cpu
            rss_mb = status_kb(daemon.pid, "VmRSS") / 1024
            hwm_mb = status_kb(daemon.pid, "VmHWM") / 1024
        finally:
            daemon.terminate()
            code = daemon.wait(30)
            server.terminate()
            received = server.communicate(timeout=30)[0].strip()
            notify.close()
            log.close()
        text = (base / "daemon.log").read_text()
        uploads = "calls=0 " in received
    if code != 0 or not uploads:
        sys.exit(f"unexpected: exit code {code}, server saw {received}\n{text}")
    return {
        "ready_s": ready_s,
        "startup_cpu_s": startup_cpu,
        "idle_cpu_s": idle_cpu,
        "idle_cpu_s_per_min": idle_cpu * 60 / args.seconds,
        "rss_mb": rss_mb,
        "peak_rss_mb": hwm_mb,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("keep", "deleted"), default="keep")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument(
        "--scan-interval", type=float, default=300.0, help="sync.scan_interval_s (default 300)"
    )
    args = parser.parse_args()
    r = run(args)
    files = f"{args.files} files kept" if args.mode == "keep" else "folders only"
    print(
        f"idle daemon, {files} (all synced), scan_interval_s {args.scan_interval:g}:\n"
        f"  ready after {r['ready_s']:.2f} s, start-up CPU {r['startup_cpu_s']:.2f} s\n"
        f"  idle CPU {r['idle_cpu_s']:.3f} s over {args.seconds:g} s"
        f" = {r['idle_cpu_s_per_min']:.3f} CPU-s/min (target < 0.5)\n"
        f"  RSS {r['rss_mb']:.1f} MB, peak RSS (VmHWM) {r['peak_rss_mb']:.1f} MB (target < 60)"
    )


if __name__ == "__main__":
    main()
