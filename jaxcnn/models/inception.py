"""Seed 003 ``InceptionA`` and the GoogLeNet-style ``Model`` built from two of them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn import kernels
from jaxcnn.compute import PLAIN, Compute
from jaxcnn.models.base import SeedModel
from jaxcnn.models.layers import Conv2d, Linear, avg_pool2d, flatten_chw


class InceptionA(nnx.Module):
    """Four branches concatenated on channels: 16 + 24 + 24 + 24 = 88.

    The branch order of the concatenation (1x1, 5x5, 3x3, pool) fixes the
    channel order the next conv was trained on, so it is the seed's order.

    ``compute.fuse`` computes the four 1x1 convolutions that read the block's
    input as one wider matmul and splits after (see :meth:`fused_1x1`); the
    parameters stay the seed's.
    """

    def __init__(self, in_channels: int, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.compute = compute
        self.branch1x1 = Conv2d(in_channels, 16, 1, compute=compute, rngs=rngs)
        self.branch5x5_1 = Conv2d(in_channels, 16, 1, compute=compute, rngs=rngs)
        self.branch5x5_2 = Conv2d(16, 24, 5, padding=2, compute=compute, rngs=rngs)
        self.branch3x3_1 = Conv2d(in_channels, 16, 1, compute=compute, rngs=rngs)
        self.branch3x3_2 = Conv2d(16, 24, 3, padding=1, compute=compute, rngs=rngs)
        self.branch3x3_3 = Conv2d(24, 24, 3, padding=1, compute=compute, rngs=rngs)
        self.branch_pool = Conv2d(in_channels, 24, 1, compute=compute, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.compute.fuse:
            branch1x1, branch5x5, branch3x3, branch_pool = self.fused_1x1(x)
        else:
            branch1x1 = self.branch1x1(x)
            branch5x5 = self.branch5x5_1(x)
            branch3x3 = self.branch3x3_1(x)
            pooled = avg_pool2d(x, 3, stride=1, padding=1, compute=self.compute)
            branch_pool = self.branch_pool(pooled)
        branch5x5 = self.branch5x5_2(branch5x5)
        branch3x3 = self.branch3x3_3(self.branch3x3_2(branch3x3))
        return jnp.concatenate([branch1x1, branch5x5, branch3x3, branch_pool], axis=-1)

    def fused_1x1(self, x: jax.Array) -> tuple[jax.Array, ...]:
        """The four 1x1 convolutions of the block as one [C_in, 72] matmul, split after.

        Three of them read ``x`` directly. The pool branch reads
        ``avg_pool(x)``; a 1x1 convolution is a per-pixel linear map and the
        average pool (zeros counted at the border) is linear in each channel, so
        ``W(avg_pool(x)) == avg_pool(W x)`` and that branch joins the matmul
        too. Its bias is added after the pool, because pooling a constant bias
        would shrink it at the border. One small matmul replaces four
        convolutions (and their gradient kernels) for the same math up to
        float rounding.

        Under ``conv="im2col"`` the matmul is im2col's 1x1 convolution, whose
        weight gradient is a batched GEMM over two halves of the rows
        (:func:`~jaxcnn.kernels.im2col._weight_grad_halves`): autodiff of the
        plain matmul made XLA:CPU copy the output gradient out transposed,
        with the col2im sums of the 5x5 and 3x3 branches fused into that
        copy. Inception's step was 5% faster on the 2-core EPYC (paired).
        """
        convs = (self.branch1x1, self.branch5x5_1, self.branch3x3_1, self.branch_pool)
        kernel = jnp.concatenate([conv.kernel[...] for conv in convs], axis=-1)  # [1,1,C,72]
        if self.compute.conv == "im2col":
            y = kernels.conv2d(x, kernel, None, 1, 0, self.compute)
        else:
            y = jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])
        outs, start = [], 0
        for conv in convs:
            width = conv.out_features
            outs.append(y[..., start : start + width])
            start += width
        pooled = avg_pool2d(outs[3], 3, stride=1, padding=1, compute=self.compute)
        outs[3] = pooled
        return tuple(out + conv.bias[...] for out, conv in zip(outs, convs, strict=True))


class Inception(SeedModel):
    """Seed 003 ``Model`` with ``incep1``/``incep2``; pool before ReLU as in the seed."""

    def __init__(self, *, compute: Compute = PLAIN, rngs: nnx.Rngs):
        self.input_shape = (28, 28, 1)
        self.compute = compute
        self.conv1 = Conv2d(1, 10, 5, compute=compute, rngs=rngs)
        self.conv2 = Conv2d(88, 20, 5, compute=compute, rngs=rngs)
        self.incep1 = InceptionA(10, compute=compute, rngs=rngs)
        self.incep2 = InceptionA(20, compute=compute, rngs=rngs)
        self.fc = Linear(1408, 10, rngs=rngs)

    def forward(self, x: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.max_pool(self.conv1(x)))  # 28 -> 24 -> 12, 10 channels
        x = self.incep1(x)  # 88 channels
        x = jax.nn.relu(self.max_pool(self.conv2(x)))  # 12 -> 8 -> 4, 20 channels
        x = self.incep2(x)  # 88 x 4 x 4 = 1408
        return self.fc(flatten_chw(x))
