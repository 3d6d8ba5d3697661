"""Shared fixtures: the Viam SDK interpreter, and small helpers for real subprocesses."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def viam_python() -> str:
    """A Python interpreter that has Viam's own SDK (viam-sdk) installed.

    The SDK registers the same protobuf names as syncd's generated code, and it pins an
    older protobuf runtime, so it lives in its own virtual environment (`make test` builds
    `.venv-viam`) and is driven in a separate process. Under CI its absence is a failure.
    """
    candidate = os.environ.get("SYNCD_VIAM_PYTHON") or str(ROOT / ".venv-viam" / "bin" / "python")
    if not Path(candidate).exists():
        if os.environ.get("CI"):
            pytest.fail(f"Viam SDK interpreter not found at {candidate}; run `make test`")
        pytest.skip(f"Viam SDK interpreter not found at {candidate}; run `make test`")
    return candidate


@pytest.fixture(scope="session")
def syncd_cmd() -> list[str]:
    """The command line that runs this checkout's `syncd` in a subprocess."""
    return [sys.executable, "-m", "syncd"]
