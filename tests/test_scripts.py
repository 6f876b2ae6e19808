"""Every script starts: ``--help`` exits 0 (catches import errors and shadowed modules)."""

import subprocess
import sys

import pytest

from tests.helpers import ENV, ROOT, run_script

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


def test_compilation_cache_keeps_the_small_init_programs(tmp_path):
    """The CLI's cache holds the ~40 ms compiles of a model's eager init ops.

    Under a threshold like JAX's default (1 s; this test failed with 0.5 s) none
    of them is written, and every run pays for them again (about 4 s of an
    inception run's start on a 2-core CPU).
    """
    code = (
        "from jaxcnn.cli import enable_compilation_cache; enable_compilation_cache(); "
        "from jaxcnn import models; models.create('lenet5')"
    )
    env = {**ENV, "JAXCNN_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    entries = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("jit_")]
    assert len(entries) >= 3, sorted(p.name for p in (tmp_path / "cache").iterdir())
