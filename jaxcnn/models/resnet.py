"""Seed 003 ``ResidualBlock`` and the small residual ``Model``."""

from __future__ import annotations

import jax
from flax import nnx

from jaxcnn.compute import PLAIN, Compute
from jaxcnn.models.base import SeedModel
from jaxcnn.models.layers import Conv2d, Linear, flatten_chw

relu = jax.nn.relu


class ResidualBlock(nnx.Module):
    """``relu(x + conv2(relu(conv1(x))))`` with channel-preserving 3x3 convs."""

    def __init__(self, channels: int, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.channels = channels
        self.conv1 = Conv2d(channels, channels, 3, padding=1, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(channels, channels, 3, padding=1, compute=compute, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = relu(self.conv1(x))
        y = self.conv2(y)
        return relu(x + y)


class ResNet(SeedModel):
    """Seed 003 residual ``Model``: here ReLU comes *before* the pool, as written."""

    def __init__(self, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (28, 28, 1)
        self.compute = compute
        self.conv1 = Conv2d(1, 16, 5, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(16, 32, 5, compute=compute, rngs=rngs)
        self.rblock1 = ResidualBlock(16, compute=compute, rngs=rngs)
        self.rblock2 = ResidualBlock(32, compute=compute, rngs=rngs)
        self.fc = Linear(512, 10, compute=compute, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = self.max_pool(relu(self.conv1(x)))  # 28 -> 24 -> 12
        x = self.rblock1(x)
        x = self.max_pool(relu(self.conv2(x)))  # 12 -> 8 -> 4
        x = self.rblock2(x)  # 32 x 4 x 4 = 512
        return self.fc(flatten_chw(x))
