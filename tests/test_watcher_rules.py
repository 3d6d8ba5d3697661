"""The watcher's pure rules: candidates, kinds, folder labels, skips and due times."""

from __future__ import annotations

import os
from pathlib import Path

from syncd.config import Config
from syncd.scan import Candidate, Layout, Skip, classify, eligible_at, inside

CAP = "/data/capture"


def cfg(state_dir: str = "/var/lib/syncd", extra: tuple[str, ...] = ()) -> Config:
    return Config(
        part_id="p",
        capture_dir=Path(CAP),
        state_dir=Path(state_dir),
        additional_sync_paths=tuple(Path(p) for p in extra),
    )


def test_kinds_by_extension():
    c = cfg()
    assert classify(f"{CAP}/arm/a/Get/1.capture", CAP, c) == Candidate("capture")
    assert classify(f"{CAP}/arm/a/Get/1.prog", CAP, c) == Candidate("prog")
    assert classify(f"{CAP}/notes.txt", CAP, c) == Candidate("file")
    assert classify(f"{CAP}/archive.capture.gz", CAP, c) == Candidate("file")


def test_tag_and_dataset_folders_anywhere_between_root_and_file():
    got = classify(f"{CAP}/tag=red/x/dataset=d1/tag=blue/tag=red/img.jpg", CAP, cfg())
    assert got == Candidate("file", ("red", "blue"), ("d1",))
    assert got.meta == {"tags": ["red", "blue"], "dataset_ids": ["d1"]}
    # Only folders count, and an empty value is no label.
    assert classify(f"{CAP}/tag=/tag=ok.txt", CAP, cfg()) == Candidate("file")
    # Labels above the sync folder are not ours.
    assert classify("/tag=up/cap/f.txt", "/tag=up/cap", cfg()) == Candidate("file")


def test_skipped_names_folders_and_state_dir():
    c = cfg(state_dir=f"{CAP}/.syncd-state")
    for path in (
        f"{CAP}/.hidden",
        f"{CAP}/.tmp-4711",
        f"{CAP}/sub/.file.swp",
        f"{CAP}/.git/config",
        f"{CAP}/failed/arm/1.capture",
        f"{CAP}/deep/failed/x.txt",
    ):
        verdict = classify(path, CAP, c)
        assert isinstance(verdict, Skip) and not verdict.warn, path
    inside_state = classify(f"{CAP}/state/outbox.db", CAP, cfg(state_dir=f"{CAP}/state"))
    assert inside_state == Skip("inside the state dir")
    # A folder merely named like the state dir elsewhere is fine.
    assert classify(f"{CAP}/x/state/f.txt", CAP, cfg(state_dir=f"{CAP}/state")) == Candidate("file")
    # A state dir holding the sync folder does not hide it.
    assert classify(f"{CAP}/f.txt", CAP, cfg(state_dir="/data")) == Candidate("file")
    # A file named "failed" is a file.
    assert classify(f"{CAP}/failed", CAP, c) == Candidate("file")
    assert isinstance(classify("/elsewhere/f.txt", CAP, c), Skip)
    assert isinstance(classify(CAP, CAP, c), Skip)


def test_dot_folders_above_the_root_do_not_count():
    root = "/home/robot/.viam/capture"
    assert classify(f"{root}/f.txt", root, cfg()) == Candidate("file")


def test_non_utf8_names_are_skipped_with_a_warning():
    name = os.fsdecode(b"bad\xffname.txt")
    verdict = classify(f"{CAP}/{name}", CAP, cfg())
    assert isinstance(verdict, Skip) and verdict.warn
    folder = os.fsdecode(b"dir\xfe")
    assert isinstance(classify(f"{CAP}/{folder}/ok.txt", CAP, cfg()), Skip)
    # Hidden wins: no warning for what would be skipped anyway.
    assert classify(f"{CAP}/.{name}", CAP, cfg()) == Skip("hidden file")


def test_layout_picks_the_innermost_root_and_ignores_trailing_slashes():
    layout = Layout.from_config(cfg(extra=(f"{CAP}/inner", "/srv/logs/")))
    assert layout.roots == (CAP, f"{CAP}/inner", "/srv/logs")
    assert layout.root_for(f"{CAP}/inner/tag=a/f") == f"{CAP}/inner"
    assert layout.root_for(f"{CAP}/innerx/f") == CAP
    assert layout.root_for("/srv/logsx/f") is None
    assert layout.classify(f"{CAP}/tag=b/inner2/f") == Candidate("file", ("b",))
    assert inside("/a/b", "/a") and inside("/a", "/a") and not inside("/ab", "/a")
    assert layout.excluded == ()  # the state dir is elsewhere
    assert Layout.from_config(cfg(state_dir=f"{CAP}/st")).excluded == (f"{CAP}/st",)
    holding = Layout.from_config(cfg(state_dir="/data"))
    assert holding.excluded == () and holding.classify(f"{CAP}/f") == Candidate("file")


def test_eligible_at_counts_from_mtime_or_first_sight():
    mtime_ns = 1_000 * 10**9
    # Quiet for long: eligible as soon as seen.
    assert eligible_at(mtime_ns, first_seen=5_000.0, period_s=10.0) == 1_010.0
    # Just written: eligible a quiet period after its last write.
    assert eligible_at(mtime_ns, first_seen=1_000.5, period_s=10.0) == 1_010.0
    # An mtime in the future (a clock step) counts from first sight, not forever.
    assert eligible_at(mtime_ns, first_seen=900.0, period_s=10.0) == 910.0
