"""Crash harness: a mixed workload while `syncd run` and `syncd sink` are SIGKILLed at random.

Used by tests/test_chaos.py (a short run in CI) and bench/chaos.py (long runs, `make soak`).

One generator thread writes, at a random pace, for the whole run:
- tabular capture files and binary capture files (some readings over 1 MB, which go up
  streamed), written as Viam's writers do (``.prog``, then renamed to ``.capture``);
- arbitrary files of 1 KB up to ``max_file_bytes`` (written under a hidden name, then
  renamed into place), some in ``tag=`` folders;
- readings piped line by line to ``syncd capture tabular`` subprocesses.

Meanwhile the main thread runs rounds: start `syncd run`, SIGKILL it at a random moment;
in some rounds also SIGKILL the receiver (``syncd sink``, its own process) and start it
again on the same port after a random outage. After the last round, the generator stops,
the receiver is up, and `syncd run --once` must drain everything.

Then the receiver's store is read back and compared by content with what was produced:
files by name and sha256 of their bytes; capture-file readings by their serialized
SensorData (tabular) or payload sha256 and both times (binary); piped readings by their
payload, with times inside the capture command's run. Every item must be there at least
once (``lost`` = 0), nothing may be there that was never produced; repeats are counted.

Only what is in flight at a kill may repeat, so duplicates are bounded by
kills x concurrency x the largest unit of work (the readings of one capture file, which
goes up again whole after an interruption, or one claim of ``batch_max_readings``).

With ``Settings.disk`` (tests/test_power_cut.py), the capture and state dirs live on a
disk whose power each round cuts, instead of a SIGKILL of `syncd run`; arbitrary files
are then fsynced by their writer, and what was finished while the power went may arrive
or not (``uncertain``). With ``Settings.sink_disk``, the receiver's store lives on such a
disk, and its power is cut where the receiver would be killed.

The seed fixes the workload and the kill schedule (process timing still varies).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from syncd.capture_file import CaptureWriter, capture_path
from syncd.fsutil import fsync_dir
from syncd.gen.app.datasync.v1 import data_sync_pb2 as ds
from syncd.sink_store_items import iter_store

ROOT = Path(__file__).resolve().parent.parent
SYNCD = [sys.executable, "-m", "syncd"]
SEED_ENV = "SYNCD_CHAOS_SEED"
CMD_COMPONENT = "chaoscmd"


def chaos_seed() -> int:
    """The seed from ``SYNCD_CHAOS_SEED``, or a fresh random one."""
    text = os.environ.get(SEED_ENV)
    return int(text) if text else random.SystemRandom().randrange(1, 2**31)


@dataclass
class Settings:
    seed: int
    workdir: Path
    rounds: int = 8
    duration_s: float | None = None  # run rounds until this long has passed (overrides rounds)
    kill_after_s: tuple[float, float] = (0.4, 2.5)  # a round: daemon killed after this long
    sink_kill_p: float = 0.4  # chance per round the receiver is killed too
    sink_down_s: tuple[float, float] = (0.0, 2.0)  # how long it stays down
    max_file_bytes: int = 2 * 1024 * 1024
    big_reading_bytes: tuple[int, int] = (1_000_001, 1_400_000)
    tabular_per_file: tuple[int, int] = (1, 120)
    binary_per_file: tuple[int, int] = (1, 4)
    lines_per_capture: tuple[int, int] = (1, 150)
    pace_s: tuple[float, float] = (0.01, 0.25)  # generator's pause between items
    concurrency: int = 4
    batch_max_readings: int = 50
    final_timeout_s: float = 180.0
    prog_recover_age_s: float = 3600.0
    # A PowerCutDisk (tests/power_cut_disk.py): the capture and state dirs live on it, and
    # each round ends with its power cut instead of a SIGKILL of `syncd run`.
    disk: object = None
    # Another PowerCutDisk: the receiver's store lives on it, and its power is cut where
    # the receiver would be SIGKILLed.
    sink_disk: object = None
    log: object = None  # callable(str) for progress lines, or None


@dataclass
class Report:
    seed: int
    rounds: int = 0
    daemon_kills: int = 0
    sink_kills: int = 0
    power_cuts: int = 0
    items: int = 0
    uncertain: int = 0  # finished while the power went: may or may not have survived
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    phantoms: int = 0
    bad_times: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    duplicates_by_kind: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    elapsed_s: float = 0.0
    duplicate_bound: int = 0
    leftovers: list[str] = field(default_factory=list)
    half_written: list[str] = field(default_factory=list)  # in the store: temp or unreadable
    status: dict = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)
    phantom_examples: list[str] = field(default_factory=list)
    final_rc: int | None = None
    log_errors: list[str] = field(default_factory=list)

    @property
    def kills(self) -> int:
        return self.daemon_kills + self.sink_kills

    def lines(self) -> list[str]:
        return [
            f"seed {self.seed} (rerun with {SEED_ENV}={self.seed})",
            f"rounds {self.rounds}, kills {self.kills} (syncd run {self.daemon_kills}, "
            f"receiver {self.sink_kills}), power cuts {self.power_cuts}, {self.elapsed_s:.0f} s",
            f"items {self.items} ({', '.join(f'{k} {v}' for k, v in sorted(self.by_kind.items()))})"
            f", {self.bytes / 1e6:.1f} MB",
            f"lost {self.lost}" + (f" (uncertain {self.uncertain})" if self.power_cuts else ""),
            f"duplicates {self.duplicates} (bound {self.duplicate_bound}; "
            f"{', '.join(f'{k} {v}' for k, v in sorted(self.duplicates_by_kind.items())) or 'none'})",
            f"phantoms {self.phantoms}, readings with times outside their capture run "
            f"{self.bad_times}, files left in the capture dir {len(self.leftovers)}, "
            f"half-written in the store {len(self.half_written)}",
        ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the receiver exited early with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"the receiver did not listen on {port} within {timeout} s")


# --- what was produced ------------------------------------------------------------------


class Expected:
    """Keys of every item produced, thread-safe; cmd readings keep their capture window.

    While a power cut is under way, what is finished may or may not have reached the
    disk: such items go to ``maybe``, allowed to arrive but not required to."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.keys: dict[tuple, str] = {}  # key -> kind
        self.maybe: dict[tuple, str] = {}
        self.cutting = False
        self.windows: dict[str, tuple[int, int]] = {}  # cmd reading id -> (start_ns, end_ns)
        self.cmd_values: dict[str, float] = {}
        self.bytes = 0
        self.max_unit = 1

    def add(self, kind: str, key: tuple, nbytes: int = 0) -> None:
        with self._lock:
            assert key not in self.keys and key not in self.maybe, f"produced {key!r} twice"
            if self.cutting:
                self.maybe[key] = kind
            else:
                self.keys[key] = kind
                self.bytes += nbytes

    def unit(self, n: int) -> None:
        with self._lock:
            self.max_unit = max(self.max_unit, n)


def _times(md: ds.SensorMetadata) -> tuple[int, int, int, int]:
    return (
        md.time_requested.seconds,
        md.time_requested.nanos,
        md.time_received.seconds,
        md.time_received.nanos,
    )


def _tabular(values: dict, when: datetime) -> ds.SensorData:
    md = ds.SensorMetadata()
    md.time_requested.FromDatetime(when)
    md.time_received.FromDatetime(when + timedelta(microseconds=1500))
    reading = ds.SensorData(metadata=md)
    reading.struct.update({"readings": values})
    return reading


class Generator(threading.Thread):
    """Produces the workload into ``capture`` and the outbox until ``stop`` is set."""

    def __init__(self, s: Settings, capture: Path, config: Path, expected: Expected) -> None:
        super().__init__(name="chaos-generator", daemon=True)
        self.s = s
        self.rng = random.Random(s.seed)
        self.capture = capture
        self.config = config
        self.expected = expected
        self.stop = threading.Event()
        self.producing = threading.Lock()  # held while an item is made: holding it pauses
        self.error: BaseException | None = None
        self.counter = 0
        self.clock = datetime(2026, 1, 1, tzinfo=UTC)

    def run(self) -> None:
        try:
            # One of each kind first, so that even a short run has them all.
            firsts = [0.0, 0.3, 0.5, 0.8]
            while not self.stop.is_set():
                choice = firsts.pop(0) if firsts else self.rng.random()
                with self.producing:
                    if choice < 0.3:
                        self.tabular_file()
                    elif choice < 0.5:
                        self.binary_file()
                    elif choice < 0.8:
                        self.arbitrary_file()
                    else:
                        self.capture_command()
                self.stop.wait(self.rng.uniform(*self.s.pace_s))
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def _next(self) -> int:
        self.counter += 1
        return self.counter

    def _stamp(self) -> datetime:
        self.clock += timedelta(milliseconds=1)
        return self.clock

    def tabular_file(self) -> None:
        n = self._next()
        name = f"imu{n % 3}"
        header = ds.DataCaptureMetadata(
            component_type="rdk:component:sensor",
            component_name=name,
            method_name="Readings",
            type=ds.DATA_TYPE_TABULAR_SENSOR,
            file_extension=".dat",
        )
        count = self.rng.randint(*self.s.tabular_per_file)
        path = capture_path(self.capture, header, self._stamp())
        readings = [
            _tabular(
                {"chaos": f"{self.s.seed}-{n}-{i}", "x": self.rng.random(), "i": i},
                self._stamp(),
            )
            for i in range(count)
        ]
        with CaptureWriter(path, header) as writer:
            for reading in readings:
                writer.write(reading)
                if self.rng.random() < 0.02:
                    time.sleep(0.01)  # a .prog being written when the daemon looks
        for reading in readings:
            key = ("tabular", name, reading.SerializeToString(deterministic=True))
            self.expected.add("tabular", key, reading.ByteSize())
        self.expected.unit(count)

    def binary_file(self) -> None:
        n = self._next()
        name = f"cam{n % 2}"
        header = ds.DataCaptureMetadata(
            component_type="rdk:component:camera",
            component_name=name,
            method_name="ReadImage",
            type=ds.DATA_TYPE_BINARY_SENSOR,
            file_extension=".jpeg",
        )
        count = self.rng.randint(*self.s.binary_per_file)
        path = capture_path(self.capture, header, self._stamp())
        keys = []
        with CaptureWriter(path, header) as writer:
            for i in range(count):
                if self.rng.random() < 0.3:
                    size = self.rng.randint(*self.s.big_reading_bytes)
                else:
                    size = self.rng.randint(1, 50_000)
                payload = f"{self.s.seed}-{n}-{i}:".encode() + self.rng.randbytes(size)
                md = ds.SensorMetadata()
                md.time_requested.FromDatetime(self._stamp())
                md.time_received.FromDatetime(self._stamp())
                writer.write(ds.SensorData(metadata=md, binary=payload))
                keys.append(
                    (
                        ("binary", name, hashlib.sha256(payload).hexdigest(), _times(md)),
                        len(payload),
                    )
                )
        for key, size in keys:
            self.expected.add("binary", key, size)
        self.expected.unit(count)

    def arbitrary_file(self) -> None:
        n = self._next()
        # log-uniform sizes: mostly small, now and then a big one
        size = int(
            2 ** self.rng.uniform(10, max(10.0, float(self.s.max_file_bytes.bit_length() - 1)))
        )
        size = min(max(1024, size), self.s.max_file_bytes)
        folder = self.capture / "files"
        if self.rng.random() < 0.25:
            folder = folder / "tag=chaos"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"f{n:06d}.bin"
        temp = folder / f".tmp-f{n:06d}"
        digest = hashlib.sha256()
        head = f"{self.s.seed}-{n}:".encode()
        with open(temp, "wb") as f:
            f.write(head)
            digest.update(head)
            left = size - len(head)
            block = self.rng.randbytes(min(left, 1 << 20))
            while left > 0:
                piece = block[: min(left, len(block))]
                f.write(piece)
                digest.update(piece)
                left -= len(piece)
            if self.s.disk is not None:
                os.fsync(f.fileno())  # a careful writer: the file survives a power cut
        os.rename(temp, final)
        if self.s.disk is not None:
            fsync_dir(folder)
        self.expected.add("file", ("file", str(final), digest.hexdigest()), size)

    def capture_command(self) -> None:
        n = self._next()
        lines = self.rng.randint(*self.s.lines_per_capture)
        values = [
            (f"cmd-{self.s.seed}-{n}-{i}", float(self.rng.randint(0, 1000))) for i in range(lines)
        ]
        start = time.time_ns()
        proc = subprocess.Popen(
            [
                *SYNCD,
                "capture",
                "tabular",
                "-c",
                str(self.config),
                "--component-type",
                "rdk:component:sensor",
                "--component-name",
                CMD_COMPONENT,
                "--method",
                "Readings",
                "--batch",
                str(self.rng.choice([1, 7, 50])),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        assert proc.stdin is not None
        for rid, value in values:
            proc.stdin.write(json.dumps({"id": rid, "v": value}).encode() + b"\n")
            if self.rng.random() < 0.05:
                proc.stdin.flush()
                time.sleep(0.02)
        proc.stdin.close()
        err = proc.stderr.read() if proc.stderr else b""
        if proc.stderr:
            proc.stderr.close()
        rc = proc.wait()
        end = time.time_ns()
        if rc != 0:
            raise RuntimeError(f"syncd capture tabular exited {rc}: {err.decode(errors='replace')}")
        with self.expected._lock:
            for rid, value in values:
                self.expected.windows[rid] = (start, end)
                self.expected.cmd_values[rid] = value
        for rid, _ in values:
            self.expected.add("reading", ("reading", rid), 0)


# --- the processes ------------------------------------------------------------------------


class Proc:
    """A `syncd` subprocess with its log going to a file."""

    def __init__(self, args: list[str], log: Path) -> None:
        self.log_path = log
        self._log = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*SYNCD, *args], stdout=self._log, stderr=subprocess.STDOUT, cwd=ROOT
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self._log.close()

    def terminate(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc


class Chaos:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.rng = random.Random(s.seed ^ 0x5EED)
        w = s.workdir
        on_disk = w if s.disk is None else s.disk.root  # type: ignore[attr-defined]
        self.capture = on_disk / "capture"
        self.state = on_disk / "state"
        self.store = (w if s.sink_disk is None else s.sink_disk.root) / "store"  # type: ignore[attr-defined]
        self.logs = w / "logs"
        for d in (self.capture, self.state, self.store, self.logs):
            d.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.config = w / "syncd.yaml"
        self.config.write_text(
            "part_id: chaos\n"
            f"capture_dir: {self.capture}\n"
            f"state_dir: {self.state}\n"
            "cloud:\n"
            f"  address: 127.0.0.1:{self.port}\n"
            "  tls: false\n"
            "  call_timeout_s: 20\n"
            "sync:\n"
            f"  concurrency: {s.concurrency}\n"
            f"  batch_max_readings: {s.batch_max_readings}\n"
            "  file_quiet_period_s: 0.3\n"
            f"  prog_recover_age_s: {s.prog_recover_age_s}\n"
            "  retry_initial_s: 0.05\n"
            "  retry_max_s: 0.5\n"
            "  scan_interval_s: 2\n"
            "log:\n"
            "  level: info\n"
            "  format: text\n"
        )
        self.expected = Expected()
        self.report = Report(seed=s.seed)
        self.sink: Proc | None = None
        self.daemon: Proc | None = None
        self._sink_starts = 0

    def say(self, text: str) -> None:
        if self.s.log is not None:
            self.s.log(text)  # type: ignore[operator]

    # processes

    def start_sink(self) -> None:
        self._sink_starts += 1
        self.sink = Proc(
            [
                "sink",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--store",
                str(self.store),
                "--min-free-bytes",
                "0",
            ],
            self.logs / "sink.log",
        )
        wait_listening(self.port, self.sink.proc)

    def kill_sink(self) -> None:
        assert self.sink is not None
        self.sink.kill()
        self.sink = None
        self.report.sink_kills += 1

    def start_daemon(self) -> None:
        self.daemon = Proc(["run", "-c", str(self.config)], self.logs / "daemon.log")

    def kill_daemon(self) -> None:
        assert self.daemon is not None
        if not self.daemon.alive():
            raise RuntimeError(
                f"syncd run died on its own with {self.daemon.proc.returncode}; "
                f"see {self.daemon.log_path}"
            )
        self.daemon.kill()
        self.daemon = None
        self.report.daemon_kills += 1

    # the run

    def run(self) -> Report:
        started = time.monotonic()
        generator = Generator(self.s, self.capture, self.config, self.expected)
        try:
            self.start_sink()
            generator.start()
            self._rounds(started, generator)
            generator.stop.set()
            generator.join()
            if generator.error is not None:
                raise generator.error
            if self.sink is None:
                self.start_sink()
            self.say("rounds done; final `syncd run --once`")
            with open(self.logs / "daemon.log", "ab") as log:
                final = subprocess.run(
                    [
                        *SYNCD,
                        "run",
                        "-c",
                        str(self.config),
                        "--once",
                        "--timeout",
                        str(self.s.final_timeout_s),
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=ROOT,
                    timeout=self.s.final_timeout_s + 60,
                )
            self.report.final_rc = final.returncode
            status = subprocess.run(
                [*SYNCD, "status", "-c", str(self.config), "--json"],
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=60,
            )
            self.report.status = json.loads(status.stdout) if status.returncode == 0 else {}
        finally:
            generator.stop.set()
            if generator.is_alive():
                generator.join(60)
            if self.daemon is not None:
                self.daemon.kill()
                self.daemon = None
            if self.sink is not None:
                self.sink.terminate()
                self.sink = None
        self.report.elapsed_s = time.monotonic() - started
        self._verify()
        return self.report

    def _rounds(self, started: float, generator: Generator) -> None:
        s = self.s
        n = 0
        while True:
            if s.duration_s is not None:
                if time.monotonic() - started >= s.duration_s:
                    break
            elif n >= s.rounds:
                break
            if generator.error is not None:
                raise generator.error
            n += 1
            self.start_daemon()
            round_start = time.monotonic()
            kill_at = self.rng.uniform(*s.kill_after_s)
            events: list[tuple[float, str]] = [(kill_at, "kill daemon")]
            if self.sink is None:
                # down since the last round: back at a random moment of this one
                events.append((self.rng.uniform(0, kill_at * 1.2), "start sink"))
            elif self.rng.random() < s.sink_kill_p:
                down_at = self.rng.uniform(0, kill_at)
                events.append((down_at, "kill sink"))
                back = down_at + self.rng.uniform(*s.sink_down_s)
                if back < kill_at or self.rng.random() < 0.5:
                    events.append((back, "start sink"))
            for at, action in sorted(events):
                delay = round_start + at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if action == "kill daemon" and s.disk is not None:
                    self.power_cut(generator)
                elif action == "kill daemon":
                    self.kill_daemon()
                elif action == "kill sink" and s.sink_disk is not None:
                    self.s.sink_disk.cut(self.kill_sink)  # type: ignore[attr-defined]
                    self.store.mkdir(parents=True, exist_ok=True)
                    self.report.power_cuts += 1
                elif action == "kill sink":
                    self.kill_sink()
                elif action == "start sink" and self.sink is None:
                    self.start_sink()
            self.report.rounds = n
            if n % 10 == 0 or s.duration_s is None:
                self.say(
                    f"round {n}: {self.report.daemon_kills} daemon kills, "
                    f"{self.report.sink_kills} receiver kills, "
                    f"{len(self.expected.keys)} items produced"
                )

    def power_cut(self, generator: Generator) -> None:
        """Cut the disk's power under `syncd run` and the generator, then reboot: the
        next round's daemon starts on what the disk kept."""
        self.expected.cutting = True
        paused = False

        def stop_programs() -> None:
            nonlocal paused
            self.kill_daemon()
            generator.producing.acquire()  # its item finishes on the lost disk
            paused = True

        try:
            self.s.disk.cut(stop_programs)  # type: ignore[attr-defined]
        finally:
            if paused:
                generator.producing.release()
        # The dirs are there after a reboot only if they had reached the disk.
        self.capture.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        self.expected.cutting = False
        self.report.power_cuts += 1

    # the verdict

    def _delivered(self) -> Iterator[tuple[str, tuple, tuple | None]]:
        """(kind, key, times) for every item in the store; times for piped readings."""
        self._stored = 0
        for item in iter_store(self.store):
            self._stored += 1
            um = item.upload_metadata
            if item.kind == "file":
                digest = hashlib.sha256()
                with open(item.path, "rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                yield "file", ("file", um.file_name, digest.hexdigest()), None
            elif item.kind == "binary":
                payload = item.read_bytes()
                md = item.sensor_metadata or ds.SensorMetadata()
                yield (
                    "binary",
                    ("binary", um.component_name, hashlib.sha256(payload).hexdigest(), _times(md)),
                    None,
                )
            else:
                for reading in item.sensor_data():
                    if um.component_name == CMD_COMPONENT:
                        values = dict(reading.struct)
                        yield (
                            "reading",
                            ("reading", values.get("id")),
                            (_times(reading.metadata), values.get("v")),
                        )
                    else:
                        key = (
                            "tabular",
                            um.component_name,
                            reading.SerializeToString(deterministic=True),
                        )
                        yield "tabular", key, None

    def _verify(self) -> None:
        r, exp = self.report, self.expected
        r.items = len(exp.keys)
        r.uncertain = len(exp.maybe)
        r.bytes = exp.bytes
        r.by_kind = dict(collections.Counter(exp.keys.values()))
        seen: collections.Counter[tuple] = collections.Counter()
        for _kind, key, extra in self._delivered():
            if key in exp.maybe:
                continue  # finished as the power went: it may or may not have survived
            if key not in exp.keys:
                r.phantoms += 1
                if len(r.phantom_examples) < 5:
                    r.phantom_examples.append(repr(key)[:200])
                continue
            seen[key] += 1
            if extra is not None:
                times, value = extra
                start, end = exp.windows[key[1]]
                t_req = times[0] * 10**9 + times[1]
                t_recv = times[2] * 10**9 + times[3]
                # a reading's times are when `syncd capture` read its line
                if not (start <= t_req <= end and start <= t_recv <= end) or (
                    value != exp.cmd_values[key[1]]
                ):
                    r.bad_times += 1
        lost = [k for k in exp.keys if k not in seen]
        r.lost = len(lost)
        r.lost_examples = [repr(k)[:200] for k in lost[:5]]
        r.delivered = sum(seen.values())
        dup: collections.Counter[str] = collections.Counter()
        for key, times in seen.items():
            if times > 1:
                dup[exp.keys[key]] += times - 1
        r.duplicates = sum(dup.values())
        r.duplicates_by_kind = dict(dup)
        unit = max(exp.max_unit, self.s.batch_max_readings)
        r.duplicate_bound = r.kills * self.s.concurrency * unit
        if r.power_cuts:
            # The daemon's own outbox writes are not fsynced at commit (see the README):
            # a power cut may undo any acks since the last checkpoint, and each goes again.
            r.duplicate_bound += r.power_cuts * len(exp.keys)
        for name in ("daemon.log", "sink.log"):
            with open(self.logs / name, errors="replace") as f:
                r.log_errors += [
                    f"{name}: {line.rstrip()[:300]}"
                    for line in f
                    if "Traceback" in line or "internal error" in line or " ERROR " in line
                ]
        # the receiver never shows a half-written upload: no temp file outlives its
        # upload (or, after a kill, the next start), and every data file reads back whole
        r.half_written = [str(p) for p in self.store.rglob(".tmp-*")]
        data_files = [
            p
            for p in self.store.rglob("*")
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(self.store).parts)
        ]
        if len(data_files) != self._stored:
            r.half_written.append(f"{len(data_files) - self._stored} unreadable data files")
        r.leftovers = sorted(
            str(p.relative_to(self.capture))
            for p in self.capture.rglob("*")
            if p.is_file() and not p.name.startswith(".")
        )

    # assertions for tests and the bench

    def check(self, report: Report) -> str:
        """Print ``report``; fail the test on any problem, or if a kind of item never
        came up; return the report's text for further assertions."""
        text = "\n".join(report.lines())
        print(text)
        problems = self.problems()
        seed = report.seed
        assert not problems, f"seed {seed} (rerun: {SEED_ENV}={seed}):\n{text}\n" + "\n".join(
            problems
        )
        assert set(report.by_kind) == {"file", "tabular", "binary", "reading"}, text
        return text

    def problems(self) -> list[str]:
        r = self.report
        out = []
        if r.final_rc != 0:
            out.append(f"`syncd run --once` exited {r.final_rc}")
        if r.lost:
            out.append(f"{r.lost} items lost, e.g. {r.lost_examples}")
        if r.phantoms:
            out.append(f"{r.phantoms} items never produced were delivered: {r.phantom_examples}")
        if r.bad_times:
            out.append(f"{r.bad_times} piped readings arrived with wrong times or values")
        if r.duplicates > r.duplicate_bound:
            out.append(f"{r.duplicates} duplicates, over the bound of {r.duplicate_bound}")
        if r.leftovers:
            out.append(f"files left in the capture dir: {r.leftovers[:5]}")
        if r.half_written:
            out.append(f"half-written files in the receiver's store: {r.half_written[:5]}")
        if r.log_errors:
            out.append(f"errors in the logs: {r.log_errors[:5]}")
        if r.status.get("pending", 0) or r.status.get("inflight", 0) or r.status.get("failed", 0):
            out.append(f"outbox not empty after --once: {r.status}")
        return out
