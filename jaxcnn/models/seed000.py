"""Seed 000: the MNIST and CIFAR-10 ``Model`` (conv-ReLU-pool twice, one Linear).

The seed wraps every stage in ``nn.Sequential``, so its checkpoints have keys
``conv1.0.weight`` and ``out.0.weight``; the stages are ``nnx.Sequential`` here
so the Flax paths are ``conv1/layers/0/kernel`` and ``out/layers/0/kernel``.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import nnx

from jaxcnn.compute import PLAIN, Compute
from jaxcnn.models.base import SeedModel
from jaxcnn.models.layers import Conv2d, Linear, MaxPool2d, flatten_chw


class Seed000CNN(SeedModel):
    """Conv(k5, pad 2)-ReLU-MaxPool(2), twice, then Linear to 10 classes."""

    def __init__(
        self,
        in_channels: int,
        channels: tuple[int, int],
        size: int,
        *,
        compute: Compute = PLAIN,
        rngs: nnx.Rngs,
    ):
        c1, c2 = channels
        self.input_shape = (size, size, in_channels)
        self.compute = compute
        self.conv1 = nnx.Sequential(
            Conv2d(in_channels, c1, 5, padding=2, compute=compute, rngs=rngs),
            jax.nn.relu,
            MaxPool2d(2, compute=compute),
        )
        self.conv2 = nnx.Sequential(
            Conv2d(c1, c2, 5, padding=2, compute=compute, rngs=rngs),
            jax.nn.relu,
            MaxPool2d(2, compute=compute),
        )
        side = size // 4
        self.out = nnx.Sequential(Linear(side * side * c2, 10, compute=compute, rngs=rngs))

    def forward(self, x: jax.Array) -> jax.Array:
        x = self.conv1(x)
        x = self.conv2(x)
        x = flatten_chw(x)  # x.view(x.shape[0], 7*7*20) on NCHW
        return self.out(x)


MnistCNN = partial(Seed000CNN, 1, (10, 20), 28)
CifarCNN = partial(Seed000CNN, 3, (16, 32), 32)
