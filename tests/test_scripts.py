"""Every script starts: ``--help`` exits 0 (catches import errors and shadowed modules)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_no_script_shadows_the_standard_library():
    names = {p.stem for p in SCRIPTS}
    assert not names & set(sys.stdlib_module_names), "scripts/ leads sys.path when they run"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script):
    if script.name in {"parity_report.py", "compare_torch.py"}:
        pytest.importorskip("torch")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, env=env,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-1500:]
    assert "usage:" in out.stdout
