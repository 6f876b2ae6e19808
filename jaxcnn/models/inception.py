"""Seed 003 ``InceptionA`` and the GoogLeNet-style ``Model`` built from two of them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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
        if self.compute.fuse and self.compute.conv == "im2col":
            return self.composed(x)
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

    def composed(self, x: jax.Array) -> jax.Array:
        """The block under ``fuse`` and ``conv="im2col"``: each 1x1 convolution that feeds
        a kxk one (the seed puts no nonlinearity between them) is composed with it into
        one kxk convolution of the block's input (:func:`compose_pair`); the other two
        1x1s are one matmul (:meth:`fused_1x1`).

        For incep1 (10 input channels) the 5x5 branch costs 10*25*24 multiply-adds a
        pixel instead of 10*16 + 16*25*24, and two convolutions, their patches and
        gradients fewer are traced per block. Inception's training step, paired against
        :meth:`fused_1x1` for all four 1x1s (2-core AMD EPYC, Zen 4, 2026-12-02, 10 and
        12 rounds of 10 steps): 1.05x and 1.04x.
        """
        branch1x1, branch_pool = self.fused_1x1(x, (self.branch1x1, self.branch_pool))
        branch5x5 = compose_pair(self.branch5x5_1, self.branch5x5_2, x, self.compute)
        branch3x3 = compose_pair(self.branch3x3_1, self.branch3x3_2, x, self.compute)
        branch3x3 = self.branch3x3_3(branch3x3)
        return jnp.concatenate([branch1x1, branch5x5, branch3x3, branch_pool], axis=-1)

    def fused_1x1(self, x: jax.Array, convs: tuple | None = None) -> tuple[jax.Array, ...]:
        """The 1x1 convolutions ``convs`` (default: all four of the block, the pool
        branch last) as one matmul ([C_in, 72] for all four), split after.

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
        if convs is None:
            convs = (self.branch1x1, self.branch5x5_1, self.branch3x3_1, self.branch_pool)
        kernel = jnp.concatenate([conv.kernel[...] for conv in convs], axis=-1)  # [1,1,C,sum]
        if self.compute.conv == "im2col":
            y = kernels.conv2d(x, kernel, None, 1, 0, self.compute)
        else:
            y = jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0])
        outs, start = [], 0
        for conv in convs:
            width = conv.out_features
            outs.append(y[..., start : start + width])
            start += width
        outs[-1] = avg_pool2d(outs[-1], 3, stride=1, padding=1, compute=self.compute)
        return tuple(out + conv.bias[...] for out, conv in zip(outs, convs, strict=True))


def compose_pair(first: Conv2d, second: Conv2d, x: jax.Array, compute: Compute) -> jax.Array:
    """``second(first(x))`` for a 1x1 ``first`` and a stride-1 kxk ``second``, as one
    convolution of ``x``.

    The kernels compose: W[i,j,c,o] = sum_m W1[c,m] W2[i,j,m,o]. The first's bias
    does not simply pass through: ``second`` zero-pads ``first(x)``, so the border
    pixels see fewer taps of b1. Its contribution is the map
    B[h,w,o] = sum of b1.W2[i,j,:,o] over the taps (i,j) that land inside the image,
    built from two 0/1 masks, one per axis. Autodiff of the composition gives the
    gradients of W1, b1, W2 and b2; the parameters stay the seed's.
    """
    w1, w2 = first.kernel[...][0, 0], second.kernel[...]  # [C, M], [k, k, M, O]
    padding = second.torch_padding
    y = kernels.conv2d(x, jnp.einsum("cm,ijmo->ijco", w1, w2), None, 1, padding, compute)
    h, w, k = x.shape[1], x.shape[2], w2.shape[0]
    inside_h, inside_w = (_taps_inside(size, k, padding) for size in (h, w))
    bias_taps = jnp.einsum("m,ijmo->ijo", first.bias[...], w2)
    bias_map = jnp.einsum("hi,wj,ijo->hwo", inside_h, inside_w, bias_taps)
    return y + (bias_map + second.bias[...]).astype(y.dtype)


def _taps_inside(size: int, k: int, padding: int) -> np.ndarray:
    """[size', k] 0/1: whether tap i of output position p reads a pixel of the image
    (0 <= p + i - padding < size), not the zero padding."""
    out = size + 2 * padding - k + 1
    read = np.arange(out)[:, None] + np.arange(k)[None, :] - padding
    return ((read >= 0) & (read < size)).astype(np.float32)


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
