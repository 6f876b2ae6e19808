"""Conversion: bit-identical round trips, every file format, strict key/shape checks."""

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jaxcnn import models
from jaxcnn.errors import UserError
from parity import CheckpointError, load_torch_checkpoint, load_torch_params, to_torch_state_dict
from parity.convert import (
    path_to_torch_key,
    state_to_torch_layout,
    to_numpy_state_dict,
    torch_key_to_path,
)
from parity.torch_models import create_torch


@pytest.mark.parametrize("name", list(models.MODELS))
def test_torch_flax_torch_is_bit_identical(name):
    torch.manual_seed(1)
    original = create_torch(name).state_dict()
    back = to_torch_state_dict(load_torch_checkpoint(original, name))
    assert sorted(back) == sorted(original)  # NNX orders modules by name, torch by definition
    for key, tensor in original.items():
        assert back[key].dtype == tensor.dtype and torch.equal(back[key], tensor), key


@pytest.mark.parametrize("name", list(models.MODELS))
def test_params_load_bit_identical_without_drawing_the_models_init(name, monkeypatch):
    uniform = jax.random.uniform

    def traced_only(*args, **kwargs):  # every init draw of the seeds' layers
        out = uniform(*args, **kwargs)
        assert isinstance(out, jax.core.Tracer), "the model's own init was drawn"
        return out

    monkeypatch.setattr(jax.random, "uniform", traced_only)
    torch.manual_seed(1)
    original = create_torch(name).state_dict()
    back = state_to_torch_layout(load_torch_params(original, name))
    assert sorted(back) == sorted(original)
    for key, tensor in original.items():
        assert np.array_equal(back[key], tensor.numpy()), key


@pytest.mark.parametrize("name", list(models.MODELS))
def test_exported_state_dict_loads_strictly_into_the_seed_module(name):
    jax_model = models.create(name, rngs=7)
    torch_model = create_torch(name)
    result = torch_model.load_state_dict(to_torch_state_dict(jax_model), strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_name_rules():
    assert torch_key_to_path("conv1.0.weight") == ("conv1", "layers", 0, "kernel")
    assert torch_key_to_path("incep1.branch5x5_2.bias") == ("incep1", "branch5x5_2", "bias")
    assert path_to_torch_key(("out", "layers", 0, "kernel")) == "out.0.weight"
    assert path_to_torch_key(("rblock2", "conv1", "kernel")) == "rblock2.conv1.weight"


def test_weight_layout_rules():
    """Conv OIHW -> HWIO and Linear [out,in] -> [in,out], checked on one element each."""
    torch.manual_seed(0)
    sd = create_torch("basic_cnn").state_dict()
    model = load_torch_checkpoint(sd, "basic_cnn")
    o, i, h, w = 3, 0, 1, 4
    assert float(model.conv1.kernel[...][h, w, i, o]) == float(sd["conv1.weight"][o, i, h, w])
    assert float(model.fc.kernel[...][17, 5]) == float(sd["fc.weight"][5, 17])


def test_pt_and_safetensors_files_load(tmp_path):
    torch.manual_seed(2)
    sd = create_torch("resnet").state_dict()
    torch.save(sd, tmp_path / "resnet.pt")
    torch.save({"epoch": 3, "model_state_dict": sd}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "resnet.safetensors"))
    reference = to_torch_state_dict(load_torch_checkpoint(sd, "resnet"))
    for file in ["resnet.pt", "wrapped.pth", "resnet.safetensors"]:
        loaded = to_torch_state_dict(load_torch_checkpoint(tmp_path / file, "resnet"))
        assert all(torch.equal(loaded[k], reference[k]) for k in reference), file


def test_loaded_model_is_in_inference_mode():
    model = load_torch_checkpoint(create_torch("convnet").state_dict(), "convnet")
    x = np.ones((4, 28, 28, 1), np.float32)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))


def test_pickled_module_is_refused(tmp_path):
    torch.save(create_torch("basic_cnn"), tmp_path / "whole_model.pt")
    with pytest.raises(CheckpointError, match="refusing to load .*can run arbitrary code"):
        load_torch_checkpoint(tmp_path / "whole_model.pt", "basic_cnn")


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04broken"])
def test_corrupt_files_are_named(tmp_path, content):
    for suffix in [".pt", ".safetensors"]:
        path = tmp_path / f"bad{suffix}"
        path.write_bytes(content)
        with pytest.raises(CheckpointError, match="bad"):
            load_torch_checkpoint(path, "basic_cnn")


def test_missing_file():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_torch_checkpoint("/nonexistent/model.pt", "basic_cnn")


def test_mismatch_lists_every_problem_by_torch_key():
    sd = dict(create_torch("basic_cnn").state_dict())
    del sd["fc.bias"]
    sd["fc2.weight"] = torch.zeros(3, 3)
    sd["conv2.weight"] = torch.zeros(20, 10, 3, 3)
    with pytest.raises(CheckpointError) as info:
        load_torch_checkpoint(sd, "basic_cnn")
    message = str(info.value)
    assert "missing keys: fc.bias [10]" in message
    assert "unexpected keys: fc2.weight [3, 3]" in message
    assert "conv2.weight: got [20, 10, 3, 3], expected [20, 10, 5, 5]" in message


def test_checkpoint_of_another_model_is_refused():
    with pytest.raises(CheckpointError, match="does not fit model 'resnet'"):
        load_torch_checkpoint(create_torch("inception").state_dict(), "resnet")


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="unknown model 'vgg'.*mnist_cnn.*inception"):
        load_torch_checkpoint({}, "vgg")


def test_random_bytes_are_not_called_a_pickled_model(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as err:
        load_torch_checkpoint(path, "basic_cnn")
    assert "pickled" not in str(err.value)


def test_the_legacy_torch_save_format_still_loads(tmp_path):
    state_dict = create_torch("basic_cnn").state_dict()
    torch.save(state_dict, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    model = load_torch_checkpoint(tmp_path / "old.pt", "basic_cnn")
    np.testing.assert_array_equal(to_numpy_state_dict(model)["fc.bias"], state_dict["fc.bias"])


def test_non_float_and_non_finite_tensors_are_refused_by_key():
    sd = dict(create_torch("basic_cnn").state_dict())
    sd["fc.bias"] = torch.zeros(10, dtype=torch.int64)
    sd["conv1.bias"] = torch.zeros(10, dtype=torch.bool)
    with pytest.raises(
        CheckpointError, match=r"not floats: conv1\.bias \(bool\), fc\.bias \(int64\)"
    ):
        load_torch_checkpoint(sd, "basic_cnn")
    sd = dict(create_torch("basic_cnn").state_dict())
    sd["conv2.weight"] = sd["conv2.weight"].clone()
    sd["conv2.weight"][0, 0, 0, 0] = float("nan")
    sd["fc.weight"] = torch.full_like(sd["fc.weight"], float("inf"))
    with pytest.raises(CheckpointError, match=r"holding NaN or inf: conv2\.weight, fc\.weight$"):
        load_torch_checkpoint(sd, "basic_cnn")


def test_half_bfloat16_and_double_tensors_are_converted_and_said_once(capsys):
    reference = create_torch("basic_cnn").state_dict()
    sd = {k: v.double() for k, v in reference.items()}
    sd["fc.bias"], sd["fc.weight"] = reference["fc.bias"].half(), reference["fc.weight"].bfloat16()
    model = load_torch_checkpoint(sd, "basic_cnn")
    err = capsys.readouterr().err.strip().splitlines()
    n64 = len(reference) - 2
    assert err == [
        f"warning: converted the checkpoint's {n64} float64, 1 float16, 1 bfloat16 tensors "
        "to float32"
    ]
    got = to_numpy_state_dict(model)
    for key, value in sd.items():
        np.testing.assert_array_equal(got[key], value.float().numpy())
