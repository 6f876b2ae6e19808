"""The fully connected net of seed 001 section 4's permuted-pixel experiment.

Seed 001 cites the NYU Deep Learning ``convnet`` notebook, whose ``FC2Layer``
is ``nn.Sequential(Linear(784, n_hidden), ReLU, Linear(n_hidden, n_hidden),
ReLU, Linear(n_hidden, 10), LogSoftmax)`` with ``n_hidden=8``, so that it has
about as many parameters as ``SimpleCNN`` (6.4k vs 6.4k). Torch keys are
``network.0.weight``, ``network.2.weight``, ``network.4.weight``.
"""

from __future__ import annotations

from functools import partial

import jax
from flax import nnx

from jaxcnn.compute import PLAIN, Compute
from jaxcnn.models.base import SeedModel
from jaxcnn.models.layers import Linear, flatten_chw


class MLP(SeedModel):
    """784 -> n_hidden -> n_hidden -> 10, log-probabilities out."""

    def __init__(self, n_hidden: int = 8, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (28, 28, 1)
        self.compute = compute
        self.network = nnx.Sequential(
            Linear(28 * 28, n_hidden, compute=compute, rngs=rngs),
            jax.nn.relu,
            Linear(n_hidden, n_hidden, compute=compute, rngs=rngs),
            jax.nn.relu,
            Linear(n_hidden, 10, compute=compute, rngs=rngs),
            partial(jax.nn.log_softmax, axis=1),
        )

    def forward(self, x: jax.Array) -> jax.Array:
        return self.network(flatten_chw(x))  # x.view(-1, 784)
