"""The committed generated modules match what scripts/gen_protos.py makes from protos/."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _tree(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*.py"))
        if "__pycache__" not in p.parts
    }


def test_generated_code_is_fresh(tmp_path):
    out = tmp_path / "gen"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), str(out)],
        check=True,
        capture_output=True,
    )
    fresh, committed = _tree(out), _tree(ROOT / "syncd" / "gen")
    assert sorted(fresh) == sorted(committed), "run: make protos"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"generated modules are stale ({', '.join(stale)}); run: make protos"


def test_outbox_api_imports_no_generated_code():
    """Robot programs import syncd.Outbox beside the Viam SDK; our protobuf names must
    not enter their interpreter, or the SDK's registration of the same names clashes."""
    code = (
        "import sys, syncd; syncd.Outbox; "
        "bad = [m for m in sys.modules if m.startswith('syncd.gen') or m.startswith('google.protobuf')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    if importlib.util.find_spec("syncd.outbox") is None:
        code = code.replace("syncd.Outbox; ", "")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
