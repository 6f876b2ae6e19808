"""The LeNet-like nets: seed 001 ``SimpleCNN``, seed 002 LeNet-5, seed 003's
basic ``Model`` and seed 004's blitz ``Net``.

They differ in small ways that matter for parity and are kept: SimpleCNN
returns ``log_softmax``; seed 003 pools *before* the ReLU; LeNet-5 and the
blitz net need 32x32 inputs (``16*5*5`` and ``16*6*6`` features).
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxcnn.compute import PLAIN, Compute
from jaxcnn.models.base import SeedModel
from jaxcnn.models.layers import Conv2d, Linear, flatten_chw

relu = jax.nn.relu


class SimpleCNN(SeedModel):
    """Seed 001: ``SimpleCNN(input_size, n_feature=6, output_size)``; outputs log-probabilities."""

    def __init__(self, n_feature: int = 6, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (28, 28, 1)
        self.compute = compute
        self.n_feature = n_feature
        self.conv1 = Conv2d(1, n_feature, 5, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(n_feature, n_feature, 5, compute=compute, rngs=rngs)
        self.fc1 = Linear(n_feature * 4 * 4, 50, compute=compute, rngs=rngs)
        self.fc2 = Linear(50, 10, compute=compute, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = self.max_pool(relu(self.conv1(x)))  # 28 -> 24 -> 12
        x = self.max_pool(relu(self.conv2(x)))  # 12 -> 8 -> 4
        x = flatten_chw(x)
        x = relu(self.fc1(x))
        return jax.nn.log_softmax(self.fc2(x), axis=1)


class LeNet5(SeedModel):
    """Seed 002 section 3.4 ``ConvNet``: classic LeNet-5 on 32x32 input."""

    def __init__(self, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (32, 32, 1)
        self.compute = compute
        self.conv1 = Conv2d(1, 6, 5, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(6, 16, 5, compute=compute, rngs=rngs)
        self.fc1 = Linear(16 * 5 * 5, 120, compute=compute, rngs=rngs)
        self.fc2 = Linear(120, 84, compute=compute, rngs=rngs)
        self.fc3 = Linear(84, 10, compute=compute, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = self.max_pool(relu(self.conv1(x)))  # 32 -> 28 -> 14
        x = self.max_pool(relu(self.conv2(x)))  # 14 -> 10 -> 5
        x = flatten_chw(x)
        x = relu(self.fc1(x))
        x = relu(self.fc2(x))
        return self.fc3(x)


class BasicCNN(SeedModel):
    """Seed 003's first ``Model``: note ``relu(pool(conv(x)))``, pool before ReLU."""

    def __init__(self, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (28, 28, 1)
        self.compute = compute
        self.conv1 = Conv2d(1, 10, 5, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(10, 20, 5, compute=compute, rngs=rngs)
        self.fc = Linear(320, 10, compute=compute, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = relu(self.max_pool(self.conv1(x)))
        x = relu(self.max_pool(self.conv2(x)))
        return self.fc(flatten_chw(x))


class BlitzNet(SeedModel):
    """Seed 004 ``Net`` (the PyTorch 60-minute blitz): 3x3 kernels, 32x32 input."""

    def __init__(self, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (32, 32, 1)
        self.compute = compute
        self.conv1 = Conv2d(1, 6, 3, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(6, 16, 3, compute=compute, rngs=rngs)
        self.fc1 = Linear(16 * 6 * 6, 120, compute=compute, rngs=rngs)
        self.fc2 = Linear(120, 84, compute=compute, rngs=rngs)
        self.fc3 = Linear(84, 10, compute=compute, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = self.max_pool(relu(self.conv1(x)))  # 32 -> 30 -> 15
        x = self.max_pool(relu(self.conv2(x)))  # 15 -> 13 -> 6 (floor, as PyTorch)
        x = flatten_chw(x)
        x = relu(self.fc1(x))
        x = relu(self.fc2(x))
        return self.fc3(x)
