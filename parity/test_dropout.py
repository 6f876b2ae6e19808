"""Dropout: off in eval mode, and in train mode the seed's rate and granularity.

The two frameworks draw different random masks, so train mode is compared by
the masks' structure and statistics, each measured on both sides.
"""

import contextlib

import numpy as np
import pytest
import torch
from flax import nnx

from jaxcnn.models import create
from jaxcnn.models.layers import Dropout2d

N, H, W, C = 64, 6, 6, 64


def jax_mask(rate, shape, seed):
    layer = Dropout2d(rate, rngs=nnx.Rngs(dropout=seed))
    return np.asarray(layer(np.ones(shape, np.float32)))


def torch_mask(rate, shape, seed):
    torch.manual_seed(seed)
    layer = torch.nn.Dropout2d(rate).train()
    with pytest.warns(UserWarning) if len(shape) == 2 else contextlib.nullcontext():
        return layer(torch.ones(shape)).numpy()


def channel_kept(mask_nhwc):
    """[N, C] booleans, after asserting each channel map is all kept or all dropped."""
    per_channel = mask_nhwc.reshape(mask_nhwc.shape[0], -1, mask_nhwc.shape[-1])
    assert np.all(per_channel.min(axis=1) == per_channel.max(axis=1)), "a channel was split"
    return per_channel[:, 0, :] != 0


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_4d_dropout2d_drops_whole_channels_at_the_rate(rate):
    jax_kept = channel_kept(jax_mask(rate, (N, H, W, C), seed=1))
    torch_kept = channel_kept(torch_mask(rate, (N, C, H, W), seed=1).transpose(0, 2, 3, 1))
    n = jax_kept.size
    for kept in (jax_kept, torch_kept):
        assert abs((1 - kept.mean()) - rate) < 4 * np.sqrt(rate * (1 - rate) / n)


@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_4d_dropout2d_scales_kept_channels(rate):
    mask = jax_mask(rate, (N, H, W, C), seed=2)
    assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - rate))}


def test_2d_dropout2d_is_elementwise_like_torch():
    """The seed's second Dropout2d meets [N, 128]: torch drops single elements there."""
    shape = (256, 128)
    for mask in (jax_mask(0.5, shape, seed=3), torch_mask(0.5, shape, seed=3)):
        dropped = mask == 0
        assert 0.45 < dropped.mean() < 0.55
        # element granularity: every row and every column holds both kept and dropped
        for axis in (0, 1):
            assert (dropped.any(axis=axis) & ~dropped.all(axis=axis)).all()
        assert set(np.unique(mask)) == {0.0, 2.0}


def test_convnet_dropout_only_in_train_mode():
    model = create("convnet", rngs=0)
    x = np.random.default_rng(0).standard_normal((8, 28, 28, 1)).astype(np.float32)
    model.train()
    a, b = np.asarray(model(x)), np.asarray(model(x))
    assert not np.allclose(a, b), "train mode must draw fresh masks each call"
    model.eval()
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))
