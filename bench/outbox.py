"""Outbox throughput and write amplification, for batch sizes 1, 100 and 1000.

Run: ``python bench/outbox.py [--runs 5] [--dir /var/tmp]``. For each batch size it
enqueues IMU-style tabular readings (~200 bytes of JSON each) into a fresh outbox, then
drains it with claim_readings + ack, and prints medians over the runs of:

- readings/s for the enqueue phase and for the claim+ack phase;
- bytes written to disk per reading, from ``/proc/self/io`` ``write_bytes`` (real block
  writes, so the directory must be on a disk, not tmpfs), including the WAL checkpoint
  forced at the end of each phase (``wal_checkpoint(TRUNCATE)``);
- write amplification: bytes written / payload bytes, for the enqueue alone and for the
  whole life of a reading (enqueue, claim, ack).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from syncd.outbox import Outbox, Reading

# How many readings per run for each batch size: batch 1 is one fsync per reading.
PLAN = {1: 2_000, 100: 50_000, 1000: 200_000}


def imu_reading(rng: random.Random) -> dict:
    """A realistic movement-sensor reading: three vectors of doubles."""

    def vec(*names: str) -> dict:
        return {n: round(rng.uniform(-20, 20), 6) for n in names}

    return {
        "linear_acceleration": vec("x", "y", "z"),
        "angular_velocity": vec("x", "y", "z"),
        "orientation": vec("o_x", "o_y", "o_z", "theta"),
    }


def write_bytes() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc/self/io")


def fs_type(path: Path) -> str:
    best, kind = "", "?"
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return kind


def one_run(base: Path, batch: int, total: int, seed: int) -> dict:
    rng = random.Random(seed)
    readings = [
        Reading.tabular("rdk:component:movement_sensor", "imu", "Readings", imu_reading(rng))
        for _ in range(total)
    ]
    payload = sum(len(r.payload) for r in readings)
    state = Path(tempfile.mkdtemp(prefix="outbox-bench-", dir=base))
    try:
        with Outbox(state) as ob:
            ob.checkpoint()
            w0, t0 = write_bytes(), time.perf_counter()
            for i in range(0, total, batch):
                ob.enqueue_readings(readings[i : i + batch])
            t1 = time.perf_counter()
            ob.checkpoint()
            w1 = write_bytes()
            t2 = time.perf_counter()
            drained = 0
            while claimed := ob.claim_readings(batch, 1 << 30, 60.0):
                ob.ack([c.id for c in claimed])
                drained += len(claimed)
            t3 = time.perf_counter()
            ob.checkpoint()
            w2 = write_bytes()
            assert drained == total, (drained, total)
    finally:
        shutil.rmtree(state)
    return {
        "enqueue_per_s": total / (t1 - t0),
        "drain_per_s": total / (t3 - t2),
        "payload": payload / total,
        "enqueue_bytes": (w1 - w0) / total,
        "drain_bytes": (w2 - w1) / total,
    }


def api_run(base: Path, total: int, seed: int) -> float:
    """Readings/s through the robot-program API: add_tabular inside batch(), so the JSON
    checks and encoding are included."""
    rng = random.Random(seed)
    samples = [imu_reading(rng) for _ in range(total)]
    state = Path(tempfile.mkdtemp(prefix="outbox-bench-", dir=base))
    try:
        with Outbox(state) as ob:
            t0 = time.perf_counter()
            with ob.batch(flush_every=1000):
                for sample in samples:
                    ob.add_tabular("rdk:component:movement_sensor", "imu", "Readings", sample)
            return total / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(state)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", default="/var/tmp", help="a directory on a real disk")
    args = parser.parse_args()
    base = Path(args.dir).resolve()
    kind = fs_type(base)
    if kind in ("tmpfs", "ramfs"):
        print(f"{base} is on {kind}: block writes are not counted; use --dir on a disk")
        return 2
    print(f"outbox benchmark: {args.runs} runs per batch size, dir {base} ({kind}), medians")
    header = (
        f"{'batch':>5} {'readings':>8} {'enqueue/s':>10} {'claim+ack/s':>11} {'payload B':>9}"
        f" {'enq B/rd':>8} {'enq amp':>7} {'total B/rd':>10} {'total amp':>9}"
    )
    print(header)
    print("-" * len(header))
    for batch, total in PLAN.items():
        runs = [one_run(base, batch, total, seed) for seed in range(args.runs)]

        def med(key: str, runs: list[dict] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        payload = med("payload")
        enq, drain = med("enqueue_bytes"), med("drain_bytes")
        print(
            f"{batch:>5} {total:>8} {med('enqueue_per_s'):>10,.0f} {med('drain_per_s'):>11,.0f}"
            f" {payload:>9.0f} {enq:>8.0f} {enq / payload:>6.2f}x {enq + drain:>10.0f}"
            f" {(enq + drain) / payload:>8.2f}x"
        )
    api = statistics.median(api_run(base, 100_000, seed) for seed in range(args.runs))
    print(f"add_tabular inside batch(flush_every=1000): {api:,.0f} readings/s")
    example = json.dumps(imu_reading(random.Random(0)), separators=(",", ":"))
    print(f"payload example ({len(example)} B): {example}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
