"""How closely `sync.max_bytes_per_s` holds the upload rate of `syncd run`.

The daemon runs as a subprocess with a cap (1 MB/s by default) and more data than the
measurement window can carry: files totalling --seconds + 10 seconds' worth at the cap,
uploaded by several workers at once (sync.concurrency 4, all sharing the one bucket).
The receiving DataSyncService (bench/null_server.py's, discarding everything) runs in
this process and counts payload bytes as they arrive; the rate is measured over
--seconds from the first byte. Target: within 10 % of the cap.
Usage: python bench/bandwidth.py [--cap 1000000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from grpclib.server import Server

sys.path.insert(0, str(Path(__file__).resolve().parent))
from null_server import NullService

FILE_BYTES = 1_000_000


async def measure(cap: int, seconds: float) -> tuple[float, int]:
    service = NullService()
    server = Server([service])
    await server.start("127.0.0.1", 0)
    port = server._server.sockets[0].getsockname()[1]
    try:
        with tempfile.TemporaryDirectory(prefix="syncd-bw-") as tmp:
            base = Path(tmp)
            capture = base / "capture"
            capture.mkdir()
            files = int((seconds + 10) * cap / FILE_BYTES) + 1
            past = time.time() - 60
            for i in range(files):
                path = capture / f"video-{i:03d}.bin"
                path.write_bytes(os.urandom(FILE_BYTES))
                os.utime(path, (past, past))
            config = base / "syncd.yaml"
            config.write_text(
                json.dumps(
                    {
                        "part_id": "bench",
                        "capture_dir": str(capture),
                        "state_dir": str(base / "state"),
                        "cloud": {"address": f"127.0.0.1:{port}", "tls": False},
                        "sync": {"max_bytes_per_s": cap, "concurrency": 4},
                    }
                )
            )
            log = open(base / "daemon.log", "wb")  # noqa: SIM115
            daemon = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "syncd", "run", "-c", str(config), stderr=log
            )
            try:
                async with asyncio.timeout(30):
                    while service.bytes == 0:
                        await asyncio.sleep(0.01)
                t0, b0 = time.monotonic(), service.bytes
                await asyncio.sleep(seconds)
                t1, b1 = time.monotonic(), service.bytes
            finally:
                daemon.send_signal(signal.SIGTERM)
                code = await daemon.wait()
                log.close()
            if code != 0:
                sys.exit(f"daemon exited {code}:\n{(base / 'daemon.log').read_text()}")
    finally:
        server.close()
        await server.wait_closed()
    return (b1 - b0) / (t1 - t0), b1 - b0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cap", type=int, default=1_000_000, help="bytes/s (default 1 MB/s)")
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    rate, nbytes = asyncio.run(measure(args.cap, args.seconds))
    print(
        f"cap {args.cap / 1e6:g} MB/s: {nbytes / 1e6:.2f} MB in {args.seconds:g} s = "
        f"{rate / 1e6:.3f} MB/s, {rate / args.cap:.3f} of the cap (target 0.90-1.10)"
    )


if __name__ == "__main__":
    main()
