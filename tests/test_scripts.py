"""Every script starts: ``--help`` exits 0 (catches import errors and shadowed modules)."""

import sys

import pytest

from tests.helpers import ROOT, run_script

SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_no_script_shadows_the_standard_library():
    names = {p.stem for p in SCRIPTS}
    assert not names & set(sys.stdlib_module_names), "scripts/ leads sys.path when they run"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_help(script):
    if script.name in {"parity_report.py", "compare_torch.py"}:
        pytest.importorskip("torch")
    out = run_script(script.name, "--help", timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert "usage:" in out.stdout
