"""The seeds' worked examples, reproduced exactly through jaxcnn's layers and converter."""

import numpy as np
import torch
from flax import nnx

from jaxcnn import compute, kernels
from jaxcnn.models import create
from jaxcnn.models.layers import Conv2d
from parity.convert import expected_torch_shapes, to_flax_value
from parity.torch_models import create_torch

SEED003_INPUT = [3, 4, 6, 5, 7, 2, 4, 6, 8, 2, 1, 6, 7, 8, 4, 9, 7, 4, 6, 2, 3, 7, 5, 4, 1]
SEED003_POOL_INPUT = [3, 4, 6, 5, 2, 4, 6, 8, 1, 6, 7, 8, 9, 7, 4, 6]


def test_seed003_strided_padded_convolution():
    """Conv2d(1, 1, 3, padding=1, stride=2, bias=False), kernel 1..9, on the 5x5 input."""
    conv = Conv2d(1, 1, 3, padding=1, stride=2, bias=False, rngs=nnx.Rngs(0))
    kernel_oihw = np.arange(1, 10, dtype=np.float32).reshape(1, 1, 3, 3)
    conv.kernel[...] = to_flax_value(kernel_oihw)
    x = np.asarray(SEED003_INPUT, np.float32).reshape(1, 5, 5, 1)
    out = np.asarray(conv(x))[0, :, :, 0]
    np.testing.assert_array_equal(out, [[91, 224, 127], [192, 282, 122], [96, 110, 31]])
    # and torch agrees, from the same numbers
    t = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False, stride=2)
    t.weight.data = torch.from_numpy(kernel_oihw)
    np.testing.assert_array_equal(t(torch.tensor(x).permute(0, 3, 1, 2)).detach()[0, 0], out)


def test_seed003_max_pool():
    x = np.asarray(SEED003_POOL_INPUT, np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(
        np.asarray(kernels.max_pool2d(x, 2, compute.PLAIN))[0, :, :, 0], [[4, 8], [9, 8]]
    )


def test_seed003_conv_shapes():
    """Conv2d(5, 10, 3) on 100x100 gives 98x98 and a [10, 5, 3, 3] torch weight."""
    conv = Conv2d(5, 10, 3, rngs=nnx.Rngs(0))
    out = conv(np.zeros((1, 100, 100, 5), np.float32))
    assert out.shape == (1, 98, 98, 10)
    assert np.transpose(conv.kernel[...], (3, 2, 0, 1)).shape == (10, 5, 3, 3)


def test_seed004_blitz_net_parameters():
    """Seed 004 prints 10 parameter tensors, conv1.weight [6, 1, 3, 3], fc1 576 -> 120."""
    shapes = expected_torch_shapes(create("blitz_net"))
    assert len(shapes) == 10
    assert shapes["conv1.weight"] == (6, 1, 3, 3)
    assert shapes["fc1.weight"] == (120, 576)
    torch_shapes = {k: tuple(v.shape) for k, v in create_torch("blitz_net").state_dict().items()}
    assert shapes == torch_shapes
