"""The start-up comparison: the PyTorch script (no jax) and ``scripts/startup.py``."""

import subprocess
import sys

import pytest

from jaxcnn import UserError
from jaxcnn.lab import startup
from tests.helpers import ENV, ROOT, make_idx_dir


def test_torch_script_trains_without_importing_jax(tmp_path):
    make_idx_dir(tmp_path, n=120)
    args = ["--model", "mnist_cnn", "--recipe", startup.recipe_json("mnist_cnn")]
    args += ["--data-dir", str(tmp_path), "--train-limit", "100"]
    code = (
        "import runpy, sys; sys.argv = ['torch_script'] + sys.argv[1:]; "
        "runpy.run_module('parity.torch_script', run_name='__main__'); "
        "assert 'jax' not in sys.modules, 'the PyTorch script imported jax'"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=ROOT,
        timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("epoch 1: test accuracy ")


def test_startup_times_both_processes_in_turns(tmp_path):
    make_idx_dir(tmp_path, n=100)
    table = startup.run(["mlp"], str(tmp_path), 64, rounds=1)
    (row,) = [line for line in table.splitlines() if line.startswith("| mlp ")]
    jaxcnn_s, torch_s, ratio = (float(cell) for cell in row.strip("|").split("|")[1:])
    assert jaxcnn_s > 0 and torch_s > 0 and ratio == pytest.approx(torch_s / jaxcnn_s, rel=0.02)


def test_a_failing_process_is_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    command = startup.commands("mlp", str(tmp_path / "empty"), 32, tmp_path / "w")["torch"]
    message = r"^the PyTorch script failed: error: no train-images-idx3-ubyte\[.gz\]"
    with pytest.raises(UserError, match=message):
        startup.timed(command, None)


def test_a_colour_model_is_refused_before_any_process(tmp_path):
    with pytest.raises(UserError, match="model 'cifar_cnn' takes 3-channel images"):
        startup.run(["mlp", "cifar_cnn"], str(tmp_path / "nothing here"), 64, rounds=1)
