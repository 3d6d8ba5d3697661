"""`syncd status` and `syncd failed list|retry|purge` on a real config and outbox."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from syncd.cli import main
from syncd.outbox import FileItem, Outbox

ROOT = Path(__file__).resolve().parent.parent
SENSOR = ("rdk:component:sensor", "imu", "Readings")


@pytest.fixture
def config(tmp_path) -> Path:
    path = tmp_path / "syncd.yaml"
    path.write_text(
        f"part_id: test-part\ncapture_dir: {tmp_path / 'capture'}\nstate_dir: {tmp_path / 'state'}\n"
    )
    return path


@pytest.fixture
def state(tmp_path) -> Path:
    return tmp_path / "state"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def fill(state: Path, tmp_path: Path) -> dict[str, int]:
    """Two pending readings, one inflight file, a failed reading and a failed file."""
    doc = tmp_path / "capture" / "doc.txt"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_bytes(b"x" * 100)
    with Outbox(state) as ob:
        bad_reading = ob.add_tabular(*SENSOR, {"bad": 1})
        ob.add_tabular(*SENSOR, {"x": 1})
        ob.add_tabular(*SENSOR, {"x": 2})
        ob.enqueue_files(
            [
                FileItem(str(doc), "file", 100, doc.stat().st_mtime_ns),
                FileItem("/capture/big.capture", "capture", 5000, 1),
            ]
        )
        ids = {r.path: r.id for r in ob.live_file_rows()}
        assert ob.claim_readings(1, 1 << 20, 30)[0].id == bad_reading
        ob.dead_letter([bad_reading], "INVALID_ARGUMENT: reading\nrejected")
        [claimed] = ob.claim_files(1, 3600)
        ob.dead_letter([claimed.id], "INVALID_ARGUMENT: file rejected")
        ob.claim_files(1, 3600)
    return {"reading": bad_reading, "file": ids[str(doc)], "doc": doc}


def test_status_json_keys_and_values(config, state, tmp_path, capsys):
    fill(state, tmp_path)
    code, out, err = run(capsys, "status", "-c", str(config), "--json")
    assert (code, err) == (0, "")
    status = json.loads(out)
    size = len(b'{"x":1}')
    assert status["pending"] == 2
    assert status["inflight"] == 1
    assert status["failed"] == 2
    assert status["pending_bytes"] == 2 * size
    assert 0 <= status["oldest_pending_age_s"] < 60
    assert status["readings_failed"] == status["files_failed"] == 1
    assert status["outbox"] == str(state / "outbox.db")


def test_status_text_in_a_subprocess(config, state, tmp_path):
    fill(state, tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "syncd", "status", "-c", str(config)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"outbox:   {state / 'outbox.db'}"
    assert lines[1] == "pending:  2 (0 files, 2 readings), 14 B"
    assert lines[2] == "inflight: 1 (1 files, 0 readings), 4.9 KiB"
    assert lines[3] == "failed:   2 (1 files, 1 readings); see: syncd failed list"
    assert lines[4].startswith("oldest pending: ") and lines[4].endswith("s")


def test_status_of_a_missing_outbox_is_empty_and_creates_nothing(config, state, capsys):
    code, out, _ = run(capsys, "status", "-c", str(config), "--json")
    assert code == 0
    status = json.loads(out)
    assert (status["pending"], status["inflight"], status["failed"]) == (0, 0, 0)
    assert status["pending_bytes"] == 0 and status["oldest_pending_age_s"] is None
    code, out, _ = run(capsys, "status", "-c", str(config))
    assert "oldest pending: none" in out
    assert not state.exists()


def test_oldest_pending_age_grows(config, state, capsys):
    with Outbox(state, clock=lambda: time.time() - 3725) as ob:
        ob.add_tabular(*SENSOR, {"x": 1})
    code, out, _ = run(capsys, "status", "-c", str(config))
    assert code == 0
    assert "oldest pending: 1h 2m 5s" in out or "oldest pending: 1h 2m 6s" in out


def test_failed_list_shows_id_source_attempts_and_reason(config, state, tmp_path, capsys):
    ids = fill(state, tmp_path)
    code, out, err = run(capsys, "failed", "list", "-c", str(config))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 2
    fields = [line.split("\t") for line in lines]
    by_id = {int(f[0]): f for f in fields}
    reading, file = by_id[ids["reading"]], by_id[ids["file"]]
    assert reading[1:4] == ["reading", "rdk:component:sensor/imu/Readings", "attempts=1"]
    assert reading[5] == "INVALID_ARGUMENT: reading rejected"  # one line per dead letter
    assert file[1:4] == ["file", str(ids["doc"]), "attempts=1"]
    assert file[5] == "INVALID_ARGUMENT: file rejected"
    assert file[4].endswith("Z")


def test_failed_list_when_there_is_none(config, state, capsys):
    assert run(capsys, "failed", "list", "-c", str(config)) == (0, "", "syncd: no failed items\n")
    Outbox(state).close()
    assert run(capsys, "failed", "list", "-c", str(config)) == (0, "", "syncd: no failed items\n")


def test_failed_retry_by_id_then_all(config, state, tmp_path, capsys):
    ids = fill(state, tmp_path)
    assert run(capsys, "failed", "retry", "-c", str(config), str(ids["reading"])) == (
        0,
        "retried 1\n",
        "",
    )
    with Outbox(state) as ob:
        claimed = ob.claim_readings(10, 1 << 20, 30)
        # Back in its place, the oldest of its stream, with a fresh count of attempts.
        assert (claimed[0].id, claimed[0].attempts) == (ids["reading"], 0)
        assert len(claimed) == 3
        assert [f.id for f in ob.list_failed()] == [ids["file"]]
    assert run(capsys, "failed", "retry", "-c", str(config), "all") == (0, "retried 1\n", "")
    with Outbox(state) as ob:
        assert ob.list_failed() == []
        assert ob.counts().files_pending == 1


def test_failed_purge_keeps_the_file_on_disk(config, state, tmp_path, capsys):
    ids = fill(state, tmp_path)
    assert run(capsys, "failed", "purge", "-c", str(config), str(ids["file"])) == (
        0,
        "purged 1\n",
        "",
    )
    assert ids["doc"].read_bytes() == b"x" * 100
    assert run(capsys, "failed", "purge", "-c", str(config), "all") == (0, "purged 1\n", "")
    with Outbox(state) as ob:
        assert ob.list_failed() == []
        assert ob.counts().pending == 2  # the pending readings were left alone


def test_failed_unknown_and_bad_ids(config, state, tmp_path, capsys):
    ids = fill(state, tmp_path)
    code, out, err = run(capsys, "failed", "purge", "-c", str(config), str(ids["file"]), "999")
    assert (code, out) == (1, "purged 1\n")
    assert err == "syncd: no failed item with id 999\n"
    code, out, err = run(capsys, "failed", "retry", "-c", str(config), "3x")
    assert (code, out) == (1, "")
    assert err.startswith("syncd: '3x' is not an id")
    # A pending row is not a dead letter: retry/purge leave it alone.
    pending = ids["reading"] + 1  # the next reading fill() queued
    code, _, err = run(capsys, "failed", "purge", "-c", str(config), str(pending))
    assert (code, err) == (1, f"syncd: no failed item with id {pending}\n")


def test_failed_retry_without_an_outbox(config, capsys):
    code, out, err = run(capsys, "failed", "retry", "-c", str(config), "all")
    assert (code, out) == (1, "")
    assert err.startswith("syncd: no outbox in ")


def test_failed_needs_ids_or_all(config, capsys):
    with pytest.raises(SystemExit) as info:
        main(["failed", "purge", "-c", str(config)])
    assert info.value.code == 2
    capsys.readouterr()
