"""`syncd capture tabular|binary`: real processes, a real config file and outbox."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncd.outbox import Outbox

ROOT = Path(__file__).resolve().parent.parent
STREAM = [
    "--component-type",
    "rdk:component:sensor",
    "--component-name",
    "imu",
    "--method",
    "Readings",
]


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "syncd.yaml"
    path.write_text(
        f"part_id: test-part\ncapture_dir: {tmp_path / 'capture'}\nstate_dir: {tmp_path / 'state'}\n"
    )
    return path


def syncd(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "syncd", *args],
        input=input,
        capture_output=True,
        cwd=ROOT,
        timeout=60,
    )


def stored(state: Path) -> list:
    with Outbox(state) as ob:
        out = []
        while claimed := ob.claim_readings(1000, 1 << 30, 30):
            out += claimed
        return out


def test_tabular_lines_are_queued_with_tags_and_read_times(config, tmp_path):
    lines = b'{"x": 1.5}\n{"y": {"z": [1, "two", null]}}\n\n{"w": true}'  # no final newline
    before = time.time_ns()
    result = syncd(
        "capture", "tabular", "-c", str(config), *STREAM, "--tag", "a", "--tag", "b", input=lines
    )
    after = time.time_ns()
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    readings = stored(tmp_path / "state")
    assert [r.tabular_data() for r in readings] == [
        {"x": 1.5},
        {"y": {"z": [1, "two", None]}},
        {"w": True},
    ]
    for r in readings:
        assert r.stream[:4] == ("tabular", "rdk:component:sensor", "imu", "Readings")
        assert r.tags == ("a", "b")
        assert before <= r.time_requested_ns == r.time_received_ns <= after


def test_bad_lines_are_reported_and_the_good_ones_kept(config, tmp_path):
    lines = b"\n".join(
        [
            b'{"ok": 1}',
            b"[1, 2]",
            b'{"x": NaN}',
            b'{"broken": ',
            b'{"big": 1e999}',
            b"\xff\xfe",
            b'{"ok": 2}',
        ]
    )
    result = syncd("capture", "tabular", "-c", str(config), *STREAM, input=lines)
    assert result.returncode == 1
    errors = result.stderr.decode().splitlines()
    assert errors == [
        "syncd: line 2: not a JSON object (a list)",
        "syncd: line 3: NaN is not a number a reading can hold",
        "syncd: line 4: not valid JSON (Expecting value at column 12)",
        "syncd: line 5: data['big']: inf is not a finite number",
        "syncd: line 6: not UTF-8 text",
        "syncd: 2 readings queued, 5 bad lines skipped",
    ]
    assert [r.tabular_data() for r in stored(tmp_path / "state")] == [{"ok": 1}, {"ok": 2}]


def test_a_slow_producer_readings_are_durable_before_eof(config, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "syncd", "capture", "tabular", "-c", str(config), *STREAM],
        stdin=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdin is not None
    try:
        proc.stdin.write(b'{"n": 1}\n')
        proc.stdin.flush()
        # Within ~100 ms of the line, not at EOF: poll the outbox from this process.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if Outbox.exists(tmp_path / "state"):
                with Outbox(tmp_path / "state") as ob:
                    if ob.counts().readings_pending == 1:
                        break
            time.sleep(0.05)
        else:
            pytest.fail("the reading was not committed while the producer kept stdin open")
        assert proc.poll() is None
        proc.stdin.write(b'{"n": 2}\n')
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    assert [r.tabular_data() for r in stored(tmp_path / "state")] == [{"n": 1}, {"n": 2}]


def test_sigterm_keeps_the_lines_already_read(config, tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "syncd",
            "capture",
            "tabular",
            "-c",
            str(config),
            *STREAM,
            "--batch",
            "1000",
        ],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    assert proc.stdin is not None and proc.stderr is not None
    proc.stdin.write(b"".join(b'{"n": %d}\n' % i for i in range(50)))
    proc.stdin.flush()
    time.sleep(1.0)  # started and read them, well past the 100 ms commit
    proc.stdin.write(b'{"n": 50}\n')
    proc.stdin.flush()
    time.sleep(0.05)  # read, but its 100 ms commit delay has not run out
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err == b""
    assert [r.tabular_data()["n"] for r in stored(tmp_path / "state")] == list(range(51))


def test_binary_file_is_one_reading(config, tmp_path):
    image = tmp_path / "frame.jpg"
    image.write_bytes(b"\xff\xd8\xff" + bytes(range(256)) * 100)
    result = syncd(
        "capture",
        "binary",
        "-c",
        str(config),
        "--component-type",
        "rdk:component:camera",
        "--component-name",
        "cam",
        "--method",
        "ReadImage",
        "--file-extension",
        "jpeg",
        "--mime-type",
        "image/jpeg",
        "--tag",
        "front",
        str(image),
    )
    assert result.returncode == 0, result.stderr
    [reading] = stored(tmp_path / "state")
    assert int(result.stdout) == reading.id
    assert reading.payload == image.read_bytes()
    assert (reading.kind, reading.component_name, reading.method_name) == (
        "binary",
        "cam",
        "ReadImage",
    )
    assert (reading.file_extension, reading.mime_type, reading.tags) == (
        ".jpeg",
        "image/jpeg",
        ("front",),
    )


def test_binary_from_stdin(config, tmp_path):
    result = syncd(
        "capture",
        "binary",
        "-c",
        str(config),
        *STREAM,
        "--file-extension",
        ".bin",
        "-",
        input=b"\x00\x01",
    )
    assert result.returncode == 0, result.stderr
    assert [r.payload for r in stored(tmp_path / "state")] == [b"\x00\x01"]


def test_binary_missing_file_is_one_line(config, tmp_path):
    result = syncd(
        "capture",
        "binary",
        "-c",
        str(config),
        *STREAM,
        "--file-extension",
        ".jpeg",
        str(tmp_path / "nope.jpg"),
    )
    assert result.returncode == 1
    assert result.stderr.decode().strip().splitlines() == [
        f"syncd: cannot read {tmp_path / 'nope.jpg'}: No such file or directory"
    ]


def test_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("capture_dir: /tmp\n")  # no part_id
    result = syncd("capture", "tabular", "-c", str(bad), *STREAM, input=b'{"a": 1}\n')
    assert result.returncode == 2
    assert b"part_id" in result.stderr and b"Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_readings_from_the_command_line_look_like_the_api(config, tmp_path):
    syncd("capture", "tabular", "-c", str(config), *STREAM, input=b'{"x": 1}\n')
    with Outbox(tmp_path / "state") as ob:
        ob.add_tabular("rdk:component:sensor", "imu", "Readings", {"x": 2})
        claimed = ob.claim_readings(10, 1 << 20, 30)
    # Same stream: one upload request carries both.
    assert [json.loads(r.payload) for r in claimed] == [{"x": 1}, {"x": 2}]
