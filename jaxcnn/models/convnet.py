"""Seed 002 section 4.3 ``ConvNet``: the pytorch/examples MNIST net with dropout."""

from __future__ import annotations

import jax
from flax import nnx

from jaxcnn.compute import PLAIN, Compute
from jaxcnn.models.base import SeedModel
from jaxcnn.models.layers import Conv2d, Dropout2d, Linear, flatten_chw


class ConvNet(SeedModel):
    """Two 3x3 convs, ``Dropout2d(0.25)`` on the map, ``Dropout2d(0.5)`` after fc1.

    Both dropouts are ``Dropout2d`` in the seed: the first drops whole channels,
    the second meets a 2-D tensor and drops elements (see ``layers.Dropout2d``).
    Call ``model.eval()`` for inference, ``model.train()`` to train.
    """

    def __init__(self, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (28, 28, 1)
        self.compute = compute
        self.conv1 = Conv2d(1, 32, 3, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(32, 64, 3, compute=compute, rngs=rngs)
        self.dropout1 = Dropout2d(0.25, rngs=rngs)
        self.dropout2 = Dropout2d(0.5, rngs=rngs)
        self.fc1 = Linear(9216, 128, compute=compute, rngs=rngs)
        self.fc2 = Linear(128, 10, compute=compute, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.conv1(x))  # 28 -> 26
        x = jax.nn.relu(self.conv2(x))  # 26 -> 24
        x = self.max_pool(x)  # 24 -> 12
        x = self.dropout1(x)
        x = flatten_chw(x)  # torch.flatten(x, 1): 64*12*12 = 9216
        x = jax.nn.relu(self.fc1(x))
        x = self.dropout2(x)
        return jax.nn.log_softmax(self.fc2(x), axis=1)
