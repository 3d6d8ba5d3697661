"""Power cuts at random while a mixed workload keeps coming, on the robot or on the
receiver: nothing that was durably handed to syncd is lost.

The capture and state dirs live on a disk whose power the test cuts (see
tests/power_cut_disk.py): the disk keeps only what had reached it, the journal is replayed
as at a reboot, and `syncd run` starts again on it. "Durably handed over" is what the
README promises: readings whose `syncd capture` exited 0, capture files closed by
`CaptureWriter`, and files their writer fsynced. Whatever was finished while the power
went may arrive or not; everything finished before must arrive, at least once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from chaos_harness import Chaos, Report, Settings, chaos_seed
from power_cut_disk import PowerCutDisk, unavailable


def _power_cut_run(tmp_path: Path, where: str, **settings: object) -> Report:
    """Run the crash harness with a power-cut disk as its ``where`` (``disk`` or
    ``sink_disk``) and ``settings``; fail on any problem it finds."""
    reason = unavailable()
    if reason is not None:
        pytest.skip(f"no disk whose power can be cut here: {reason}")
    seed = chaos_seed()
    print(f"chaos seed {seed}")
    disk = PowerCutDisk(tmp_path / "disk")
    try:
        disk.open()
    except RuntimeError as exc:
        pytest.skip(f"no disk whose power can be cut here: {exc}")
    try:
        chaos = Chaos(
            Settings(
                seed=seed,
                workdir=tmp_path / "work",
                rounds=4,
                kill_after_s=(0.5, 2.5),
                prog_recover_age_s=1.0,
                log=print,
                **{where: disk},
                **settings,  # type: ignore[arg-type]
            )
        )
        report = chaos.run()
    finally:
        disk.close()
    text = chaos.check(report)
    assert report.power_cuts >= 1 and report.items > 50, text
    return report


def test_power_cuts_at_random_lose_nothing(tmp_path):
    report = _power_cut_run(tmp_path, "disk", sink_kill_p=0.0)
    assert report.power_cuts == 4


def test_the_receivers_power_cuts_lose_nothing(tmp_path):
    """The receiver answers an upload only once it is fsynced: a power cut just after
    loses nothing, though the robot has deleted its copy by then."""
    report = _power_cut_run(tmp_path, "sink_disk", sink_kill_p=1.0, sink_down_s=(0.0, 0.5))
    # A receiver still down from the last round comes back in this one, uncut.
    assert report.power_cuts == report.sink_kills >= 2
