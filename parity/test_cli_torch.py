"""The CLI with PyTorch checkpoints: evaluate a .pt/.safetensors file, train from one."""

import json

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxcnn import data, train
from parity import load_torch_checkpoint
from parity.torch_models import create_torch
from tests.helpers import make_idx_dir, run_script


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_evaluate_a_torch_checkpoint(tmp_path, suffix):
    make_idx_dir(tmp_path, n=200)
    torch.manual_seed(5)
    state_dict = create_torch("basic_cnn").state_dict()
    path = tmp_path / f"basic{suffix}"
    if suffix == ".pt":
        torch.save(state_dict, path)
    else:
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    out = run_script("evaluate.py", "--model", "basic_cnn", "--checkpoint", str(path),
              "--dataset", "mnist", "--data-dir", str(tmp_path), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])["test_accuracy"]

    config = train.get_config("basic_cnn", "mnist", data_dir=str(tmp_path))
    program, state = train.create_program(config, load_torch_checkpoint(path, "basic_cnn"))
    test = data.load("mnist", "test", tmp_path)
    logits = program.apply(state.params, jax.numpy.asarray(test.images), None)
    expected = float(np.mean(np.asarray(logits).argmax(1) == test.labels))
    assert got == pytest.approx(expected, abs=1e-6)


def test_train_from_a_torch_checkpoint_and_refuse_a_mismatched_one(tmp_path):
    (tmp_path / "idx").mkdir()
    make_idx_dir(tmp_path / "idx", n=100)
    torch.save(create_torch("resnet").state_dict(), tmp_path / "resnet.pt")
    args = ["--dataset", "mnist", "--data-dir", str(tmp_path / "idx"), "--epochs", "1",
            "--no-progress", "--init-from", str(tmp_path / "resnet.pt")]  # fmt: skip
    ok = run_script("train.py", "--model", "resnet", *args, "--workdir", str(tmp_path / "a"))
    assert ok.returncode == 0, ok.stderr
    bad = run_script("train.py", "--model", "inception", *args, "--workdir", str(tmp_path / "b"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "does not fit model 'inception'" in bad.stderr


def test_compare_torch_reports_bf16_in_its_own_column(tmp_path):
    """``compare_torch.py --bf16``: a float32 and a bfloat16 jaxcnn run and a torch run
    per seed, the bf16 accuracy in its own column; a bad model name is one line."""
    make_idx_dir(tmp_path, n=200, learnable=True)
    out = tmp_path / "cmp"
    args = ["--data-dir", str(tmp_path), "--models", "basic_cnn", "--seeds", "0", "1",
            "--epochs", "2", "--out", str(out)]  # fmt: skip
    result = run_script("compare_torch.py", *args, "--bf16", timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    impls = sorted((r["impl"], r["seed"]) for r in runs)
    assert impls == sorted(
        (impl, seed) for impl in ("jaxcnn", "jaxcnn bf16", "torch (resident)") for seed in (0, 1)
    )
    acc = {(r["impl"], r["seed"]): 100 * r["test_accuracy"] for r in runs}
    header, _, row = out.with_suffix(".md").read_text().splitlines()[2:5]
    assert header.endswith("| jaxcnn bf16 acc (mean ± sd) | bf16 s/epoch |")
    bf16 = [acc[("jaxcnn bf16", s)] for s in (0, 1)]
    assert row.startswith("| `basic_cnn` |") and f"| {np.mean(bf16):.2f} ± " in row
    bad = run_script("compare_torch.py", *args[:2], "--models", "vgg", "--out", str(out))
    assert bad.returncode == 2 and "unknown model 'vgg'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_bad_torch_files_are_one_sentence_from_the_cli(tmp_path):
    """Random bytes, integer tensors, NaN tensors: exit 2, one line, no traceback."""
    make_idx_dir(tmp_path, n=50)
    (tmp_path / "noise.pt").write_bytes(np.random.default_rng(1).bytes(3000))
    state_dict = create_torch("basic_cnn").state_dict()
    torch.save({**state_dict, "fc.bias": torch.zeros(10, dtype=torch.int64)}, tmp_path / "int.pt")
    nan = {k: v.clone() for k, v in state_dict.items()}
    nan["conv1.weight"][0] = float("nan")
    torch.save(nan, tmp_path / "nan.pt")
    cases = [
        ("train.py", "noise.pt", "is not a PyTorch checkpoint"),
        ("train.py", "int.pt", "checkpoint tensors that are not floats: fc.bias (int64)"),
        ("evaluate.py", "nan.pt", "checkpoint tensors holding NaN or inf: conv1.weight"),
    ]
    for script, name, message in cases:
        flag = "--init-from" if script == "train.py" else "--checkpoint"
        out = run_script(script, "--model", "basic_cnn", "--dataset", "mnist", "--data-dir",
                         str(tmp_path), flag, str(tmp_path / name), "--workdir" if script ==
                         "train.py" else "--json", *([str(tmp_path / "w")] if script ==
                         "train.py" else []))  # fmt: skip
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr[-2000:]
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "w").exists(), "a refused checkpoint leaves no workdir"
