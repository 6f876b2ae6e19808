"""Seed 003 ``InceptionA`` and the GoogLeNet-style ``Model`` built from two of them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn.models.base import SeedModel
from jaxcnn.models.layers import Conv2d, Linear, avg_pool2d, flatten_chw, max_pool2d


class InceptionA(nnx.Module):
    """Four branches concatenated on channels: 16 + 24 + 24 + 24 = 88.

    The branch order of the concatenation (1x1, 5x5, 3x3, pool) fixes the
    channel order the next conv was trained on, so it is the seed's order.
    """

    def __init__(self, in_channels: int, *, rngs: nnx.Rngs):
        self.branch1x1 = Conv2d(in_channels, 16, 1, rngs=rngs)
        self.branch5x5_1 = Conv2d(in_channels, 16, 1, rngs=rngs)
        self.branch5x5_2 = Conv2d(16, 24, 5, padding=2, rngs=rngs)
        self.branch3x3_1 = Conv2d(in_channels, 16, 1, rngs=rngs)
        self.branch3x3_2 = Conv2d(16, 24, 3, padding=1, rngs=rngs)
        self.branch3x3_3 = Conv2d(24, 24, 3, padding=1, rngs=rngs)
        self.branch_pool = Conv2d(in_channels, 24, 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        branch1x1 = self.branch1x1(x)
        branch5x5 = self.branch5x5_2(self.branch5x5_1(x))
        branch3x3 = self.branch3x3_3(self.branch3x3_2(self.branch3x3_1(x)))
        branch_pool = self.branch_pool(avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3, branch_pool], axis=-1)


class Inception(SeedModel):
    """Seed 003 ``Model`` with ``incep1``/``incep2``; pool before ReLU as in the seed."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.input_shape = (28, 28, 1)
        self.conv1 = Conv2d(1, 10, 5, rngs=rngs)
        self.conv2 = Conv2d(88, 20, 5, rngs=rngs)
        self.incep1 = InceptionA(10, rngs=rngs)
        self.incep2 = InceptionA(20, rngs=rngs)
        self.fc = Linear(1408, 10, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(max_pool2d(self.conv1(x)))  # 28 -> 24 -> 12, 10 channels
        x = self.incep1(x)  # 88 channels
        x = jax.nn.relu(max_pool2d(self.conv2(x)))  # 12 -> 8 -> 4, 20 channels
        x = self.incep2(x)  # 88 x 4 x 4 = 1408
        return self.fc(flatten_chw(x))
