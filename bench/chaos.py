"""Crash soak: `syncd run` and `syncd sink` SIGKILLed at random under a mixed workload.

The long variant of tests/test_chaos.py (see tests/chaos_harness.py for what it does and
checks): arbitrary files up to 50 MB, binary readings over 1 MB, tabular capture files,
readings piped to `syncd capture tabular`, for --duration seconds of kill rounds, then a
final `syncd run --once`. Prints rounds, kills, items, lost (must be 0) and duplicates;
exits 1 if anything was lost or any other check failed.

    python bench/chaos.py [--duration 300] [--seed N] [--max-file-mb 50] [--keep]

The seed also comes from SYNCD_CHAOS_SEED; the same seed gives the same workload and
kill schedule (process timing still varies from run to run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from chaos_harness import Chaos, Settings, chaos_seed  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of kill rounds")
    parser.add_argument(
        "--seed", type=int, default=None, help="default: SYNCD_CHAOS_SEED or random"
    )
    parser.add_argument("--max-file-mb", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else chaos_seed()
    workdir = Path(tempfile.mkdtemp(prefix="syncd-chaos-"))
    started = time.monotonic()

    def log(text: str) -> None:
        print(f"[{time.monotonic() - started:6.0f} s] {text}", flush=True)

    settings = Settings(
        seed=seed,
        workdir=workdir,
        duration_s=args.duration,
        kill_after_s=(0.3, 4.0),
        sink_kill_p=0.35,
        sink_down_s=(0.0, 5.0),
        max_file_bytes=int(args.max_file_mb * 1024 * 1024),
        big_reading_bytes=(1_000_001, 3_000_000),
        tabular_per_file=(1, 400),
        binary_per_file=(1, 6),
        lines_per_capture=(1, 500),
        pace_s=(0.01, 0.4),
        concurrency=args.concurrency,
        final_timeout_s=900.0,
        log=log,
    )
    log(f"seed {seed}, work folder {workdir}")
    chaos = Chaos(settings)
    ok = False
    try:
        report = chaos.run()
        print()
        for line in report.lines():
            print(line)
        problems = chaos.problems()
        for problem in problems:
            print(f"FAIL: {problem}")
        ok = not problems
        print("OK" if ok else f"FAILED (seed {seed}; logs in {workdir / 'logs'})")
    finally:
        if ok and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
